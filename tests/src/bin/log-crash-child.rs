//! The victim of the `kill -9` crash test (`tests/crash_sled_log.rs`).
//!
//! Runs a real single-node openraft Raft on the sled store in the given data directory and
//! claims nonces as fast as several concurrent writers can. Every claim the Raft acknowledges is
//! printed as `acked <n>` (one line, flushed) *after* `client_write` returns, so the test knows
//! exactly which writes a crash must not lose. Snapshots are taken every 100 entries so that
//! kills also land while snapshots are written and the log is purged.
//!
//! Usage: `log-crash-child <data-dir> <first-nonce-number> [<mark-interval-ms>]`; the optional
//! interval replaces the store's `MARK_INTERVAL` (0: the store mark is rewritten after every
//! flush, so that kills also land in the middle of mark rewrites).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::{BasicNode, Config, SnapshotPolicy};
use x402_raft_store::state::{ClaimOutcome, NonceClaim};
use x402_raft_store::storage::{open_sled_stores, SledOptions};
use x402_raft_store::types::Raft;
use x402_raft_store::{Command, Op, Response};
use x402_tests::single_node::{nonce_key, NoPeers, NODE_ID};

/// Concurrent writers, so that kills land with several writes in flight at once (openraft 0.9
/// still appends and flushes them one entry at a time on the leader).
const WRITERS: u64 = 8;
/// Entries between snapshots: small, so snapshots and purges happen in most runs, even on a
/// loaded machine.
const SNAPSHOT_EVERY: u64 = 100;
/// Entries kept behind a snapshot; small, so purges really delete entries.
const KEEP_BEHIND_SNAPSHOT: u64 = 20;
/// The test kills the child long before this; the limit only stops a forgotten child.
const MAX_RUN: Duration = Duration::from_secs(60);
/// How long to wait for the single node to become leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn claim(n: u64) -> Command {
    let now = now();
    Command::single(
        now.as_millis() as u64,
        Op::ClaimNonce(NonceClaim {
            key: nonce_key(n),
            fingerprint: [0xF0; 32],
            // Ten years ahead: no claim expires during the test.
            valid_before: now.as_secs() + 10 * 365 * 24 * 3600,
        }),
    )
}

async fn run(dir: PathBuf, first: u64, mark_interval: Option<Duration>) -> Result<(), String> {
    let (log, state_machine) =
        open_sled_stores(&dir, SledOptions::default()).map_err(|e| e.to_string())?;
    if let Some(interval) = mark_interval {
        log.set_mark_interval(interval);
    }
    let config = Config {
        cluster_name: "log-crash-child".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: KEEP_BEHIND_SNAPSHOT,
        purge_batch_size: 1,
        ..Config::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let raft = Raft::new(NODE_ID, Arc::new(config), NoPeers, log, state_machine)
        .await
        .map_err(|e| e.to_string())?;
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        // Restarted: do not sit out an election timeout.
        raft.trigger().elect().await.map_err(|e| e.to_string())?;
    } else {
        let members = BTreeMap::from([(NODE_ID, BasicNode::new("127.0.0.1:0"))]);
        raft.initialize(members).await.map_err(|e| e.to_string())?;
    }
    raft.wait(Some(LEADER_TIMEOUT))
        .current_leader(NODE_ID, "single node becomes leader")
        .await
        .map_err(|e| e.to_string())?;

    let next = Arc::new(AtomicU64::new(first));
    let mut writers = tokio::task::JoinSet::<Result<(), String>>::new();
    for _ in 0..WRITERS {
        let raft = raft.clone();
        let next = next.clone();
        writers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let response = raft
                    .client_write(claim(n))
                    .await
                    .map_err(|e| e.to_string())?;
                if response.data != [Response::Claim(ClaimOutcome::Accepted)] {
                    return Err(format!("claim {n} answered {:?}", response.data));
                }
                // One write per line, flushed at once: the test must see every ack that
                // happened before the kill, and a line cut by the kill has no newline.
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {n}")
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("stdout: {e}"))?;
            }
        });
    }
    match tokio::time::timeout(MAX_RUN, writers.join_next()).await {
        Ok(Some(Ok(Err(e)))) => Err(e),
        Ok(Some(Err(e))) => Err(format!("writer task failed: {e}")),
        Ok(_) => Err("writers stopped".to_string()),
        Err(_) => Ok(()),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(first)) = (args.next(), args.next()) else {
        eprintln!("usage: log-crash-child <data-dir> <first-nonce-number> [<mark-interval-ms>]");
        return ExitCode::from(2);
    };
    let Ok(first) = first.parse::<u64>() else {
        eprintln!("first nonce number must be an integer, got {first:?}");
        return ExitCode::from(2);
    };
    let mark_interval = match args.next().map(|ms| ms.parse::<u64>()) {
        None => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => {
            eprintln!("mark interval must be a number of milliseconds");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(PathBuf::from(dir), first, mark_interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("log-crash-child: {e}");
            ExitCode::FAILURE
        }
    }
}
