//! Writes from any node: propose on the leader, or forward to it.
//!
//! The leader stamps each command with its wall-clock time when it proposes it (guarantee I6:
//! apply never reads a clock). A follower forwards the bare operation to the leader over the peer
//! API; the leader never forwards again, so a write travels at most one hop. While no leader is
//! known (an election), the write waits for one until its deadline.
//!
//! A write whose answer was lost (the leader died or a forward timed out after sending) may still
//! commit; the caller is told the outcome is unknown. Every operation is idempotent by content,
//! so retrying it is safe.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use x402_raft_store::codec;
use x402_raft_store::types::{NodeId, Raft};
use x402_raft_store::{Command, Op, Response};

use super::network::paths;
use super::peer_client::PeerClient;
use crate::seams::SharedClock;

/// How long to wait for news of a leader before trying again.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Body of `POST /raft/propose`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub op: Op,
}

/// Answer of `POST /raft/propose`.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    Done {
        log_index: u64,
        response: Response,
    },
    /// This node is not (or no longer) the leader.
    NotLeader,
    /// The leader could not take the write and knows it was not applied.
    Refused(String),
}

/// A committed and applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub log_index: u64,
    pub response: Response,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("no leader is reachable (election in progress or quorum lost); nothing was written")]
    NoLeader,
    #[error(
        "the outcome of the write is unknown (timed out after it was sent); retrying it is safe"
    )]
    Unknown,
    #[error("the write was refused: {0}")]
    Refused(String),
}

/// Proposes operations for this node.
#[derive(Clone)]
pub struct Proposer {
    id: NodeId,
    raft: Raft,
    peers: PeerClient,
    clock: SharedClock,
    timeout: Duration,
}

impl Proposer {
    pub fn new(
        id: NodeId,
        raft: Raft,
        peers: PeerClient,
        clock: SharedClock,
        timeout: Duration,
    ) -> Self {
        Self {
            id,
            raft,
            peers,
            clock,
            timeout,
        }
    }

    /// Commits `op` through the leader, wherever it is, within the configured timeout.
    pub async fn propose(&self, op: Op) -> Result<Committed, ProposeError> {
        let deadline = Instant::now() + self.timeout;
        let mut sent = false;
        loop {
            let (leader, leader_url) = self.leader();
            let attempt = match leader {
                Some(leader) if leader == self.id => {
                    sent = true;
                    match tokio::time::timeout_at(deadline, self.propose_as_leader(op.clone()))
                        .await
                    {
                        Ok(reply) => reply,
                        Err(_) => return Err(ProposeError::Unknown),
                    }
                }
                Some(_) => match leader_url {
                    Some(url) => match self.forward(&url, &op, deadline).await {
                        Ok(reply) => {
                            sent = true;
                            reply
                        }
                        Err(Forward::NotDelivered) => ProposeReply::NotLeader,
                        Err(Forward::Lost) => return Err(ProposeError::Unknown),
                    },
                    None => ProposeReply::NotLeader,
                },
                None => ProposeReply::NotLeader,
            };
            match attempt {
                ProposeReply::Done {
                    log_index,
                    response,
                } => {
                    return Ok(Committed {
                        log_index,
                        response,
                    })
                }
                ProposeReply::Refused(reason) => return Err(ProposeError::Refused(reason)),
                ProposeReply::NotLeader => {}
            }
            if Instant::now() + LEADER_POLL >= deadline {
                // A NotLeader answer means the write was not appended; but an earlier attempt
                // that timed out inside a leader could still commit.
                return Err(if sent {
                    ProposeError::Unknown
                } else {
                    ProposeError::NoLeader
                });
            }
            self.wait_for_leader_change(leader).await;
        }
    }

    /// Appends `op` on this node if it is the leader. Used directly by the peer API, so a
    /// forwarded write is never forwarded a second time.
    pub async fn propose_as_leader(&self, op: Op) -> ProposeReply {
        let cmd = Command {
            at_ms: self.clock.now_ms(),
            op,
        };
        match self.raft.client_write(cmd).await {
            Ok(written) => ProposeReply::Done {
                log_index: written.log_id.index,
                response: written.data,
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                ProposeReply::NotLeader
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                ProposeReply::Refused(e.to_string())
            }
            Err(RaftError::Fatal(e)) => ProposeReply::Refused(format!("raft stopped: {e}")),
        }
    }

    /// Like [`Proposer::propose_as_leader`], bounded by the write timeout (for the peer API).
    pub async fn propose_as_leader_within_timeout(&self, op: Op) -> Option<ProposeReply> {
        tokio::time::timeout(self.timeout, self.propose_as_leader(op))
            .await
            .ok()
    }

    async fn forward(
        &self,
        leader_url: &str,
        op: &Op,
        deadline: Instant,
    ) -> Result<ProposeReply, Forward> {
        let body =
            codec::encode(&ProposeRequest { op: op.clone() }).map_err(|_| Forward::NotDelivered)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .peers
            .post(leader_url, paths::PROPOSE, body, remaining)
            .await
        {
            Ok(bytes) => codec::decode(&bytes).map_err(|_| Forward::Lost),
            Err(e) if e.not_delivered() => {
                tracing::debug!(error = %e, "leader unreachable, waiting for a new one");
                Err(Forward::NotDelivered)
            }
            Err(e) => {
                tracing::warn!(error = %e, "forwarded write lost");
                Err(Forward::Lost)
            }
        }
    }

    /// The current leader and its URL, as this node knows them.
    fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader;
        let url = leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        (leader, url)
    }

    async fn wait_for_leader_change(&self, previous: Option<NodeId>) {
        // Either the leader changes (an election finished) or the poll interval passes.
        let _ = self
            .raft
            .wait(Some(LEADER_POLL))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != previous,
                "leader change",
            )
            .await;
    }
}

enum Forward {
    /// Certainly not received by the leader.
    NotDelivered,
    /// Sent, answer lost: the write may or may not commit.
    Lost,
}
