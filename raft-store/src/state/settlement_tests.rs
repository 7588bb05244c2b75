//! Unit and property tests of settlements and signer nonces (I2, I3).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::model::Model;
use super::settlements::{
    Rejection, MAX_CALL_BYTES, MAX_MESSAGE_BYTES, MAX_RAW_TX_BYTES, MAX_REASON_BYTES,
    MAX_REPLACEMENTS, MAX_SIGNERS, MAX_SIGNERS_PER_START,
};
use super::*;

const CHAIN: u64 = 31337;
const OTHER_CHAIN: u64 = 8453;
const A: [u8; 20] = [0xA1; 20];
const B: [u8; 20] = [0xB2; 20];
const C: [u8; 20] = [0xC3; 20];
/// validBefore of the test authorizations, unix seconds; commands run well before it.
const VB: u64 = 1_000;
const T: u64 = 10_000;

fn key_on(chain_id: u64, n: u8) -> NonceKey {
    NonceKey {
        chain_id,
        asset: [1; 20],
        payer: [2; 20],
        nonce: [n; 32],
    }
}

fn key(n: u8) -> NonceKey {
    key_on(CHAIN, n)
}

fn id(n: u8) -> ClaimId {
    key(n).digest()
}

fn nonce_claim(key: NonceKey, fp: u8, valid_before: u64) -> NonceClaim {
    NonceClaim {
        key,
        fingerprint: [fp; 32],
        valid_before,
    }
}

fn begin_op(key: NonceKey, fp: u8, signers: &[[u8; 20]]) -> Op {
    Op::BeginSettlement(SettlementStart {
        claim: nonce_claim(key, fp, VB),
        owner: 1,
        call: vec![0xCA, 0x11],
        signers: signers.to_vec(),
    })
}

fn sync_op(chain_id: u64, signer: [u8; 20], chain_nonce: u64) -> Op {
    Op::SyncSigner {
        chain_id,
        signer,
        chain_nonce,
    }
}

fn sign_op(n: u8, signer: [u8; 20], nonce: u64, tx: u8) -> Op {
    Op::RecordSigned(SignedSettlement {
        id: id(n),
        signer,
        nonce,
        tx_hash: [tx; 32],
        raw_tx: vec![tx; 100],
    })
}

fn finish_op(n: u8, tx: u8, outcome: SettlementOutcome) -> Op {
    finish_by(n, tx, outcome, None)
}

fn finish_by(n: u8, tx: u8, outcome: SettlementOutcome, taker: Option<u8>) -> Op {
    Op::FinishSettlement(SettlementFinish {
        id: id(n),
        tx_hash: [tx; 32],
        outcome,
        taker: taker.map(|t| [t; 16]),
    })
}

fn take_op(n: u8, taker: u8) -> Op {
    Op::TakeSuccess {
        id: id(n),
        taker: [taker; 16],
    }
}

fn replace_op(n: u8, tx: u8, chain_nonce: u64) -> Op {
    Op::ReplaceSettlement(SettlementReplace {
        id: id(n),
        tx_hash: [tx; 32],
        chain_nonce,
        call: vec![0xCA, 0x11],
    })
}

fn settled(tx: u8) -> SettlementOutcome {
    SettlementOutcome::Settled { tx_hash: [tx; 32] }
}

fn failed(tx: Option<u8>) -> SettlementOutcome {
    SettlementOutcome::Failed {
        reason: "invalid_exact_evm_transaction_failed".into(),
        message: Some("reverted".into()),
        tx_hash: tx.map(|t| [t; 32]),
    }
}

/// Applies one operation at `at_ms` and returns its answer; checks every invariant after it.
fn run(s: &mut ClusterState, at_ms: u64, op: Op) -> Response {
    let mut responses = s.apply(&Command::single(at_ms, op));
    assert_eq!(s.check_invariants(), Ok(()));
    assert_eq!(responses.len(), 1);
    responses.remove(0)
}

fn settlement(r: Response) -> SettlementAnswer {
    match r {
        Response::Settlement(a) => a,
        other => panic!("not a settlement answer: {other:?}"),
    }
}

fn current(r: Response) -> SettlementRecord {
    match settlement(r) {
        SettlementAnswer::Current(record) => *record,
        other => panic!("not a current record: {other:?}"),
    }
}

fn rejected_with(r: Response, why: Rejection) {
    assert_eq!(settlement(r), SettlementAnswer::Rejected(why));
}

/// Runs `op` at the state's own time and asserts that it changed nothing.
fn run_unchanged(s: &mut ClusterState, op: Op) -> Response {
    let before = s.clone();
    let answer = run(s, before.now_ms(), op);
    assert_eq!(*s, before);
    answer
}

/// A state with signers A and B synced on CHAIN at nonces 5 and 9.
fn synced() -> ClusterState {
    let mut s = ClusterState::default();
    run(&mut s, T, sync_op(CHAIN, A, 5));
    run(&mut s, T, sync_op(CHAIN, B, 9));
    s
}

fn signer(s: &ClusterState, addr: [u8; 20]) -> SignerState {
    *s.signers().get(CHAIN, &addr).expect("signer registered")
}

#[test]
fn sync_signer_registers_and_raises_only_when_idle_never_lowers() {
    let mut s = ClusterState::default();
    assert_eq!(
        run(&mut s, T, sync_op(CHAIN, A, 5)),
        Response::SignerSynced { next_nonce: 5 }
    );
    assert_eq!(
        run(&mut s, T, sync_op(CHAIN, A, 3)),
        Response::SignerSynced { next_nonce: 5 }
    );
    assert_eq!(
        run(&mut s, T, sync_op(CHAIN, A, 7)),
        Response::SignerSynced { next_nonce: 7 }
    );
    // With a nonce in flight the chain's count is not trusted.
    run(&mut s, T, begin_op(key(1), 1, &[A]));
    assert_eq!(
        run(&mut s, T, sync_op(CHAIN, A, 20)),
        Response::SignerSynced { next_nonce: 8 }
    );
    run(&mut s, T, sign_op(1, A, 7, 9));
    run(&mut s, T, finish_op(1, 9, settled(9)));
    assert_eq!(
        run(&mut s, T, sync_op(CHAIN, A, 20)),
        Response::SignerSynced { next_nonce: 20 }
    );
    // Signers are per chain.
    assert_eq!(s.signers().get(OTHER_CHAIN, &A), None);
    assert_eq!(
        s.signers().iter().collect::<Vec<_>>(),
        vec![(
            (CHAIN, A),
            &SignerState {
                next_nonce: 20,
                in_flight: 0
            }
        )]
    );
}

#[test]
fn begin_claims_the_nonce_and_allocates_from_the_counter() {
    let mut s = synced();
    let answer = settlement(run(&mut s, T, begin_op(key(1), 7, &[A])));
    assert_eq!(
        answer,
        SettlementAnswer::Allocated {
            signer: A,
            nonce: 5
        }
    );
    assert_eq!(
        signer(&s, A),
        SignerState {
            next_nonce: 6,
            in_flight: 1
        }
    );
    assert_eq!(s.nonces().fingerprint_of(&key(1)), Some([7; 32]));
    let record = s.settlements().get(&id(1)).unwrap();
    assert_eq!(record.key, key(1));
    assert_eq!(record.owner, 1);
    assert_eq!(record.updated_at_ms, T);
    assert_eq!(
        record.phase,
        SettlementPhase::Allocated {
            signer: A,
            nonce: 5,
            call: vec![0xCA, 0x11]
        }
    );
    // /verify of the same authorization for other requirements is now a replay.
    assert_eq!(
        run(&mut s, T, Op::ClaimNonce(nonce_claim(key(1), 8, VB))),
        Response::Claim(ClaimOutcome::Replay)
    );
    // The next settlement on A gets the next nonce.
    run(&mut s, T, begin_op(key(2), 7, &[A]));
    assert_eq!(signer(&s, A).next_nonce, 7);
}

#[test]
fn begin_again_answers_the_record_or_replay_and_changes_nothing() {
    let mut s = synced();
    run(&mut s, T, begin_op(key(1), 7, &[A]));
    let record = current(run_unchanged(&mut s, begin_op(key(1), 7, &[A, B])));
    assert_eq!(Some(&record), s.settlements().get(&id(1)));
    assert_eq!(
        settlement(run_unchanged(&mut s, begin_op(key(1), 8, &[A]))),
        SettlementAnswer::Replay
    );
}

#[test]
fn begin_after_verify_uses_its_claim_and_refuses_other_requirements() {
    let mut s = synced();
    run(&mut s, T, Op::ClaimNonce(nonce_claim(key(1), 7, VB)));
    run(&mut s, T, Op::ClaimNonce(nonce_claim(key(2), 7, VB)));
    assert!(matches!(
        settlement(run(&mut s, T, begin_op(key(1), 7, &[A]))),
        SettlementAnswer::Allocated { .. }
    ));
    assert_eq!(
        settlement(run_unchanged(&mut s, begin_op(key(2), 8, &[A]))),
        SettlementAnswer::Replay
    );
}

#[test]
fn begin_of_an_expired_authorization_changes_nothing() {
    let mut s = synced();
    // Never claimed: the claim rule refuses it.
    let late = VB * 1000;
    run(&mut s, late, Op::ExpireClaims { limit: 0 });
    assert_eq!(
        settlement(run_unchanged(&mut s, begin_op(key(1), 7, &[A]))),
        SettlementAnswer::Expired
    );
    // Claimed by /verify in time, settled too late: the claim stays, no nonce is spent.
    let mut s = synced();
    run(&mut s, T, Op::ClaimNonce(nonce_claim(key(1), 7, VB)));
    run(&mut s, late, Op::ExpireClaims { limit: 0 });
    assert_eq!(
        settlement(run_unchanged(&mut s, begin_op(key(1), 7, &[A]))),
        SettlementAnswer::Expired
    );
    assert_eq!(s.nonces().fingerprint_of(&key(1)), Some([7; 32]));
}

#[test]
fn begin_without_a_synced_signer_changes_nothing_not_even_the_claim() {
    let mut s = synced();
    // C is not synced; A is synced on another chain only.
    for (k, signers) in [
        (key(1), vec![C]),
        (key(1), vec![]),
        (key_on(OTHER_CHAIN, 1), vec![A, B]),
    ] {
        assert_eq!(
            settlement(run_unchanged(&mut s, begin_op(k, 7, &signers))),
            SettlementAnswer::NoSigner
        );
        assert_eq!(s.nonces().fingerprint_of(&k), None);
    }
    // A signer whose counter reached the EIP-2681 cap cannot take another settlement.
    run(&mut s, T, sync_op(CHAIN, C, u64::MAX));
    assert_eq!(
        settlement(run_unchanged(&mut s, begin_op(key(1), 7, &[C]))),
        SettlementAnswer::NoSigner
    );
}

#[test]
fn begin_picks_the_signer_with_fewest_in_flight_then_lowest_address() {
    let mut s = synced();
    run(&mut s, T, sync_op(CHAIN, C, 0));
    let alloc = |s: &mut ClusterState, n: u8| match settlement(run(
        s,
        T,
        begin_op(key(n), 1, &[C, B, A]),
    )) {
        SettlementAnswer::Allocated { signer, .. } => signer,
        other => panic!("{other:?}"),
    };
    // All idle: the lowest address. Then the idle ones, lowest first; then round again.
    assert_eq!(alloc(&mut s, 1), A);
    assert_eq!(alloc(&mut s, 2), B);
    assert_eq!(alloc(&mut s, 3), C);
    assert_eq!(alloc(&mut s, 4), A);
    // Finishing B's settlement makes B the least loaded.
    run(&mut s, T, sign_op(2, B, 9, 2));
    run(&mut s, T, finish_op(2, 2, settled(2)));
    assert_eq!(alloc(&mut s, 5), B);
    // Signers the proposer does not offer are never used.
    assert!(matches!(
        settlement(run(&mut s, T, begin_op(key(6), 1, &[C]))),
        SettlementAnswer::Allocated { signer: C, .. }
    ));
}

#[test]
fn begin_beyond_limits_is_rejected_and_changes_nothing() {
    let mut s = synced();
    let too_many = vec![A; MAX_SIGNERS_PER_START + 1];
    rejected_with(
        run_unchanged(&mut s, begin_op(key(1), 1, &too_many)),
        Rejection::TooManySignersOffered {
            count: MAX_SIGNERS_PER_START + 1,
        },
    );
    let long_call = Op::BeginSettlement(SettlementStart {
        claim: nonce_claim(key(1), 1, VB),
        owner: 1,
        call: vec![0; MAX_CALL_BYTES + 1],
        signers: vec![A],
    });
    rejected_with(
        run_unchanged(&mut s, long_call),
        Rejection::CallTooLong {
            len: MAX_CALL_BYTES + 1,
        },
    );
    // At the limits themselves it is accepted.
    let at_limit = Op::BeginSettlement(SettlementStart {
        claim: nonce_claim(key(1), 1, VB),
        owner: 1,
        call: vec![0; MAX_CALL_BYTES],
        signers: vec![A; MAX_SIGNERS_PER_START],
    });
    assert!(matches!(
        settlement(run(&mut s, T, at_limit)),
        SettlementAnswer::Allocated { .. }
    ));
}

#[test]
fn record_signed_moves_an_allocation_to_signed_once() {
    let mut s = synced();
    rejected_with(
        run_unchanged(&mut s, sign_op(1, A, 5, 1)),
        Rejection::UnknownSettlement,
    );
    run(&mut s, T, begin_op(key(1), 1, &[A]));
    rejected_with(
        run_unchanged(&mut s, sign_op(1, A, 6, 1)),
        Rejection::OtherAllocation {
            signer: A,
            nonce: 5,
        },
    );
    rejected_with(
        run_unchanged(&mut s, sign_op(1, B, 5, 1)),
        Rejection::OtherAllocation {
            signer: A,
            nonce: 5,
        },
    );
    let mut oversized = SignedSettlement {
        id: id(1),
        signer: A,
        nonce: 5,
        tx_hash: [1; 32],
        raw_tx: vec![0; MAX_RAW_TX_BYTES + 1],
    };
    rejected_with(
        run_unchanged(&mut s, Op::RecordSigned(oversized.clone())),
        Rejection::RawTxTooLong {
            len: MAX_RAW_TX_BYTES + 1,
        },
    );
    oversized.raw_tx.clear();
    rejected_with(
        run_unchanged(&mut s, Op::RecordSigned(oversized)),
        Rejection::EmptyRawTx,
    );

    let record = current(run(&mut s, T + 5, sign_op(1, A, 5, 1)));
    assert_eq!(
        record.phase,
        SettlementPhase::Signed {
            signer: A,
            nonce: 5,
            tx_hash: [1; 32],
            raw_tx: vec![1; 100]
        }
    );
    assert_eq!(record.updated_at_ms, T + 5);
    assert_eq!(signer(&s, A).in_flight, 1);
    // A second signer (the reconciler racing the owner) gets the first bytes back.
    assert_eq!(current(run_unchanged(&mut s, sign_op(1, A, 5, 2))), record);
    // Also once done.
    run(&mut s, T, finish_op(1, 1, settled(1)));
    let done = s.settlements().get(&id(1)).unwrap().clone();
    assert_eq!(current(run_unchanged(&mut s, sign_op(1, A, 5, 2))), done);
}

#[test]
fn finish_needs_the_signed_transaction_and_the_first_verdict_wins() {
    let mut s = synced();
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 1, settled(1))),
        Rejection::UnknownSettlement,
    );
    run(&mut s, T, begin_op(key(1), 1, &[A]));
    // An allocated nonce must be signed and broadcast, never abandoned.
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 1, failed(None))),
        Rejection::NotSigned,
    );
    run(&mut s, T, sign_op(1, A, 5, 1));
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 2, settled(2))),
        Rejection::OtherTransaction { signed: [1; 32] },
    );
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 1, settled(2))),
        Rejection::OutcomeOfOtherTransaction,
    );
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 1, failed(Some(2)))),
        Rejection::OutcomeOfOtherTransaction,
    );
    let long = |reason: usize, message: usize| SettlementOutcome::Failed {
        reason: "r".repeat(reason),
        message: Some("m".repeat(message)),
        tx_hash: None,
    };
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 1, long(MAX_REASON_BYTES + 1, 1))),
        Rejection::ReasonTooLong {
            len: MAX_REASON_BYTES + 1,
        },
    );
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 1, long(1, MAX_MESSAGE_BYTES + 1))),
        Rejection::MessageTooLong {
            len: MAX_MESSAGE_BYTES + 1,
        },
    );

    let record = current(run(&mut s, T + 7, finish_op(1, 1, failed(Some(1)))));
    assert_eq!(
        record.phase,
        SettlementPhase::Done {
            signer: A,
            nonce: 5,
            outcome: failed(Some(1))
        }
    );
    assert_eq!(record.updated_at_ms, T + 7);
    assert_eq!(
        signer(&s, A),
        SignerState {
            next_nonce: 6,
            in_flight: 0
        }
    );
    // A later verdict, even another one, gets the first.
    assert_eq!(
        current(run_unchanged(&mut s, finish_op(1, 1, settled(1)))),
        record
    );
    assert_eq!(
        current(run_unchanged(&mut s, finish_op(1, 3, settled(3)))),
        record
    );
    // A verdict within the limits, with no transaction named, is accepted.
    run(&mut s, T, begin_op(key(2), 1, &[A]));
    run(&mut s, T, sign_op(2, A, 6, 4));
    let limits = long(MAX_REASON_BYTES, MAX_MESSAGE_BYTES);
    assert!(matches!(
        current(run(&mut s, T, finish_op(2, 4, limits))).phase,
        SettlementPhase::Done { .. }
    ));
}

#[test]
fn a_settled_authorization_gives_its_success_to_one_request() {
    let mut s = synced();
    run(&mut s, T, begin_op(key(1), 1, &[A]));
    run(&mut s, T, sign_op(1, A, 5, 1));
    // Nothing to take before the verdict.
    assert_eq!(
        current(run_unchanged(&mut s, take_op(1, 7))).success_taker,
        None
    );
    // The request committing the verdict takes it in the same operation.
    let record = current(run(&mut s, T + 1, finish_by(1, 1, settled(1), Some(7))));
    assert_eq!(record.success_taker, Some([7; 16]));
    assert!(record.success_is(&[7; 16]));
    // Nobody else gets it, by a later verdict or by taking it; the first again is a no-op.
    assert_eq!(
        current(run_unchanged(&mut s, finish_by(1, 1, settled(1), Some(8)))),
        record
    );
    assert_eq!(current(run_unchanged(&mut s, take_op(1, 8))), record);
    assert_eq!(current(run_unchanged(&mut s, take_op(1, 7))), record);
    rejected_with(
        run_unchanged(&mut s, take_op(9, 7)),
        Rejection::UnknownSettlement,
    );

    // Finished by the reconciler (no request): the first request to take it has it.
    run(&mut s, T, begin_op(key(2), 1, &[A]));
    run(&mut s, T, sign_op(2, A, 6, 2));
    let record = current(run(&mut s, T, finish_op(2, 2, settled(2))));
    assert_eq!(record.success_taker, None);
    assert_eq!(
        current(run(&mut s, T, finish_by(2, 2, settled(2), Some(3)))).success_taker,
        Some([3; 16])
    );
    assert_eq!(
        current(run_unchanged(&mut s, take_op(2, 4))).success_taker,
        Some([3; 16])
    );
    run(&mut s, T, begin_op(key(3), 1, &[A]));
    run(&mut s, T, sign_op(3, A, 7, 3));
    run(&mut s, T, finish_op(3, 3, settled(3)));
    assert_eq!(
        current(run(&mut s, T, take_op(3, 5))).success_taker,
        Some([5; 16])
    );

    // A failed settlement has no success to give.
    run(&mut s, T, begin_op(key(4), 1, &[A]));
    run(&mut s, T, sign_op(4, A, 8, 4));
    let record = current(run(&mut s, T, finish_by(4, 4, failed(Some(4)), Some(6))));
    assert_eq!(record.success_taker, None);
    assert_eq!(
        current(run_unchanged(&mut s, take_op(4, 6))).success_taker,
        None
    );
}

#[test]
fn a_settlement_whose_nonce_was_used_elsewhere_is_signed_again_above_the_chain_count() {
    let mut s = synced();
    run(&mut s, T, begin_op(key(1), 1, &[A]));
    run(&mut s, T, begin_op(key(2), 1, &[A]));
    run(&mut s, T, sign_op(1, A, 5, 1));
    // Not replaceable while allocated, nor before the chain shows the nonce used.
    assert!(matches!(
        settlement(run_unchanged(&mut s, replace_op(2, 1, 9))),
        SettlementAnswer::Current(_)
    ));
    rejected_with(
        run_unchanged(&mut s, replace_op(1, 1, 5)),
        Rejection::NonceNotConsumed {
            nonce: 5,
            chain_nonce: 5,
        },
    );
    // Another sender used nonces 5..=8: the settlement gets 9, the counter moves past it.
    assert_eq!(
        settlement(run(&mut s, T + 3, replace_op(1, 1, 9))),
        SettlementAnswer::Allocated {
            signer: A,
            nonce: 9
        }
    );
    let record = s.settlements().get(&id(1)).unwrap().clone();
    assert_eq!(record.replaced, vec![[1; 32]]);
    assert_eq!(record.updated_at_ms, T + 3);
    assert_eq!(
        signer(&s, A),
        SignerState {
            next_nonce: 10,
            in_flight: 2
        }
    );
    // A retry of the same replacement changes nothing.
    assert_eq!(current(run_unchanged(&mut s, replace_op(1, 1, 9))), record);
    // Below the counter, the counter's next nonce is used (no nonce handed out twice).
    run(&mut s, T, sign_op(1, A, 9, 2));
    assert_eq!(
        settlement(run(&mut s, T, replace_op(1, 2, 7))),
        SettlementAnswer::Rejected(Rejection::NonceNotConsumed {
            nonce: 9,
            chain_nonce: 7
        })
    );
    assert_eq!(
        settlement(run(&mut s, T, replace_op(1, 2, 10))),
        SettlementAnswer::Allocated {
            signer: A,
            nonce: 10
        }
    );
    // The verdict may name a replaced transaction (mined late after all), not another one.
    run(&mut s, T, sign_op(1, A, 10, 3));
    rejected_with(
        run_unchanged(&mut s, finish_op(1, 3, settled(4))),
        Rejection::OutcomeOfOtherTransaction,
    );
    let done = current(run(&mut s, T, finish_by(1, 3, settled(1), Some(1))));
    assert_eq!(done.settled_tx(), Some([1; 32]));
    assert_eq!(done.success_taker, Some([1; 16]));
    assert_eq!(signer(&s, A).in_flight, 1);

    // Bounded: after MAX_REPLACEMENTS the settlement is left as it is.
    run(&mut s, T, sign_op(2, A, 6, 10));
    let mut tx = 10;
    for _ in 0..MAX_REPLACEMENTS {
        let next = signer(&s, A).next_nonce;
        run(&mut s, T, replace_op(2, tx, next));
        tx += 1;
        run(&mut s, T, sign_op(2, A, next, tx));
    }
    rejected_with(
        run_unchanged(&mut s, replace_op(2, tx, 100)),
        Rejection::TooManyReplacements,
    );
}

#[test]
fn unfinished_lists_only_allocated_and_signed_records() {
    let mut s = synced();
    for n in 1..=3 {
        run(&mut s, T, begin_op(key(n), 1, &[A]));
    }
    run(&mut s, T, sign_op(2, A, 6, 2));
    run(&mut s, T, sign_op(3, A, 7, 3));
    run(&mut s, T, finish_op(3, 3, settled(3)));
    let unfinished: BTreeSet<ClaimId> = s.settlements().unfinished().map(|(id, _)| *id).collect();
    assert_eq!(unfinished, BTreeSet::from([id(1), id(2)]));
    assert_eq!(s.settlements().len(), 3);
    assert_eq!(s.settlements().unfinished_len(), 2);
}

#[test]
fn done_settlements_expire_with_claims_unfinished_ones_never() {
    let mut s = synced();
    // 1: done; 2: signed; 3: allocated; 4: a plain claim, due a second earlier.
    for n in 1..=3 {
        run(&mut s, T, begin_op(key(n), 1, &[A]));
    }
    run(&mut s, T, sign_op(1, A, 5, 1));
    run(&mut s, T, finish_op(1, 1, settled(1)));
    run(&mut s, T, sign_op(2, A, 6, 2));
    run(&mut s, T, Op::ClaimNonce(nonce_claim(key(4), 1, VB - 1)));
    let end = VB * 1000 + nonces::RETENTION_MARGIN_MS;
    assert_eq!(s.settlements().next_expiry_ms(), Some(end));
    assert_eq!(s.next_expiry_ms(), Some(end - 1000));

    let gc = |limit| Op::ExpireClaims { limit };
    assert_eq!(
        run(&mut s, end - 1, gc(100)),
        Response::Expired { removed: 1 }
    );
    assert_eq!(s.next_expiry_ms(), Some(end));
    // One budget for both kinds, oldest first, a claim before a settlement due with it.
    assert_eq!(run(&mut s, end, gc(2)), Response::Expired { removed: 2 });
    assert_eq!(s.nonces().len(), 1);
    assert_eq!(s.settlements().len(), 3);
    assert_eq!(run(&mut s, end, gc(2)), Response::Expired { removed: 2 });
    assert!(s.nonces().is_empty());
    assert_eq!(s.settlements().len(), 2);
    assert_eq!(s.settlements().get(&id(1)), None);
    // The unfinished records hold signer nonces: they stay, and expire nothing.
    assert_eq!(s.next_expiry_ms(), None);
    assert_eq!(
        run(&mut s, u64::MAX, gc(100)),
        Response::Expired { removed: 0 }
    );
    assert_eq!(s.settlements().len(), 2);
    assert_eq!(signer(&s, A).in_flight, 2);
    // Forgotten, the settled authorization cannot begin again: it is expired.
    assert_eq!(
        settlement(run_unchanged(&mut s, begin_op(key(1), 1, &[A]))),
        SettlementAnswer::Expired
    );
}

#[test]
fn a_late_finish_is_expired_by_the_next_gc() {
    let mut s = synced();
    run(&mut s, T, begin_op(key(1), 1, &[A]));
    run(&mut s, T, sign_op(1, A, 5, 1));
    let late = VB * 1000 + nonces::RETENTION_MARGIN_MS + 1;
    run(&mut s, late, Op::ExpireClaims { limit: 10 });
    assert!(s.nonces().is_empty());
    assert_eq!(s.settlements().len(), 1);
    run(&mut s, late, finish_op(1, 1, failed(Some(1))));
    assert_eq!(s.next_expiry_ms(), Some(late - 1));
    assert_eq!(
        run(&mut s, late, Op::ExpireClaims { limit: 10 }),
        Response::Expired { removed: 1 }
    );
    assert!(s.settlements().is_empty());
}

#[test]
fn the_signer_map_is_bounded() {
    let mut s = ClusterState::default();
    for i in 0..MAX_SIGNERS as u64 {
        run(&mut s, T, sync_op(i, A, 0));
    }
    rejected_with(
        run_unchanged(&mut s, sync_op(u64::MAX, A, 0)),
        Rejection::TooManySigners,
    );
    // Known signers still sync.
    assert_eq!(
        run(&mut s, T, sync_op(0, A, 3)),
        Response::SignerSynced { next_nonce: 3 }
    );
}

#[test]
fn snapshot_and_hash_cover_settlements_and_signers() {
    let mut s = synced();
    for n in 1..=4 {
        run(&mut s, T, begin_op(key(n), n, &[A, B]));
    }
    run(&mut s, T, sign_op(2, B, 9, 2));
    run(&mut s, T, sign_op(3, A, 6, 3));
    run(&mut s, T, finish_op(3, 3, settled(3)));
    let bytes = s.to_bytes().unwrap();
    let back = ClusterState::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.state_hash(), s.state_hash());
    assert_eq!(back.check_invariants(), Ok(()));

    // Every kind of change moves the hash.
    let changes = [
        sync_op(CHAIN, C, 0),
        sync_op(CHAIN, A, 100),
        begin_op(key(9), 1, &[C, A]),
        sign_op(1, A, 5, 1),
        finish_op(2, 2, settled(2)),
    ];
    let mut idle_a = s.clone();
    run(&mut idle_a, T, sign_op(1, A, 5, 1));
    run(&mut idle_a, T, finish_op(1, 1, settled(1)));
    run(&mut idle_a, T, sign_op(4, A, 7, 4));
    run(&mut idle_a, T, finish_op(4, 4, settled(4)));
    for op in changes {
        let base = if matches!(op, Op::SyncSigner { signer: A, .. }) {
            &idle_a
        } else {
            &s
        };
        let mut other = base.clone();
        run(&mut other, T, op.clone());
        assert_ne!(other.state_hash(), base.state_hash(), "{op:?}");
    }
}

#[test]
fn snapshot_capacity_estimate_covers_the_image() {
    let mut s = synced();
    for n in 1..=20 {
        run(&mut s, T, Op::ClaimNonce(nonce_claim(key(100 + n), 1, VB)));
        run(&mut s, T, begin_op(key(n), n, &[A, B]));
    }
    let bytes = s.to_bytes().unwrap();
    let hint =
        64 + s.nonces().len() * nonces::MAX_ENCODED_CLAIM_BYTES + s.ledger.encoded_len_hint();
    assert!(bytes.len() <= hint, "{} > {hint}", bytes.len());
    // And not wildly above it: the settlements part is exact up to a few varint bytes.
    let settlements_part = bytes.len()
        - codec::encode_record(&(s.now_ms(), s.nonces().image()))
            .unwrap()
            .len();
    assert!(s.ledger.encoded_len_hint() - settlements_part < 64 + 2 * 43);
}

// ----- property test: random operation sequences against the model -----

const CHAINS: [u64; 2] = [CHAIN, OTHER_CHAIN];
const SIGNERS: [[u8; 20]; 3] = [A, B, C];
const KEYS: usize = 8;

fn key_of(i: usize) -> NonceKey {
    key_on(CHAINS[i % CHAINS.len()], i as u8)
}

/// The chain of the generated key whose digest is `id`.
fn chain_of(id: &ClaimId) -> u64 {
    (0..KEYS)
        .map(key_of)
        .find(|k| k.digest() == *id)
        .map(|k| k.chain_id)
        .expect("a generated key")
}

/// An operation as generated; some are resolved against the state when they run, so that they
/// hit the allocated signer and nonce, or the signed hash, often enough to matter.
#[derive(Clone, Debug)]
enum Step {
    Sync {
        chain: usize,
        signer: usize,
        chain_nonce: u64,
    },
    Begin {
        key: usize,
        fp: u8,
        valid_before: u64,
        owner: u64,
        /// Bit i offers SIGNERS[i]; bit 3 offers too many.
        offered: u8,
    },
    Sign {
        key: usize,
        /// Use the allocated signer and nonce if the record is allocated.
        exact: bool,
        signer: usize,
        nonce: u64,
        tx: u8,
        len: usize,
    },
    Finish {
        key: usize,
        /// Use the signed hash if the record is signed.
        exact: bool,
        tx: u8,
        kind: u8,
        taker: Option<u8>,
    },
    Take {
        key: usize,
        taker: u8,
    },
    Replace {
        key: usize,
        /// Name the signed hash if the record is signed.
        exact: bool,
        tx: u8,
        /// The chain count given is the record's nonce + above − 1 (0 and 1: not consumed).
        above: u64,
    },
    Claim {
        key: usize,
        fp: u8,
        valid_before: u64,
    },
    Expire {
        limit: u32,
    },
}

fn arb_step() -> impl Strategy<Value = Step> {
    let sync =
        (0..CHAINS.len(), 0..SIGNERS.len(), 0u64..12).prop_map(|(chain, signer, chain_nonce)| {
            Step::Sync {
                chain,
                signer,
                chain_nonce,
            }
        });
    let begin = (0..KEYS, 0u8..2, 1u64..2_000, 0u64..3, 0u8..16).prop_map(
        |(key, fp, valid_before, owner, offered)| Step::Begin {
            key,
            fp,
            valid_before,
            owner,
            offered,
        },
    );
    let sign = (
        0..KEYS,
        prop::bool::weighted(0.8),
        0..SIGNERS.len(),
        0u64..12,
        0u8..3,
        prop_oneof![20 => 1usize..64, 1 => Just(0usize), 1 => Just(MAX_RAW_TX_BYTES + 1)],
    )
        .prop_map(|(key, exact, signer, nonce, tx, len)| Step::Sign {
            key,
            exact,
            signer,
            nonce,
            tx,
            len,
        });
    let finish = (
        0..KEYS,
        prop::bool::weighted(0.8),
        0u8..3,
        0u8..5,
        prop::option::of(0u8..3),
    )
        .prop_map(|(key, exact, tx, kind, taker)| Step::Finish {
            key,
            exact,
            tx,
            kind,
            taker,
        });
    let take = (0..KEYS, 0u8..3).prop_map(|(key, taker)| Step::Take { key, taker });
    let replace = (0..KEYS, prop::bool::weighted(0.8), 0u8..3, 0u64..8).prop_map(
        |(key, exact, tx, above)| Step::Replace {
            key,
            exact,
            tx,
            above,
        },
    );
    let claim = (0..KEYS, 0u8..2, 1u64..2_000).prop_map(|(key, fp, valid_before)| Step::Claim {
        key,
        fp,
        valid_before,
    });
    let expire = (0u32..6).prop_map(|limit| Step::Expire { limit });
    prop_oneof![
        2 => sync,
        5 => begin,
        4 => sign,
        4 => finish,
        2 => take,
        2 => replace,
        1 => claim,
        1 => expire
    ]
}

/// Commands: a time step (sometimes backwards: a lagging leader) and one to a few steps.
fn arb_commands() -> impl Strategy<Value = Vec<(i64, Vec<Step>)>> {
    proptest::collection::vec(
        (
            -20_000i64..40_000,
            proptest::collection::vec(arb_step(), 1..4),
        ),
        1..150,
    )
}

/// Turns a generated step into the operation to apply, reading the state it will apply to.
fn resolve(step: &Step, s: &ClusterState) -> Op {
    match *step {
        Step::Sync {
            chain,
            signer,
            chain_nonce,
        } => sync_op(CHAINS[chain], SIGNERS[signer], chain_nonce),
        Step::Begin {
            key,
            fp,
            valid_before,
            owner,
            offered,
        } => {
            let mut signers: Vec<[u8; 20]> = (0..SIGNERS.len())
                .filter(|i| offered & (1 << i) != 0)
                .map(|i| SIGNERS[i])
                .collect();
            if offered & 8 != 0 && offered & 7 == 7 {
                signers = vec![A; MAX_SIGNERS_PER_START + 1];
            }
            Op::BeginSettlement(SettlementStart {
                claim: nonce_claim(key_of(key), fp, valid_before),
                owner,
                call: vec![fp; 4],
                signers,
            })
        }
        Step::Sign {
            key,
            exact,
            signer,
            nonce,
            tx,
            len,
        } => {
            let id = key_of(key).digest();
            let (signer, nonce) = match s.settlements().get(&id).map(|r| &r.phase) {
                Some(SettlementPhase::Allocated { signer, nonce, .. }) if exact => {
                    (*signer, *nonce)
                }
                _ => (SIGNERS[signer], nonce),
            };
            Op::RecordSigned(SignedSettlement {
                id,
                signer,
                nonce,
                tx_hash: [tx; 32],
                raw_tx: vec![tx; len],
            })
        }
        Step::Finish {
            key,
            exact,
            tx,
            kind,
            taker,
        } => {
            let id = key_of(key).digest();
            let tx_hash = match s.settlements().get(&id).map(|r| &r.phase) {
                Some(SettlementPhase::Signed { tx_hash, .. }) if exact => *tx_hash,
                _ => [tx; 32],
            };
            let outcome = match kind {
                0 | 1 => SettlementOutcome::Settled { tx_hash },
                2 => failed(None),
                3 => SettlementOutcome::Failed {
                    reason: "x".into(),
                    message: None,
                    tx_hash: Some(tx_hash),
                },
                _ => SettlementOutcome::Failed {
                    reason: "r".repeat(MAX_REASON_BYTES + 1),
                    message: None,
                    tx_hash: None,
                },
            };
            Op::FinishSettlement(SettlementFinish {
                id,
                tx_hash,
                outcome,
                taker: taker.map(|t| [t; 16]),
            })
        }
        Step::Take { key, taker } => Op::TakeSuccess {
            id: key_of(key).digest(),
            taker: [taker; 16],
        },
        Step::Replace {
            key,
            exact,
            tx,
            above,
        } => {
            let id = key_of(key).digest();
            let record = s.settlements().get(&id);
            let (tx_hash, nonce) = match record.map(|r| &r.phase) {
                Some(SettlementPhase::Signed { tx_hash, nonce, .. }) if exact => (*tx_hash, *nonce),
                _ => ([tx; 32], 0),
            };
            Op::ReplaceSettlement(SettlementReplace {
                id,
                tx_hash,
                chain_nonce: nonce.saturating_add(above).saturating_sub(1),
                call: vec![tx; 4],
            })
        }
        Step::Claim {
            key,
            fp,
            valid_before,
        } => Op::ClaimNonce(nonce_claim(key_of(key), fp, valid_before)),
        Step::Expire { limit } => Op::ExpireClaims { limit },
    }
}

/// What the test itself learns from the answers, independent of both implementations.
#[derive(Default)]
struct Observed {
    /// Every (chain, signer, nonce) ever allocated.
    allocated: BTreeSet<(u64, [u8; 20], u64)>,
    /// Per signer, the nonce the next allocation must get.
    expected_next: BTreeMap<(u64, [u8; 20]), u64>,
    /// Per signer, the settlements it holds a nonce for that have not been seen finishing.
    open: BTreeMap<(u64, [u8; 20]), BTreeSet<ClaimId>>,
    /// Per settlement, the request that was answered as holding its success.
    success: BTreeMap<ClaimId, SuccessTaker>,
}

impl Observed {
    fn see(&mut self, op: &Op, answer: &Response) -> Result<(), TestCaseError> {
        match (op, answer) {
            (
                Op::SyncSigner {
                    chain_id, signer, ..
                },
                Response::SignerSynced { next_nonce },
            ) => {
                let k = (*chain_id, *signer);
                if let Some(&expected) = self.expected_next.get(&k) {
                    prop_assert!(*next_nonce >= expected, "a signer counter went down");
                    if *next_nonce > expected {
                        prop_assert!(
                            self.open.get(&k).is_none_or(BTreeSet::is_empty),
                            "a counter raised under settlements in flight"
                        );
                    }
                }
                self.expected_next.insert(k, *next_nonce);
            }
            (
                Op::BeginSettlement(start),
                Response::Settlement(SettlementAnswer::Allocated { signer, nonce }),
            ) => {
                let chain_id = start.claim.key.chain_id;
                let k = (chain_id, *signer);
                prop_assert!(start.signers.contains(signer), "a signer not offered");
                prop_assert!(
                    self.allocated.insert((chain_id, *signer, *nonce)),
                    "nonce {} of a signer allocated twice",
                    nonce
                );
                // Contiguous: exactly the next one, no gap.
                prop_assert_eq!(self.expected_next.get(&k).copied(), Some(*nonce));
                self.expected_next.insert(k, nonce + 1);
                self.open
                    .entry(k)
                    .or_default()
                    .insert(start.claim.key.digest());
                // A new record (the old one expired, in this very command perhaps).
                self.success.remove(&start.claim.key.digest());
            }
            (
                Op::ReplaceSettlement(replace),
                Response::Settlement(SettlementAnswer::Allocated { signer, nonce }),
            ) => {
                let chain_id = chain_of(&replace.id);
                let k = (chain_id, *signer);
                prop_assert!(
                    self.allocated.insert((chain_id, *signer, *nonce)),
                    "nonce {} of a signer allocated twice",
                    nonce
                );
                // The next one, or the chain's count when other senders used more: never a
                // nonce below the chain's count, never a gap above it.
                let expected = self.expected_next.get(&k).copied().unwrap_or(0);
                prop_assert_eq!(*nonce, expected.max(replace.chain_nonce));
                self.expected_next.insert(k, nonce + 1);
            }
            (
                Op::FinishSettlement(finish),
                Response::Settlement(SettlementAnswer::Current(record)),
            ) => {
                let SettlementPhase::Done { signer, .. } = &record.phase else {
                    return Err(TestCaseError::fail(
                        "a finish answered an unfinished record",
                    ));
                };
                if let Some(open) = self.open.get_mut(&(record.key.chain_id, *signer)) {
                    open.remove(&finish.id);
                }
            }
            _ => {}
        }
        // One success per settlement: once a request holds it, it never moves.
        if let Response::Settlement(SettlementAnswer::Current(record)) = answer {
            let id = record.key.digest();
            match (self.success.get(&id), record.success_taker) {
                (Some(held), now) => prop_assert_eq!(Some(*held), now, "the success moved"),
                (None, Some(taker)) => {
                    prop_assert!(
                        record.settled_tx().is_some(),
                        "a failed settlement's success"
                    );
                    self.success.insert(id, taker);
                }
                (None, None) => {}
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Random settlement traffic: answers equal the plain model's; no signer nonce is handed out
    /// twice or skipped; invariants hold after every command; snapshots and replicas agree.
    #[test]
    fn settlements_match_model_and_keep_nonces_contiguous(commands in arb_commands()) {
        let mut state = ClusterState::default();
        let mut model = Model::default();
        let mut observed = Observed::default();
        let mut applied = Vec::new();
        let mut at_ms: u64 = T;
        for (step_ms, steps) in &commands {
            at_ms = at_ms.saturating_add_signed(*step_ms);
            let ops: Vec<Op> = steps.iter().map(|s| resolve(s, &state)).collect();
            let cmd = Command { at_ms, ops };
            let answers = state.apply(&cmd);
            prop_assert_eq!(&answers, &model.apply(&cmd));
            for (op, answer) in cmd.ops.iter().zip(&answers) {
                observed.see(op, answer)?;
            }
            // A record that expired may be begun again (the generator reuses keys).
            observed.success.retain(|id, _| state.settlements().get(id).is_some());
            prop_assert_eq!(state.check_invariants(), Ok(()));
            for ((chain_id, signer), st) in state.signers().iter() {
                prop_assert_eq!(st.in_flight, model.in_flight(chain_id, signer));
                prop_assert_eq!(Some(&st.next_nonce), model.next_nonce.get(&(chain_id, signer)));
                let expected = observed.expected_next.get(&(chain_id, signer));
                prop_assert_eq!(expected, Some(&st.next_nonce));
            }
            prop_assert_eq!(state.settlements().len(), model.settlements.len());
            prop_assert_eq!(state.nonces().len(), model.claims.len());
            applied.push(cmd);
        }
        for (k, record) in &model.settlements {
            prop_assert_eq!(state.settlements().get(&k.digest()), Some(record));
        }
        let restored = ClusterState::from_bytes(&state.to_bytes().unwrap()).unwrap();
        prop_assert_eq!(restored.state_hash(), state.state_hash());
        prop_assert_eq!(&restored, &state);
        let mut replica = ClusterState::default();
        for cmd in &applied {
            replica.apply(cmd);
        }
        prop_assert_eq!(replica.state_hash(), state.state_hash());
        prop_assert_eq!(replica, state);
    }
}
