//! openraft's storage conformance suite against both storage stacks: sled + snapshot files
//! (production) and memory (simulation).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use x402_raft_store::storage::{
    open_sled_stores, FileSnapshotVault, MemLogStore, MemSnapshotVault, SledLogStore, SledOptions,
    StateMachineStore,
};
use x402_raft_store::types::{StorageError, TypeConfig};

/// A fresh sled store in its own temporary directory, removed when the suite drops the guard.
struct SledBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, StateMachineStore<FileSnapshotVault>, TempDir>
    for SledBuilder
{
    async fn build(
        &self,
    ) -> Result<(TempDir, SledLogStore, StateMachineStore<FileSnapshotVault>), StorageError> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (log, sm) = open_sled_stores(dir.path(), SledOptions::default())
            .unwrap_or_else(|e| panic!("open a fresh store: {e}"));
        Ok((dir, log, sm))
    }
}

/// A fresh in-memory store.
struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachineStore<MemSnapshotVault>> for MemBuilder {
    async fn build(
        &self,
    ) -> Result<((), MemLogStore, StateMachineStore<MemSnapshotVault>), StorageError> {
        let sm = StateMachineStore::open(MemSnapshotVault::default())?;
        Ok(((), MemLogStore::default(), sm))
    }
}

#[test]
fn openraft_suite_on_sled_and_snapshot_files() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("sled store fails the openraft suite: {e}");
    }
}

#[test]
fn openraft_suite_on_memory() {
    if let Err(e) = Suite::test_all(MemBuilder) {
        panic!("memory store fails the openraft suite: {e}");
    }
}
