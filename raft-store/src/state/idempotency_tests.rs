//! Tests of the Idempotency-Key store, through the replicated state: every begin / finish /
//! release case, and expiry by `ExpireClaims`.

use super::idempotency::{MAX_IDEMPOTENCY_TTL_MS, MAX_STORED_ANSWER_BYTES};
use super::*;

const T: u64 = 100_000;
const K: [u8; 32] = [0x1D; 32];
const FP: [u8; 32] = [0xF1; 32];
const A1: [u8; 16] = [1; 16];
const A2: [u8; 16] = [2; 16];
const TTL: u64 = 60_000;
const STALE: u64 = 5_000;

fn start(fingerprint: [u8; 32], attempt: [u8; 16]) -> Op {
    Op::BeginIdempotent(IdempotentStart {
        key: K,
        fingerprint,
        attempt,
        ttl_ms: TTL,
        stale_after_ms: STALE,
    })
}

fn answer(status: u16, body: &[u8]) -> StoredAnswer {
    StoredAnswer {
        status,
        body: body.to_vec(),
    }
}

fn finish(attempt: [u8; 16], a: StoredAnswer) -> Op {
    Op::FinishIdempotent(IdempotentFinish {
        key: K,
        attempt,
        answer: a,
    })
}

fn release(attempt: [u8; 16]) -> Op {
    Op::ReleaseIdempotent { key: K, attempt }
}

impl PartialEq<IdempotencyBegun> for Response {
    fn eq(&self, other: &IdempotencyBegun) -> bool {
        matches!(self, Response::IdempotencyBegun(a) if a == other)
    }
}

impl PartialEq<IdempotencyEnded> for Response {
    fn eq(&self, other: &IdempotencyEnded) -> bool {
        matches!(self, Response::IdempotencyEnded(a) if a == other)
    }
}

/// Applies `op` at `at_ms`; checks the invariants, and that answers other than Started,
/// Finished and Released changed nothing.
fn run(s: &mut ClusterState, at_ms: u64, op: Op) -> Response {
    let before = s.clone();
    let mut answers = s.apply(&Command::single(at_ms, op));
    assert_eq!(s.check_invariants(), Ok(()));
    assert_eq!(answers.len(), 1);
    let a = answers.remove(0);
    if !matches!(
        a,
        Response::IdempotencyBegun(IdempotencyBegun::Started)
            | Response::IdempotencyEnded(IdempotencyEnded::Finished | IdempotencyEnded::Released)
    ) {
        let mut unchanged = before;
        unchanged.apply(&Command::single(at_ms, Op::ExpireClaims { limit: 0 }));
        assert_eq!(*s, unchanged, "{a:?} changed the state");
    }
    a
}

#[test]
fn a_new_key_starts_and_its_answer_is_replayed() {
    let mut s = ClusterState::default();
    assert_eq!(run(&mut s, T, start(FP, A1)), IdempotencyBegun::Started);
    assert_eq!(s.idempotency().len(), 1);
    let ok = answer(200, b"{\"success\":true}");
    assert_eq!(
        run(&mut s, T + 10, finish(A1, ok.clone())),
        IdempotencyEnded::Finished
    );
    // Any attempt, on any node, gets the answer.
    assert_eq!(
        run(&mut s, T + 20, start(FP, A2)),
        IdempotencyBegun::Replay(ok.clone())
    );
    assert_eq!(
        run(&mut s, T + 20, start(FP, A1)),
        IdempotencyBegun::Replay(ok)
    );
}

#[test]
fn another_request_under_the_same_key_is_a_mismatch_in_every_phase() {
    let mut s = ClusterState::default();
    run(&mut s, T, start(FP, A1));
    assert_eq!(
        run(&mut s, T, start([9; 32], A2)),
        IdempotencyBegun::Mismatch
    );
    // Even when the in-flight attempt is stale.
    assert_eq!(
        run(&mut s, T + STALE, start([9; 32], A2)),
        IdempotencyBegun::Mismatch
    );
    run(&mut s, T, finish(A1, answer(201, b"")));
    assert_eq!(
        run(&mut s, T, start([9; 32], A1)),
        IdempotencyBegun::Mismatch
    );
}

#[test]
fn a_running_request_blocks_others_until_it_is_stale_then_is_taken_over() {
    let mut s = ClusterState::default();
    run(&mut s, T, start(FP, A1));
    // A retried proposal of the same attempt is still the owner.
    assert_eq!(run(&mut s, T + 1, start(FP, A1)), IdempotencyBegun::Started);
    assert_eq!(
        run(&mut s, T + 1, start(FP, A2)),
        IdempotencyBegun::InFlight
    );
    assert_eq!(
        run(&mut s, T + STALE - 1, start(FP, A2)),
        IdempotencyBegun::InFlight
    );
    // The owner presumably died: A2 takes over; A1 can no longer finish or release.
    assert_eq!(
        run(&mut s, T + STALE, start(FP, A2)),
        IdempotencyBegun::Started
    );
    assert_eq!(
        run(&mut s, T + STALE, finish(A1, answer(200, b"late"))),
        IdempotencyEnded::NotOwner
    );
    assert_eq!(
        run(&mut s, T + STALE, release(A1)),
        IdempotencyEnded::NotOwner
    );
    // A1 is now the other attempt, and A2 was (re)started at T + STALE.
    assert_eq!(
        run(&mut s, T + 2 * STALE - 1, start(FP, A1)),
        IdempotencyBegun::InFlight
    );
    assert_eq!(
        run(&mut s, T + STALE + 1, finish(A2, answer(200, b"ok"))),
        IdempotencyEnded::Finished
    );
}

#[test]
fn the_first_answer_is_kept() {
    let mut s = ClusterState::default();
    run(&mut s, T, start(FP, A1));
    run(&mut s, T, finish(A1, answer(200, b"first")));
    let after_first = s.clone();
    assert_eq!(
        run(&mut s, T, finish(A1, answer(500, b"second"))),
        IdempotencyEnded::Finished
    );
    assert_eq!(
        run(&mut s, T, finish(A2, answer(500, b"other"))),
        IdempotencyEnded::Finished
    );
    assert_eq!(s, after_first);
    assert_eq!(
        run(&mut s, T, start(FP, A2)),
        IdempotencyBegun::Replay(answer(200, b"first"))
    );
    // A finished request cannot be released.
    assert_eq!(run(&mut s, T, release(A1)), IdempotencyEnded::NotOwner);
}

#[test]
fn a_release_forgets_the_key_so_a_retry_runs_again() {
    let mut s = ClusterState::default();
    run(&mut s, T, start(FP, A1));
    assert_eq!(run(&mut s, T, release(A2)), IdempotencyEnded::NotOwner);
    assert_eq!(run(&mut s, T, release(A1)), IdempotencyEnded::Released);
    assert!(s.idempotency().is_empty());
    assert_eq!(s.idempotency().next_expiry_ms(), None);
    assert_eq!(run(&mut s, T, release(A1)), IdempotencyEnded::NotOwner);
    assert_eq!(
        run(&mut s, T, finish(A1, answer(200, b""))),
        IdempotencyEnded::NotOwner
    );
    assert_eq!(run(&mut s, T, start(FP, A2)), IdempotencyBegun::Started);
}

#[test]
fn an_answer_too_large_is_not_stored() {
    let mut s = ClusterState::default();
    run(&mut s, T, start(FP, A1));
    let big = answer(200, &vec![7; MAX_STORED_ANSWER_BYTES + 1]);
    assert_eq!(run(&mut s, T, finish(A1, big)), IdempotencyEnded::TooLarge);
    // Still in flight: the owner may store a smaller answer, or release.
    let largest = answer(200, &vec![7; MAX_STORED_ANSWER_BYTES]);
    assert_eq!(
        run(&mut s, T, finish(A1, largest.clone())),
        IdempotencyEnded::Finished
    );
    assert_eq!(
        run(&mut s, T, start(FP, A2)),
        IdempotencyBegun::Replay(largest)
    );
}

#[test]
fn records_expire_at_their_ttl_through_expire_claims() {
    let mut s = ClusterState::default();
    run(&mut s, T, start(FP, A1));
    let other = IdempotentStart {
        key: [2; 32],
        fingerprint: FP,
        attempt: A1,
        ttl_ms: u64::MAX,
        stale_after_ms: u64::MAX,
    };
    run(&mut s, T + 1, Op::BeginIdempotent(other.clone()));
    run(&mut s, T + 2, finish(A1, answer(200, b"done")));
    assert_eq!(s.next_expiry_ms(), Some(T + TTL));
    let gc = |at_ms| Command::single(at_ms, Op::ExpireClaims { limit: 10 });
    assert_eq!(
        s.apply(&gc(T + TTL - 1)),
        vec![Response::Expired { removed: 0 }]
    );
    assert_eq!(
        s.apply(&gc(T + TTL)),
        vec![Response::Expired { removed: 1 }]
    );
    assert_eq!(s.idempotency().len(), 1);
    // Forgotten: the key starts afresh.
    assert_eq!(
        run(&mut s, T + TTL, start(FP, A2)),
        IdempotencyBegun::Started
    );
    // The TTL is clamped to 30 days; u64::MAX stale_after never overflows.
    assert_eq!(
        run(
            &mut s,
            T + TTL,
            Op::BeginIdempotent(IdempotentStart {
                attempt: A2,
                ..other
            })
        ),
        IdempotencyBegun::InFlight
    );
    assert_eq!(
        s.apply(&gc(T + 1 + MAX_IDEMPOTENCY_TTL_MS)),
        vec![Response::Expired { removed: 2 }]
    );
    assert!(s.idempotency().is_empty());
    assert_eq!(s.check_invariants(), Ok(()));
}
