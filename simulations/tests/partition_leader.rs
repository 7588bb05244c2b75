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

/// Two runs of one seed make the same attempts with the same answers at the same simulated
/// times, elect the same leaders and end in the same state.
///
/// Only meaningful when built with `RUSTFLAGS="--cfg tokio_unstable"`: turmoil seeds each host's
/// tokio runtime only then, and tokio draws from that runtime's generator to order wake-ups
/// (`watch` channels, which openraft's metrics and the node's proposer wait on) and `select!`
/// branches. Without it, the first two writes waiting for a leader on one node reach the log in
/// either order and the runs drift apart from there.
#[test]
#[cfg_attr(
    not(tokio_unstable),
    ignore = "needs RUSTFLAGS=\"--cfg tokio_unstable\" (turmoil seeds tokio's runtimes only then)"
)]
fn one_seed_gives_one_trace() {
    let seed = seed_from_env();
    let _hint = ReplayHint::new(seed, "partition_leader", "one_seed_gives_one_trace");
    let wall = Instant::now();
    let first = scenarios::partition_leader(seed, PartitionTiming::short());
    let second = scenarios::partition_leader(seed, PartitionTiming::short());
    first.print();
    second.print();
    println!("wall time {:?} for both runs", wall.elapsed());
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
        first.final_report.history.attempts.len(),
        second.final_report.history.attempts.len(),
        "two runs of seed {seed} made different numbers of attempts"
    );
    assert_eq!(
        first.trace_hash, second.trace_hash,
        "two runs of seed {seed} produced different traces"
    );
}
