//! openraft's network: Raft RPCs (append, vote, snapshot chunks) sent to peers over
//! [`PeerClient`] as bincode bodies.
//!
//! The server side lives in `http::peer`; both sides agree on the paths in [`paths`] and on
//! serialising the whole `Result` of the remote `Raft` call, so a remote Raft error arrives as
//! such and not as a transport failure.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Serialize;
use x402_raft_store::codec;
use x402_raft_store::types::{Node, NodeId, TypeConfig};

use super::peer_client::{PeerClient, PeerError};
use super::peer_guard;

/// The vote a Raft answer carries, if any, and whether it refused ours as higher.
pub trait AnsweredVote {
    fn answered_vote(&self) -> Option<(&Vote<NodeId>, bool)>;
}

impl AnsweredVote for AppendEntriesResponse<NodeId> {
    fn answered_vote(&self) -> Option<(&Vote<NodeId>, bool)> {
        match self {
            AppendEntriesResponse::HigherVote(vote) => Some((vote, true)),
            _ => None,
        }
    }
}

impl AnsweredVote for VoteResponse<NodeId> {
    fn answered_vote(&self) -> Option<(&Vote<NodeId>, bool)> {
        Some((&self.vote, false))
    }
}

impl AnsweredVote for InstallSnapshotResponse<NodeId> {
    fn answered_vote(&self) -> Option<(&Vote<NodeId>, bool)> {
        Some((&self.vote, false))
    }
}

/// Paths of the peer API.
pub mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const PROPOSE: &str = "/raft/propose";
    pub const READ_INDEX: &str = "/raft/read-index";
    /// Campaign now: how a leader handing off ([`super::super::handoff`]) picks its successor.
    pub const ELECT: &str = "/raft/elect";
    /// Nothing but an answer: keeps a connection open ([`super::super::warm_peers`]).
    pub const PING: &str = "/raft/ping";
    /// Take the cluster id (the only peer call a node without one answers).
    pub const JOIN: &str = "/raft/join";
}

/// Pause before retrying an unreachable peer. openraft's default is 500 ms; a restarted node
/// should rejoin sooner than that.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Creates one [`PeerConnection`] per replication target.
#[derive(Clone)]
pub struct Network {
    self_id: NodeId,
    peers: PeerClient,
}

impl Network {
    pub fn new(self_id: NodeId, peers: PeerClient) -> Self {
        Self { self_id, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            self_id: self.self_id,
            target,
            url: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConnection {
    self_id: NodeId,
    target: NodeId,
    url: String,
    peers: PeerClient,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + AnsweredVote,
        E: std::error::Error + DeserializeOwned,
    {
        let body = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let deadline = option.hard_ttl();
        let bytes = self
            .peers
            .post(&self.url, path, body, deadline)
            .await
            .map_err(|e| match e {
                // Never delivered, or refused for who we are (another cluster, not a member, a
                // wiped node that must be rebuilt): back off instead of retrying at once.
                e if e.not_delivered() || e.refused_identity() => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                PeerError::Timeout(_) => RPCError::Timeout(Timeout {
                    action,
                    id: self.self_id,
                    target: self.target,
                    timeout: deadline,
                }),
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // A vote in the answer reaches openraft's vote handling as much as a request's does.
        let answered = match &result {
            Ok(resp) => resp.answered_vote(),
            Err(RaftError::APIError(_)) => None,
            Err(RaftError::Fatal(_)) => None,
        };
        if let Some((vote, higher)) = answered {
            peer_guard::check_answer_vote(vote, self.self_id, higher)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        }
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(paths::APPEND, RPCTypes::AppendEntries, &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(paths::SNAPSHOT, RPCTypes::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(paths::VOTE, RPCTypes::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
