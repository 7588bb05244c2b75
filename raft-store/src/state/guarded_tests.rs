//! Tests of the wiring of rate limits, breakers and idempotency records into the replicated
//! state: guarded operations, one expiry budget across every registry, snapshots and the
//! state hash.

use super::*;

const T: u64 = 1_000_000;

fn rate_key(n: u8, limit: u32) -> RateKey {
    RateKey {
        subject: u128::from(n),
        limit,
        window_ms: 1000,
    }
}

fn claim(n: u8) -> NonceClaim {
    NonceClaim {
        key: NonceKey {
            chain_id: 31337,
            asset: [1; 20],
            payer: [2; 20],
            nonce: [n; 32],
        },
        fingerprint: [7; 32],
        valid_before: 10_000,
    }
}

fn guarded(limit: u32, op: GuardedOp) -> Op {
    Op::Guarded {
        admission: Admission {
            keys: vec![rate_key(1, limit)],
        },
        op,
    }
}

fn run(s: &mut ClusterState, at_ms: u64, op: Op) -> Response {
    let mut answers = s.apply(&Command::single(at_ms, op));
    assert_eq!(s.check_invariants(), Ok(()));
    answers.remove(0)
}

#[test]
fn an_admitted_guard_applies_its_op_in_the_same_entry() {
    let mut s = ClusterState::default();
    let answer = run(&mut s, T, guarded(1, GuardedOp::ClaimNonce(claim(1))));
    let Response::Guarded {
        verdict: AdmissionVerdict::Admitted { quota: Some(q) },
        response: Some(inner),
    } = answer
    else {
        panic!("not admitted: {answer:?}");
    };
    assert_eq!(*inner, Response::Claim(ClaimOutcome::Accepted));
    assert_eq!(q.remaining, 0);
    assert_eq!(s.nonces().fingerprint_of(&claim(1).key), Some([7; 32]));
    assert_eq!(s.rate_limits().used(&1, T), 1);
}

#[test]
fn a_limited_guard_does_not_apply_its_op() {
    let mut s = ClusterState::default();
    run(&mut s, T, guarded(1, GuardedOp::ClaimNonce(claim(1))));
    let answer = run(&mut s, T + 10, guarded(1, GuardedOp::ClaimNonce(claim(2))));
    assert_eq!(
        answer,
        Response::Guarded {
            verdict: AdmissionVerdict::Limited {
                quota: Quota {
                    limit: 1,
                    remaining: 0,
                    reset_after_ms: 1090
                },
                retry_after_ms: 1090
            },
            response: None
        }
    );
    assert_eq!(s.nonces().fingerprint_of(&claim(2).key), None);
    assert_eq!(s.nonces().len(), 1);
}

#[test]
fn an_op_refused_by_its_own_registry_still_counts_as_admitted() {
    // The admission is for the request, whatever the request's outcome.
    let mut s = ClusterState::default();
    let expired = NonceClaim {
        valid_before: 1,
        ..claim(1)
    };
    let answer = run(&mut s, T, guarded(5, GuardedOp::ClaimNonce(expired)));
    let Response::Guarded {
        response: Some(inner),
        ..
    } = answer
    else {
        panic!("not admitted: {answer:?}");
    };
    assert_eq!(*inner, Response::Claim(ClaimOutcome::Expired));
    assert_eq!(s.rate_limits().used(&1, T), 1);
}

#[test]
fn leases_go_through_the_state() {
    let mut s = ClusterState::default();
    let request = LeaseRequest {
        id: LeaseId { node: 3, seq: 1 },
        key: rate_key(1, 10),
        want: 4,
        lease_ms: 1000,
    };
    let Response::Lease(grant) = run(&mut s, T, Op::TakeLease(request)) else {
        panic!("not a lease");
    };
    assert_eq!(grant.granted, 4);
    assert_eq!(
        run(&mut s, T, Op::TakeLease(request)),
        Response::Lease(grant)
    );
    assert_eq!(
        run(
            &mut s,
            T + 1000,
            Op::ReturnLease {
                id: request.id,
                unused: 3
            }
        ),
        Response::LeaseReturned { returned: 3 }
    );
    assert_eq!(s.rate_limits().used(&1, T + 1000), 1);
}

#[test]
fn expire_claims_takes_the_oldest_first_across_every_registry_within_one_budget() {
    let mut s = ClusterState::default();
    // A rate window due at T + 1100, an idempotency record due at T + 500, a claim due at
    // 10_000 s + the retention margin (far later).
    run(&mut s, T, guarded(5, GuardedOp::ClaimNonce(claim(1))));
    run(
        &mut s,
        T,
        Op::BeginIdempotent(IdempotentStart {
            key: [4; 32],
            fingerprint: [5; 32],
            attempt: [6; 16],
            ttl_ms: 500,
            stale_after_ms: 0,
        }),
    );
    assert_eq!(s.next_expiry_ms(), Some(T + 500));
    let gc = |limit| Op::ExpireClaims { limit };
    assert_eq!(
        run(&mut s, T + 5000, gc(1)),
        Response::Expired { removed: 1 }
    );
    assert!(s.idempotency().is_empty());
    assert_eq!(s.rate_limits().subjects(), 1);
    assert_eq!(s.next_expiry_ms(), Some(T + 1100));
    assert_eq!(
        run(&mut s, T + 5000, gc(10)),
        Response::Expired { removed: 1 }
    );
    assert_eq!(s.rate_limits().subjects(), 0);
    assert_eq!(s.nonces().len(), 1);
    assert_eq!(
        s.next_expiry_ms(),
        Some(10_000_000 + nonces::RETENTION_MARGIN_MS)
    );
}

/// A state with something in every registry.
fn busy() -> ClusterState {
    let mut s = ClusterState::default();
    run(&mut s, T, guarded(5, GuardedOp::ClaimNonce(claim(1))));
    run(
        &mut s,
        T,
        Op::TakeLease(LeaseRequest {
            id: LeaseId { node: 1, seq: 1 },
            key: rate_key(2, 10),
            want: 3,
            lease_ms: 500,
        }),
    );
    run(
        &mut s,
        T,
        Op::MoveBreaker(BreakerMove {
            endpoint: [8; 16],
            from_epoch: 0,
            to: BreakerTransition::Open { open_ms: 100 },
        }),
    );
    run(
        &mut s,
        T,
        Op::BeginIdempotent(IdempotentStart {
            key: [4; 32],
            fingerprint: [5; 32],
            attempt: [6; 16],
            ttl_ms: 5000,
            stale_after_ms: 1000,
        }),
    );
    run(
        &mut s,
        T,
        Op::FinishIdempotent(IdempotentFinish {
            key: [4; 32],
            attempt: [6; 16],
            answer: StoredAnswer {
                status: 200,
                body: b"paid".to_vec(),
            },
        }),
    );
    s
}

#[test]
fn snapshots_keep_every_registry_and_the_hash() {
    let s = busy();
    let bytes = s.to_bytes().unwrap();
    let back = ClusterState::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.state_hash(), s.state_hash());
    assert_eq!(back.check_invariants(), Ok(()));
    assert_eq!(back.rate_limits().leases(), 1);
    assert_eq!(back.breakers().len(), 1);
    assert_eq!(back.idempotency().len(), 1);
}

#[test]
fn the_state_hash_differs_when_any_registry_differs() {
    let base = busy();
    let h = base.state_hash();
    let changed = |op: Op| {
        let mut s = base.clone();
        s.apply(&Command::single(T, op));
        assert_ne!(s, base);
        s.state_hash()
    };
    let hashes = [
        // One more admission of a known subject.
        changed(guarded(5, GuardedOp::ClaimNonce(claim(7)))),
        // A lease returned.
        changed(Op::ReturnLease {
            id: LeaseId { node: 1, seq: 1 },
            unused: 1,
        }),
        // A breaker moved.
        changed(Op::MoveBreaker(BreakerMove {
            endpoint: [9; 16],
            from_epoch: 0,
            to: BreakerTransition::Open { open_ms: 100 },
        })),
        // An idempotency record begun.
        changed(Op::BeginIdempotent(IdempotentStart {
            key: [5; 32],
            fingerprint: [5; 32],
            attempt: [6; 16],
            ttl_ms: 5000,
            stale_after_ms: 1000,
        })),
    ];
    for (i, a) in hashes.iter().enumerate() {
        assert_ne!(*a, h);
        for b in &hashes[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // The same content reached in another order: the same hash (set digests are
    // order-independent).
    let ops = [
        guarded(5, GuardedOp::ClaimNonce(claim(2))),
        Op::Guarded {
            admission: Admission {
                keys: vec![rate_key(3, 5)],
            },
            op: GuardedOp::ClaimNonce(claim(8)),
        },
        Op::BeginIdempotent(IdempotentStart {
            key: [9; 32],
            fingerprint: [5; 32],
            attempt: [6; 16],
            ttl_ms: 5000,
            stale_after_ms: 1000,
        }),
    ];
    let (mut forwards, mut backwards) = (base.clone(), base.clone());
    forwards.apply(&Command {
        at_ms: T,
        ops: ops.to_vec(),
    });
    backwards.apply(&Command {
        at_ms: T,
        ops: ops.iter().rev().cloned().collect(),
    });
    assert_eq!(forwards, backwards);
    assert_eq!(forwards.state_hash(), backwards.state_hash());
}

#[test]
fn new_variants_are_appended_so_old_entries_keep_decoding() {
    let index = |op: &Op| codec::encode(op).unwrap()[0];
    assert_eq!(index(&Op::ClaimNonce(claim(1))), 0);
    assert_eq!(index(&Op::ExpireClaims { limit: 1 }), 1);
    let new_ops = [
        guarded(1, GuardedOp::ClaimNonce(claim(9))),
        Op::TakeLease(LeaseRequest {
            id: LeaseId { node: 1, seq: 1 },
            key: rate_key(1, 1),
            want: 1,
            lease_ms: 1,
        }),
        Op::ReturnLease {
            id: LeaseId { node: 1, seq: 1 },
            unused: 1,
        },
        Op::MoveBreaker(BreakerMove {
            endpoint: [0; 16],
            from_epoch: 0,
            to: BreakerTransition::Close,
        }),
        Op::BeginIdempotent(IdempotentStart {
            key: [0; 32],
            fingerprint: [0; 32],
            attempt: [0; 16],
            ttl_ms: 0,
            stale_after_ms: 0,
        }),
        Op::FinishIdempotent(IdempotentFinish {
            key: [0; 32],
            attempt: [0; 16],
            answer: StoredAnswer {
                status: 200,
                body: Vec::new(),
            },
        }),
        Op::ReleaseIdempotent {
            key: [0; 32],
            attempt: [0; 16],
        },
    ];
    for (i, op) in new_ops.iter().enumerate() {
        assert_eq!(usize::from(index(op)), 6 + i, "{op:?}");
        assert_eq!(
            codec::decode::<Op>(&codec::encode(op).unwrap()).unwrap(),
            *op
        );
    }
    let responses = [
        Response::Claim(ClaimOutcome::Accepted),
        Response::Expired { removed: 0 },
        Response::SignerSynced { next_nonce: 0 },
        Response::Settlement(SettlementAnswer::Replay),
        Response::Guarded {
            verdict: AdmissionVerdict::Admitted { quota: None },
            response: Some(Box::new(Response::Claim(ClaimOutcome::Accepted))),
        },
        Response::LeaseReturned { returned: 0 },
    ];
    let indexes: Vec<u8> = responses
        .iter()
        .map(|r| codec::encode(r).unwrap()[0])
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4, 6]);
}
