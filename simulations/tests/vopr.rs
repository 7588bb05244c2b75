//! Randomized simulation runs (`x402_simulations::vopr`): the CI budget of seeds in shards,
//! the regression seeds, one seed twice for determinism, and one seed on its own to replay.
//!
//! - `SIM_SEEDS=5000 cargo test --release -p x402-simulations --test vopr -- shard` sweeps
//!   more seeds (`SIM_FIRST_SEED` moves the start);
//! - `SIM_SEED=<n> SIM_VERBOSE=1 cargo test -p x402-simulations --test vopr -- one_seed --exact
//!   --nocapture` replays one seed, printing its schedule and every request.

use std::time::Instant;

use x402_simulations::seeds::{self, RunSet, SHARDS};
use x402_simulations::vopr::{self, VoprOptions};
use x402_simulations::{seed_from_env, ReplayHint};

/// Seeds a shard needs before it must have exercised every fault mode.
const MIN_SEEDS_FOR_COVERAGE: usize = 20;

fn shard(shard: u64) {
    let seeds = seeds::shard_seeds(seeds::first_seed(), seeds::seed_count(), shard);
    let set = RunSet::run(&seeds);
    println!("shard {shard}/{SHARDS}: {}", set.numbers());
    println!("fault modes exercised: {:?}", set.exercised());
    set.assert_passed();
    // Coverage is a property of the run set; a shard of the CI budget (25 seeds) covers every
    // mode, a handful of seeds need not.
    let missing = set.missing_modes();
    if seeds.len() >= MIN_SEEDS_FOR_COVERAGE {
        assert!(
            missing.is_empty(),
            "shard {shard} never exercised {missing:?}: widen the schedule or run more seeds"
        );
    } else if !missing.is_empty() {
        println!("(only {} seeds: not exercised {missing:?})", seeds.len());
    }
}

#[test]
fn shard_0() {
    shard(0)
}
#[test]
fn shard_1() {
    shard(1)
}
#[test]
fn shard_2() {
    shard(2)
}
#[test]
fn shard_3() {
    shard(3)
}
#[test]
fn shard_4() {
    shard(4)
}
#[test]
fn shard_5() {
    shard(5)
}
#[test]
fn shard_6() {
    shard(6)
}
#[test]
fn shard_7() {
    shard(7)
}

#[test]
fn regression_seeds() {
    let set = RunSet::run(&seeds::regression_seeds());
    println!("regressions: {}", set.numbers());
    set.assert_passed();
}

/// Two runs of one seed make the same requests with the same answers at the same simulated
/// times, apply the same faults and end in the same state.
#[test]
fn one_seed_twice_gives_one_trace() {
    let seed = seed_from_env();
    let _hint = ReplayHint::new(seed, "vopr", "one_seed_twice_gives_one_trace");
    let first = vopr::run(VoprOptions::for_seed(seed));
    let second = vopr::run(VoprOptions::for_seed(seed));
    if let Some((a, b)) = first
        .attempt_lines
        .iter()
        .zip(&second.attempt_lines)
        .find(|(a, b)| a != b)
    {
        panic!("two runs of seed {seed} diverged:\n  first:  {a}\n  second: {b}");
    }
    assert_eq!(
        first.trace_hash, second.trace_hash,
        "two runs of seed {seed} produced different traces"
    );
    println!("seed {seed}: trace {} twice", first.trace_hash);
}

#[test]
fn one_seed() {
    let seed = seed_from_env();
    let _hint = ReplayHint::new(seed, "vopr", "one_seed");
    let wall = Instant::now();
    let report = vopr::run(VoprOptions::for_seed(seed));
    if std::env::var_os("SIM_VERBOSE").is_some() {
        for line in &report.attempt_lines {
            println!("{line}");
        }
    }
    println!(
        "{}\ntrace {}\nwall {:?}",
        report.summary,
        report.trace_hash,
        wall.elapsed()
    );
    assert!(
        report.passed(),
        "violations:\n{}",
        report.violations.join("\n")
    );
}
