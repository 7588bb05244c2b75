//! `x402ctl init` and `x402ctl members add|promote|remove`: the commands that change who is in
//! the cluster. Each prints the membership that resulted.

use std::collections::BTreeMap;

use super::{json_line, on_first_reachable, table, CtlError, MemberArg, MembersCommand, Output};
use crate::admin::AdminClient;
use crate::error::ClientError;
use crate::wire::{InitRequest, MembershipResponse};

/// `init` goes to the first node only: forming the cluster is that node's own decision (it
/// becomes the first leader), so silently trying another one would form a different cluster.
pub(super) async fn init(
    nodes: Vec<AdminClient>,
    members: &[MemberArg],
    json: bool,
) -> Result<Output, CtlError> {
    let first = nodes.first().ok_or(CtlError::NoNodes)?;
    let req = InitRequest {
        members: members
            .iter()
            .map(|m| (m.id, m.url.clone()))
            .collect::<BTreeMap<_, _>>(),
    };
    let answer = first.init(&req).await?;
    render(&answer, json)
}

/// Membership changes go through any node (followers forward to the leader), so the first one
/// that can be reached will do.
pub(super) async fn change(
    nodes: Vec<AdminClient>,
    cmd: &MembersCommand,
    json: bool,
) -> Result<Output, CtlError> {
    let answer = match cmd {
        MembersCommand::Add { id, url } => {
            on_first_reachable(&nodes, |n| async move { n.add_learner(*id, url).await }).await?
        }
        MembersCommand::Promote { id } => {
            on_first_reachable(&nodes, |n| async move { n.promote(*id).await }).await?
        }
        MembersCommand::Remove { id } => {
            on_first_reachable(&nodes, |n| async move { n.remove(*id).await }).await?
        }
        MembersCommand::Replace { .. } => {
            unreachable!("`members replace` runs through `replace`")
        }
    };
    render(&answer, json)
}

/// `members replace OLD URL`: each step is idempotent by content, so a replace interrupted at
/// any point is finished by running it again. The old member is removed only once the new one
/// votes, so the cluster never has fewer voters than before.
pub(super) async fn replace(
    nodes: Vec<AdminClient>,
    new_node: AdminClient,
    old: u64,
    url: &str,
    id: Option<u64>,
    json: bool,
) -> Result<Output, CtlError> {
    let new_id = match id {
        Some(id) => id,
        None => new_node.status().await?.id,
    };
    if new_id == old {
        return Err(CtlError::Usage(format!(
            "the new node has id {new_id}, the id of the member it replaces; give it another"
        )));
    }
    let current = on_first_reachable(&nodes, |n| async move { n.status().await }).await?;
    let is = |id: u64, voter: bool| {
        current
            .members
            .iter()
            .any(|m| m.id == id && m.voter == voter)
    };
    if !is(new_id, true) {
        if !is(new_id, false) {
            while_no_leader(|| {
                on_first_reachable(&nodes, |n| async move { n.add_learner(new_id, url).await })
            })
            .await?;
        }
        // Waits on the leader until the learner has caught up.
        while_no_leader(|| on_first_reachable(&nodes, |n| async move { n.promote(new_id).await }))
            .await?;
    }
    let leader = on_first_reachable(&nodes, |n| async move { n.status().await })
        .await?
        .leader_id;
    if leader == Some(old) {
        while_no_leader(|| {
            on_first_reachable(&nodes, |n| async move { n.move_leader(Some(new_id)).await })
        })
        .await?;
    }
    // Right after the move a node may not have heard of the new leader yet (seen in CI: the
    // remove answered 503 `no_leader` once), hence the retry.
    let answer =
        while_no_leader(|| on_first_reachable(&nodes, |n| async move { n.remove(old).await }))
            .await?;
    render(&answer, json)
}

/// How long a step of `members replace` is retried while the node asked knows no leader.
const NO_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `step` again while it is answered 503 `no_leader` (an election, or news of a new leader
/// not yet arrived), for at most [`NO_LEADER_WAIT`]; any other answer is returned as it is.
async fn while_no_leader<T, F, Fut>(step: F) -> Result<T, CtlError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, CtlError>>,
{
    let deadline = tokio::time::Instant::now() + NO_LEADER_WAIT;
    loop {
        match step().await {
            Err(CtlError::Client(ClientError::Status { body, .. }))
                if body.code == "no_leader" && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn render(answer: &MembershipResponse, json: bool) -> Result<Output, CtlError> {
    if json {
        return Ok(Output::ok(json_line(answer)?));
    }
    let mut out = match answer.log_index {
        Some(index) => format!("membership (log index {index}):\n"),
        None => "membership (unchanged):\n".to_owned(),
    };
    let rows: Vec<Vec<String>> = answer
        .members
        .iter()
        .map(|m| {
            let kind = if m.voter { "voter" } else { "learner" };
            vec![m.id.to_string(), m.url.clone(), kind.to_owned()]
        })
        .collect();
    out.push_str(&table(&["ID", "URL", "KIND"], &rows));
    Ok(Output::ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Member;

    #[test]
    fn renders_voters_and_learners() {
        let answer = MembershipResponse {
            members: vec![
                Member {
                    id: 1,
                    url: "http://a:1".into(),
                    voter: true,
                },
                Member {
                    id: 4,
                    url: "http://d:4".into(),
                    voter: false,
                },
            ],
            log_index: Some(17),
        };
        let out = render(&answer, false).unwrap();
        assert_eq!(
            out.stdout,
            "membership (log index 17):\nID  URL         KIND\n1   http://a:1  voter\n4   http://d:4  learner\n"
        );
        let json = render(&answer, true).unwrap();
        let back: MembershipResponse = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(back, answer);
    }
}
