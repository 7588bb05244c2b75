//! Which seeds a run set covers: the CI budget (split into shards that nextest runs in
//! parallel), a larger local sweep (`SIM_SEEDS`), and the regression list of seeds that once
//! failed (`simulations/regressions.txt`). Also the run-set checks: every fault mode exercised,
//! and the numbers a report gives (seeds, simulated seconds per seed and per wall second).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::faults::FaultMode;
use crate::vopr::{self, VoprOptions, VoprReport};

/// Seeds one `scripts/test.sh` runs (over all shards).
pub const CI_SEEDS: u64 = 200;
/// Shards the CI seeds are split into (one test each, run in parallel).
pub const SHARDS: u64 = 8;
/// First seed of the CI budget.
pub const CI_FIRST_SEED: u64 = 1;

/// How many seeds to run: `SIM_SEEDS` if set (thousands locally), else [`CI_SEEDS`].
pub fn seed_count() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CI_SEEDS)
}

/// The first seed: `SIM_FIRST_SEED` if set (to sweep new ground), else [`CI_FIRST_SEED`].
pub fn first_seed() -> u64 {
    std::env::var("SIM_FIRST_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CI_FIRST_SEED)
}

/// The seeds of shard `shard` of `count` seeds from `first`.
pub fn shard_seeds(first: u64, count: u64, shard: u64) -> Vec<u64> {
    (first..first + count)
        .filter(|s| (s - first) % SHARDS == shard)
        .collect()
}

/// The seeds in `simulations/regressions.txt`.
pub fn regression_seeds() -> Vec<u64> {
    include_str!("../regressions.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("regressions.txt: {l:?} is not a seed"))
        })
        .collect()
}

/// What a set of runs did.
#[derive(Debug, Default)]
pub struct RunSet {
    pub reports: Vec<VoprReport>,
    pub wall: Duration,
}

impl RunSet {
    /// Runs every seed; stops at nothing (a failed seed is reported with the others).
    pub fn run(seeds: &[u64]) -> Self {
        let started = Instant::now();
        let mut reports = Vec::new();
        for &seed in seeds {
            let options = VoprOptions::for_seed(seed);
            let nodes = options.nodes;
            let report = std::panic::catch_unwind(|| vopr::run(options)).unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                VoprReport::panicked(seed, nodes, why)
            });
            println!("{}", report.summary);
            if !report.passed() {
                println!(
                    "SEED {seed} FAILED:\n  {}\n  replay: {}",
                    report.violations.join("\n  "),
                    replay_command(seed)
                );
            }
            reports.push(report);
        }
        Self {
            reports,
            wall: started.elapsed(),
        }
    }

    pub fn failed(&self) -> Vec<&VoprReport> {
        self.reports.iter().filter(|r| !r.passed()).collect()
    }

    pub fn exercised(&self) -> BTreeSet<FaultMode> {
        self.reports
            .iter()
            .flat_map(|r| r.exercised.iter().copied())
            .collect()
    }

    pub fn missing_modes(&self) -> Vec<FaultMode> {
        let seen = self.exercised();
        FaultMode::ALL
            .iter()
            .copied()
            .filter(|m| !seen.contains(m))
            .collect()
    }

    /// Seeds, simulated seconds per seed, simulated seconds per wall second.
    pub fn numbers(&self) -> String {
        let sim_s: f64 = self.reports.iter().map(|r| r.sim_ms as f64 / 1000.0).sum();
        let n = self.reports.len().max(1) as f64;
        format!(
            "{} seeds, {:.1} simulated s per seed, {:.1} simulated s per wall s ({:.1} s wall)",
            self.reports.len(),
            sim_s / n,
            sim_s / self.wall.as_secs_f64().max(1e-9),
            self.wall.as_secs_f64()
        )
    }

    /// Panics with every failed seed and its replay command.
    pub fn assert_passed(&self) {
        let failed = self.failed();
        if !failed.is_empty() {
            let lines: Vec<String> = failed
                .iter()
                .map(|r| {
                    format!(
                        "seed {}: {}\n  replay: {}",
                        r.seed,
                        r.violations.join("\n    "),
                        replay_command(r.seed)
                    )
                })
                .collect();
            panic!(
                "{} of {} seeds failed (add them to simulations/regressions.txt once fixed):\n{}",
                failed.len(),
                self.reports.len(),
                lines.join("\n")
            );
        }
    }
}

/// The command that replays one seed, printing its schedule and every request.
pub fn replay_command(seed: u64) -> String {
    format!("SIM_SEED={seed} SIM_VERBOSE=1 cargo test -p x402-simulations --test vopr -- one_seed --exact --nocapture")
}
