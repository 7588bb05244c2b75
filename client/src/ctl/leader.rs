//! `x402ctl leader move [--to ID]`: hand leadership to a caught-up voter, through whichever node
//! answers first (a follower passes the request to the leader).

use super::{json_line, on_first_reachable, CtlError, Output};
use crate::admin::AdminClient;

pub(super) async fn move_to(
    nodes: Vec<AdminClient>,
    to: Option<u64>,
    json: bool,
) -> Result<Output, CtlError> {
    let answer = on_first_reachable(&nodes, |n| async move { n.move_leader(to).await }).await?;
    if json {
        return Ok(Output::ok(json_line(&answer)?));
    }
    Ok(Output::ok(format!("node {} leads\n", answer.leader)))
}
