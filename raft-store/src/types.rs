//! The openraft type configuration of x402-cluster.

// `declare_raft_types!` names `Cursor` without a path in openraft 0.9.
use std::io::Cursor;

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// Raft types of the cluster: commands in, responses out, `u64` node ids, nodes named by URL.
    pub TypeConfig:
        D = Command,
        R = Vec<Response>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::ClusterRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

/// Highest Raft term this cluster ever uses or accepts. openraft computes `term + 1` at every
/// election; a vote near `u64::MAX` (only a forged message can bring one) would wrap it and
/// panic on every restart. 2^48 back-to-back elections take over a million years, so no
/// legitimate term comes near it (see `x402_node::cluster::peer_guard`).
pub const MAX_TERM: u64 = 1 << 48;
