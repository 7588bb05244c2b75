//! The Raft log and vote in memory: the [`RaftLogStorage`] of simulations.
//!
//! All state sits behind one `Arc<Mutex<..>>`, so a clone kept outside a turmoil host survives
//! the host's crash the way a disk would, and a restarted host reopens it. Every write is
//! "durable" the moment it is made: there is no flush to lose, no OS thread and no
//! `spawn_blocking` (both break turmoil's simulated time).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::cluster_id::{AdoptError, AdoptFuture, ClusterId, ClusterIdStore};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The simulated disk.
#[derive(Debug, Default)]
struct MemLog {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    cluster_id: Option<ClusterId>,
}

/// The Raft log in memory. Clones share the same log.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<MemLog>>,
}

impl MemLogStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemLog> {
        // Every method leaves the log consistent at each statement that could panic (inserts
        // and removals of whole entries), so a poisoned lock holds a usable log.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the store `id` (replacing any): for an in-memory identity built with what a tool
    /// learned, and for tests.
    pub fn record_cluster_id(&self, id: ClusterId) {
        self.lock().cluster_id = Some(id);
    }

    /// Appends `entries`; in memory they are durable at once. Same API as
    /// [`SledLogStore::append_durable`](super::SledLogStore::append_durable).
    pub async fn append_durable(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut log = self.lock();
        for entry in entries {
            log.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }
}

/// Whether `range` contains no index (including the inverted ranges `BTreeMap` panics on).
fn is_empty_range(range: &impl RangeBounds<u64>) -> bool {
    match (range.start_bound(), range.end_bound()) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        if is_empty_range(&range) {
            // `BTreeMap::range` panics on inverted ranges; the answer is simply nothing.
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = self.lock();
        let last_entry = log.entries.last_key_value().map(|(_, e)| e.log_id);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: std::cmp::max(last_entry, log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_durable(entries.into_iter().collect()).await?;
        callback.log_io_completed(Ok::<(), io::Error>(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.lock();
        // `split_off` keeps [0, index) and returns the rest, dropped here in one step.
        drop(log.entries.split_off(&log_id.index));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.lock();
        if log.last_purged < Some(log_id) {
            log.last_purged = Some(log_id);
        }
        log.entries = match log_id.index.checked_add(1) {
            Some(first_kept) => log.entries.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        Ok(())
    }
}

impl ClusterIdStore for MemLogStore {
    fn cluster_id(&self) -> Option<ClusterId> {
        self.lock().cluster_id
    }

    fn adopt_cluster_id(&self, id: ClusterId) -> AdoptFuture<'_> {
        Box::pin(async move {
            let mut log = self.lock();
            match log.cluster_id {
                Some(held) if held != id => Err(AdoptError::OtherCluster { held, offered: id }),
                _ => {
                    log.cluster_id = Some(id);
                    Ok(())
                }
            }
        })
    }
}
