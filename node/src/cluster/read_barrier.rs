//! Linearizable reads from any node (ReadIndex): the leader confirms with a quorum that it still
//! leads and names its commit point; the reading node waits until it has applied that far. A
//! partitioned old leader cannot confirm, so it never serves stale state.

use std::time::Duration;

use x402_raft_store::codec;

use super::network::paths;
use crate::http::peer::ReadIndexReply;
use crate::node::App;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no leader is known")]
    NoLeader,
    #[error("the leader could not confirm its leadership: {0}")]
    LeaderUnconfirmed(String),
    #[error("applied index stayed behind the leader's commit index {0}")]
    Behind(u64),
}

/// Waits until this node's state reflects every write committed before the call.
pub async fn wait_linearizable(app: &App, deadline: Duration) -> Result<(), ReadError> {
    let index = if app.raft.metrics().borrow().current_leader == Some(app.id) {
        match tokio::time::timeout(deadline, app.raft.get_read_log_id()).await {
            Ok(Ok((read_log_id, _))) => read_log_id.map(|l| l.index),
            Ok(Err(e)) => return Err(ReadError::LeaderUnconfirmed(e.to_string())),
            Err(_) => return Err(ReadError::LeaderUnconfirmed("timed out".into())),
        }
    } else {
        let (_, url) = app.leader().ok_or(ReadError::NoLeader)?;
        let bytes = app
            .peers
            .post(&url, paths::READ_INDEX, Vec::new(), deadline)
            .await
            .map_err(|e| ReadError::LeaderUnconfirmed(e.to_string()))?;
        match codec::decode::<ReadIndexReply>(&bytes) {
            Ok(ReadIndexReply::Index(index)) => index,
            Ok(ReadIndexReply::NotLeader) => return Err(ReadError::NoLeader),
            Ok(ReadIndexReply::Failed(e)) => return Err(ReadError::LeaderUnconfirmed(e)),
            Err(e) => return Err(ReadError::LeaderUnconfirmed(e.to_string())),
        }
    };
    let Some(index) = index else {
        return Ok(());
    };
    app.raft
        .wait(Some(deadline))
        .applied_index_at_least(Some(index), "linearizable read")
        .await
        .map(|_| ())
        .map_err(|_| ReadError::Behind(index))
}
