//! The leader's expiry duty: forget nonce claims whose retention has ended, by proposing a
//! replicated [`Op::ExpireClaims`] (never by deleting locally), so every replica forgets the same
//! claims at the same log position.

use std::time::Duration;

use x402_raft_store::state::MAX_EXPIRED_PER_COMMAND;
use x402_raft_store::storage::StateView;
use x402_raft_store::{Op, Response};

use super::proposer::{LeaderWrite, Proposer};
use super::read_barrier::ReadBarrier;
use crate::seams::SharedClock;

/// Most expiry commands proposed in one round, so a huge backlog cannot monopolise the log.
const MAX_COMMANDS_PER_ROUND: usize = 10;

/// What the duty needs of its node.
pub struct Expiry {
    /// Whether this node leads (only the leader proposes).
    pub leadership: ReadBarrier,
    /// Proposes on this node only (a stale leader's proposal is refused, not forwarded).
    pub proposer: Proposer,
    pub state: StateView,
    pub clock: SharedClock,
}

/// Runs the duty every `interval`.
pub async fn run(node: Expiry, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !node.leadership.leads() {
            continue;
        }
        for _ in 0..MAX_COMMANDS_PER_ROUND {
            let due = node
                .state
                .read(|s| s.next_expiry_ms())
                .is_some_and(|t| t <= node.clock.now_ms());
            if !due {
                break;
            }
            let op = Op::ExpireClaims {
                limit: MAX_EXPIRED_PER_COMMAND,
            };
            let deadline = tokio::time::Instant::now() + node.proposer.timeout();
            match node.proposer.propose_as_leader(vec![op], deadline).await {
                LeaderWrite::Committed { responses, .. } => {
                    // The answer contract (Op::answered_by): one answer, `Expired`.
                    let [Response::Expired { removed }] = responses.as_slice() else {
                        unreachable!("an expiry command answered {responses:?}");
                    };
                    let removed = *removed;
                    tracing::debug!(removed, "expired nonce claims");
                    if removed < MAX_EXPIRED_PER_COMMAND {
                        break;
                    }
                }
                other => {
                    tracing::debug!(?other, "expiry round stopped");
                    break;
                }
            }
        }
    }
}
