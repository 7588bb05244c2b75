//! Changing who is in the cluster: forming it, adding a learner, promoting it to voter once it
//! has caught up, removing a member. Each change runs on the leader (the HTTP layer passes an
//! operator's request on to it) and is one Raft membership entry; the errors say what an
//! operator can do about them.
//!
//! A node takes part only once it holds the cluster's id ([`super::identity`]): forming the
//! cluster gives it to every initial member before Raft starts, adding a learner gives it to
//! the learner before the membership names it (`POST /raft/join`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership};
use tokio::time::Instant;
use x402_protocol::wire::{Member, MembershipResponse, NodeStatus};
use x402_raft_store::types::{Node, NodeId, Raft};

use serde::{Deserialize, Serialize};
use x402_raft_store::codec;
use x402_raft_store::storage::ClusterId;

use super::network::paths;
use super::peer_client::{scheme_and_authority, PeerClient, PeerError};

/// How long a promotion waits for the learner to catch up before giving up.
const PROMOTE_CATCH_UP: Duration = Duration::from_secs(30);
/// A learner this close to the leader's last log index counts as caught up.
const CATCH_UP_SLACK: u64 = 1_000;
/// How long a new member is given to tell its URL, or to take the cluster id.
const STATUS_DEADLINE: Duration = Duration::from_secs(5);

/// The body of `POST /raft/join`: take this cluster id, if you are node `node_id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub cluster_id: ClusterId,
}

/// Why a membership change was not made.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the members must include this node ({0})")]
    WithoutThisNode(NodeId),
    #[error("{0}")]
    BadUrl(String),
    #[error("the cluster is already formed: {0}")]
    AlreadyInitialized(String),
    #[error("{url} answered its status in a form this node does not read: {error}")]
    UnreadableStatus { url: String, error: String },
    #[error("{url} is node {is}, not node {expected}")]
    WrongNode {
        url: String,
        is: NodeId,
        expected: NodeId,
    },
    #[error("node {0} is not a member; add it as a learner first")]
    NotAMember(NodeId),
    #[error("node {id} did not catch up within {waited:?}")]
    LearnerBehind { id: NodeId, waited: Duration },
    #[error("leadership changed during the request; retry")]
    LeaderChanged,
    /// openraft refused the change (another change in progress, a last voter removed...).
    #[error("{0}")]
    Refused(String),
    #[error("raft stopped: {0}")]
    RaftStopped(String),
    #[error(
        "node {id} at {url} did not take the cluster id: {error} (start it before adding it; \
         a node of another cluster must be emptied first)"
    )]
    NotJoined {
        id: NodeId,
        url: String,
        error: String,
    },
    #[error("this node cannot record the cluster id: {0}")]
    Identity(String),
}

/// The cluster's membership, changed through this node's Raft. Cheap to clone.
#[derive(Clone)]
pub struct Members {
    id: NodeId,
    /// The URL members reach this node at.
    url: String,
    raft: Raft,
    peers: PeerClient,
    /// The configured initial members, used when an init names none.
    bootstrap: BTreeMap<NodeId, String>,
}

impl Members {
    pub fn new(
        id: NodeId,
        url: String,
        raft: Raft,
        peers: PeerClient,
        bootstrap: BTreeMap<NodeId, String>,
    ) -> Self {
        Self {
            id,
            url,
            raft,
            peers,
            bootstrap,
        }
    }

    /// Forms the cluster of `members` (the configured bootstrap members when empty, this node
    /// alone when there are none).
    pub async fn init(
        &self,
        mut members: BTreeMap<NodeId, String>,
    ) -> Result<MembershipResponse, MembershipError> {
        if members.is_empty() {
            members = self.bootstrap.clone();
        }
        if members.is_empty() {
            members = BTreeMap::from([(self.id, self.url.clone())]);
        }
        if !members.contains_key(&self.id) {
            return Err(MembershipError::WithoutThisNode(self.id));
        }
        for url in members.values() {
            scheme_and_authority(url).map_err(|e| MembershipError::BadUrl(e.to_string()))?;
        }
        if self.raft.is_initialized().await.unwrap_or(false) {
            return Err(MembershipError::AlreadyInitialized(
                "this node already belongs to a cluster".into(),
            ));
        }
        // Every initial member holds the id before Raft sends it anything.
        let cluster = self
            .peers
            .identity()
            .form()
            .await
            .map_err(|e| MembershipError::Identity(e.to_string()))?;
        for (id, url) in members.iter().filter(|(id, _)| **id != self.id) {
            self.join(*id, url, cluster).await?;
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, url)| (*id, BasicNode::new(url)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(MembershipResponse {
                members: members
                    .into_iter()
                    .map(|(id, url)| Member {
                        id,
                        url,
                        voter: true,
                    })
                    .collect(),
                log_index: None,
            }),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                Err(MembershipError::AlreadyInitialized(e.to_string()))
            }
            Err(e) => Err(MembershipError::Refused(e.to_string())),
        }
    }

    /// Adds node `id` at `url` as a learner (not blocking: a learner may need a long snapshot
    /// transfer; promotion waits for it).
    pub async fn add_learner(
        &self,
        id: NodeId,
        url: &str,
        holds_cluster_id: Option<&str>,
    ) -> Result<MembershipResponse, MembershipError> {
        scheme_and_authority(url).map_err(|e| MembershipError::BadUrl(e.to_string()))?;
        let (own, _) =
            scheme_and_authority(&self.url).map_err(|e| MembershipError::BadUrl(e.to_string()))?;
        // Operators may name the node's API URL here (member_url_of then asks it for its peer
        // URL); the URL recorded must speak what this cluster's peers speak.
        let url = self.member_url_of(id, url).await?;
        let (recorded, _) =
            scheme_and_authority(&url).map_err(|e| MembershipError::BadUrl(e.to_string()))?;
        if recorded != own {
            return Err(MembershipError::BadUrl(format!(
                "node {id}'s peer URL {url} is {recorded}://, this cluster's members speak {own}://"
            )));
        }
        let cluster = self
            .peers
            .identity()
            .current()
            .ok_or_else(|| MembershipError::Identity("this node holds no cluster id".into()))?;
        let holds_ours = holds_cluster_id.is_some_and(|held| held == cluster.to_string());
        match self.join(id, &url, cluster).await {
            Ok(()) => {}
            // Rebuilt offline: it holds the id already and will answer once started.
            Err(MembershipError::NotJoined { .. }) if holds_ours => {}
            Err(e) => return Err(e),
        }
        let written = self
            .raft
            .add_learner(id, BasicNode::new(&url), false)
            .await
            .map_err(refusal)?;
        Ok(answer(written))
    }

    /// Makes learner `id` a voter once it has caught up with the leader's log.
    pub async fn promote(&self, id: NodeId) -> Result<MembershipResponse, MembershipError> {
        self.wait_for_catch_up(id).await?;
        let written = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(refusal)?;
        Ok(answer(written))
    }

    /// Removes member `id`, voter or learner.
    pub async fn remove(&self, id: NodeId) -> Result<MembershipResponse, MembershipError> {
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|voter| voter == id);
        let ids = BTreeSet::from([id]);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        let written = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(refusal)?;
        Ok(answer(written))
    }

    /// The URL the node at `url` says members reach it at (its peer API, when it listens for
    /// peers apart), after checking it is node `id`: an operator may name either of its URLs,
    /// and the membership must record the one Raft uses. A node that cannot be asked (not
    /// started yet) is recorded under the URL given.
    async fn member_url_of(&self, id: NodeId, url: &str) -> Result<String, MembershipError> {
        let asked = self
            .peers
            .call(
                axum::http::Method::GET,
                url,
                "/admin/status",
                "application/json",
                Vec::new(),
                STATUS_DEADLINE,
            )
            .await;
        let status: NodeStatus = match asked.map(|bytes| serde_json::from_slice(&bytes)) {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(MembershipError::UnreadableStatus {
                    url: url.to_owned(),
                    error: e.to_string(),
                })
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot ask the new member its URL; recording the one given");
                return Ok(url.to_owned());
            }
        };
        if status.id != id {
            return Err(MembershipError::WrongNode {
                url: url.to_owned(),
                is: status.id,
                expected: id,
            });
        }
        Ok(status.url)
    }

    /// Gives node `id` at `url` the cluster id `cluster` (it records it durably and answers).
    async fn join(&self, id: NodeId, url: &str, cluster: ClusterId) -> Result<(), MembershipError> {
        let not_joined = |error: String| MembershipError::NotJoined {
            id,
            url: url.to_owned(),
            error,
        };
        let body = codec::encode(&JoinRequest {
            node_id: id,
            cluster_id: cluster,
        })
        .map_err(|e| not_joined(e.to_string()))?;
        match self
            .peers
            .post(url, paths::JOIN, body, STATUS_DEADLINE)
            .await
        {
            Ok(_) => Ok(()),
            Err(PeerError::Status { body, .. }) => Err(not_joined(body)),
            Err(e) => Err(not_joined(e.to_string())),
        }
    }

    /// Waits until the leader has replicated (almost) its whole log to `id`.
    async fn wait_for_catch_up(&self, id: NodeId) -> Result<(), MembershipError> {
        let started = Instant::now();
        loop {
            let (known, caught_up) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                let known = m.membership_config.membership().get_node(&id).is_some();
                let last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                (known, matched.is_some_and(|i| i + CATCH_UP_SLACK >= last))
            };
            if !known {
                return Err(MembershipError::NotAMember(id));
            }
            if caught_up {
                return Ok(());
            }
            if started.elapsed() > PROMOTE_CATCH_UP {
                return Err(MembershipError::LearnerBehind {
                    id,
                    waited: PROMOTE_CATCH_UP,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The members of a membership, voters marked.
pub fn members_of(membership: &Membership<NodeId, Node>) -> Vec<Member> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            url: node.addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

/// The answer to a membership change: the membership it installed and where.
fn answer(
    written: openraft::raft::ClientWriteResponse<x402_raft_store::types::TypeConfig>,
) -> MembershipResponse {
    MembershipResponse {
        members: members_of(&written.membership.unwrap_or_default()),
        log_index: Some(written.log_id.index),
    }
}

fn refusal(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MembershipError::LeaderChanged,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Refused(e.to_string())
        }
        RaftError::Fatal(e) => MembershipError::RaftStopped(e.to_string()),
    }
}
