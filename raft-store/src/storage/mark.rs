//! The store mark: a small file next to sled that remembers a lower bound of what the store has
//! made durable, so that a sled database that lost data refuses to open instead of opening
//! silently with less.
//!
//! Why: sled 0.34 opens a `db` file whose first segment is garbage, or that was truncated, as an
//! empty store, and one with garbage in the middle as a store whose log is cut short, without
//! any error. A node restarted on such a store forgets its vote (it could vote twice in a term)
//! and entries it acknowledged (I7). The mark lives outside sled, at `<data_dir>/store.mark`:
//!
//! - `store_id`: random, also written into sled's `meta` tree when the store is created, so a
//!   sled that lost it (or another store's sled) is recognised;
//! - `vote`: a vote sled had made durable; sled's vote must be at least that (votes only grow);
//! - `committed`: a committed log id sled had made durable. Raft never truncates committed
//!   entries, it only purges them behind a snapshot, so the log, the purge point or the snapshot
//!   must reach at least that far. (Not the last log id: conflicting *uncommitted* entries may
//!   legitimately be truncated.)
//!
//! File format: `encode_record(StoreMark)` followed by the SHA-256 of those bytes, replaced
//! atomically (tmp file, fsync, rename, fsync of the directory).
//!
//! Keeping it current without a cost per write: the log store records in [`MarkState`] the vote
//! and committed id it writes into sled, under the same lock as the write. The flusher thread
//! reads them *before* a flush and writes them to the mark only after that flush succeeded, so
//! the mark never claims more than a completed flush covered. It does so at most once per
//! [`MARK_INTERVAL`], and at once (before answering) for a flush a vote asked for.
//!
//! The mark is only kept once the store passed its checks at open ([`MarkState::start_keeping`]):
//! a store refused for lost data must not overwrite the evidence with its smaller state.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::open::OpenError;
use super::snapshot_vault::sync_dir;
use crate::codec::{decode_record, encode_record};
use crate::types::{LogId, Vote};

/// The mark's file name inside a data directory.
pub const MARK_FILE: &str = "store.mark";
/// Where a new mark is written before it atomically replaces [`MARK_FILE`].
const MARK_TMP_FILE: &str = "store.mark.tmp";
/// The flusher rewrites the mark at most this often (plus once per vote): two small fsyncs per
/// interval under load, and a mark at most this far behind sled after a crash.
pub const MARK_INTERVAL: Duration = Duration::from_millis(500);
/// A mark is well under 200 bytes; a bigger file is not a mark.
const MAX_MARK_BYTES: u64 = 4096;
/// Size of the SHA-256 that ends the file.
const DIGEST_LEN: usize = 32;

/// The random id of one store, written into sled's `meta` tree and into the mark.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreId(pub [u8; 16]);

impl StoreId {
    pub(crate) fn random() -> Self {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self(id)
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreId({self})")
    }
}

/// What the mark file holds: a lower bound of what the store `store_id` has made durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMark {
    pub store_id: StoreId,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
}

fn encode_mark(mark: &StoreMark) -> io::Result<Vec<u8>> {
    let mut bytes = encode_record(mark).map_err(io::Error::other)?;
    let digest: [u8; DIGEST_LEN] = Sha256::digest(&bytes).into();
    bytes.extend_from_slice(&digest);
    Ok(bytes)
}

fn decode_mark(bytes: &[u8]) -> Result<StoreMark, String> {
    if bytes.len() <= DIGEST_LEN {
        return Err(format!("{} bytes is too short for a mark", bytes.len()));
    }
    let (record, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if Sha256::digest(record).as_slice() != digest {
        return Err("the file does not match its SHA-256 (damaged)".to_string());
    }
    decode_record(record).map_err(|e| e.to_string())
}

/// Reads the mark of the store in `data_dir`; `None` when there is none.
pub fn read_store_mark(data_dir: &Path) -> Result<Option<StoreMark>, OpenError> {
    let path = data_dir.join(MARK_FILE);
    let io_err = |source| OpenError::Io {
        path: path.clone(),
        source,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MARK_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_MARK_BYTES {
        return Err(OpenError::BadMark {
            path,
            reason: format!("larger than {MAX_MARK_BYTES} bytes"),
        });
    }
    decode_mark(&bytes)
        .map(Some)
        .map_err(|reason| OpenError::BadMark {
            path: path.clone(),
            reason,
        })
}

/// Atomically and durably replaces the mark of the store in `data_dir`.
pub(crate) fn write_store_mark(data_dir: &Path, mark: &StoreMark) -> io::Result<()> {
    let bytes = encode_mark(mark)?;
    let tmp = data_dir.join(MARK_TMP_FILE);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, data_dir.join(MARK_FILE))?;
    sync_dir(data_dir)
}

/// Checks a store that opened against its mark. `durable_end` is the highest log index the
/// store still holds or covers: its last entry, its purge point or its snapshot. Returns what
/// was lost, for [`OpenError::DataLost`].
pub(crate) fn check_against_mark(
    mark: &StoreMark,
    store_id: Option<StoreId>,
    vote: Option<&Vote>,
    durable_end: Option<u64>,
) -> Result<(), String> {
    match store_id {
        None => {
            return Err(format!(
                "its mark names store {} (vote {}, committed up to {}), but the sled database \
                 has no store id: sled lost data (a damaged or truncated `db` file, or a missing \
                 `{}` directory)",
                mark.store_id,
                describe_vote(mark.vote.as_ref()),
                describe_index(mark.committed.map(|c| c.index)),
                super::open::SLED_DIR,
            ))
        }
        Some(id) if id != mark.store_id => {
            return Err(format!(
                "the sled database belongs to store {id}, but the mark names store {}: the \
                 `{}` directory was replaced by another store's",
                mark.store_id,
                super::open::SLED_DIR,
            ))
        }
        Some(_) => {}
    }
    let mut lost = Vec::new();
    if let Some(marked) = &mark.vote {
        // Votes only grow (openraft saves a vote only if it is greater), so a smaller one means
        // the newer one was lost.
        if !vote.is_some_and(|v| v >= marked) {
            lost.push(format!(
                "vote of {} recorded, store has {}",
                describe_vote(Some(marked)),
                match vote {
                    Some(v) => format!("only {}", describe_vote(Some(v))),
                    None => "none".to_string(),
                }
            ));
        }
    }
    if let Some(committed) = &mark.committed {
        if durable_end < Some(committed.index) {
            lost.push(format!(
                "log ends at {} but {} were committed",
                describe_index(durable_end),
                committed.index
            ));
        }
    }
    if lost.is_empty() {
        Ok(())
    } else {
        Err(lost.join("; "))
    }
}

fn describe_vote(vote: Option<&Vote>) -> String {
    match vote {
        Some(v) => format!(
            "term {} for node {} ({})",
            v.leader_id.term,
            v.leader_id.node_id,
            if v.committed {
                "granted by a quorum"
            } else {
                "not yet granted"
            }
        ),
        None => "none".to_string(),
    }
}

fn describe_index(index: Option<u64>) -> String {
    match index {
        Some(i) => i.to_string(),
        None => "nothing".to_string(),
    }
}

/// What the log store has written into sled and the mark may claim once flushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) vote: Option<Vote>,
    pub(crate) committed: Option<LogId>,
}

/// Shared by a [`SledLogStore`](super::SledLogStore) and its flusher thread.
#[derive(Debug)]
pub(crate) struct MarkState {
    data_dir: PathBuf,
    /// `None` for a sled database without a store id: such a store never opens, and its mark is
    /// never written.
    store_id: Option<StoreId>,
    inner: Mutex<MarkInner>,
}

#[derive(Debug)]
struct MarkInner {
    recorded: Recorded,
    /// Off until the store passed its checks at open.
    keeping: bool,
    /// [`MARK_INTERVAL`] unless a crash test asks for more rewrites.
    interval: Duration,
}

impl MarkState {
    pub(crate) fn new(data_dir: &Path, store_id: Option<StoreId>, recorded: Recorded) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            store_id,
            inner: Mutex::new(MarkInner {
                recorded,
                keeping: false,
                interval: MARK_INTERVAL,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MarkInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn store_id(&self) -> Option<StoreId> {
        self.store_id
    }

    /// Runs `write` (the sled write of a vote or committed id) and, if it succeeded, `record`s
    /// it, under one lock: what is recorded is always what sled was last given.
    pub(crate) fn write_and_record<T>(
        &self,
        write: impl FnOnce() -> io::Result<T>,
        record: impl FnOnce(&mut Recorded),
    ) -> io::Result<T> {
        let mut inner = self.lock();
        let out = write()?;
        record(&mut inner.recorded);
        Ok(out)
    }

    /// Sets what sled holds now (at open, once everything it holds is durable).
    pub(crate) fn set_recorded(&self, recorded: Recorded) {
        self.lock().recorded = recorded;
    }

    pub(crate) fn set_interval(&self, interval: Duration) {
        self.lock().interval = interval;
    }

    fn interval(&self) -> Duration {
        self.lock().interval
    }

    /// From now on the flusher keeps the mark current.
    pub(crate) fn start_keeping(&self) {
        self.lock().keeping = self.store_id.is_some();
    }

    /// The mark as recorded now, if it is being kept. Read it *before* a flush: after that flush,
    /// everything it claims is durable.
    fn current(&self) -> Option<StoreMark> {
        let inner = self.lock();
        let store_id = self.store_id.filter(|_| inner.keeping)?;
        Some(StoreMark {
            store_id,
            vote: inner.recorded.vote,
            committed: inner.recorded.committed,
        })
    }

    /// The mark from the recorded values, whether or not it is being kept yet (at open and at
    /// rebuild, after a flush).
    pub(crate) fn recorded_mark(&self) -> Option<StoreMark> {
        let inner = self.lock();
        Some(StoreMark {
            store_id: self.store_id?,
            vote: inner.recorded.vote,
            committed: inner.recorded.committed,
        })
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// The flusher thread's side: when to rewrite the mark.
pub(crate) struct MarkKeeper {
    state: Arc<MarkState>,
    written: Option<StoreMark>,
    written_at: Option<Instant>,
}

impl MarkKeeper {
    pub(crate) fn new(state: Arc<MarkState>) -> Self {
        Self {
            state,
            written: None,
            written_at: None,
        }
    }

    /// Call before a flush; pass the result to [`MarkKeeper::after_flush`] if it succeeded.
    pub(crate) fn before_flush(&self) -> Option<StoreMark> {
        self.state.current()
    }

    /// Rewrites the mark with `candidate` (read before the successful flush) if it changed and
    /// `urgent` or [`MARK_INTERVAL`] has passed since the last rewrite.
    pub(crate) fn after_flush(&mut self, candidate: Option<StoreMark>, urgent: bool) {
        let Some(mark) = candidate else { return };
        if self.written.as_ref() == Some(&mark) {
            return;
        }
        let interval = self.state.interval();
        let due = self.written_at.is_none_or(|at| at.elapsed() >= interval);
        if !(urgent || due) {
            return;
        }
        match write_store_mark(self.state.data_dir(), &mark) {
            Ok(()) => {
                self.written = Some(mark);
                self.written_at = Some(Instant::now());
            }
            // The old mark is still a valid (lower) bound; try again after the next flush.
            Err(e) => tracing::error!(error = %e, "cannot rewrite the store mark"),
        }
    }

    /// Whether the recorded state is ahead of the last mark written.
    pub(crate) fn behind(&self) -> bool {
        self.state
            .current()
            .is_some_and(|m| self.written.as_ref() != Some(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_file_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_store_mark(dir.path()).unwrap().is_none());
        let mark = StoreMark {
            store_id: StoreId::random(),
            vote: Some(Vote::new(5, 2)),
            committed: Some(openraft::testing::log_id(5, 2, 1005)),
        };
        write_store_mark(dir.path(), &mark).unwrap();
        assert_eq!(read_store_mark(dir.path()).unwrap(), Some(mark));
        let path = dir.path().join(MARK_FILE);
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read_store_mark(dir.path()), Err(OpenError::BadMark { .. })),
                "flip at {i}"
            );
        }
        for cut in 0..good.len() {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(read_store_mark(dir.path()).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn check_against_mark_names_what_was_lost() {
        let id = StoreId::random();
        let mark = StoreMark {
            store_id: id,
            vote: Some(Vote::new(5, 1)),
            committed: Some(openraft::testing::log_id(5, 1, 1005)),
        };
        let vote = Vote::new_committed(5, 1);
        assert!(check_against_mark(&mark, Some(id), Some(&vote), Some(1005)).is_ok());
        assert!(check_against_mark(&mark, Some(id), Some(&Vote::new(6, 2)), Some(2000)).is_ok());

        let e = check_against_mark(&mark, Some(id), None, Some(1005)).unwrap_err();
        assert!(
            e.contains("vote of term 5") && e.contains("has none"),
            "{e}"
        );
        let e = check_against_mark(&mark, Some(id), Some(&Vote::new(4, 1)), Some(1005));
        assert!(e.unwrap_err().contains("only term 4"));
        let e = check_against_mark(&mark, Some(id), Some(&vote), Some(445)).unwrap_err();
        assert!(e.contains("log ends at 445 but 1005 were committed"), "{e}");
        let e = check_against_mark(&mark, Some(id), Some(&vote), None).unwrap_err();
        assert!(e.contains("log ends at nothing"), "{e}");
        let e = check_against_mark(&mark, None, Some(&vote), Some(1005)).unwrap_err();
        assert!(e.contains("no store id"), "{e}");
        let e = check_against_mark(&mark, Some(StoreId::random()), Some(&vote), Some(1005));
        assert!(e.unwrap_err().contains("another store"));
    }
}
