//! What a load-generator run measures: per-worker latency histograms and error counts (no
//! sharing on the hot path, merged at the end), the longest stall with no success, and the
//! [`BenchReport`] printed as JSON.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms hold, in microseconds; slower operations are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Three significant digits: values within 0.1% of the truth, at microsecond resolution.
const SIGFIGS: u8 = 3;

/// The result of one run, exactly the fields `--json` prints. Times are milliseconds with
/// microsecond precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchReport {
    /// Operations that succeeded.
    pub ops: u64,
    /// Wall-clock length of the run.
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// Latency percentiles of successful operations.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Operations that failed (any error, any unexpected answer).
    pub errors: u64,
    /// Operations that found no connection to their node (stopped, restarting) and went to the
    /// next one: never sent, so neither a success nor an error.
    #[serde(default)]
    pub failovers: u64,
    /// Longest stretch with no operation succeeding, including from the start to the first
    /// success and from the last success to the end.
    pub max_stall_ms: f64,
}

/// Errors of one kind, with the first message seen as an example for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureSummary {
    pub kind: &'static str,
    pub count: u64,
    pub example: String,
}

/// One worker's tally; owned by the worker so recording needs no lock.
#[derive(Debug)]
pub struct WorkerStats {
    latency_us: Histogram<u64>,
    pub ops: u64,
    pub errors: u64,
    pub failovers: u64,
    /// A handful of kinds at most, so a `Vec` beats a map.
    pub failures: Vec<FailureSummary>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerStats {
    pub fn new() -> Self {
        Self {
            latency_us: new_histogram(),
            ops: 0,
            errors: 0,
            failovers: 0,
            failures: Vec::new(),
        }
    }

    /// Records one successful operation.
    pub fn record_success(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Sub-microsecond answers still count as the lowest bucket.
        self.latency_us.saturating_record(us.max(1));
        self.ops += 1;
    }

    /// Records one failed operation; `message` is only called the first time a kind is seen, so
    /// a flood of errors formats no strings.
    pub fn record_failure(&mut self, kind: &'static str, message: impl FnOnce() -> String) {
        self.errors += 1;
        match self.failures.iter_mut().find(|f| f.kind == kind) {
            Some(f) => f.count += 1,
            None => self.failures.push(FailureSummary {
                kind,
                count: 1,
                example: message(),
            }),
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: WorkerStats) {
        #[allow(
            clippy::expect_used,
            reason = "both histograms come from new_histogram, equal bounds cannot go out of range"
        )]
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with equal bounds always add");
        self.ops += other.ops;
        self.errors += other.errors;
        self.failovers += other.failovers;
        for f in other.failures {
            match self.failures.iter_mut().find(|mine| mine.kind == f.kind) {
                Some(mine) => mine.count += f.count,
                None => self.failures.push(f),
            }
        }
    }

    /// The report of a run that lasted `elapsed` and stalled at most `max_stall`.
    pub fn report(&self, elapsed: Duration, max_stall: Duration) -> BenchReport {
        let seconds = elapsed.as_secs_f64();
        let (p50, p99, max) = if self.latency_us.is_empty() {
            (0, 0, 0)
        } else {
            (
                self.latency_us.value_at_quantile(0.50),
                self.latency_us.value_at_quantile(0.99),
                self.latency_us.max(),
            )
        };
        BenchReport {
            ops: self.ops,
            seconds: round3(seconds),
            ops_per_sec: if seconds > 0.0 {
                round3(self.ops as f64 / seconds)
            } else {
                0.0
            },
            p50_ms: us_to_ms(p50),
            p99_ms: us_to_ms(p99),
            max_ms: us_to_ms(max),
            errors: self.errors,
            failovers: self.failovers,
            max_stall_ms: us_to_ms(u64::try_from(max_stall.as_micros()).unwrap_or(u64::MAX)),
        }
    }
}

#[allow(
    clippy::expect_used,
    reason = "constant bounds; every bench test builds one, so they are valid"
)]
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIGS)
        .expect("constant histogram bounds are valid")
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The longest gap between successes, shared by all workers. Times are microseconds since the
/// run started, so the start counts as the "previous success" of the first one.
///
/// Recording is one `fetch_max` on the latest success time, so workers never wait on each other.
/// It is exact when successes are recorded in the order they complete; a worker delayed between
/// completing and recording can only make the reported stall longer, by that delay (workers
/// record right after completion, so this is microseconds), never shorter.
#[derive(Debug, Default)]
pub struct StallTracker {
    last_success_us: AtomicU64,
    max_gap_us: AtomicU64,
}

impl StallTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a success completing `at_us` after the start.
    pub fn record(&self, at_us: u64) {
        let previous = self.last_success_us.fetch_max(at_us, Ordering::Relaxed);
        if at_us > previous {
            self.max_gap_us
                .fetch_max(at_us - previous, Ordering::Relaxed);
        }
    }

    /// The longest gap, counting the stretch from the last success to `end_us` (the run's end).
    pub fn max_stall_us(&self, end_us: u64) -> u64 {
        let last = self.last_success_us.load(Ordering::Relaxed);
        let max = self.max_gap_us.load(Ordering::Relaxed);
        max.max(end_us.saturating_sub(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut stats = WorkerStats::new();
        // 1..=1000 ms: p50 = 500 ms, p99 = 990 ms, max = 1000 ms (within 0.1%).
        for ms in 1..=1000u64 {
            stats.record_success(Duration::from_millis(ms));
        }
        let r = stats.report(Duration::from_secs(2), Duration::ZERO);
        assert_eq!(r.ops, 1000);
        assert_eq!(r.ops_per_sec, 500.0);
        assert!((r.p50_ms - 500.0).abs() <= 0.5, "{}", r.p50_ms);
        assert!((r.p99_ms - 990.0).abs() <= 1.0, "{}", r.p99_ms);
        assert!((r.max_ms - 1000.0).abs() <= 1.0, "{}", r.max_ms);
    }

    #[test]
    fn microsecond_precision_is_kept() {
        let mut stats = WorkerStats::new();
        stats.record_success(Duration::from_micros(1234));
        let r = stats.report(Duration::from_secs(1), Duration::ZERO);
        assert_eq!(r.p50_ms, 1.234);
        assert_eq!(r.max_ms, 1.234);
    }

    #[test]
    fn empty_run_reports_zeros() {
        let stats = WorkerStats::new();
        let r = stats.report(Duration::ZERO, Duration::from_millis(5));
        assert_eq!((r.ops, r.errors, r.p99_ms, r.ops_per_sec), (0, 0, 0.0, 0.0));
        assert_eq!(r.max_stall_ms, 5.0);
    }

    #[test]
    fn merge_adds_counts_histograms_and_failure_kinds() {
        let mut a = WorkerStats::new();
        a.record_success(Duration::from_millis(1));
        a.record_failure("timeout", || "t1".into());
        let mut b = WorkerStats::new();
        b.record_success(Duration::from_millis(9));
        b.record_failure("timeout", || "t2".into());
        b.record_failure("connection", || "c1".into());
        b.record_failure("connection", || panic!("message formatted twice"));
        a.merge(b);
        let r = a.report(Duration::from_secs(1), Duration::ZERO);
        assert_eq!((r.ops, r.errors), (2, 4));
        assert!((r.max_ms - 9.0).abs() < 0.01);
        let kinds: Vec<_> = a
            .failures
            .iter()
            .map(|f| (f.kind, f.count, f.example.as_str()))
            .collect();
        assert_eq!(kinds, [("timeout", 2, "t1"), ("connection", 2, "c1")]);
    }

    #[test]
    fn stall_covers_start_middle_and_end() {
        // Successes at 300, 400, 1400, 1500 over a 2000 us run: start gap 300, middle gap 1000,
        // end gap 500.
        let t = StallTracker::new();
        for at in [300, 400, 1400, 1500] {
            t.record(at);
        }
        assert_eq!(t.max_stall_us(2000), 1000);
        // A long tail after the last success is a stall too.
        assert_eq!(t.max_stall_us(3000), 1500);
    }

    #[test]
    fn stall_from_start_when_first_success_is_late() {
        let t = StallTracker::new();
        t.record(5000);
        t.record(5100);
        assert_eq!(t.max_stall_us(5200), 5000);
    }

    #[test]
    fn stall_without_any_success_is_the_whole_run() {
        assert_eq!(StallTracker::new().max_stall_us(7000), 7000);
    }

    #[test]
    fn stall_is_never_underestimated_by_late_records() {
        // Workers finishing at 100 and 600 record in reverse order (the one at 100 was delayed
        // 500 us before recording). A late record invents no gap and the stall is never
        // underestimated; it is overestimated by at most that recording delay (600, not 500).
        let t = StallTracker::new();
        t.record(600);
        t.record(100);
        t.record(700);
        assert_eq!(t.max_stall_us(800), 600);
    }
}
