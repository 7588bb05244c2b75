//! The leader crashes under a continuous write load, the other two elect a new one and keep
//! acknowledging writes, the crashed node restarts on its kept stores and catches up through a
//! snapshot install: nothing acknowledged is lost and it ends with the same state hash.
//!
//! Replay a failure with the seed it prints: `SIM_SEED=<n> cargo test -p x402-simulations
//! --test crash_leader -- <test> --exact --nocapture`.

use std::time::Instant;

use x402_simulations::scenarios;
use x402_simulations::{seed_from_env, ReplayHint};

#[test]
fn crashed_leader_restarts_and_catches_up_by_snapshot() {
    let seed = seed_from_env();
    let _hint = ReplayHint::new(
        seed,
        "crash_leader",
        "crashed_leader_restarts_and_catches_up_by_snapshot",
    );
    let wall = Instant::now();
    let report = scenarios::crash_leader(seed);
    report.print();
    println!("wall time {:?}", wall.elapsed());
}
