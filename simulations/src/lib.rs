//! x402-simulations: the real `x402-node` code on simulated turmoil hosts.
//!
//! - [`net`], [`clock`]: the network and wall-clock seams on turmoil;
//! - [`api`]: a JSON client of the admin API for simulated clients;
//! - [`cluster`]: [`cluster::SimCluster`], n nodes with memory stores that survive crashes, a
//!   control client driven synchronously by the test, fault helpers;
//! - [`workload`], [`history`]: clients writing claims continuously and what they saw;
//! - [`checks`]: end-of-run invariants (no acknowledged write lost, replicas identical);
//! - [`scenarios`]: two fixed fault scenarios (leader partitioned, leader crashed);
//! - [`vopr`]: one randomized run of a seed: [`world`] (the chain, token and keys), [`chain`]
//!   (each node's link to it), [`payments`] (x402 clients), [`faults`] (the schedule drawn from
//!   the seed), [`invariants`] and [`linearizability`] (the checkers), [`rng`];
//! - [`seeds`]: the run sets (CI shards, regression seeds, coverage, the numbers reported);
//! - [`signing`]: watches every settlement signature as it happens, against every replica's
//!   state at that instant.
//!
//! Tests are plain `#[test]`s (turmoil cannot run inside a tokio runtime), seeded from
//! `SIM_SEED`; see [`seed_from_env`] and [`ReplayHint`].

pub mod api;
pub mod chain;
pub mod checks;
pub mod clock;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod invariants;
pub mod linearizability;
pub mod net;
pub mod payments;
pub mod rng;
pub mod scenarios;
pub mod seeds;
pub mod signing;
pub mod vopr;
pub mod workload;
pub mod world;

/// Seed used when `SIM_SEED` is not set.
pub const DEFAULT_SEED: u64 = 42;

/// The seed of this run: `SIM_SEED` if set, else [`DEFAULT_SEED`].
pub fn seed_from_env() -> u64 {
    match std::env::var("SIM_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SIM_SEED={v:?} is not a u64")),
        Err(_) => DEFAULT_SEED,
    }
}

/// Installs a log subscriber when `RUST_LOG` is set (openraft is loud during partitions).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Prints how to replay a run if the test fails (panics) while this is alive.
pub struct ReplayHint {
    pub seed: u64,
    pub test_binary: &'static str,
    pub test_name: &'static str,
}

impl ReplayHint {
    pub fn new(seed: u64, test_binary: &'static str, test_name: &'static str) -> Self {
        println!("simulation --seed {seed}");
        Self {
            seed,
            test_binary,
            test_name,
        }
    }
}

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nsimulation failed with --seed {seed}; replay with:\n  SIM_SEED={seed} cargo test -p x402-simulations --test {bin} -- {name} --exact --nocapture\n",
                seed = self.seed,
                bin = self.test_binary,
                name = self.test_name,
            );
        }
    }
}
