//! Tests of the shared circuit breakers (I5): every transition, valid or not, and epochs.

use super::breakers::{MAX_BREAKERS, MAX_OPEN_MS};
use super::*;

const E: EndpointId = [0xE1; 16];
const T: u64 = 50_000;

fn mv(from_epoch: u64, to: BreakerTransition) -> BreakerMove {
    BreakerMove {
        endpoint: E,
        from_epoch,
        to,
    }
}

fn state(phase: BreakerPhase, epoch: u64, since_ms: u64) -> BreakerState {
    BreakerState {
        phase,
        epoch,
        since_ms,
    }
}

const OPEN: BreakerTransition = BreakerTransition::Open { open_ms: 1000 };
const HALF: BreakerTransition = BreakerTransition::HalfOpen;
const CLOSE: BreakerTransition = BreakerTransition::Close;

/// Applies `m` at `now` and asserts that a refusal or stale answer changed nothing.
fn apply(b: &mut BreakerBoard, m: BreakerMove, now: u64) -> BreakerAnswer {
    let before = b.clone();
    let answer = b.apply(&m, now);
    if !matches!(answer, BreakerAnswer::Moved(_)) {
        assert_eq!(*b, before);
    }
    answer
}

#[test]
fn an_unknown_endpoint_is_closed_at_epoch_zero() {
    let b = BreakerBoard::default();
    assert_eq!(b.get(&E), BreakerState::default());
    assert_eq!(b.get(&E), state(BreakerPhase::Closed, 0, 0));
    assert!(b.is_empty());
}

#[test]
fn the_full_cycle_moves_one_epoch_per_transition() {
    let mut b = BreakerBoard::default();
    let open = BreakerPhase::Open { until_ms: T + 1000 };
    assert_eq!(
        apply(&mut b, mv(0, OPEN), T),
        BreakerAnswer::Moved(state(open, 1, T))
    );
    assert_eq!(b.get(&E), state(open, 1, T));
    // Too early for a trial.
    assert_eq!(
        apply(&mut b, mv(1, HALF), T + 999),
        BreakerAnswer::Refused(state(open, 1, T))
    );
    let half = state(BreakerPhase::HalfOpen, 2, T + 1000);
    assert_eq!(
        apply(&mut b, mv(1, HALF), T + 1000),
        BreakerAnswer::Moved(half)
    );
    // The trial failed: open again, from HalfOpen.
    let reopened = state(BreakerPhase::Open { until_ms: T + 3000 }, 3, T + 2000);
    assert_eq!(
        apply(&mut b, mv(2, OPEN), T + 2000),
        BreakerAnswer::Moved(reopened)
    );
    apply(&mut b, mv(3, HALF), T + 5000);
    let closed = state(BreakerPhase::Closed, 5, T + 5001);
    assert_eq!(
        apply(&mut b, mv(4, CLOSE), T + 5001),
        BreakerAnswer::Moved(closed)
    );
    assert_eq!(b.len(), 1);
    assert_eq!(b.iter().collect::<Vec<_>>(), vec![(&E, &closed)]);
}

#[test]
fn invalid_transitions_are_refused() {
    let mut b = BreakerBoard::default();
    let closed = BreakerState::default();
    // From Closed only Open is valid.
    assert_eq!(
        apply(&mut b, mv(0, HALF), T),
        BreakerAnswer::Refused(closed)
    );
    assert_eq!(
        apply(&mut b, mv(0, CLOSE), T),
        BreakerAnswer::Refused(closed)
    );
    assert!(
        b.is_empty(),
        "a refused move of a new endpoint records nothing"
    );
    // From Open only HalfOpen (in time) is valid.
    apply(&mut b, mv(0, OPEN), T);
    let open = b.get(&E);
    assert_eq!(
        apply(&mut b, mv(1, OPEN), T + 5000),
        BreakerAnswer::Refused(open)
    );
    assert_eq!(
        apply(&mut b, mv(1, CLOSE), T + 5000),
        BreakerAnswer::Refused(open)
    );
    // From HalfOpen, Open and Close are valid, HalfOpen is not.
    apply(&mut b, mv(1, HALF), T + 5000);
    let half = b.get(&E);
    assert_eq!(
        apply(&mut b, mv(2, HALF), T + 5000),
        BreakerAnswer::Refused(half)
    );
}

#[test]
fn a_move_from_another_epoch_is_stale() {
    let mut b = BreakerBoard::default();
    // Two nodes saw failures at epoch 0: the first opens it, the second learns it is open.
    let first = apply(&mut b, mv(0, OPEN), T);
    let BreakerAnswer::Moved(opened) = first else {
        panic!("not moved: {first:?}");
    };
    assert_eq!(
        apply(&mut b, mv(0, OPEN), T + 1),
        BreakerAnswer::Stale(opened)
    );
    // From the future, too.
    assert_eq!(
        apply(&mut b, mv(7, HALF), T + 5000),
        BreakerAnswer::Stale(opened)
    );
    // New endpoints are at epoch 0.
    let other = BreakerMove {
        endpoint: [2; 16],
        from_epoch: 1,
        to: OPEN,
    };
    assert_eq!(
        apply(&mut b, other, T),
        BreakerAnswer::Stale(BreakerState::default())
    );
}

#[test]
fn epochs_only_grow_and_openings_are_clamped() {
    let mut b = BreakerBoard::default();
    let mut epoch = 0;
    let mut now = T;
    for _ in 0..10 {
        for to in [BreakerTransition::Open { open_ms: u64::MAX }, HALF, CLOSE] {
            let answer = apply(&mut b, mv(epoch, to), now);
            let BreakerAnswer::Moved(s) = answer else {
                panic!("not moved: {answer:?}");
            };
            assert_eq!(s.epoch, epoch + 1);
            if let BreakerPhase::Open { until_ms } = s.phase {
                assert_eq!(until_ms, now + MAX_OPEN_MS);
                now = until_ms;
            }
            epoch = s.epoch;
        }
    }
    assert_eq!(b.get(&E).epoch, 30);
    // Opening at the end of time does not overflow.
    let answer = apply(&mut b, mv(30, OPEN), u64::MAX);
    assert_eq!(
        answer,
        BreakerAnswer::Moved(state(
            BreakerPhase::Open { until_ms: u64::MAX },
            31,
            u64::MAX
        ))
    );
}

#[test]
fn a_new_endpoint_beyond_the_cap_is_full() {
    let mut b = BreakerBoard::default();
    for i in 0..MAX_BREAKERS as u16 {
        let mut endpoint = [0; 16];
        endpoint[..2].copy_from_slice(&i.to_be_bytes());
        let m = BreakerMove {
            endpoint,
            from_epoch: 0,
            to: OPEN,
        };
        assert!(matches!(b.apply(&m, T), BreakerAnswer::Moved(_)));
    }
    assert_eq!(apply(&mut b, mv(0, OPEN), T), BreakerAnswer::Full);
    assert_eq!(b.len(), MAX_BREAKERS);
    // Known endpoints still move.
    let known = BreakerMove {
        endpoint: [0; 16],
        from_epoch: 1,
        to: HALF,
    };
    assert!(matches!(b.apply(&known, T + 1000), BreakerAnswer::Moved(_)));
}

#[test]
fn moves_go_through_the_state_at_command_time() {
    let mut s = ClusterState::default();
    let answers = s.apply(&Command {
        at_ms: T,
        ops: vec![Op::MoveBreaker(mv(0, OPEN)), Op::MoveBreaker(mv(0, OPEN))],
    });
    let open = state(BreakerPhase::Open { until_ms: T + 1000 }, 1, T);
    assert_eq!(
        answers,
        vec![
            Response::Breaker(BreakerAnswer::Moved(open)),
            Response::Breaker(BreakerAnswer::Stale(open)),
        ]
    );
    assert_eq!(s.breakers().get(&E), open);
}
