//! Getting operations committed: on the leader as one Raft entry, or by forwarding them to it.
//!
//! The leader stamps each command with its wall-clock time when it proposes it (guarantee I6:
//! apply never reads a clock). A follower forwards bare operations over the peer API; the leader
//! answers each operation on its own ([`OpAnswer`]) and never forwards again, so a write travels
//! at most one hop. Batching and retries live in [`super::batcher`]; this module is the routing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use x402_raft_store::codec;
use x402_raft_store::state::MAX_OPS_PER_COMMAND;
use x402_raft_store::types::{NodeId, Raft};
use x402_raft_store::{Command, Op, Response};

use super::network::paths;
use super::peer_client::PeerClient;
use crate::seams::SharedClock;

/// How long to wait for news of a leader before trying again.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Body of `POST /raft/propose`: operations for the leader to commit. The answer is one
/// [`OpAnswer`] per operation, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub ops: Vec<Op>,
}

/// What became of one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpAnswer {
    Committed {
        log_index: u64,
        response: Response,
    },
    /// Not written: the receiving node is not the leader.
    NotLeader,
    /// Not written, for the reason given.
    Refused(Refusal),
    /// Not written: too many writes are waiting.
    Overloaded,
    /// Sent, but the answer was lost: it may or may not be committed.
    Unknown,
}

/// Why a node refused a write: nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Raft stopped on a fatal error (logged where it happened); the node must restart.
    #[error("raft stopped")]
    RaftStopped,
    /// A batch of no operations or of more than a command carries: a bug of the batcher.
    #[error("a command carries 1 to {MAX_OPS_PER_COMMAND} operations, not {0}")]
    CommandSize(usize),
    /// openraft refused an entry for a membership change in progress.
    #[error("a membership change refused the write")]
    MembershipChange,
}

/// One committed and applied operation.
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
    Refused(Refusal),
    #[error("too many writes are waiting; retry shortly")]
    Overloaded,
}

/// The outcome of proposing one entry on this node.
#[derive(Debug)]
pub enum LeaderWrite {
    Committed {
        log_index: u64,
        responses: Vec<Response>,
    },
    NotLeader,
    Refused(Refusal),
    /// The deadline passed first: the entry may still commit.
    TimedOut,
}

/// Why a forward failed as a whole.
#[derive(Debug)]
pub enum ForwardFailure {
    /// Certainly not received by the leader.
    NotDelivered,
    /// Sent, answer lost (the leader died, a partition, a new leader took over): the operations
    /// may or may not commit. Operations are idempotent by content, so sending them again to
    /// the next leader is safe.
    Lost,
}

/// Routes operations for one node. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    id: NodeId,
    raft: Raft,
    peers: PeerClient,
    clock: SharedClock,
    timeout: Duration,
    /// Set while this leader hands its leadership over ([`super::handoff`]): it proposes
    /// nothing, so a follower can catch up to its last entry and win the election.
    yielding: Arc<AtomicBool>,
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
            yielding: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops (or resumes) proposing on this node; writes meanwhile wait for the next leader as
    /// they do during an election.
    pub fn set_yielding(&self, yielding: bool) {
        self.yielding.store(yielding, Ordering::SeqCst);
    }

    /// How long a write may take end to end.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes `ops` as one entry on this node, which must be the leader, before `deadline`.
    /// A leader handing off answers `NotLeader`: nothing is written, and the batcher retries
    /// once the leadership has moved.
    pub async fn propose_as_leader(&self, ops: Vec<Op>, deadline: Instant) -> LeaderWrite {
        if self.yielding.load(Ordering::SeqCst) {
            return LeaderWrite::NotLeader;
        }
        if ops.is_empty() || ops.len() > MAX_OPS_PER_COMMAND {
            return LeaderWrite::Refused(Refusal::CommandSize(ops.len()));
        }
        let cmd = Command {
            at_ms: self.clock.now_ms(),
            ops,
        };
        match tokio::time::timeout_at(deadline, self.raft.client_write(cmd)).await {
            Err(_) => LeaderWrite::TimedOut,
            Ok(Ok(written)) => LeaderWrite::Committed {
                log_index: written.log_id.index,
                responses: written.data,
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                LeaderWrite::NotLeader
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                tracing::warn!(error = %e, "a write was refused for a membership change");
                LeaderWrite::Refused(Refusal::MembershipChange)
            }
            Ok(Err(RaftError::Fatal(e))) => {
                tracing::error!(error = %e, "raft stopped");
                LeaderWrite::Refused(Refusal::RaftStopped)
            }
        }
    }

    /// Sends `ops` to `leader`, reachable at `leader_url`; one answer per operation. Gives up
    /// early (as [`ForwardFailure::Lost`]) when this node learns of another leader meanwhile: a
    /// request to a leader that vanished behind a partition would otherwise hang to the end of
    /// its deadline although a new leader could take it now.
    pub async fn forward(
        &self,
        leader: NodeId,
        leader_url: &str,
        ops: Vec<Op>,
        deadline: Instant,
    ) -> Result<Vec<OpAnswer>, ForwardFailure> {
        let request = ProposeRequest { ops };
        let body = codec::encode(&request).map_err(|_| ForwardFailure::NotDelivered)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let call = self.peers.post(leader_url, paths::PROPOSE, body, remaining);
        let waiter = self.raft.wait(Some(remaining));
        let leader_changed = waiter.metrics(|m| m.current_leader != Some(leader), "leader change");
        let result = tokio::select! {
            result = call => result,
            changed = leader_changed => match changed {
                Ok(_) => {
                    tracing::debug!("leader changed during a forward; sending to the new one");
                    return Err(ForwardFailure::Lost);
                }
                // Timed out without a change: the call's own deadline decides.
                Err(_) => return Err(ForwardFailure::Lost),
            },
        };
        match result {
            Ok(bytes) => match codec::decode::<Vec<OpAnswer>>(&bytes) {
                Ok(answers) if keeps_contract(&request.ops, &answers) => Ok(answers),
                _ => {
                    // A leader of another version, or a bug: what it wrote is unknown.
                    tracing::error!(
                        "the leader answered a forward with an unreadable body, or with answers \
                         its operations cannot have"
                    );
                    Err(ForwardFailure::Lost)
                }
            },
            Err(e) if e.not_delivered() => {
                tracing::debug!(error = %e, "leader unreachable, waiting for a new one");
                Err(ForwardFailure::NotDelivered)
            }
            Err(e) => {
                tracing::warn!(error = %e, "forwarded writes lost");
                Err(ForwardFailure::Lost)
            }
        }
    }

    /// The current leader and its URL, as this node knows them.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        known_leader(&self.raft)
    }

    /// Waits until the leader differs from `previous` (an election finished), or a short poll
    /// interval passes.
    pub async fn wait_for_leader_change(&self, previous: Option<NodeId>) {
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

/// Whether a forward's answers are one per operation, each committed one within the answer
/// contract ([`Op::answered_by`]): what the typed writes rely on.
fn keeps_contract(ops: &[Op], answers: &[OpAnswer]) -> bool {
    ops.len() == answers.len()
        && ops.iter().zip(answers).all(|(op, answer)| match answer {
            OpAnswer::Committed { response, .. } => op.answered_by(response),
            _ => true,
        })
}

/// The leader `raft` knows of, and its URL from the membership it knows.
pub fn known_leader(raft: &Raft) -> (Option<NodeId>, Option<String>) {
    let metrics = raft.metrics();
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
