//! The one thread that makes sled's writes durable (group commit).
//!
//! Why a thread of our own (see `reference/raft-stack.md` §2.6 and ARCHITECTURE.md hazards):
//! - concurrent `flush_async` calls deadlock sled 0.34 (sled#1308), so it is never called;
//! - sled's `flush()` ends in `sync_file_range`, which neither flushes the disk's write cache
//!   nor persists a grown file size (sled#1452), so every flush is followed by a real
//!   `fdatasync` of sled's files;
//! - one flush can cover any number of waiting writers: the thread drains every request queued
//!   while it was busy, flushes once, and answers all of them.
//!
//! Writers first apply their batch to sled (so it is readable), then ask for a flush; a flush
//! that starts after the request was queued covers the write, because sled's log is ordered.
//!
//! The same thread keeps the store mark ([`super::mark`]) current after successful flushes.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use super::mark::{MarkKeeper, MarkState};
use super::FlushObserver;

/// How many waiters one flush answers at most, so a flood of writers cannot keep the thread
/// draining forever without flushing. Far above what openraft 0.9 queues (one append at a time
/// plus votes), so in practice every waiter present is drained.
const MAX_WAITERS_PER_FLUSH: usize = 4096;

/// Name of the flusher thread, visible in debuggers and `top -H`.
const THREAD_NAME: &str = "x402-sled-flush";

/// The outcome of one flush, shared by every waiter it covered.
pub(crate) type FlushResult = Result<(), Arc<io::Error>>;

/// Who is waiting for a flush: a task (the normal case) or a plain thread (one-off tools such
/// as a rebuild, which may run where no async runtime can be blocked on).
enum Waiter {
    Task(oneshot::Sender<FlushResult>),
    Thread(mpsc::Sender<FlushResult>),
}

impl Waiter {
    fn answer(self, result: FlushResult) {
        // A waiter that went away (its task was cancelled) needs no answer.
        let _ = match self {
            Waiter::Task(tx) => tx.send(result).ok(),
            Waiter::Thread(tx) => tx.send(result).ok(),
        };
    }
}

/// One request for a flush: who waits, and whether the mark must be rewritten before the answer
/// (a vote: losing one is the dangerous case, and votes are rare).
struct Request {
    waiter: Waiter,
    mark: bool,
}

/// Handle to the flusher thread. Dropping it stops the thread and waits for it, so sled's files
/// are closed (and their lock released) when the last store handle is gone.
pub(crate) struct Flusher {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread for the sled database `db` stored in `dir`; it keeps the mark of
    /// `marks` once that is switched on.
    pub(crate) fn start(
        db: sled::Db,
        dir: &Path,
        observer: Option<FlushObserver>,
        marks: Arc<MarkState>,
    ) -> io::Result<Self> {
        let mut target = FlushTarget::open(db, dir)?;
        // Make everything sled wrote while opening (conf, new files) durable before any
        // writer relies on the store.
        target.flush()?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || run(rx, target, observer, MarkKeeper::new(marks)))?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Waits until everything written to sled before this call is durable. With `mark`, the
    /// store mark (if kept) is also brought up to date before this returns.
    pub(crate) async fn flush(&self, mark: bool) -> FlushResult {
        let (tx, rx) = oneshot::channel();
        self.request(Waiter::Task(tx), mark)?;
        rx.await.map_err(|_| stopped())?
    }

    /// [`Flusher::flush`] for synchronous callers: blocks the calling thread.
    pub(crate) fn flush_blocking(&self, mark: bool) -> FlushResult {
        let (tx, rx) = mpsc::channel();
        self.request(Waiter::Thread(tx), mark)?;
        rx.recv().map_err(|_| stopped())?
    }

    fn request(&self, waiter: Waiter, mark: bool) -> FlushResult {
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { waiter, mark })
            .map_err(|_| stopped())
    }
}

fn stopped() -> Arc<io::Error> {
    Arc::new(io::Error::other("the sled flusher thread has stopped"))
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after at most one more flush (and a last
        // rewrite of the mark).
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the sled flusher thread panicked");
            }
        }
    }
}

fn run(
    requests: mpsc::Receiver<Request>,
    mut target: FlushTarget,
    observer: Option<FlushObserver>,
    mut marks: MarkKeeper,
) {
    // After a failed fsync the kernel may have dropped the dirty pages and report the next
    // fsync as a success ("fsyncgate"), so one failure fails every later flush too.
    let mut failed: Option<Arc<io::Error>> = None;
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_WAITERS_PER_FLUSH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if let Some(e) = &failed {
            for request in batch {
                request.waiter.answer(Err(e.clone()));
            }
            continue;
        }
        // Read before the flush: everything it claims was written to sled before the flush
        // started, so the flush covers it.
        let mark = marks.before_flush();
        let started = Instant::now();
        let result = target.flush().map_err(|e| {
            tracing::error!(error = %e, "sled flush failed; this store accepts no more writes");
            Arc::new(e)
        });
        if let Err(e) = &result {
            failed = Some(e.clone());
        }
        if let Some(observe) = &observer {
            // A panicking metrics callback must not take durability down with it.
            let elapsed = started.elapsed();
            if catch_unwind(AssertUnwindSafe(|| observe(elapsed))).is_err() {
                tracing::error!("the flush observer panicked");
            }
        }
        let urgent = batch.iter().any(|r| r.mark);
        if urgent && result.is_ok() {
            marks.after_flush(mark.clone(), true);
        }
        for request in batch {
            request.waiter.answer(result.clone());
        }
        if !urgent && result.is_ok() {
            marks.after_flush(mark, false);
        }
    }
    // The store is closing: leave a mark as current as sled, so that a store closed cleanly
    // can be checked against everything it held.
    if failed.is_none() && marks.behind() {
        let mark = marks.before_flush();
        match target.flush() {
            Ok(()) => marks.after_flush(mark, true),
            Err(e) => tracing::error!(error = %e, "last sled flush before closing failed"),
        }
    }
}

/// sled's database plus the files that must be fdatasync'ed after each `flush()`.
///
/// Every `fsync` may cost a device cache flush even when nothing is dirty, so only what can have
/// changed is synced each time: sled's `db` file always; `conf` and the directory entries only
/// when the directory's listing changed (sled writes `conf` when creating the database and
/// creates, renames and removes `snap.*` files now and then).
struct FlushTarget {
    db: sled::Db,
    /// sled's log and heap, held open so a flush costs no `open`.
    db_file: File,
    /// sled's directory.
    dir_path: PathBuf,
    dir: File,
    /// The directory's names as of the last sync of the directory.
    synced_names: BTreeSet<std::ffi::OsString>,
    /// sled stores values too big for its log as separate files here and never syncs them.
    blobs_dir: PathBuf,
    /// Blob files already synced, so each is synced once.
    synced_blobs: BTreeSet<std::ffi::OsString>,
}

impl FlushTarget {
    fn open(db: sled::Db, dir: &Path) -> io::Result<Self> {
        Ok(Self {
            db,
            db_file: File::open(dir.join("db"))?,
            dir_path: dir.to_path_buf(),
            dir: File::open(dir)?,
            // Empty: the first flush syncs `conf` and the directory.
            synced_names: BTreeSet::new(),
            blobs_dir: dir.join("blobs"),
            synced_blobs: BTreeSet::new(),
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.db.flush().map_err(sled_io_error)?;
        self.db_file.sync_data()?;
        self.sync_new_blobs()?;
        self.sync_directory_if_changed()
    }

    /// Syncs `conf`, new files and the directory itself when the listing differs from the last
    /// synced one. A listing is one `getdents`, far cheaper than a sync.
    fn sync_directory_if_changed(&mut self) -> io::Result<()> {
        let names = fs::read_dir(&self.dir_path)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<BTreeSet<_>>>()?;
        if names == self.synced_names {
            return Ok(());
        }
        for name in names.difference(&self.synced_names) {
            let path = self.dir_path.join(name);
            if path.is_file() {
                match File::open(&path) {
                    Ok(f) => f.sync_data()?,
                    // sled may remove an old snapshot file between listing and opening it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.dir.sync_all()?;
        self.synced_names = names;
        Ok(())
    }

    /// Syncs blob files sled created since the last flush. Log entries are far below sled's
    /// blob threshold, so the directory is normally empty and this is one `getdents`.
    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let entries = match fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = BTreeSet::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled may garbage-collect a blob between listing and opening it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced_any = true;
            }
            present.insert(name);
        }
        if synced_any {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// sled reports I/O failures as `sled::Error::Io`; everything else becomes `Other`.
pub(crate) fn sled_io_error(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}
