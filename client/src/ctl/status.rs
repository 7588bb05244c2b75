//! `x402ctl status`: every node's own view, side by side, so an operator sees at a glance who
//! leads, who lags (committed vs applied vs last_log) and who is down.

use super::{json_line, on_every_node, or_dash, table, CtlError, Output};
use crate::admin::AdminClient;
use crate::wire::{ClusterStatus, NodeStatus, Role, UnreachableNode};

pub(super) async fn run(nodes: Vec<AdminClient>, json: bool) -> Result<Output, CtlError> {
    let mut status = ClusterStatus {
        nodes: Vec::new(),
        unreachable: Vec::new(),
    };
    for (url, answer) in on_every_node(nodes, |n| async move { n.status().await }).await {
        match answer {
            Ok(node) => status.nodes.push(node),
            Err(e) => status.unreachable.push(UnreachableNode {
                url,
                error: e.to_string(),
            }),
        }
    }
    let stdout = if json {
        json_line(&status)?
    } else {
        render(&status)
    };
    Ok(Output {
        stdout,
        // Some answers are still useful output; none at all means the cluster is unreachable.
        failed: status.nodes.is_empty(),
    })
}

/// Asks every node its status every 100 ms until `decide` gives an answer from those that
/// answered, or `wait` has passed: then `timed_out` says why, and the command fails.
async fn poll_statuses(
    nodes: Vec<AdminClient>,
    wait: std::time::Duration,
    decide: impl Fn(&[NodeStatus], usize) -> Option<Output>,
    timed_out: impl Fn(&[NodeStatus], usize) -> String,
) -> Output {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let answers = on_every_node(nodes.clone(), |n| async move { n.status().await }).await;
        let statuses: Vec<NodeStatus> = answers.into_iter().filter_map(|(_, a)| a.ok()).collect();
        if let Some(output) = decide(&statuses, nodes.len()) {
            return output;
        }
        if tokio::time::Instant::now() >= deadline {
            return Output {
                stdout: timed_out(&statuses, nodes.len()),
                failed: true,
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Polls every node until all answer and agree on one leader that says it leads.
pub(super) async fn wait_leader(
    nodes: Vec<AdminClient>,
    wait: std::time::Duration,
) -> Result<Output, CtlError> {
    Ok(poll_statuses(
        nodes,
        wait,
        |statuses, expected| {
            agreed_leader(statuses, expected)
                .map(|leader| Output::ok(format!("leader: {leader}\n")))
        },
        |_, _| "no agreed leader\n".to_owned(),
    )
    .await)
}

/// `x402ctl check`: polls every node until all answer at one applied index (writes keep
/// arriving, so each round asks again), then compares their state hashes (I6: equal index,
/// byte-equal state).
pub(super) async fn check(
    nodes: Vec<AdminClient>,
    wait: std::time::Duration,
) -> Result<Output, CtlError> {
    Ok(poll_statuses(
        nodes,
        wait,
        |statuses, expected| {
            (statuses.len() == expected)
                .then(|| compare_states(statuses))
                .flatten()
        },
        |statuses, expected| {
            let seen: Vec<String> = statuses
                .iter()
                .map(|s| format!("node {} at {}", s.id, or_dash(s.applied)))
                .collect();
            format!(
                "the nodes did not reach one applied index within {wait:?} ({} of {expected} \
                 answered: {})\n",
                statuses.len(),
                seen.join(", ")
            )
        },
    )
    .await)
}

/// With every node at one applied index, whether their states agree; `None` while they stand
/// at different indexes.
fn compare_states(statuses: &[NodeStatus]) -> Option<Output> {
    let first = statuses.first()?;
    if statuses.iter().any(|s| s.applied != first.applied) {
        return None;
    }
    let index = or_dash(first.applied);
    if statuses.iter().all(|s| s.state_hash == first.state_hash) {
        return Some(Output::ok(format!(
            "{} nodes agree at applied index {index}: state hash {}\n",
            statuses.len(),
            first.state_hash
        )));
    }
    let each: Vec<String> = statuses
        .iter()
        .map(|s| format!("node {}: {}", s.id, s.state_hash))
        .collect();
    Some(Output {
        stdout: format!("DIVERGED at applied index {index}: {}\n", each.join(", ")),
        failed: true,
    })
}

/// The leader every one of `expected` nodes names, if they all answered and it says it leads.
fn agreed_leader(statuses: &[NodeStatus], expected: usize) -> Option<u64> {
    if statuses.len() != expected {
        return None;
    }
    let leader = statuses.first()?.leader_id?;
    let all_agree = statuses.iter().all(|s| s.leader_id == Some(leader));
    let leader_confirms = statuses
        .iter()
        .any(|s| s.id == leader && s.role == Role::Leader);
    (all_agree && leader_confirms).then_some(leader)
}

fn render(status: &ClusterStatus) -> String {
    let leader_committed = leaders_committed(&status.nodes);
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| row(n, leader_committed))
        .collect();
    let mut out = if rows.is_empty() {
        String::new()
    } else {
        table(
            &[
                "ID",
                "URL",
                "ROLE",
                "TERM",
                "LEADER",
                "COMMITTED",
                "APPLIED",
                "LAST_LOG",
                "LAG",
                "CLAIMS",
                "VERSION",
            ],
            &rows,
        )
    };
    for node in &status.unreachable {
        out.push_str(&format!("unreachable: {}: {}\n", node.url, node.error));
    }
    let ids: std::collections::BTreeSet<&str> = status
        .nodes
        .iter()
        .filter_map(|n| n.cluster_id.as_deref())
        .collect();
    match ids.len() {
        0 => {}
        1 if status.nodes.iter().all(|n| n.cluster_id.is_some()) => {
            out.push_str(&format!("cluster: {}\n", ids.first().unwrap_or(&"")));
        }
        _ => {
            let each: Vec<String> = status
                .nodes
                .iter()
                .map(|n| format!("{}={}", n.id, n.cluster_id.as_deref().unwrap_or("none")))
                .collect();
            out.push_str(&format!("cluster ids differ: {}\n", each.join(" ")));
        }
    }
    let breakers: Vec<Vec<String>> = status
        .nodes
        .iter()
        .flat_map(|n| {
            n.breakers.iter().map(move |b| {
                vec![
                    n.id.to_string(),
                    b.endpoint.clone(),
                    b.state.clone(),
                    b.epoch.to_string(),
                ]
            })
        })
        .collect();
    if !breakers.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["NODE", "RPC ENDPOINT", "BREAKER", "EPOCH"],
            &breakers,
        ));
    }
    out
}

/// The committed index of the node that says it leads (the newest term's, if several do).
fn leaders_committed(nodes: &[NodeStatus]) -> Option<u64> {
    nodes
        .iter()
        .filter(|n| n.role == Role::Leader)
        .max_by_key(|n| n.term)
        .and_then(|n| n.committed)
}

/// How far `node` has applied behind what the leader has committed (entries), when both are
/// known. Nodes are asked one after the other's answer, so a busy cluster shows a few entries
/// even when nobody lags.
fn lag(node: &NodeStatus, leader_committed: Option<u64>) -> Option<u64> {
    Some(leader_committed?.saturating_sub(node.applied.unwrap_or(0)))
}

fn row(node: &NodeStatus, leader_committed: Option<u64>) -> Vec<String> {
    vec![
        node.id.to_string(),
        node.url.clone(),
        role_name(node.role).to_owned(),
        node.term.to_string(),
        or_dash(node.leader_id),
        or_dash(node.committed),
        or_dash(node.applied),
        or_dash(node.last_log),
        or_dash(lag(node, leader_committed)),
        node.claims.to_string(),
        node.version.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: Role) -> NodeStatus {
        NodeStatus {
            id,
            url: format!("http://n{id}:700{id}"),
            cluster_id: Some("ab".repeat(16)),
            role,
            term: 3,
            leader_id: Some(1),
            committed: Some(10),
            applied: Some(9),
            last_log: None,
            snapshot: None,
            purged: None,
            members: vec![],
            claims: 42,
            state_hash: "00".into(),
            breakers: vec![],
            signers: vec![],
            version: Some("0.1.0 (commit abc)".into()),
        }
    }

    #[test]
    fn text_table_and_unreachable_lines() {
        let status = ClusterStatus {
            nodes: vec![node(1, Role::Leader), node(2, Role::Follower)],
            unreachable: vec![UnreachableNode {
                url: "http://n3:7003".into(),
                error: "connection refused".into(),
            }],
        };
        let expected = "\
ID  URL             ROLE      TERM  LEADER  COMMITTED  APPLIED  LAST_LOG  LAG  CLAIMS  VERSION
1   http://n1:7001  leader    3     1       10         9        -         1    42      0.1.0 (commit abc)
2   http://n2:7002  follower  3     1       10         9        -         1    42      0.1.0 (commit abc)
unreachable: http://n3:7003: connection refused
cluster: abababababababababababababababab
";
        assert_eq!(render(&status), expected);
    }

    #[test]
    fn check_waits_for_one_index_and_then_compares_hashes() {
        let at = |id, applied, hash: &str| NodeStatus {
            applied: Some(applied),
            state_hash: hash.into(),
            ..node(id, Role::Follower)
        };
        assert!(
            compare_states(&[at(1, 9, "aa"), at(2, 8, "bb")]).is_none(),
            "not yet"
        );
        let agree = compare_states(&[at(1, 9, "aa"), at(2, 9, "aa"), at(3, 9, "aa")]).unwrap();
        assert!(!agree.failed);
        assert_eq!(
            agree.stdout,
            "3 nodes agree at applied index 9: state hash aa\n"
        );
        let diverged = compare_states(&[at(1, 9, "aa"), at(2, 9, "ab")]).unwrap();
        assert!(diverged.failed);
        assert!(diverged.stdout.contains("DIVERGED") && diverged.stdout.contains("node 2: ab"));
    }

    #[test]
    fn role_names_match_the_wire() {
        for role in [
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::Learner,
            Role::Shutdown,
        ] {
            let wire = serde_json::to_string(&role).unwrap();
            assert_eq!(wire, format!("\"{}\"", role_name(role)));
        }
    }
}
