//! The Raft log and vote on sled: the production [`RaftLogStorage`].
//!
//! Layout: tree `log` maps big-endian `u64` indexes (so sled's key order is log order) to
//! `encode_record(entry)`; tree `meta` holds the store id (written once, when the store is
//! created), the cluster id (once, when the store forms or joins a cluster), the vote, the committed log id and the last purged log id, each an `encode_record`
//! value. The store mark outside sled ([`super::mark`]) is kept by the flusher from what this
//! store records in its [`MarkState`].
//!
//! Durability rules (openraft 0.9 `RaftLogStorage` contract, `reference/raft-stack.md` §2.2/2.6):
//! - `save_vote` and `append` return / report completion only after the [`Flusher`] has made
//!   the write durable;
//! - `truncate`, `purge` and `save_committed` are not flushed on their own: sled's log is
//!   ordered, so the next vote or append flush covers them, and losing them in a crash is safe
//!   (truncated entries were uncommitted; purged entries are covered by a durable snapshot; a
//!   stale committed id only means fewer entries are re-applied at start-up);
//! - sled applies writes in submission order, which gives openraft's "all write I/O is
//!   serialised" requirement.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, OptionalSend, StorageIOError};
use serde::de::DeserializeOwned;

use super::cluster_id::{AdoptError, AdoptFuture, ClusterId, ClusterIdStore};
use super::flusher::{sled_io_error, Flusher};
use super::mark::{MarkState, Recorded, StoreId, StoreMark};
use super::open::{OpenError, SledOptions};
use crate::codec::{decode_record, encode_record};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

pub(crate) const LOG_TREE: &str = "log";
pub(crate) const META_TREE: &str = "meta";
/// How often, and how far apart, a locked database is tried again before it is reported as in
/// use (2 s in all: longer than sled takes to let go of a dropped database's file).
const LOCK_RETRIES: u32 = 40;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const KEY_STORE_ID: &[u8] = b"store_id";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
/// Log entries one purge step removes at most (see `purge`).
const MAX_REMOVALS_PER_BATCH: usize = 1024;

/// The Raft log on sled. Clones share one database and one flusher thread; the database is
/// closed when the last clone is dropped.
#[derive(Clone)]
pub struct SledLogStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// First field, so it is dropped (and its thread joined, releasing its `Db` handle) before
    /// the trees below.
    flusher: Flusher,
    log: sled::Tree,
    meta: sled::Tree,
    path: PathBuf,
    /// The vote and committed id last written, for the flusher's rewrites of the store mark.
    marks: Arc<MarkState>,
    /// The cluster id as stored: set once, read on every peer request.
    cluster_id: std::sync::OnceLock<ClusterId>,
    /// Serialises adoptions, so two racing ones cannot both write.
    adopting: tokio::sync::Mutex<()>,
}

impl Debug for SledLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLogStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The big-endian key of a log index.
fn key_of(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a stored key names; a key of another length is corruption.
fn index_of(key: &[u8]) -> io::Result<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(format!("log key of {} bytes, expected 8", key.len())))
}

/// Decodes a stored entry and checks it sits under its own index.
fn decode_entry(key: &[u8], value: &[u8]) -> io::Result<Entry> {
    let index = index_of(key)?;
    let entry: Entry =
        decode_record(value).map_err(|e| corrupt(format!("log entry at index {index}: {e}")))?;
    if entry.log_id.index != index {
        return Err(corrupt(format!(
            "log entry stored at index {index} claims index {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// Maps a range of log indexes onto a range of sled keys.
fn key_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(key_of(*i)),
        Bound::Excluded(i) => Bound::Excluded(key_of(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Reads and decodes one `meta` record.
fn read_meta_in<T: DeserializeOwned>(meta: &sled::Tree, key: &[u8]) -> io::Result<Option<T>> {
    match meta.get(key).map_err(sled_io_error)? {
        None => Ok(None),
        Some(bytes) => decode_record(&bytes).map(Some).map_err(|e| {
            corrupt(format!(
                "meta record {:?}: {e}",
                String::from_utf8_lossy(key)
            ))
        }),
    }
}

impl SledLogStore {
    /// Opens (creating if needed) the sled database at `path`, starts its flusher and checks
    /// the stored log: every record decodes, entries are contiguous and start right after the
    /// last purged id. A purge interrupted by a crash is finished here.
    ///
    /// With `may_create`, an empty database gets a new store id (durable when this returns).
    /// The store mark in `data_dir` is neither read nor written here: see
    /// [`open_sled_stores`](super::open_sled_stores), which switches its keeping on.
    pub(crate) fn open(
        path: &Path,
        data_dir: &Path,
        opts: &SledOptions,
        may_create: bool,
    ) -> Result<Self, OpenError> {
        let will_not_open = |reason: String| OpenError::WillNotOpen {
            path: path.to_path_buf(),
            reason,
        };
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput);
        // sled 0.34 is known to panic, not only fail, on some damaged databases; either way the
        // operator needs the same advice. A lock held by this very process is released a moment
        // after its database is dropped (sled's background threads let go of the file last), so
        // a lock error is retried for a while before it is reported as another process's.
        let mut lock_wait = LOCK_RETRIES;
        let db = loop {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
                Ok(Err(sled::Error::Io(e))) if is_lock_error(&e) && lock_wait > 0 => {
                    lock_wait -= 1;
                    std::thread::sleep(LOCK_RETRY_PAUSE);
                }
                other => break other,
            }
        };
        let db = match db {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e))) if is_lock_error(&e) => {
                return Err(OpenError::Locked {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
            Ok(Err(sled::Error::Io(e))) if e.kind() == io::ErrorKind::StorageFull => {
                return Err(OpenError::DiskFull {
                    path: path.to_path_buf(),
                })
            }
            Ok(Err(e)) => return Err(will_not_open(e.to_string())),
            Err(panic) => {
                return Err(will_not_open(format!(
                    "sled panicked: {}",
                    panic_message(&panic)
                )))
            }
        };
        let log = db
            .open_tree(LOG_TREE)
            .map_err(|e| will_not_open(e.to_string()))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|e| will_not_open(e.to_string()))?;
        let corrupt_store = |e: io::Error| OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut store_id = read_meta_in::<StoreId>(&meta, KEY_STORE_ID).map_err(corrupt_store)?;
        if store_id.is_none() && may_create && log.is_empty() && meta.is_empty() {
            let id = StoreId::random();
            let bytes = encode_record(&id).map_err(|e| corrupt_store(io::Error::other(e)))?;
            meta.insert(KEY_STORE_ID, bytes)
                .map_err(|e| corrupt_store(sled_io_error(e)))?;
            store_id = Some(id);
        }
        let marks = Arc::new(MarkState::new(data_dir, store_id, Recorded::default()));
        // Its first flush makes a new store id durable.
        let flusher = Flusher::start(db, path, opts.flush_observer.clone(), marks.clone())
            .map_err(|source| OpenError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let cluster_id = std::sync::OnceLock::new();
        if let Some(id) = read_meta_in::<ClusterId>(&meta, KEY_CLUSTER_ID).map_err(corrupt_store)? {
            let _ = cluster_id.set(id);
        }
        let store = Self {
            inner: Arc::new(Inner {
                flusher,
                log,
                meta,
                path: path.to_path_buf(),
                marks,
                cluster_id,
                adopting: tokio::sync::Mutex::new(()),
            }),
        };
        store.check_and_repair().map_err(corrupt_store)?;
        // Everything sled holds is durable now (the flusher flushed at start): the mark may
        // claim it.
        let recorded = Recorded {
            vote: store.read_meta(KEY_VOTE).map_err(corrupt_store)?,
            committed: store.read_meta(KEY_COMMITTED).map_err(corrupt_store)?,
        };
        store.inner.marks.set_recorded(recorded);
        Ok(store)
    }

    /// The store id in sled's `meta` tree; `None` if sled has lost it (or never had one).
    pub(crate) fn store_id(&self) -> Option<StoreId> {
        self.inner.marks.store_id()
    }

    /// The vote as stored.
    pub(crate) fn vote(&self) -> io::Result<Option<Vote>> {
        self.read_meta(KEY_VOTE)
    }

    /// The mark this store would write now, from what it has recorded (`None` without a store
    /// id). Everything in it is durable once a flush that started after this call succeeded.
    pub(crate) fn recorded_mark(&self) -> Option<StoreMark> {
        self.inner.marks.recorded_mark()
    }

    /// From now on the flusher keeps the store mark current. Call only once the store passed
    /// its checks against the mark.
    pub(crate) fn start_keeping_mark(&self) {
        self.inner.marks.start_keeping();
    }

    /// Rewrites the store mark at most once per `interval` instead of
    /// [`MARK_INTERVAL`](super::MARK_INTERVAL). For crash tests: with `Duration::ZERO` every
    /// flush rewrites it, so that kills also land in the middle of mark rewrites.
    #[doc(hidden)]
    pub fn set_mark_interval(&self, interval: std::time::Duration) {
        self.inner.marks.set_interval(interval);
    }

    /// The last log id held, or the last purged one when no entry is left.
    pub(crate) fn last_log_id(&self) -> io::Result<Option<LogId>> {
        let last_purged = self.read_meta::<LogId>(KEY_LAST_PURGED)?;
        let last_entry = match self.inner.log.last().map_err(sled_io_error)? {
            Some((key, value)) => Some(decode_entry(&key, &value)?.log_id),
            None => None,
        };
        Ok(std::cmp::max(last_entry, last_purged))
    }

    /// The highest log index this store holds or has purged behind a snapshot.
    pub(crate) fn log_end(&self) -> io::Result<Option<u64>> {
        Ok(self.last_log_id()?.map(|id| id.index))
    }

    /// Validates the whole stored log at open time (bounded by the snapshot policy, so a few
    /// thousand entries), and removes entries an interrupted purge left behind.
    fn check_and_repair(&self) -> io::Result<()> {
        self.read_meta::<Vote>(KEY_VOTE)?;
        self.read_meta::<LogId>(KEY_COMMITTED)?;
        let last_purged = self.read_meta::<LogId>(KEY_LAST_PURGED)?;

        if let Some(purged) = &last_purged {
            let removed = self.remove_up_to(purged.index)?;
            if removed > 0 {
                tracing::info!(
                    count = removed,
                    upto = purged.index,
                    "finished a purge interrupted by a crash"
                );
            }
        }

        let next = |index: u64| {
            index
                .checked_add(1)
                .ok_or_else(|| corrupt(format!("log index {index} cannot be followed")))
        };
        let mut expected = last_purged.as_ref().map(|p| next(p.index)).transpose()?;
        for item in self.inner.log.iter() {
            let (key, value) = item.map_err(sled_io_error)?;
            let entry = decode_entry(&key, &value)?;
            if let Some(want) = expected {
                if entry.log_id.index != want {
                    return Err(corrupt(format!(
                        "hole in the log: expected index {want}, found {} (last purged {:?})",
                        entry.log_id.index, last_purged
                    )));
                }
            }
            expected = Some(next(entry.log_id.index)?);
        }
        Ok(())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        read_meta_in(&self.inner.meta, key)
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let bytes = encode_record(value).map_err(io::Error::other)?;
        self.inner.meta.insert(key, bytes).map_err(sled_io_error)?;
        Ok(())
    }

    /// Keys of all entries with index `<= upto`.
    /// Removes every entry at or below `upto`, in bounded batches: one sled batch of tens of
    /// thousands of removals holds them all in memory at once (and sled's cache grows with it).
    /// Atomicity is not needed: callers write `last_purged` first, and `open` removes whatever
    /// a crash left behind. Returns how many entries went.
    fn remove_up_to(&self, upto: u64) -> io::Result<usize> {
        let mut removed = 0;
        loop {
            let keys: Vec<sled::IVec> = self
                .inner
                .log
                .range(..=key_of(upto))
                .keys()
                .take(MAX_REMOVALS_PER_BATCH)
                .collect::<Result<_, _>>()
                .map_err(sled_io_error)?;
            let count = keys.len();
            self.remove_keys(keys)?;
            removed += count;
            if count < MAX_REMOVALS_PER_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Removes `keys` in one atomic batch.
    fn remove_keys(&self, keys: Vec<sled::IVec>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        self.inner.log.apply_batch(batch).map_err(sled_io_error)
    }

    /// Records the cluster id without waiting for it to be durable: for a rebuild, whose
    /// seeding flush follows (see `open::rebuild_from_snapshot`).
    pub(crate) fn record_cluster_id(&self, id: ClusterId) -> io::Result<()> {
        self.write_meta(KEY_CLUSTER_ID, &id)?;
        let _ = self.inner.cluster_id.set(id);
        Ok(())
    }

    /// Waits for a flush covering every write made so far; with `mark`, the store mark is
    /// brought up to date before this returns.
    async fn flush(&self, mark: bool) -> io::Result<()> {
        self.inner
            .flusher
            .flush(mark)
            .await
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))
    }

    /// Appends `entries` and returns once they are durable. The [`RaftLogStorage::append`] of
    /// this store is this plus the callback; tools and tests use it without openraft.
    pub async fn append_durable(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for entry in &entries {
            let bytes = encode_record(entry).map_err(write_err)?;
            batch.insert(&key_of(entry.log_id.index)[..], bytes);
        }
        // Readable once this returns (openraft's requirement for `append`) ...
        self.inner.log.apply_batch(batch).map_err(write_err)?;
        // ... durable once this returns.
        self.flush(false).await.map_err(write_err)
    }

    /// Starts an empty log right after a snapshot: records `last_purged`, a committed id equal
    /// to it (a snapshot holds only committed entries) and `vote`, durably, and brings the store
    /// mark up to date (if kept). Synchronous (it blocks on the flusher) because a rebuild may
    /// run anywhere.
    pub(crate) fn seed_blocking(&self, last_purged: Option<LogId>, vote: &Vote) -> io::Result<()> {
        if let Some(last_purged) = last_purged {
            self.write_meta(KEY_LAST_PURGED, &last_purged)?;
            self.inner.marks.write_and_record(
                || self.write_meta(KEY_COMMITTED, &last_purged),
                |r| r.committed = Some(last_purged),
            )?;
        }
        self.inner
            .marks
            .write_and_record(|| self.write_meta(KEY_VOTE, vote), |r| r.vote = Some(*vote))?;
        self.inner
            .flusher
            .flush_blocking(true)
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))
    }

    /// The last purged log id, as stored.
    pub(crate) fn last_purged(&self) -> io::Result<Option<LogId>> {
        self.read_meta(KEY_LAST_PURGED)
    }

    /// The committed log id, as stored.
    pub(crate) fn committed(&self) -> io::Result<Option<LogId>> {
        self.read_meta(KEY_COMMITTED)
    }
}

fn is_lock_error(e: &io::Error) -> bool {
    // sled wraps the failed `flock` in an `Other` error with this text (sled 0.34 config.rs).
    e.to_string().contains("could not acquire lock")
}

/// The text of a caught panic, for error messages.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let keys = (key_bound(range.start_bound()), key_bound(range.end_bound()));
        let mut entries = Vec::new();
        for item in self.inner.log.range(keys) {
            let (key, value) = item.map_err(read_err)?;
            entries.push(decode_entry(&key, &value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_meta::<LogId>(KEY_LAST_PURGED).map_err(read_err)?;
        // With no entry left (all purged), the last log id is the last purged one.
        let last_log_id = self.last_log_id().map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote_err = |e: io::Error| StorageIOError::write_vote(AnyError::new(&e));
        self.inner
            .marks
            .write_and_record(|| self.write_meta(KEY_VOTE, vote), |r| r.vote = Some(*vote))
            .map_err(vote_err)?;
        // Raft's safety rests on never forgetting a vote: durable before returning, and in the
        // store mark too, so that a sled that loses it later refuses to open.
        self.flush(true).await.map_err(vote_err)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: see the module documentation. The next flush lets the mark claim it.
        let write = || match committed {
            Some(id) => self.write_meta(KEY_COMMITTED, &id),
            None => self
                .inner
                .meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(sled_io_error),
        };
        self.inner
            .marks
            .write_and_record(write, |r| r.committed = committed)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_COMMITTED).map_err(read_err)
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
        let result = self.append_durable(entries.into_iter().collect()).await;
        callback.log_io_completed(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::other(e.to_string())),
        });
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Everything from `log_id.index` on, in one batch, so no hole can appear.
        let keys = self
            .inner
            .log
            .range(key_of(log_id.index)..)
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(write_err)?;
        self.remove_keys(keys).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // `last_purged` first: if a crash lands between the two writes, the store reads as
        // purged and `open` deletes the leftovers, never the other way round (a log that
        // starts after a gap the metadata does not explain).
        let current = self
            .read_meta::<LogId>(KEY_LAST_PURGED)
            .map_err(write_err)?;
        if current.as_ref() < Some(&log_id) {
            self.write_meta(KEY_LAST_PURGED, &log_id)
                .map_err(write_err)?;
        }
        self.remove_up_to(log_id.index)
            .map(|_| ())
            .map_err(write_err)
    }
}

impl ClusterIdStore for SledLogStore {
    fn cluster_id(&self) -> Option<ClusterId> {
        self.inner.cluster_id.get().copied()
    }

    fn adopt_cluster_id(&self, id: ClusterId) -> AdoptFuture<'_> {
        Box::pin(async move {
            let _one_at_a_time = self.inner.adopting.lock().await;
            match self.cluster_id() {
                Some(held) if held == id => return Ok(()),
                Some(held) => return Err(AdoptError::OtherCluster { held, offered: id }),
                None => {}
            }
            self.write_meta(KEY_CLUSTER_ID, &id)?;
            self.flush(false).await?;
            // Published only once durable: nobody acts on an id a crash could take back.
            let _ = self.inner.cluster_id.set(id);
            Ok(())
        })
    }
}
