//! Leader hand-off: moving leadership to a caught-up follower before this leader stops (or
//! when an operator asks), so a rolling restart costs one election round-trip instead of an
//! election timeout plus the writes lost in flight.
//!
//! openraft 0.9 has no leader transfer, so it is built from what it has:
//!
//! 1. the leader stops proposing ([`super::proposer::Proposer::set_yielding`]): writes wait for
//!    the next leader exactly as they do during an election, and the log stops growing;
//! 2. once a voter's replicated index equals the leader's last index, that voter is asked to
//!    campaign (`POST /raft/elect` on the peer API, `trigger().elect()` there);
//! 3. a voter only grants a vote to a log at least as long as its own, and the leader grants its
//!    vote once its own lease is over (`leader_lease`, the maximal election timeout, counted from
//!    when it became leader): in a 3-node cluster the candidate wins at once; in a 5-node one
//!    the followers refuse it until they have missed the old leader's heartbeats for a lease,
//!    and the candidate wins its next round (the old leader does not campaign meanwhile).
//!
//! The leader never steps down by itself: if no voter wins within the bound, it resumes
//! proposing and stays the leader (shutting down then still works; the others elect after a
//! timeout, as after a crash).

use std::time::Duration;

use tokio::time::Instant;
use x402_raft_store::types::{Node, NodeId, Raft};

use super::network::paths;
use super::peer_client::PeerClient;
use super::proposer::Proposer;

/// How long one campaign is given to win before another voter (or the same one) is asked
/// again: an election round-trip here is a few milliseconds, and a 5-node candidate may need
/// a lease (300 ms by default) plus its next round.
const CAMPAIGN_WAIT: Duration = Duration::from_millis(1_000);
/// Longest wait for news of replication while waiting for a voter to catch up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Longest wait for some voter to reach the leader's last entry. With proposals stopped a live
/// follower gets there in one append round-trip (milliseconds); one that has not after this is
/// down or cut off, and waiting for it would only delay the shutdown.
const CATCH_UP_BOUND: Duration = Duration::from_secs(1);
/// Deadline of the request asking a voter to campaign.
const ELECT_REQUEST_DEADLINE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOffError {
    #[error("this node is not the leader (the leader is {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("node {0} is not a voter of this cluster")]
    NotAVoter(NodeId),
    #[error("this cluster has no other voter to hand leadership to")]
    NoOtherVoter,
    #[error("every other voter is unreachable or shutting down; this node still leads")]
    NoWillingVoter,
    #[error(
        "no voter caught up with this leader within {CATCH_UP_BOUND:?}; this node still leads"
    )]
    NoCaughtUpVoter,
    #[error("no voter caught up and won an election within {0:?}; this node still leads")]
    Timeout(Duration),
    #[error("raft stopped")]
    RaftStopped,
}

/// Hands leadership from this node (which must lead) to `to`, or to any caught-up voter, within
/// `bound`. Returns the new leader (this node itself when `to` names it: nothing to do).
///
/// `led_since` is when this node became leader: until its lease (`election_timeout_max`) has
/// run from then it refuses any candidate's vote, so the request to campaign waits for that
/// (seen in a test: a move asked 110 ms after an election failed its first round and took 1 s).
pub async fn hand_off(
    raft: &Raft,
    proposer: &Proposer,
    peers: &PeerClient,
    to: Option<NodeId>,
    bound: Duration,
    led_since: Option<Instant>,
) -> Result<NodeId, HandOffError> {
    let me = proposer.id();
    let voters: Vec<NodeId> = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if m.current_leader != Some(me) {
            return Err(HandOffError::NotLeader(m.current_leader));
        }
        m.membership_config.membership().voter_ids().collect()
    };
    match to {
        Some(id) if id == me => return Ok(me),
        Some(id) if !voters.contains(&id) => return Err(HandOffError::NotAVoter(id)),
        _ if voters.iter().all(|v| *v == me) => return Err(HandOffError::NoOtherVoter),
        _ => {}
    }
    let started = Instant::now();
    let deadline = started + bound;
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    if let Some(lease_ends) = led_since.map(|since| since + lease) {
        tokio::time::sleep_until(lease_ends.min(deadline)).await;
    }
    proposer.set_yielding(true);
    // Once this node grants the candidate its vote it is a follower, and its own election timer
    // would run out first in a 5-node cluster (whose other followers refuse the candidate until
    // they miss this node's heartbeats for a lease): it campaigned and won back every time, seen
    // in the 5-voter test. So it does not campaign while it hands off.
    raft.runtime_config().elect(false);
    let result = campaign_until(raft, peers, me, to, bound, deadline).await;
    raft.runtime_config().elect(true);
    proposer.set_yielding(false);
    match &result {
        Ok(leader) => tracing::info!(
            new_leader = leader,
            took_ms = started.elapsed().as_millis() as u64,
            "leadership handed off"
        ),
        Err(e) => tracing::warn!(error = %e, "leadership hand-off failed"),
    }
    result
}

/// Asks caught-up voters to campaign until one leads or `deadline` (`bound` from the start)
/// passes.
async fn campaign_until(
    raft: &Raft,
    peers: &PeerClient,
    me: NodeId,
    to: Option<NodeId>,
    bound: Duration,
    deadline: Instant,
) -> Result<NodeId, HandOffError> {
    let started = Instant::now();
    // Voters asked so far, so that a second round prefers one not tried yet.
    let mut asked: Vec<NodeId> = Vec::new();
    // Voters that refused to campaign (shutting down) or could not be reached: not asked again.
    // When that is all of them (a whole cluster stopping), waiting longer is pointless.
    let mut refused: Vec<NodeId> = Vec::new();
    // Since when no voter is caught up (none: one is, or we have not looked yet).
    let mut behind_since: Option<Instant> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(HandOffError::Timeout(bound));
        }
        let (leader, target) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            if m.running_state.is_err() {
                return Err(HandOffError::RaftStopped);
            }
            let others = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != me && to.is_none_or(|t| t == *id))
                .count();
            if refused.len() >= others {
                return Err(HandOffError::NoWillingVoter);
            }
            (
                m.current_leader,
                caught_up_voter(&m, me, to, &asked, &refused),
            )
        };
        match leader {
            Some(leader) if leader != me => return Ok(leader),
            _ => {}
        }
        let Some((target, url)) = target else {
            let since = *behind_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= CATCH_UP_BOUND {
                return Err(HandOffError::NoCaughtUpVoter);
            }
            // Woken by the replication progress itself, polled in case a change is missed.
            let wait = CATCH_UP_POLL.min(deadline.saturating_duration_since(Instant::now()));
            let _ = raft
                .wait(Some(wait))
                .metrics(
                    |m| {
                        m.current_leader != Some(me)
                            || caught_up_voter(m, me, to, &asked, &refused).is_some()
                    },
                    "a voter caught up",
                )
                .await;
            continue;
        };
        behind_since = None;
        asked.push(target);
        tracing::info!(
            target,
            after_ms = started.elapsed().as_millis() as u64,
            "asking a caught-up voter to campaign"
        );
        if let Err(e) = peers
            .post(&url, paths::ELECT, Vec::new(), ELECT_REQUEST_DEADLINE)
            .await
        {
            tracing::info!(target, error = %e, "a voter cannot campaign; trying another");
            refused.push(target);
            continue;
        }
        let wait = CAMPAIGN_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        let moved = raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "leadership moved",
            )
            .await;
        if let Ok(m) = moved {
            if let Some(leader) = m.current_leader {
                return Ok(leader);
            }
        }
    }
}

/// A voter other than `me` and not in `refused` whose replicated log reaches this leader's last
/// entry (`to` only, when given), preferring one not in `asked`; with its URL.
fn caught_up_voter(
    m: &openraft::RaftMetrics<NodeId, Node>,
    me: NodeId,
    to: Option<NodeId>,
    asked: &[NodeId],
    refused: &[NodeId],
) -> Option<(NodeId, String)> {
    let replication = m.replication.as_ref()?;
    let membership = m.membership_config.membership();
    let mut caught_up: Vec<NodeId> = membership
        .voter_ids()
        .filter(|id| *id != me && to.is_none_or(|t| t == *id) && !refused.contains(id))
        .filter(|id| {
            replication
                .get(id)
                .and_then(|matched| matched.as_ref())
                .map(|l| l.index)
                == m.last_log_index
        })
        .collect();
    // Not asked yet first; then the ones asked, in the order they were.
    caught_up.sort_by_key(|id| asked.iter().position(|a| a == id).map_or(0, |p| p + 1));
    let id = *caught_up.first()?;
    let url = membership.get_node(&id)?.addr.clone();
    Some((id, url))
}
