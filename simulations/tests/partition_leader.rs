//! The leader is cut off from the other two nodes under a continuous write load (the clients
//! still reach it), a new leader takes over, the partition heals: nothing acknowledged is lost,
//! the old leader commits nothing, the replicas end identical. Plus: one seed, one trace.
//!
//! Replay a failure with the seed it prints: `SIM_SEED=<n> cargo test -p x402-simulations
//! --test partition_leader -- <test> --exact --nocapture`.

use std::time::Instant;

use x402_simulations::scenarios::{self, PartitionTiming};
use x402_simulations::{seed_from_env, ReplayHint};

#[test]
fn partitioned_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let seed = seed_from_env();
    let _hint = ReplayHint::new(
        seed,
        "partition_leader",
        "partitioned_leader_is_replaced_and_nothing_acknowledged_is_lost",
    );
    let wall = Instant::now();
    let report = scenarios::partition_leader(seed, PartitionTiming::standard());
    report.print();
    println!("wall time {:?}", wall.elapsed());
}

#[test]
fn one_seed_gives_one_trace() {
    let seed = seed_from_env();
    let _hint = ReplayHint::new(seed, "partition_leader", "one_seed_gives_one_trace");
    let wall = Instant::now();
    let first = scenarios::partition_leader(seed, PartitionTiming::short());
    let second = scenarios::partition_leader(seed, PartitionTiming::short());
    first.print();
    second.print();
    println!("wall time {:?} for both runs", wall.elapsed());
    assert_eq!(
        first.final_report.history.attempts.len(),
        second.final_report.history.attempts.len(),
        "two runs of seed {seed} made different numbers of attempts"
    );
    if let Some((a, b)) = first
        .final_report
        .history
        .attempts
        .iter()
        .zip(&second.final_report.history.attempts)
        .find(|(a, b)| a != b)
    {
        panic!("two runs of seed {seed} diverged:\n  first:  {a:?}\n  second: {b:?}");
    }
    assert_eq!(
        first.trace_hash, second.trace_hash,
        "two runs of seed {seed} produced different traces"
    );
}
