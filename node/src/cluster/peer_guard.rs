//! What a Raft message from a peer must look like before openraft sees it.
//!
//! openraft 0.9.25 compares a received vote only with the node's own and persists any greater
//! one before anything else: a vote of term `u64::MAX` is saved, and the next election computes
//! `term + 1` and panics (`engine_impl.rs:228/239`), again on every restart. A vote request with
//! `committed: true`, an append that names the receiver as leader, entries that are not
//! consecutive, or a membership whose voter has no node all reach `debug_assert`s or `unwrap`s
//! deeper in. So every request (and every vote in an answer) is checked here first; a refused
//! one changes nothing and answers 400, which the sender treats as a network error.
//!
//! The rules, and why each is what it is:
//! - every term is at most [`MAX_TERM`] (2^48): an absolute bound, since openraft 0.9 has no
//!   pre-vote and a voter cut off for a week campaigns its term up by about four million;
//!   2^48 back-to-back elections take over a million years, and `term + 1` cannot wrap;
//! - every index is at most [`MAX_LOG_INDEX`] (2^62), so `index + 1` cannot wrap either;
//! - a vote request comes from a voter of the membership this node knows (a refused vote never
//!   hurts safety: another candidate can win) and is not committed;
//! - an append or snapshot carries a committed vote of another node; a sender this node does
//!   not know as a member (a new voter elected before this node heard of it, a leader removing
//!   itself) is accepted only within [`UNKNOWN_SENDER_MAX_TERM_JUMP`] terms of this node's own,
//!   so a forged non-member cannot move the term far;
//! - log ids are not newer than the vote that carries them, entries are consecutive with
//!   non-decreasing leader ids, memberships have one or two non-empty configs whose voters all
//!   have a node, and a snapshot chunk stays within the snapshot size limit.
//!
//! A node with no membership yet (fresh, or a learner being added) accepts any sender: it has
//! nothing to protect and no way to tell. None of this authenticates a member: anyone holding
//! the cluster secret can still speak for one; only per-node credentials close that.

use std::collections::BTreeSet;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{EntryPayload, LogId, Membership, Vote};
use x402_raft_store::types::{Node, NodeId, TypeConfig};

pub use x402_raft_store::types::MAX_TERM;
/// Highest log index a peer message may carry.
pub const MAX_LOG_INDEX: u64 = 1 << 62;
/// How far above this node's term a sender it does not know as a member may be.
pub const UNKNOWN_SENDER_MAX_TERM_JUMP: u64 = 1_000;
/// Most configs one membership holds (openraft's joint consensus uses two).
const MAX_JOINT_CONFIGS: usize = 2;

/// What this node knows when it checks a message.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    pub self_id: NodeId,
    pub current_term: u64,
    /// Voters and learners of the membership this node knows; empty when it knows none.
    pub members: BTreeSet<NodeId>,
    /// Voters of that membership.
    pub voters: BTreeSet<NodeId>,
    /// Most entries one append may carry.
    pub max_entries: u64,
    /// Most bytes a snapshot may have (offset plus chunk).
    pub max_snapshot_bytes: u64,
    /// The node id the sender's certificate names, under mutual TLS between peers: a message
    /// must then speak for that node (a leader's or candidate's id is its own), so one node's
    /// key cannot campaign or lead as another.
    pub certified_sender: Option<NodeId>,
}

/// Why a peer message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("term {term} is above the bound {MAX_TERM}")]
    TermTooLarge { term: u64 },
    #[error("log index {index} is above the bound {MAX_LOG_INDEX}")]
    IndexTooLarge { index: u64 },
    #[error("node {0} cannot send this to itself")]
    FromSelf(NodeId),
    #[error(
        "the sender's certificate names node {certified}, the message speaks for node {claimed}"
    )]
    NotCertifiedSender { certified: NodeId, claimed: NodeId },
    #[error("a vote request cannot carry a committed vote")]
    CommittedVoteRequest,
    #[error("an append or snapshot must carry a committed vote")]
    UncommittedLeader,
    #[error("node {candidate} asks for votes but is not a voter of this node's membership")]
    NotAVoter { candidate: NodeId },
    #[error(
        "node {sender} is not a member this node knows, and its term {term} is more than \
         {UNKNOWN_SENDER_MAX_TERM_JUMP} above this node's {own}"
    )]
    UnknownSender { sender: NodeId, term: u64, own: u64 },
    #[error("a log id of term {term} is newer than the vote of term {vote_term} carrying it")]
    LogNewerThanVote { term: u64, vote_term: u64 },
    #[error("{count} entries, at most {max}")]
    TooManyEntries { count: usize, max: u64 },
    #[error("entry {at} has index {index}, {expected} was next")]
    NotConsecutive {
        at: usize,
        index: u64,
        expected: u64,
    },
    #[error("entry {at} was proposed by an older leader than the entry before it")]
    LeaderGoesBack { at: usize },
    #[error("a membership has {configs} configs")]
    BadJointConfig { configs: usize },
    #[error("a membership has an empty config")]
    EmptyConfig,
    #[error("voter {0} of a membership has no node")]
    VoterWithoutNode(NodeId),
    #[error("a snapshot without a last log id")]
    SnapshotWithoutLog,
    #[error("a snapshot chunk ends at byte {end}, beyond the bound {max}")]
    SnapshotTooLarge { end: u64, max: u64 },
}

impl Refused {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::TermTooLarge { .. } => "term_too_large",
            Refused::IndexTooLarge { .. } => "index_too_large",
            Refused::FromSelf(_) => "from_self",
            Refused::NotCertifiedSender { .. } => "not_certified_sender",
            Refused::CommittedVoteRequest => "committed_vote_request",
            Refused::UncommittedLeader => "uncommitted_leader",
            Refused::NotAVoter { .. } => "not_a_voter",
            Refused::UnknownSender { .. } => "unknown_sender",
            Refused::LogNewerThanVote { .. } => "log_newer_than_vote",
            Refused::TooManyEntries { .. } => "too_many_entries",
            Refused::NotConsecutive { .. } => "not_consecutive",
            Refused::LeaderGoesBack { .. } => "leader_goes_back",
            Refused::BadJointConfig { .. } | Refused::EmptyConfig => "bad_membership",
            Refused::VoterWithoutNode(_) => "bad_membership",
            Refused::SnapshotWithoutLog | Refused::SnapshotTooLarge { .. } => "bad_snapshot",
        }
    }
}

fn check_term(term: u64) -> Result<(), Refused> {
    if term > MAX_TERM {
        return Err(Refused::TermTooLarge { term });
    }
    Ok(())
}

/// A log id carried under `vote`: within the bounds, not newer than the vote.
fn check_log_id(log_id: &LogId<NodeId>, vote: &Vote<NodeId>) -> Result<(), Refused> {
    let term = log_id.leader_id.term;
    check_term(term)?;
    if log_id.index > MAX_LOG_INDEX {
        return Err(Refused::IndexTooLarge {
            index: log_id.index,
        });
    }
    if term > vote.leader_id.term {
        return Err(Refused::LogNewerThanVote {
            term,
            vote_term: vote.leader_id.term,
        });
    }
    Ok(())
}

fn check_membership(m: &Membership<NodeId, Node>) -> Result<(), Refused> {
    let configs = m.get_joint_config();
    if configs.is_empty() || configs.len() > MAX_JOINT_CONFIGS {
        return Err(Refused::BadJointConfig {
            configs: configs.len(),
        });
    }
    for config in configs {
        if config.is_empty() {
            return Err(Refused::EmptyConfig);
        }
        if let Some(v) = config.iter().find(|v| m.get_node(v).is_none()) {
            return Err(Refused::VoterWithoutNode(*v));
        }
    }
    Ok(())
}

/// The leader's vote of an append or snapshot: committed, another node's, within the bound,
/// and from a known member unless within a small jump of this node's term (or carried along
/// with a membership that names it).
/// Under mutual TLS, the node a message speaks for is the one its sender's certificate names.
fn check_certified(claimed: NodeId, view: &PeerView) -> Result<(), Refused> {
    match view.certified_sender {
        Some(certified) if certified != claimed => {
            Err(Refused::NotCertifiedSender { certified, claimed })
        }
        _ => Ok(()),
    }
}

fn check_leader(
    vote: &Vote<NodeId>,
    view: &PeerView,
    introduced: &BTreeSet<NodeId>,
) -> Result<(), Refused> {
    let (term, sender) = (vote.leader_id.term, vote.leader_id.node_id);
    check_term(term)?;
    if sender == view.self_id {
        return Err(Refused::FromSelf(sender));
    }
    check_certified(sender, view)?;
    if !vote.committed {
        return Err(Refused::UncommittedLeader);
    }
    let known =
        view.members.is_empty() || view.members.contains(&sender) || introduced.contains(&sender);
    if !known
        && term
            > view
                .current_term
                .saturating_add(UNKNOWN_SENDER_MAX_TERM_JUMP)
    {
        return Err(Refused::UnknownSender {
            sender,
            term,
            own: view.current_term,
        });
    }
    Ok(())
}

/// Checks an `AppendEntries` request.
pub fn check_append(
    req: &AppendEntriesRequest<TypeConfig>,
    view: &PeerView,
) -> Result<(), Refused> {
    let vote = &req.vote;
    if req.entries.len() as u64 > view.max_entries {
        return Err(Refused::TooManyEntries {
            count: req.entries.len(),
            max: view.max_entries,
        });
    }
    let mut introduced = BTreeSet::new();
    for entry in &req.entries {
        if let EntryPayload::Membership(m) = &entry.payload {
            check_membership(m)?;
            introduced.extend(m.nodes().map(|(id, _)| *id));
        }
    }
    check_leader(vote, view, &introduced)?;
    for log_id in req.prev_log_id.iter().chain(req.leader_commit.iter()) {
        check_log_id(log_id, vote)?;
    }
    let mut expected = req.prev_log_id.map_or(0, |l| l.index + 1);
    let mut previous = req.prev_log_id.map(|l| l.leader_id);
    for (at, entry) in req.entries.iter().enumerate() {
        check_log_id(&entry.log_id, vote)?;
        if entry.log_id.index != expected {
            return Err(Refused::NotConsecutive {
                at,
                index: entry.log_id.index,
                expected,
            });
        }
        if previous.is_some_and(|p| entry.log_id.leader_id < p) {
            return Err(Refused::LeaderGoesBack { at });
        }
        expected = entry.log_id.index + 1;
        previous = Some(entry.log_id.leader_id);
    }
    Ok(())
}

/// Checks a `Vote` request.
pub fn check_vote(req: &VoteRequest<NodeId>, view: &PeerView) -> Result<(), Refused> {
    let (term, candidate) = (req.vote.leader_id.term, req.vote.leader_id.node_id);
    check_term(term)?;
    if candidate == view.self_id {
        return Err(Refused::FromSelf(candidate));
    }
    check_certified(candidate, view)?;
    if req.vote.committed {
        return Err(Refused::CommittedVoteRequest);
    }
    if !view.members.is_empty() && !view.voters.contains(&candidate) {
        return Err(Refused::NotAVoter { candidate });
    }
    if let Some(log_id) = &req.last_log_id {
        check_log_id(log_id, &req.vote)?;
    }
    Ok(())
}

/// Checks an `InstallSnapshot` chunk.
pub fn check_snapshot(
    req: &InstallSnapshotRequest<TypeConfig>,
    view: &PeerView,
) -> Result<(), Refused> {
    let meta = &req.meta;
    let membership = meta.last_membership.membership();
    check_membership(membership)?;
    let introduced: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    check_leader(&req.vote, view, &introduced)?;
    let last = meta
        .last_log_id
        .as_ref()
        .ok_or(Refused::SnapshotWithoutLog)?;
    check_log_id(last, &req.vote)?;
    if let Some(log_id) = meta.last_membership.log_id() {
        check_log_id(log_id, &req.vote)?;
    }
    let end = req.offset.saturating_add(req.data.len() as u64);
    if end > view.max_snapshot_bytes {
        return Err(Refused::SnapshotTooLarge {
            end,
            max: view.max_snapshot_bytes,
        });
    }
    Ok(())
}

/// Checks a vote a peer answered with: within the bound, and, when it is a refusal because the
/// peer's vote is higher than ours (`higher`), not a committed vote naming this node (only this
/// node can have been elected under its own name, and then it would hold that vote). A vote
/// response or a snapshot answer may carry our own earlier leadership: that one is fine.
pub fn check_answer_vote(
    vote: &Vote<NodeId>,
    self_id: NodeId,
    higher: bool,
) -> Result<(), Refused> {
    check_term(vote.leader_id.term)?;
    if higher && vote.committed && vote.leader_id.node_id == self_id {
        return Err(Refused::FromSelf(self_id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, Entry, SnapshotMeta, StoredMembership};

    use super::*;

    fn view() -> PeerView {
        PeerView {
            self_id: 1,
            current_term: 5,
            members: BTreeSet::from([1, 2, 3, 4]),
            voters: BTreeSet::from([1, 2, 3]),
            max_entries: 64,
            max_snapshot_bytes: 1 << 20,
            certified_sender: None,
        }
    }

    #[test]
    fn under_mutual_tls_a_message_speaks_only_for_the_certified_node() {
        let certified = PeerView {
            certified_sender: Some(2),
            ..view()
        };
        let from_2 = append(committed(6, 2), vec![]);
        assert_eq!(check_append(&from_2, &certified), Ok(()));
        let as_3 = append(committed(6, 3), vec![]);
        assert_eq!(
            check_append(&as_3, &certified),
            Err(Refused::NotCertifiedSender {
                certified: 2,
                claimed: 3
            })
        );
        let campaign_as_3 = VoteRequest {
            vote: Vote::new(6, 3),
            last_log_id: None,
        };
        assert!(matches!(
            check_vote(&campaign_as_3, &certified),
            Err(Refused::NotCertifiedSender { .. })
        ));
        assert_eq!(
            check_append(&as_3, &view()),
            Ok(()),
            "plaintext: no binding"
        );
    }

    fn committed(term: u64, node: NodeId) -> Vote<NodeId> {
        Vote::new_committed(term, node)
    }

    fn log_id(term: u64, node: NodeId, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn blank(term: u64, node: NodeId, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, node, index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(
        vote: Vote<NodeId>,
        entries: Vec<Entry<TypeConfig>>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(5, 2, 9)),
            entries,
            leader_commit: Some(log_id(5, 2, 9)),
        }
    }

    fn membership(voters: &[NodeId], nodes: &[NodeId]) -> Membership<NodeId, Node> {
        let nodes: BTreeMap<NodeId, Node> = nodes
            .iter()
            .map(|id| (*id, Node::new(format!("http://n{id}"))))
            .collect();
        Membership::new(vec![voters.iter().copied().collect()], nodes)
    }

    #[test]
    fn a_legitimate_append_passes() {
        let req = append(committed(6, 2), vec![blank(5, 2, 10), blank(6, 2, 11)]);
        assert_eq!(check_append(&req, &view()), Ok(()));
        // Heartbeats, and a fresh node that knows no membership.
        assert_eq!(
            check_append(&append(committed(6, 2), vec![]), &view()),
            Ok(())
        );
        let fresh = PeerView {
            members: BTreeSet::new(),
            voters: BTreeSet::new(),
            ..view()
        };
        assert_eq!(
            check_append(&append(committed(6, 9), vec![]), &fresh),
            Ok(())
        );
    }

    #[test]
    fn huge_terms_and_indexes_are_refused() {
        let req = append(committed(u64::MAX, 2), vec![]);
        assert_eq!(
            check_append(&req, &view()),
            Err(Refused::TermTooLarge { term: u64::MAX })
        );
        let mut req = append(committed(6, 2), vec![]);
        req.prev_log_id = Some(log_id(5, 2, u64::MAX));
        assert!(matches!(
            check_append(&req, &view()),
            Err(Refused::IndexTooLarge { .. })
        ));
        let vote = VoteRequest {
            vote: Vote::new(MAX_TERM + 1, 2),
            last_log_id: None,
        };
        assert!(matches!(
            check_vote(&vote, &view()),
            Err(Refused::TermTooLarge { .. })
        ));
        assert!(check_answer_vote(&Vote::new(u64::MAX, 2), 1, false).is_err());
        assert_eq!(check_answer_vote(&Vote::new(7, 2), 1, true), Ok(()));
        // Our own leadership, answered back by a snapshot or a vote response: fine.
        assert_eq!(check_answer_vote(&committed(7, 1), 1, false), Ok(()));
        // As a higher vote that refused our append: impossible.
        assert_eq!(
            check_answer_vote(&committed(7, 1), 1, true),
            Err(Refused::FromSelf(1))
        );
    }

    #[test]
    fn votes_come_from_voters_uncommitted() {
        let ok = VoteRequest {
            vote: Vote::new(6, 2),
            last_log_id: Some(log_id(5, 2, 9)),
        };
        assert_eq!(check_vote(&ok, &view()), Ok(()));
        for (vote, why) in [
            (Vote::new(6, 4), Refused::NotAVoter { candidate: 4 }),
            (Vote::new(6, 99), Refused::NotAVoter { candidate: 99 }),
            (Vote::new(6, 1), Refused::FromSelf(1)),
            (committed(6, 2), Refused::CommittedVoteRequest),
        ] {
            let req = VoteRequest {
                vote,
                last_log_id: None,
            };
            assert_eq!(check_vote(&req, &view()), Err(why));
        }
        let newer_log = VoteRequest {
            vote: Vote::new(6, 2),
            last_log_id: Some(log_id(7, 2, 9)),
        };
        assert!(matches!(
            check_vote(&newer_log, &view()),
            Err(Refused::LogNewerThanVote { .. })
        ));
    }

    #[test]
    fn unknown_senders_may_not_jump_far() {
        // A member this node has not heard of yet, close to its term: accepted.
        assert_eq!(
            check_append(&append(committed(6, 9), vec![]), &view()),
            Ok(())
        );
        let far = 5 + UNKNOWN_SENDER_MAX_TERM_JUMP + 1;
        assert_eq!(
            check_append(&append(committed(far, 9), vec![]), &view()),
            Err(Refused::UnknownSender {
                sender: 9,
                term: far,
                own: 5
            })
        );
        // ... unless the append introduces it.
        let mut entry = blank(far, 9, 10);
        entry.payload = EntryPayload::Membership(membership(&[1, 2, 9], &[1, 2, 9]));
        assert_eq!(
            check_append(&append(committed(far, 9), vec![entry]), &view()),
            Ok(())
        );
        // A member may be far ahead (it was cut off and campaigned).
        assert_eq!(
            check_append(&append(committed(far, 3), vec![]), &view()),
            Ok(())
        );
    }

    #[test]
    fn malformed_appends_are_refused() {
        let v = view();
        let cases = [
            (append(Vote::new(6, 2), vec![]), Refused::UncommittedLeader),
            (append(committed(6, 1), vec![]), Refused::FromSelf(1)),
            (
                append(committed(6, 2), vec![blank(5, 2, 12)]),
                Refused::NotConsecutive {
                    at: 0,
                    index: 12,
                    expected: 10,
                },
            ),
            (
                append(committed(6, 2), vec![blank(6, 2, 10), blank(5, 2, 11)]),
                Refused::LeaderGoesBack { at: 1 },
            ),
            (
                append(committed(6, 2), vec![blank(7, 2, 10)]),
                Refused::LogNewerThanVote {
                    term: 7,
                    vote_term: 6,
                },
            ),
        ];
        for (req, why) in cases {
            assert_eq!(check_append(&req, &v), Err(why));
        }
        let many = (0..65).map(|i| blank(6, 2, 10 + i)).collect();
        assert!(matches!(
            check_append(&append(committed(6, 2), many), &v),
            Err(Refused::TooManyEntries { .. })
        ));
        // openraft's constructor adds a node for every voter; a decoded message need not.
        let decoded: Membership<NodeId, Node> = serde_json::from_value(serde_json::json!({
            "configs": [[1, 2, 7]],
            "nodes": {"1": {"addr": "http://n1"}, "2": {"addr": "http://n2"}}
        }))
        .expect("a membership decodes");
        let mut bad = blank(6, 2, 10);
        bad.payload = EntryPayload::Membership(decoded);
        assert_eq!(
            check_append(&append(committed(6, 2), vec![bad]), &v),
            Err(Refused::VoterWithoutNode(7))
        );
    }

    #[test]
    fn snapshot_chunks_are_bounded() {
        let meta = |last: Option<LogId<NodeId>>| SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(
                Some(log_id(5, 2, 3)),
                membership(&[1, 2, 3], &[1, 2, 3]),
            ),
            snapshot_id: "s".into(),
        };
        let req = |offset: u64, last| InstallSnapshotRequest {
            vote: committed(6, 2),
            meta: meta(last),
            offset,
            data: vec![0; 16],
            done: false,
        };
        let v = view();
        assert_eq!(check_snapshot(&req(0, Some(log_id(5, 2, 9))), &v), Ok(()));
        assert_eq!(
            check_snapshot(&req(0, None), &v),
            Err(Refused::SnapshotWithoutLog)
        );
        assert!(matches!(
            check_snapshot(&req(u64::MAX - 4, Some(log_id(5, 2, 9))), &v),
            Err(Refused::SnapshotTooLarge { .. })
        ));
    }
}
