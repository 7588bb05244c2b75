//! openraft storage for x402-cluster: the Raft log, the vote and the state machine.
//!
//! - [`SledLogStore`]: the log on sled with a single group-commit flusher thread (production);
//! - [`MemLogStore`]: the log in memory, shared by clones so it survives a simulated crash;
//! - [`StateMachineStore`]: [`ClusterState`](crate::state::ClusterState) in memory, made durable
//!   by snapshots kept in a [`SnapshotVault`] (files in production, memory in simulation);
//! - [`open_sled_stores`] / [`rebuild_from_snapshot`]: opening a node's data directory (checked
//!   against its store mark, so a sled that lost data refuses to open), and replacing one that
//!   will not open with a peer's snapshot.

mod cluster_id;
mod flusher;
mod log_mem;
mod log_sled;
mod mark;
mod open;
mod snapshot_vault;
mod state_machine;

#[cfg(test)]
mod tests;

pub use cluster_id::{AdoptError, BadClusterId, ClusterId, ClusterIdStore};
pub use log_mem::MemLogStore;
pub use log_sled::SledLogStore;
pub use mark::{read_store_mark, StoreId, StoreMark, MARK_FILE, MARK_INTERVAL};
pub use open::{
    open_sled_stores, rebuild_from_snapshot, reset_vote, OpenError, SledOptions, VoteReset,
    DEFAULT_CACHE_BYTES, RESET_VOTE_MARGIN, SLED_DIR, SNAPSHOT_DIR,
};
pub use snapshot_vault::{
    decode_snapshot_file, encode_snapshot_file, FileSnapshotVault, MemSnapshotVault, SnapshotVault,
    MAX_SNAPSHOT_HEADER_BYTES, SNAPSHOT_FILE_MAGIC,
};
pub use state_machine::{StateMachineStore, StateView};

/// Told the duration of every flush of the sled log (sled flush plus fdatasync), e.g. to feed
/// a histogram. Called on the flusher thread: keep it short.
pub type FlushObserver = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;
