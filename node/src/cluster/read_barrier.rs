//! Linearizable reads from any node (ReadIndex): the leader confirms with a quorum that it still
//! leads and names its commit point; the reading node waits until it has applied that far. A
//! partitioned old leader cannot confirm, so it never serves stale state.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use x402_raft_store::codec;
use x402_raft_store::types::{NodeId, Raft};

use super::network::paths;
use super::peer_client::PeerClient;
use super::proposer::known_leader;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no leader is known")]
    NoLeader,
    #[error("the leader could not confirm its leadership: {0}")]
    LeaderUnconfirmed(String),
    #[error("applied index stayed behind the leader's commit index {0}")]
    Behind(u64),
}

/// Answer of `POST /raft/read-index`.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// The leader confirmed its leadership with a quorum; reads are linearizable once the
    /// reader has applied up to this index.
    Index(Option<u64>),
    NotLeader,
    Failed(String),
}

/// Makes this node's state linearizable on demand, and tells whether it leads. Cheap to clone.
#[derive(Clone)]
pub struct ReadBarrier {
    id: NodeId,
    raft: Raft,
    peers: PeerClient,
    /// How long a caller that names no deadline waits (the write timeout).
    timeout: Duration,
}

impl ReadBarrier {
    pub fn new(id: NodeId, raft: Raft, peers: PeerClient, timeout: Duration) -> Self {
        Self {
            id,
            raft,
            peers,
            timeout,
        }
    }

    /// Whether this node believes it leads (unconfirmed: [`ReadBarrier::wait`] confirms).
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// [`ReadBarrier::wait_for`] within the write timeout.
    pub async fn wait(&self) -> Result<(), ReadError> {
        self.wait_for(self.timeout).await
    }

    /// Waits until this node's state reflects every write committed before the call.
    pub async fn wait_for(&self, deadline: Duration) -> Result<(), ReadError> {
        let index = if self.leads() {
            match tokio::time::timeout(deadline, self.raft.get_read_log_id()).await {
                Ok(Ok((read_log_id, _))) => read_log_id.map(|l| l.index),
                Ok(Err(e)) => return Err(ReadError::LeaderUnconfirmed(e.to_string())),
                Err(_) => return Err(ReadError::LeaderUnconfirmed("timed out".into())),
            }
        } else {
            let (_, url) = known_leader(&self.raft);
            let url = url.ok_or(ReadError::NoLeader)?;
            let bytes = self
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
        self.raft
            .wait(Some(deadline))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| ReadError::Behind(index))
    }
}
