//! The load generator's engine, independent of what an operation is: [`run`] drives N workers
//! (tokio tasks) for a fixed time over a set of targets (nodes), each calling an async operation
//! in a loop, and measures it ([`BenchReport`]). `bench claims` ([`claims`]) and `bench verify` /
//! `bench settle` ([`payments`]) are operations plugged into the same driver, statistics and
//! JSON output.
//!
//! The driver is built to measure a cluster *through* failures: a failed operation is counted,
//! the worker moves to the next target and tries again after a short pause; nothing aborts the
//! run. An operation that could not even connect (a node stopped or restarting) was never sent:
//! it is a *failover*, counted apart, and the worker moves on to the next target at once
//! (pausing only when a whole round of targets refused), as a client of a cluster does.
//! Operations still in flight when the time is up are abandoned and counted neither way.
//! An operation source may also run dry (a finite pool of pre-signed payments): its workers then
//! stop early, and the run ends when the last one does.

pub mod claims;
pub mod payments;
pub mod stats;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

pub use stats::{BenchReport, FailureSummary, StallTracker, WorkerStats};

use crate::error::ClientError;

/// An operation's error, as the driver counts it.
pub trait Failure: fmt::Display {
    /// Short stable label to count errors by (e.g. `connection`, `http_5xx`).
    fn kind(&self) -> &'static str;

    /// The operation was certainly not sent (no connection could be made): a failover, not a
    /// failed operation.
    fn not_sent(&self) -> bool {
        false
    }
}

impl Failure for ClientError {
    fn kind(&self) -> &'static str {
        ClientError::kind(self)
    }

    fn not_sent(&self) -> bool {
        self.is_not_sent()
    }
}

/// How to drive a run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Number of concurrent workers.
    pub concurrency: usize,
    /// How long the run lasts.
    pub duration: Duration,
    /// Pause after a failed operation before the worker tries the next target, so a dead node
    /// answering "connection refused" instantly does not turn workers into a busy loop.
    pub retry_pause: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BenchError {
    #[error("no target nodes given")]
    NoTargets,
    #[error("concurrency must be at least 1")]
    NoWorkers,
    #[error("duration must be positive")]
    ZeroDuration,
}

/// What a run produced: the report plus what the JSON report leaves out.
#[derive(Clone, Debug)]
pub struct BenchOutcome {
    pub report: BenchReport,
    /// Errors by kind, in the order first seen.
    pub failures: Vec<FailureSummary>,
    pub concurrency: usize,
    pub targets: usize,
    /// Some worker found no operation left before the time was up (see [`run`]).
    pub ran_out: bool,
}

/// Runs `config.concurrency` workers for `config.duration`. Worker `i` starts on target
/// `i % targets.len()`, so load is spread round-robin; after a failure it moves to the next target.
///
/// `op` is called once per operation with the target to use. It returns a `'static` future, so
/// targets are typically `Arc`s (or cheap clones) the closure clones into the future; any
/// per-operation preparation (random request bodies) happens synchronously in the closure. It
/// returns `None` when there is no operation left: the worker stops, whatever the time.
pub async fn run<T, F, Fut, E>(
    targets: Vec<T>,
    config: &BenchConfig,
    op: F,
) -> Result<BenchOutcome, BenchError>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Option<Fut> + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Failure + 'static,
{
    if targets.is_empty() {
        return Err(BenchError::NoTargets);
    }
    if config.concurrency == 0 {
        return Err(BenchError::NoWorkers);
    }
    if config.duration.is_zero() {
        return Err(BenchError::ZeroDuration);
    }
    let target_count = targets.len();
    let shared = Arc::new(Shared {
        targets,
        op,
        stall: StallTracker::new(),
        ran_out: AtomicBool::new(false),
        start: Instant::now(),
        deadline: Instant::now() + config.duration,
        retry_pause: config.retry_pause,
    });
    let mut workers = JoinSet::new();
    for worker in 0..config.concurrency {
        workers.spawn(Arc::clone(&shared).worker(worker % target_count));
    }
    let mut total = WorkerStats::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(stats) => total.merge(stats),
            // A panicking operation is a bug in the caller: surface it, do not hide it in a count.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {} // cancelled: only happens if the runtime shuts down under us.
        }
    }
    let elapsed = shared.start.elapsed();
    let max_stall = Duration::from_micros(shared.stall.max_stall_us(micros(elapsed)));
    Ok(BenchOutcome {
        report: total.report(elapsed, max_stall),
        failures: total.failures,
        concurrency: config.concurrency,
        targets: target_count,
        ran_out: shared.ran_out.load(Ordering::Relaxed),
    })
}

/// What all workers of a run share (read-only, except the atomic stall tracker).
struct Shared<T, F> {
    targets: Vec<T>,
    op: F,
    stall: StallTracker,
    /// Set by a worker that found no operation left.
    ran_out: AtomicBool,
    start: Instant,
    deadline: Instant,
    retry_pause: Duration,
}

impl<T, F> Shared<T, F> {
    async fn worker<Fut, E>(self: Arc<Self>, mut target: usize) -> WorkerStats
    where
        F: Fn(&T) -> Option<Fut>,
        Fut: Future<Output = Result<(), E>>,
        E: Failure,
    {
        let mut stats = WorkerStats::new();
        // Targets that refused a connection in a row: a full round of them means no node is
        // there right now, and the worker pauses instead of spinning.
        let mut refused_in_row = 0;
        loop {
            let started = Instant::now();
            if started >= self.deadline {
                break;
            }
            let Some(operation) = (self.op)(&self.targets[target]) else {
                self.ran_out.store(true, Ordering::Relaxed);
                break;
            };
            match tokio::time::timeout_at(self.deadline, operation).await {
                // Time is up with the operation in flight: it counts neither way.
                Err(_) => break,
                Ok(Ok(())) => {
                    let done = Instant::now();
                    self.stall.record(micros(done - self.start));
                    stats.record_success(done - started);
                    refused_in_row = 0;
                    continue;
                }
                Ok(Err(e)) if e.not_sent() => {
                    stats.failovers += 1;
                    refused_in_row += 1;
                    target = (target + 1) % self.targets.len();
                    if refused_in_row < self.targets.len() {
                        continue;
                    }
                    refused_in_row = 0;
                }
                // The error is dropped here, before the pause: it need not be `Send`.
                Ok(Err(e)) => {
                    stats.record_failure(e.kind(), || e.to_string());
                    target = (target + 1) % self.targets.len();
                }
            }
            let resume = (Instant::now() + self.retry_pause).min(self.deadline);
            tokio::time::sleep_until(resume).await;
        }
        stats
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug)]
    struct Boom;
    impl fmt::Display for Boom {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("boom")
        }
    }
    impl Failure for Boom {
        fn kind(&self) -> &'static str {
            "boom"
        }
    }

    fn config(concurrency: usize, millis: u64) -> BenchConfig {
        BenchConfig {
            concurrency,
            duration: Duration::from_millis(millis),
            retry_pause: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn failing_target_is_skipped_and_counted() {
        // Target 0 always fails, target 1 always succeeds: workers starting on 0 move to 1 and
        // stay there, so there are few errors and many ops.
        let calls = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let outcome = run(vec![0usize, 1], &config(4, 300), {
            let calls = Arc::clone(&calls);
            move |t: &usize| {
                calls[*t].fetch_add(1, Ordering::Relaxed);
                let ok = *t == 1;
                Some(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if ok {
                        Ok(())
                    } else {
                        Err(Boom)
                    }
                })
            }
        })
        .await
        .unwrap();
        let r = &outcome.report;
        assert_eq!(
            r.errors, 2,
            "two of four workers start on the failing target"
        );
        assert!(r.ops > 20, "{r:?}");
        assert_eq!(outcome.failures[0].kind, "boom");
        assert_eq!(outcome.failures[0].example, "boom");
        assert!(r.seconds >= 0.3 && r.seconds < 1.0, "{r:?}");
        assert!(r.max_stall_ms < 200.0, "{r:?}");
        assert!(!outcome.ran_out);
    }

    #[tokio::test]
    async fn all_failing_means_no_ops_and_a_full_stall() {
        let outcome = run(vec![()], &config(2, 200), |_: &()| {
            Some(async { Err(Boom) })
        })
        .await
        .unwrap();
        let r = outcome.report;
        assert_eq!(r.ops, 0);
        assert!(r.errors >= 2);
        assert!(r.max_stall_ms >= 200.0, "{r:?}");
    }

    #[tokio::test]
    async fn in_flight_operations_are_abandoned_at_the_deadline() {
        let outcome = run(vec![()], &config(3, 100), |_: &()| {
            Some(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<(), Boom>(())
            })
        })
        .await
        .unwrap();
        assert_eq!((outcome.report.ops, outcome.report.errors), (0, 0));
        assert!(outcome.report.seconds < 1.0);
    }

    #[tokio::test]
    async fn a_source_that_runs_dry_ends_the_run_early() {
        // 50 operations for 4 workers and 10 s: the run ends once they are done.
        let left = Arc::new(AtomicU64::new(50));
        let outcome = run(vec![()], &config(4, 10_000), move |_: &()| {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok()?;
            Some(async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<(), Boom>(())
            })
        })
        .await
        .unwrap();
        assert_eq!((outcome.report.ops, outcome.report.errors), (50, 0));
        assert!(outcome.ran_out);
        assert!(outcome.report.seconds < 5.0, "{:?}", outcome.report);
    }

    #[tokio::test]
    async fn bad_configs_are_refused() {
        let op = |_: &()| Some(async { Ok::<(), Boom>(()) });
        assert_eq!(
            run(Vec::<()>::new(), &config(1, 10), op).await.unwrap_err(),
            BenchError::NoTargets
        );
        assert_eq!(
            run(vec![()], &config(0, 10), op).await.unwrap_err(),
            BenchError::NoWorkers
        );
        assert_eq!(
            run(vec![()], &config(1, 0), op).await.unwrap_err(),
            BenchError::ZeroDuration
        );
    }
}
