//! The single-node Raft the `kill -9` crash test runs in a child process (`log-crash-child`)
//! and reopens in the test itself: one node, no peers, and the claims both sides agree on.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use x402_raft_store::state::NonceKey;
use x402_raft_store::types::{NodeId, TypeConfig};

/// The only node.
pub const NODE_ID: NodeId = 1;

/// A network with no peers: a single-node cluster never sends an RPC, so any call is a bug.
pub struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> Self::Network {
        NoPeers
    }
}

fn no_peer<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "single-node cluster has no peers",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(no_peer())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(no_peer())
    }
}

/// The nonce key the crash test expects for claim number `n`.
pub fn nonce_key(n: u64) -> NonceKey {
    let mut nonce = [0u8; 32];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    NonceKey {
        chain_id: 31337,
        asset: [0xA5; 20],
        payer: [0x5A; 20],
        nonce,
    }
}
