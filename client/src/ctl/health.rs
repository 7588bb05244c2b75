//! `x402ctl health` and `x402ctl version`: the two questions asked before and after every
//! maintenance step (is every node ready, and can the cluster lose one more voter; which release
//! does each node run).

use super::{json_line, on_every_node, table, CtlError, Output};
use crate::admin::AdminClient;
use crate::wire::{ClusterHealth, NodeHealth, NodeStatus, Role, UnreachableNode};

/// Asks every node its status and readiness; fails unless all are ready and the cluster can
/// lose one more voter.
pub(super) async fn health(nodes: Vec<AdminClient>, json: bool) -> Result<Output, CtlError> {
    let answers = on_every_node(nodes, |n| async move {
        let status = n.status().await?;
        let readiness = n.readyz().await?;
        Ok((status, readiness))
    })
    .await;
    let mut statuses = Vec::new();
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    for (url, answer) in answers {
        match answer {
            Ok((status, readiness)) => {
                nodes.push(NodeHealth {
                    id: status.id,
                    url,
                    ready: readiness.ready,
                    reasons: readiness.reasons,
                });
                statuses.push(status);
            }
            Err(e) => unreachable.push(UnreachableNode {
                url,
                error: e.to_string(),
            }),
        }
    }
    let health = assess(&statuses, nodes, unreachable);
    let stdout = if json {
        json_line(&health)?
    } else {
        render(&health)
    };
    Ok(Output {
        stdout,
        failed: !health.healthy,
    })
}

/// The verdict from what the nodes answered. Voters come from the membership the leader reports
/// (the newest one), so a voter left out of `--nodes` counts as not ready: the tool never
/// assumes health it did not see.
fn assess(
    statuses: &[NodeStatus],
    nodes: Vec<NodeHealth>,
    unreachable: Vec<UnreachableNode>,
) -> ClusterHealth {
    let view = statuses
        .iter()
        .filter(|s| s.role == Role::Leader)
        .max_by_key(|s| s.term)
        .or_else(|| statuses.iter().max_by_key(|s| s.term));
    let voters: Vec<u64> = view
        .map(|s| s.members.iter().filter(|m| m.voter).map(|m| m.id).collect())
        .unwrap_or_default();
    let quorum = voters.len() / 2 + 1;
    let ready_voters = voters
        .iter()
        .filter(|v| nodes.iter().any(|n| n.id == **v && n.ready))
        .count();
    let failure_tolerance = ready_voters as i64 - quorum as i64;
    let mut problems = Vec::new();
    for n in nodes.iter().filter(|n| !n.ready) {
        problems.push(format!(
            "node {} is not ready: {}",
            n.id,
            n.reasons.join("; ")
        ));
    }
    for u in &unreachable {
        problems.push(format!("{} does not answer: {}", u.url, u.error));
    }
    if voters.is_empty() {
        problems.push("no node reports a membership (is the cluster formed?)".to_owned());
    } else if failure_tolerance < 0 {
        problems.push(format!(
            "{ready_voters} of {} voters are ready and a majority is {quorum}: writes stop",
            voters.len()
        ));
    } else if failure_tolerance == 0 && voters.len() > 1 {
        problems.push(format!(
            "{ready_voters} of {} voters are ready: one more failure stops writes",
            voters.len()
        ));
    }
    ClusterHealth {
        healthy: problems.is_empty(),
        voters: voters.len(),
        quorum,
        ready_voters,
        failure_tolerance,
        nodes,
        unreachable,
        problems,
    }
}

fn render(health: &ClusterHealth) -> String {
    let rows: Vec<Vec<String>> = health
        .nodes
        .iter()
        .map(|n| {
            let state = if n.ready {
                "ready".to_owned()
            } else {
                format!("NOT READY: {}", n.reasons.join("; "))
            };
            vec![n.id.to_string(), n.url.clone(), state]
        })
        .collect();
    let mut out = if rows.is_empty() {
        String::new()
    } else {
        table(&["ID", "URL", "READINESS"], &rows)
    };
    for u in &health.unreachable {
        out.push_str(&format!("unreachable: {}: {}\n", u.url, u.error));
    }
    out.push_str(&format!(
        "voters {}, majority {}, ready {}: tolerates {} more failure(s)\n",
        health.voters,
        health.quorum,
        health.ready_voters,
        health.failure_tolerance.max(0)
    ));
    if health.healthy {
        out.push_str("healthy\n");
    } else {
        out.push_str(&format!("UNHEALTHY: {}\n", health.problems.join("; ")));
    }
    out
}

/// Every node's release; fails when none answers.
pub(super) async fn versions(nodes: Vec<AdminClient>, json: bool) -> Result<Output, CtlError> {
    let answers = on_every_node(nodes, |n| async move { n.status().await }).await;
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    let mut unreachable = Vec::new();
    for (url, answer) in answers {
        match answer {
            Ok(status) => {
                let version = status.version.unwrap_or_else(|| "unknown".to_owned());
                seen.push(serde_json::json!({ "id": status.id, "url": url, "version": version }));
                rows.push(vec![status.id.to_string(), url, version]);
            }
            Err(e) => unreachable.push(format!("unreachable: {url}: {e}\n")),
        }
    }
    let stdout = if json {
        json_line(&seen)?
    } else {
        let mut out = if rows.is_empty() {
            String::new()
        } else {
            table(&["ID", "URL", "VERSION"], &rows)
        };
        out.push_str(&unreachable.concat());
        let mut distinct: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        match distinct.as_slice() {
            [] => {}
            [one] => out.push_str(&format!("every node that answered runs {one}\n")),
            many => out.push_str(&format!("versions differ: {}\n", many.join(", "))),
        }
        out
    };
    Ok(Output {
        stdout,
        failed: rows.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Member;

    fn status(id: u64, role: Role, voters: &[u64]) -> NodeStatus {
        NodeStatus {
            id,
            url: format!("http://n{id}"),
            cluster_id: None,
            role,
            term: 2,
            leader_id: Some(1),
            committed: None,
            applied: None,
            last_log: None,
            snapshot: None,
            purged: None,
            members: voters
                .iter()
                .map(|v| Member {
                    id: *v,
                    url: format!("http://n{v}"),
                    voter: true,
                })
                .collect(),
            claims: 0,
            state_hash: String::new(),
            breakers: vec![],
            signers: vec![],
            version: None,
        }
    }

    fn node(id: u64, ready: bool) -> NodeHealth {
        NodeHealth {
            id,
            url: format!("http://n{id}"),
            ready,
            reasons: if ready {
                vec![]
            } else {
                vec!["no leader known".into()]
            },
        }
    }

    #[test]
    fn three_ready_voters_tolerate_one_failure() {
        let statuses = [status(1, Role::Leader, &[1, 2, 3])];
        let h = assess(
            &statuses,
            vec![node(1, true), node(2, true), node(3, true)],
            vec![],
        );
        assert!(h.healthy, "{h:?}");
        assert_eq!((h.quorum, h.ready_voters, h.failure_tolerance), (2, 3, 1));
    }

    #[test]
    fn a_voter_down_leaves_no_tolerance_and_is_unhealthy() {
        let statuses = [status(1, Role::Leader, &[1, 2, 3])];
        let h = assess(
            &statuses,
            vec![node(1, true), node(2, true)],
            vec![UnreachableNode {
                url: "http://n3".into(),
                error: "refused".into(),
            }],
        );
        assert!(!h.healthy);
        assert_eq!(h.failure_tolerance, 0);
        assert!(h.problems.iter().any(|p| p.contains("one more failure")));
        let text = render(&h);
        assert!(
            text.contains("unreachable: http://n3") && text.contains("UNHEALTHY"),
            "{text}"
        );
    }

    #[test]
    fn a_node_not_ready_is_unhealthy_even_with_tolerance() {
        let statuses = [status(1, Role::Leader, &[1, 2, 3, 4, 5])];
        let nodes = vec![
            node(1, true),
            node(2, true),
            node(3, true),
            node(4, true),
            node(5, false),
        ];
        let h = assess(&statuses, nodes, vec![]);
        assert_eq!(h.failure_tolerance, 1);
        assert!(!h.healthy);
        assert!(h.problems[0].contains("node 5 is not ready: no leader known"));
    }

    #[test]
    fn one_voter_has_no_tolerance_by_design() {
        let h = assess(
            &[status(1, Role::Leader, &[1])],
            vec![node(1, true)],
            vec![],
        );
        assert!(h.healthy);
        assert_eq!(h.failure_tolerance, 0);
    }
}
