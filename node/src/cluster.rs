//! Everything between nodes: the Raft network over HTTP, the peer client under it, writes from
//! any node (forwarding to the leader), and the leader's background duties.

pub mod batcher;
pub mod breakers;
pub mod expiry;
pub mod handoff;
pub mod identity;
pub mod membership;
pub mod network;
pub mod peer_client;
pub mod peer_guard;
pub mod proposer;
pub mod read_barrier;
pub mod warm_peers;
pub mod writer;
