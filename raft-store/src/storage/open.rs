//! Opening a node's on-disk store, and rebuilding one that will not open.
//!
//! A data directory holds `raft.sled/` (the log and vote, [`SledLogStore`]), `snapshots/`
//! (the state machine's snapshot, [`FileSnapshotVault`]) and `store.mark` (a lower bound of what
//! the store made durable, [`super::mark`]). sled 0.34 has open reports of databases that fail
//! to reopen after a crash, and opens some damaged ones *silently* with less data
//! (ARCHITECTURE.md, known hazards), so every way a store can fail to open, or open with less
//! than its mark says it had, ends in an [`OpenError`] that tells the operator what to do, and
//! [`rebuild_from_snapshot`] turns a peer's snapshot into a fresh store without deleting the
//! broken one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::cluster_id::{ClusterId, ClusterIdStore};
use super::log_sled::SledLogStore;
use super::mark::{check_against_mark, read_store_mark, write_store_mark, MARK_FILE};
use super::snapshot_vault::{decode_snapshot_file, sync_dir, FileSnapshotVault, SnapshotVault};
use super::state_machine::StateMachineStore;
use super::FlushObserver;
use crate::codec::CodecError;
use crate::state::ClusterState;
use crate::types::{Vote, MAX_TERM};

/// sled's directory inside a data directory.
pub const SLED_DIR: &str = "raft.sled";
/// The snapshot vault's directory inside a data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Default size of sled's page cache. The log holds at most a few thousand small entries
/// between snapshots, so this is generous; the node's config can change it.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// How many suffixes `rebuild_from_snapshot` tries when a name for the moved-aside or the new
/// directory is taken (two rebuilds in the same second).
const MAX_NAME_ATTEMPTS: u32 = 100;

/// How the sled store is opened.
#[derive(Clone)]
pub struct SledOptions {
    /// sled's page cache size.
    pub cache_bytes: u64,
    /// Told how long each group-commit flush (sled flush + fdatasync) took, e.g. for a metric.
    pub flush_observer: Option<FlushObserver>,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            flush_observer: None,
        }
    }
}

impl fmt::Debug for SledOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledOptions")
            .field("cache_bytes", &self.cache_bytes)
            .field("flush_observer", &self.flush_observer.is_some())
            .finish()
    }
}

/// Why a store did not open (or could not be rebuilt).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot prepare store directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "store at {path} is in use by another process ({reason}); stop the other x402-node first"
    )]
    Locked { path: PathBuf, reason: String },
    #[error(
        "store at {path} will not open: {reason}; rebuild it from a peer with `x402-node rebuild`"
    )]
    WillNotOpen { path: PathBuf, reason: String },
    #[error(
        "store at {path} is corrupt: {reason}; rebuild it from a peer with `x402-node rebuild`"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "store at {path} has lost data it had made durable: {reason}; do not run this node on \
         it (it could vote twice in a term or lose acknowledged writes): rebuild it from a \
         healthy peer with `x402-node rebuild --from <peer URL>`"
    )]
    DataLost { path: PathBuf, reason: String },
    #[error(
        "store mark {path} is unreadable: {reason}; the store cannot be checked for lost data \
         without it: rebuild it from a healthy peer with `x402-node rebuild --from <peer URL>`"
    )]
    BadMark { path: PathBuf, reason: String },
    #[error(
        "snapshot in {path} is unreadable: {reason}; rebuild the store from a peer with `x402-node rebuild`"
    )]
    Snapshot { path: PathBuf, reason: String },
    #[error("the snapshot file given to rebuild is not valid: {0}")]
    InvalidSnapshotFile(CodecError),
    #[error(
        "the disk holding {path} is full: free space there and start the node again (the store \
         itself is not damaged; do not rebuild it)"
    )]
    DiskFull { path: PathBuf },
    #[error("the vote of the store at {path} was not reset: {reason}")]
    VoteNotReset { path: PathBuf, reason: String },
}

impl OpenError {
    /// Whether the store itself is damaged or lost data, so that only `x402-node rebuild` (not
    /// a restart) brings the node back; a lock, a full disk or a directory error may pass.
    pub fn needs_rebuild(&self) -> bool {
        matches!(
            self,
            OpenError::WillNotOpen { .. }
                | OpenError::Corrupt { .. }
                | OpenError::DataLost { .. }
                | OpenError::BadMark { .. }
                | OpenError::Snapshot { .. }
        )
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| {
        let plain = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        if source.kind() == io::ErrorKind::StorageFull {
            OpenError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            plain(source)
        }
    }
}

/// Creates `dir` if needed, making its entry in the parent durable.
fn ensure_dir(dir: &Path) -> Result<(), OpenError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    sync_parent(dir)
}

fn sync_parent(path: &Path) -> Result<(), OpenError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            sync_dir(parent).map_err(io_error(parent))
        }
        // A relative path with no parent component lives in the current directory.
        _ => sync_dir(Path::new(".")).map_err(io_error(path)),
    }
}

/// Opens (creating if needed) the store in `data_dir`: `raft.sled` for the log, `snapshots/`
/// for the state machine's snapshot, `store.mark` for what the store is known to have made
/// durable. Checks that the snapshot covers everything the log purged, and that sled still
/// holds everything the mark says it had: the same store id, a vote at least as recent, and a
/// log (or purge point, or snapshot) reaching the marked committed index.
///
/// A store is new only when sled is empty and there is no mark; creating one writes the store
/// id into sled (durably) and then the mark. A sled store with an id but no mark (a crash
/// between those two writes) gets its mark and opens.
pub fn open_sled_stores(
    data_dir: &Path,
    opts: SledOptions,
) -> Result<(SledLogStore, StateMachineStore<FileSnapshotVault>), OpenError> {
    ensure_dir(data_dir)?;
    let mark = read_store_mark(data_dir)?;
    let sled_dir = data_dir.join(SLED_DIR);
    let data_lost = |reason: String| OpenError::DataLost {
        path: data_dir.to_path_buf(),
        reason,
    };
    if let Some(mark) = &mark {
        if !sled_dir.exists() {
            // Do not let sled create an empty database that would then read as "lost".
            return Err(data_lost(format!(
                "its mark names store {}, but the `{SLED_DIR}` directory is missing",
                mark.store_id
            )));
        }
    }
    let log = SledLogStore::open(&sled_dir, data_dir, &opts, mark.is_none())?;
    let snapshot_dir = data_dir.join(SNAPSHOT_DIR);
    let vault = FileSnapshotVault::open(&snapshot_dir).map_err(io_error(&snapshot_dir))?;
    // sled and the vault may have just created their directories.
    sync_dir(data_dir).map_err(io_error(data_dir))?;
    let state_machine = StateMachineStore::open(vault).map_err(|e| OpenError::Snapshot {
        path: snapshot_dir.clone(),
        reason: e.to_string(),
    })?;

    let corrupt = |e: io::Error| OpenError::Corrupt {
        path: sled_dir.clone(),
        reason: e.to_string(),
    };
    let purged = log.last_purged().map_err(corrupt)?;
    let covered = state_machine.view().last_applied();
    let purged_index = purged.map(|id| id.index);
    if purged_index > covered.map(|id| id.index) {
        // The entries in between exist nowhere on this node any more; starting would serve a
        // state that silently misses them.
        return Err(OpenError::Corrupt {
            path: data_dir.to_path_buf(),
            reason: format!(
                "the log was purged up to {purged:?} but the snapshot only covers {covered:?}"
            ),
        });
    }

    match &mark {
        Some(mark) => {
            // Committed entries are in the log, or purged behind the snapshot, or covered by it
            // (a follower installing a snapshot may record the new committed id before its
            // purge).
            let durable_end =
                std::cmp::max(log.log_end().map_err(corrupt)?, covered.map(|id| id.index));
            let vote = log.vote().map_err(corrupt)?;
            check_against_mark(mark, log.store_id(), vote.as_ref(), durable_end)
                .map_err(data_lost)?;
        }
        None => match log.recorded_mark() {
            Some(new_mark) => {
                if log.vote().map_err(corrupt)?.is_some()
                    || log.log_end().map_err(corrupt)?.is_some()
                {
                    tracing::warn!(
                        path = %data_dir.display(),
                        "store {} had no {MARK_FILE} (a crash right after creating it?); writing it",
                        new_mark.store_id
                    );
                }
                write_store_mark(data_dir, &new_mark).map_err(io_error(data_dir))?;
            }
            None => {
                return Err(data_lost(
                    "the sled database holds data but has no store id, and there is no mark: \
                     it was written by a build without store marks, or lost its first segment"
                        .to_string(),
                ))
            }
        },
    }
    log.start_keeping_mark();
    Ok((log, state_machine))
}

/// Replaces the store in `data_dir` with one built from a peer's snapshot file
/// ([`encode_snapshot_file`](super::encode_snapshot_file) format, as served by
/// `GET /admin/snapshot`).
///
/// The new store is built and made durable in a sibling directory first, then swapped in (an
/// atomic exchange on Linux), so a crash leaves either the old store or the complete new one.
/// The old directory is moved to `<data_dir>.broken-<unix secs>`, never deleted, and that path
/// is returned; when there was no old directory the returned path is empty.
///
/// The new store holds the snapshot, a log whose `last_purged` is the snapshot's last log id,
/// and `vote`: the node must never vote again in a term it may have voted in before the
/// rebuild, so pass a vote at least as recent as any it could have cast (the cluster's term).
pub fn rebuild_from_snapshot(
    data_dir: &Path,
    snapshot_file: &[u8],
    vote: Vote,
    cluster_id: ClusterId,
) -> Result<PathBuf, OpenError> {
    let (meta, data) =
        decode_snapshot_file(snapshot_file).map_err(OpenError::InvalidSnapshotFile)?;
    // Refuse a snapshot whose state does not decode before anything on disk changes.
    ClusterState::from_bytes(&data).map_err(OpenError::InvalidSnapshotFile)?;

    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let fresh = unused_sibling(data_dir, &format!("rebuilding-{secs}"))?;
    ensure_dir(&fresh)?;
    {
        // A new store: a new store id, in sled and in its mark.
        let (log, state_machine) = open_sled_stores(&fresh, SledOptions::default())?;
        let snapshot_dir = fresh.join(SNAPSHOT_DIR);
        // The snapshot is durable before the log says everything up to it was purged.
        state_machine
            .vault()
            .save(&meta, &data)
            .map_err(io_error(&snapshot_dir))?;
        let sled_dir = fresh.join(SLED_DIR);
        // The store belongs to the cluster it is rebuilt from (made durable by the seeding).
        log.record_cluster_id(cluster_id)
            .map_err(io_error(&sled_dir))?;
        // Also brings the mark to the vote and to committed = the snapshot's last log id.
        log.seed_blocking(meta.last_log_id, &vote)
            .map_err(io_error(&sled_dir))?;
        // Dropping the last handle stops the flusher and closes sled before the swap.
    }
    let expected_mark = (Some(vote), meta.last_log_id);
    match read_store_mark(&fresh)? {
        Some(mark) if (mark.vote, mark.committed) == expected_mark => {}
        other => {
            return Err(OpenError::Io {
                path: fresh.join(MARK_FILE),
                source: io::Error::other(format!(
                    "the rebuilt store's mark reads {other:?}, expected vote {vote} and \
                     committed {:?}",
                    meta.last_log_id
                )),
            })
        }
    }
    sync_dir(&fresh).map_err(io_error(&fresh))?;
    sync_parent(&fresh)?;

    let moved_to = if data_dir.exists() {
        let aside = unused_sibling(data_dir, &format!("broken-{secs}"))?;
        swap_into_place(&fresh, data_dir, &aside)?;
        aside
    } else {
        std::fs::rename(&fresh, data_dir).map_err(io_error(data_dir))?;
        PathBuf::new()
    };
    sync_parent(data_dir)?;

    // Prove the result opens and is what was asked for before telling the operator it worked.
    let (log, state_machine) = open_sled_stores(data_dir, SledOptions::default())?;
    let applied = state_machine.view().last_applied();
    let purged = log.last_purged().map_err(io_error(data_dir))?;
    let held = log.cluster_id();
    if applied != meta.last_log_id || purged != meta.last_log_id || held != Some(cluster_id) {
        return Err(OpenError::Corrupt {
            path: data_dir.to_path_buf(),
            reason: format!(
                "rebuilt store reads applied {applied:?} / purged {purged:?} / cluster {held:?}, \
                 expected {:?} / {cluster_id}",
                meta.last_log_id
            ),
        });
    }
    Ok(moved_to)
}

/// `<path>.<suffix>`, or `<path>.<suffix>-<n>` if that is taken.
fn unused_sibling(path: &Path, suffix: &str) -> Result<PathBuf, OpenError> {
    let base = path
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    for attempt in 0..MAX_NAME_ATTEMPTS {
        let candidate = if attempt == 0 {
            PathBuf::from(format!("{base}.{suffix}"))
        } else {
            PathBuf::from(format!("{base}.{suffix}-{attempt}"))
        };
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(OpenError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free name of the form {base}.{suffix}-N"),
        ),
    })
}

/// Puts `fresh` at `target` and the old `target` at `aside`.
fn swap_into_place(fresh: &Path, target: &Path, aside: &Path) -> Result<(), OpenError> {
    #[cfg(target_os = "linux")]
    {
        match exchange(fresh, target) {
            // `fresh` now names the old store.
            Ok(()) => return std::fs::rename(fresh, aside).map_err(io_error(aside)),
            // Filesystems without RENAME_EXCHANGE: fall back to two renames below.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {}
            Err(e) => return Err(io_error(target)(e)),
        }
    }
    // Not atomic: a crash between the renames leaves no store at `target` (the new one waits
    // at `fresh`, the old one at `aside`), which an operator can finish by hand.
    std::fs::rename(target, aside).map_err(io_error(aside))?;
    std::fs::rename(fresh, target).map_err(io_error(target))
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    };
    let (a, b) = (to_c(a)?, to_c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What [`reset_vote`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteReset {
    pub old: Option<Vote>,
    pub new: Vote,
    /// The highest term in the log, purge point, commit point or snapshot.
    pub max_log_term: u64,
}

/// How far above the highest term of its log a reset vote goes by default: more elections than
/// a node can hold since its last entry in days of campaigning (about 6.7 a second at the
/// default timeouts: 2^20 is some 43 hours), so the node never votes again in a term it may
/// have voted in.
pub const RESET_VOTE_MARGIN: u64 = 1 << 20;

/// Replaces an impossible vote (a term above [`MAX_TERM`], which only a forged peer message
/// can have brought) of the stopped node `node_id` whose store is in `data_dir` with a vote for
/// itself, not committed, in `term` (default: the highest term of its log plus
/// [`RESET_VOTE_MARGIN`]). Refuses when the vote is sane (a sane vote is never lowered) or
/// when the log itself holds a term above the bound (forged entries were accepted: rebuild the
/// store from a peer instead). The vote is written into sled, flushed, and the store mark
/// follows it; the store is opened again to prove it.
pub fn reset_vote(
    data_dir: &Path,
    node_id: crate::types::NodeId,
    term: Option<u64>,
) -> Result<VoteReset, OpenError> {
    let refused = |reason: String| OpenError::VoteNotReset {
        path: data_dir.to_path_buf(),
        reason,
    };
    let (log, state_machine) = open_sled_stores(data_dir, SledOptions::default())?;
    let corrupt = |e: io::Error| OpenError::Corrupt {
        path: data_dir.to_path_buf(),
        reason: e.to_string(),
    };
    let old = log.vote().map_err(corrupt)?;
    let Some(current) = old.filter(|v| v.leader_id.term > MAX_TERM) else {
        return Err(refused(format!(
            "its vote ({old:?}) is within the bound {MAX_TERM}: a sane vote is never lowered"
        )));
    };
    let terms = [
        log.last_log_id().map_err(corrupt)?,
        log.committed().map_err(corrupt)?,
        log.last_purged().map_err(corrupt)?,
        state_machine.view().last_applied(),
    ];
    let max_log_term = terms
        .iter()
        .flatten()
        .map(|id| id.leader_id.term)
        .max()
        .unwrap_or(0);
    if max_log_term > MAX_TERM {
        return Err(refused(format!(
            "its log holds term {max_log_term}, above the bound {MAX_TERM}: forged entries were \
             accepted; rebuild the store from a healthy peer with `x402-node rebuild --from <URL>`"
        )));
    }
    let term = term.unwrap_or_else(|| max_log_term.saturating_add(RESET_VOTE_MARGIN));
    if term <= max_log_term || term > MAX_TERM {
        return Err(refused(format!(
            "term {term} must be above the log's highest term {max_log_term} and at most {MAX_TERM}"
        )));
    }
    let new = Vote::new(term, node_id);
    tracing::warn!(old = %current, new = %new, "resetting an impossible vote");
    let sled_dir = data_dir.join(SLED_DIR);
    log.seed_blocking(None, &new).map_err(io_error(&sled_dir))?;
    drop(log);
    drop(state_machine);
    let (log, _) = open_sled_stores(data_dir, SledOptions::default())?;
    match log.vote().map_err(corrupt)? {
        Some(v) if v == new => {}
        other => {
            return Err(refused(format!(
                "the store reads vote {other:?} after the reset"
            )))
        }
    }
    match read_store_mark(data_dir)? {
        Some(mark) if mark.vote == Some(new) => {}
        other => return Err(refused(format!("the mark reads {other:?} after the reset"))),
    }
    Ok(VoteReset {
        old,
        new,
        max_log_term,
    })
}
