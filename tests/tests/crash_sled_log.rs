//! `kill -9` crash test of the sled log store (guarantee I7: no acknowledged write lost).
//!
//! Runs `log-crash-child` (a real single-node Raft claiming nonces) on one data directory again
//! and again, killing it with SIGKILL after a random 20–300 ms: during start-up, writes,
//! snapshot builds and log purges. After every kill the test reopens the store itself, lets a
//! Raft on it catch up with its log, and checks that every nonce acknowledged in *any* round
//! so far is claimed in the state. A store that does not reopen fails the test loudly: that is
//! the known sled 0.34 hazard this test exists to catch.
//!
//! It also checks the store mark (`store.mark`, a lower bound of what the store made durable)
//! against every crash: the reopen must pass the mark check (a refusal after a plain `kill -9`
//! would be a false alarm that takes a healthy node down), and the mark the killed child left
//! must never claim more than the reopened store holds. Odd rounds run the child with the mark
//! rewritten after every flush (instead of every `MARK_INTERVAL`, longer than most rounds), so
//! kills land in the middle of mark rewrites too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use openraft::{Config, SnapshotPolicy};
use rand::Rng;
use x402_raft_store::storage::{
    open_sled_stores, read_store_mark, SledOptions, SnapshotVault, StoreMark,
};
use x402_raft_store::types::Raft;
use x402_tests::single_node::{nonce_key, NoPeers, NODE_ID};

/// Kill/reopen cycles on the same directory.
const ROUNDS: usize = 60;
/// How long the child runs before SIGKILL, chosen uniformly per round.
const RUN_MS: std::ops::RangeInclusive<u64> = 20..=300;
/// Nonce numbers of round `r` start at `r * NONCES_PER_ROUND`, so rounds never reuse one.
const NONCES_PER_ROUND: u64 = 1_000_000;
/// How long a reopened Raft may take to apply its whole log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// The test must actually exercise something: at least this many acknowledged writes overall
/// (a few hundred to a few thousand on an idle 2-core machine; start-up eats part of each run).
/// Fewer means the machine was too loaded for the kills to land anywhere interesting, and a
/// pass would mean nothing.
const MIN_TOTAL_ACKS: usize = 150;
/// Every `MARK_EVERY_FLUSH_EVERY`-th round the child rewrites the store mark after every flush.
const MARK_EVERY_FLUSH_EVERY: usize = 2;

/// Collects the complete `acked <n>` lines a child printed. A line cut by the kill has no
/// newline and is ignored: its write was never reported as acknowledged.
fn collect_acks(stdout: impl Read + Send + 'static) -> JoinHandle<Result<Vec<u64>, String>> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut acks = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| format!("reading child stdout: {e}"))?;
            if read == 0 || !line.ends_with('\n') {
                return Ok(acks);
            }
            let n = line
                .trim_end()
                .strip_prefix("acked ")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("unexpected child output {line:?}"))?;
            acks.push(n);
        }
    })
}

fn collect_text(stream: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stream).read_to_string(&mut text);
        text
    })
}

/// What one kill/reopen cycle saw.
struct RoundReport {
    acks: usize,
    last_log_index: Option<u64>,
    purged: bool,
    /// The killed child had rewritten the mark (it differs from the one the previous check left).
    child_moved_mark: bool,
    /// The mark the check left when it closed the store.
    mark_after_check: StoreMark,
}

/// Runs the child, kills it, and returns what it acknowledged.
fn run_child(dir: &Path, round: usize, run_for: Duration) -> Result<Vec<u64>, String> {
    let first = round as u64 * NONCES_PER_ROUND;
    let mut command = Process::new(env!("CARGO_BIN_EXE_log-crash-child"));
    command.arg(dir).arg(first.to_string());
    if round % MARK_EVERY_FLUSH_EVERY == 1 {
        command.arg("0");
    }
    let mut child: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn log-crash-child: {e}"))?;
    let acks = collect_acks(child.stdout.take().ok_or("no child stdout")?);
    let stderr = collect_text(child.stderr.take().ok_or("no child stderr")?);
    std::thread::sleep(run_for);
    let early_exit = child.try_wait().map_err(|e| format!("poll child: {e}"))?;
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no goodbye.
    let _ = child.kill();
    let _ = child.wait();
    let acks = acks.join().map_err(|_| "ack reader panicked")??;
    let stderr = stderr.join().unwrap_or_default();
    if let Some(status) = early_exit {
        return Err(format!(
            "the child exited on its own ({status}) before the kill; stderr:\n{stderr}"
        ));
    }
    Ok(acks)
}

/// Reopens the store, lets a single-node Raft on it apply its whole log, and checks every
/// acknowledged nonce. Everything is closed again before it returns (the next child needs the
/// sled lock).
async fn reopen_and_check(
    dir: &Path,
    acked: &BTreeSet<u64>,
    previous_mark: Option<&StoreMark>,
) -> Result<RoundReport, String> {
    // What the killed child left (none if it died before creating the store).
    let left_mark =
        read_store_mark(dir).map_err(|e| format!("FINDING: unreadable mark after kill -9: {e}"))?;
    let (log, state_machine) = open_sled_stores(dir, SledOptions::default())
        .map_err(|e| format!("FINDING: the store did not reopen after kill -9: {e}"))?;
    let state = state_machine.view();
    let vault = state_machine.vault().clone();
    let log_state = log
        .clone()
        .get_log_state()
        .await
        .map_err(|e| format!("get_log_state: {e}"))?;
    let last_log_index = log_state.last_log_id.map(|id| id.index);
    let vote = log
        .clone()
        .read_vote()
        .await
        .map_err(|e| format!("read_vote: {e}"))?;

    // The mark never claims more than the store holds after the crash (open checked the same;
    // this says it in the test's own words).
    if let Some(mark) = &left_mark {
        let durable_end = std::cmp::max(last_log_index, state.last_applied().map(|id| id.index));
        if mark.committed.map(|id| id.index) > durable_end {
            return Err(format!(
                "MARK AHEAD OF DATA: the mark says committed {:?}, the store ends at {durable_end:?}",
                mark.committed
            ));
        }
        if mark.vote.is_some() && vote < mark.vote {
            return Err(format!(
                "MARK AHEAD OF DATA: the mark says vote {:?}, the store has {vote:?}",
                mark.vote
            ));
        }
    }
    let child_moved_mark = left_mark.is_some() && left_mark.as_ref() != previous_mark;

    let config = Config {
        cluster_name: "crash-check".to_string(),
        // Disable automatic snapshots here: the check should see the child's work, not add its
        // own.
        snapshot_policy: SnapshotPolicy::Never,
        ..Config::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let raft = Raft::new(NODE_ID, Arc::new(config), NoPeers, log, state_machine)
        .await
        .map_err(|e| format!("Raft::new on the reopened store: {e}"))?;
    let result = async {
        if raft.is_initialized().await.map_err(|e| e.to_string())? {
            // Becoming leader commits (and so applies) every entry in the log.
            raft.trigger().elect().await.map_err(|e| e.to_string())?;
            raft.wait(Some(CATCH_UP_TIMEOUT))
                .applied_index_at_least(last_log_index, "reopened node applies its log")
                .await
                .map_err(|e| format!("applying the reopened log: {e}"))?;
        }
        let missing: Vec<u64> = state.read(|s| {
            acked
                .iter()
                .copied()
                .filter(|n| s.nonces().fingerprint_of(&nonce_key(*n)).is_none())
                .collect()
        });
        if !missing.is_empty() {
            return Err(format!(
                "LOST WRITES: {} acknowledged claims are missing after kill -9 (first: {:?}); \
                 applied {:?}, log state {log_state:?}",
                missing.len(),
                &missing[..missing.len().min(10)],
                state.last_applied(),
            ));
        }
        let snapshot = vault.load().map_err(|e| format!("load snapshot: {e}"))?;
        Ok((
            last_log_index,
            log_state.last_purged_log_id.is_some() && snapshot.is_some(),
        ))
    }
    .await;
    raft.shutdown()
        .await
        .map_err(|e| format!("shutting the check Raft down: {e}"))?;
    drop(raft);
    let (last_log_index, purged) = result?;
    // Closed cleanly: the mark is as current as the store.
    let mark_after_check = read_store_mark(dir)
        .map_err(|e| format!("mark after the check: {e}"))?
        .ok_or("no mark after the check closed the store")?;
    Ok(RoundReport {
        acks: 0,
        last_log_index,
        purged,
        child_moved_mark,
        mark_after_check,
    })
}

#[test]
fn acknowledged_writes_survive_repeated_kill_9() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("node-1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rng = rand::thread_rng();
    let mut acked = BTreeSet::new();
    let mut reports = BTreeMap::new();

    let mut outcome = Ok(());
    let mut previous_mark: Option<StoreMark> = None;
    for round in 0..ROUNDS {
        let run_for = Duration::from_millis(rng.gen_range(RUN_MS));
        let result = run_child(&data_dir, round, run_for).and_then(|acks| {
            let count = acks.len();
            acked.extend(acks);
            let mut report =
                runtime.block_on(reopen_and_check(&data_dir, &acked, previous_mark.as_ref()))?;
            report.acks = count;
            previous_mark = Some(report.mark_after_check.clone());
            Ok(report)
        });
        match result {
            Ok(report) => {
                reports.insert(round, report);
            }
            Err(e) => {
                outcome = Err(format!("round {round} (killed after {run_for:?}): {e}"));
                break;
            }
        }
    }

    if let Err(e) = outcome {
        // Keep the evidence for a post-mortem instead of deleting it with the temp dir.
        let kept = dir.keep();
        panic!("{e}\nstore kept at {}", kept.display());
    }
    let rounds_with_acks = reports.values().filter(|r| r.acks > 0).count();
    let purged_rounds = reports.values().filter(|r| r.purged).count();
    let mark_rounds = reports.values().filter(|r| r.child_moved_mark).count();
    let last_index = reports
        .values()
        .filter_map(|r| r.last_log_index)
        .max()
        .unwrap_or(0);
    eprintln!(
        "{ROUNDS} kill -9 rounds in {:?}: {} acknowledged claims, {rounds_with_acks} rounds \
         with acks, log reached index {last_index}, {purged_rounds} reopens found a snapshot \
         and a purged log, {mark_rounds} killed children had rewritten the store mark (every \
         reopen passed the mark check)",
        started.elapsed(),
        acked.len(),
    );
    assert!(
        acked.len() >= MIN_TOTAL_ACKS,
        "only {} writes were acknowledged: the test exercised too little",
        acked.len()
    );
    assert!(
        purged_rounds > 0,
        "no snapshot/purge happened: kills never hit the purge path"
    );
    assert!(
        mark_rounds > 0,
        "no killed child ever rewrote the store mark: the mark check was never put to the test"
    );
}
