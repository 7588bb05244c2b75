//! The openraft state machine: [`ClusterState`] in memory, made durable by snapshots.
//!
//! `apply` only changes memory; nothing is written per entry. What survives a restart is the
//! latest snapshot in the [`SnapshotVault`] plus the Raft log after it: on start, openraft
//! re-applies the committed entries the log store recorded (`save_committed`), and the leader
//! re-commits the rest. That is why a snapshot is durable *before* `build_snapshot` or
//! `install_snapshot` returns: openraft purges the log it covers right after.
//!
//! The same code serves production (a [`FileSnapshotVault`](super::FileSnapshotVault)) and
//! simulation (a [`MemSnapshotVault`](super::MemSnapshotVault)); only the vault differs.

// `StorageError` is openraft's type and what its traits return; boxing it in our own helpers
// would only add conversions.
#![allow(clippy::result_large_err)]

use std::io::{self, Cursor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use openraft::{OptionalSend, StorageIOError};

use super::snapshot_vault::SnapshotVault;
use crate::state::{ClusterState, Response};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// What the state machine holds, read and replaced as one unit.
#[derive(Debug, Default)]
struct Applied {
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// Read access to the applied state for the node (status, state hash, reads). Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateView {
    applied: Arc<RwLock<Applied>>,
}

impl StateView {
    /// Runs `f` on the state as of the last applied entry. Keep `f` short: apply waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        // A poisoned lock means an apply panicked; openraft has already stopped the node by
        // then, and reading what is there is more useful to a status page than a second panic.
        f(&self
            .applied
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .state)
    }

    /// Runs `f` on the applied state if no apply holds it right now; `None` otherwise. For
    /// optional reads on a request's path (a rate-limit pre-check), which must not block a
    /// worker thread behind a batch being applied.
    pub fn try_read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> Option<R> {
        match self.applied.try_read() {
            Ok(applied) => Some(f(&applied.state)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(f(&p.into_inner().state)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The log id of the last applied entry.
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last_applied
    }
}

struct Inner<V> {
    applied: Arc<RwLock<Applied>>,
    vault: V,
    /// Last log id of the snapshot in the vault. Held while saving, so that a snapshot built
    /// from an older state never overwrites a newer one (builds run in their own task,
    /// concurrently with `install_snapshot`).
    saved: Mutex<Option<LogId>>,
    /// Makes snapshot ids unique even for two snapshots of the same log id.
    snapshot_counter: AtomicU64,
}

/// The openraft state machine and snapshot builder. Clones share one state.
pub struct StateMachineStore<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for StateMachineStore<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// Whether a save may replace a newer snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SaveMode {
    /// A snapshot built locally: skipped if the vault already holds a newer one.
    IfNotOlder,
    /// A snapshot installed from the leader: it replaces the state, so it always wins.
    Always,
}

impl<V: SnapshotVault> StateMachineStore<V> {
    /// Opens the state machine from the vault's snapshot, if it has one: state, last applied
    /// log id and last membership all come from it.
    pub fn open(vault: V) -> Result<Self, StorageError> {
        let loaded = run_blocking(|| vault.load())
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        let (applied, counter) = match loaded {
            None => (Applied::default(), 0),
            Some((meta, data)) => {
                let state = ClusterState::from_bytes(&data).map_err(|e| {
                    StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
                })?;
                let counter = counter_of(&meta.snapshot_id);
                (
                    Applied {
                        state,
                        last_applied: meta.last_log_id,
                        last_membership: meta.last_membership,
                    },
                    counter,
                )
            }
        };
        let saved = applied.last_applied;
        Ok(Self {
            inner: Arc::new(Inner {
                applied: Arc::new(RwLock::new(applied)),
                vault,
                saved: Mutex::new(saved),
                snapshot_counter: AtomicU64::new(counter),
            }),
        })
    }

    /// Read access to the applied state.
    pub fn view(&self) -> StateView {
        StateView {
            applied: self.inner.applied.clone(),
        }
    }

    /// The vault holding this state machine's snapshot.
    pub fn vault(&self) -> &V {
        &self.inner.vault
    }

    /// Saves a snapshot durably, honouring `mode`.
    fn save(&self, meta: &SnapshotMeta, data: &[u8], mode: SaveMode) -> Result<(), StorageError> {
        let mut saved = self
            .inner
            .saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if mode == SaveMode::IfNotOlder && *saved > meta.last_log_id {
            tracing::debug!(
                built = ?meta.last_log_id,
                stored = ?*saved,
                "vault already holds a newer snapshot; keeping it"
            );
            return Ok(());
        }
        run_blocking(|| self.inner.vault.save(meta, data)).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        *saved = meta.last_log_id;
        Ok(())
    }

    fn write_applied(&self) -> Result<std::sync::RwLockWriteGuard<'_, Applied>, StorageError> {
        // Unlike a reader, a writer must not continue on a state an apply panicked in the
        // middle of: it could be half-updated.
        self.inner.applied.write().map_err(|_| {
            StorageError::from_io_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Write,
                io::Error::other("state machine lock poisoned by a panic during apply"),
            )
        })
    }
}

/// The counter part of a snapshot id `<term>-<index>-<counter>`, so ids stay unique across
/// restarts. Unknown formats count from zero: uniqueness then still holds per log id, because
/// equal log ids give byte-equal states.
fn counter_of(snapshot_id: &str) -> u64 {
    snapshot_id
        .rsplit('-')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Runs blocking file I/O without stalling other tasks on a multi-thread runtime. On a
/// current-thread runtime (simulations, `#[tokio::test]`) `block_in_place` is not available and
/// the vault there is memory anyway, so the closure just runs.
pub(crate) fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl<V: SnapshotVault> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<V> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // State, log id and membership are taken under one lock so they describe the same point.
        let (data, last_log_id, last_membership) = {
            let applied = self
                .inner
                .applied
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let data = applied
                .state
                .to_bytes()
                .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
            (data, applied.last_applied, applied.last_membership.clone())
        };
        // Never store a snapshot that cannot be read back: openraft purges the log behind it,
        // so an unreadable snapshot would leave the node (and every peer rebuilt from it) unable
        // to restart. Decoding refuses states over `codec::MAX_STATE_BYTES`, so refuse to save
        // one here, while the log is still whole. (Decoding the whole state back to check would
        // double the memory and time of every snapshot.)
        if data.len() > crate::codec::MAX_STATE_BYTES {
            return Err(StorageIOError::write_snapshot(
                None,
                AnyError::error(format!(
                    "refusing to save a {} byte snapshot: states over {} bytes cannot be decoded",
                    data.len(),
                    crate::codec::MAX_STATE_BYTES
                )),
            )
            .into());
        }
        let counter = self.inner.snapshot_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match &last_log_id {
            Some(id) => format!("{}-{}-{counter}", id.leader_id.term, id.index),
            None => format!("0-none-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        // Durable before returning: openraft purges the log this snapshot covers right after.
        self.save(&meta, &data, SaveMode::IfNotOlder)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<V: SnapshotVault> RaftStateMachine<TypeConfig> for StateMachineStore<V> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self
            .inner
            .applied
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        // One lock for the batch: readers see whole batches, and no await happens inside.
        let mut applied = self.write_applied()?;
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmd) => applied.state.apply(&cmd),
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            applied.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The builder reads the state when it runs; see `build_snapshot`.
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Decode first: a bad snapshot must leave both the vault and the state untouched.
        let state = ClusterState::from_bytes(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        // Durable before the state changes and before openraft purges the log it replaces.
        self.save(meta, &data, SaveMode::Always)?;
        let mut applied = self.write_applied()?;
        *applied = Applied {
            state,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let loaded = run_blocking(|| self.inner.vault.load())
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
