//! Unit and property tests of the state machines.

use proptest::prelude::*;

use super::model::Model;
use super::*;

fn key(n: u8) -> NonceKey {
    NonceKey {
        chain_id: 31337,
        asset: [1; 20],
        payer: [2; 20],
        nonce: [n; 32],
    }
}

fn claim(n: u8, fp: u8, valid_before: u64) -> Command {
    Command::single(
        0,
        Op::ClaimNonce(NonceClaim {
            key: key(n),
            fingerprint: [fp; 32],
            valid_before,
        }),
    )
}

/// Applies a one-operation command and returns its one response.
fn apply1(s: &mut ClusterState, cmd: &Command) -> Response {
    let mut responses = s.apply(cmd);
    assert_eq!(responses.len(), 1);
    responses.remove(0)
}

fn at(mut cmd: Command, at_ms: u64) -> Command {
    cmd.at_ms = at_ms;
    cmd
}

#[test]
fn same_fingerprint_is_idempotent_other_fingerprint_is_replay() {
    let mut s = ClusterState::default();
    let c = at(claim(1, 7, 100), 1_000);
    assert_eq!(apply1(&mut s, &c), Response::Claim(ClaimOutcome::Accepted));
    assert_eq!(apply1(&mut s, &c), Response::Claim(ClaimOutcome::Accepted));
    assert_eq!(
        apply1(&mut s, &at(claim(1, 8, 100), 1_000)),
        Response::Claim(ClaimOutcome::Replay)
    );
    assert_eq!(s.nonces().len(), 1);
    assert_eq!(s.nonces().fingerprint_of(&key(1)), Some([7; 32]));
}

#[test]
fn claim_of_expired_authorization_is_refused_and_leaves_nothing() {
    let mut s = ClusterState::default();
    let out = apply1(&mut s, &at(claim(1, 7, 10), 10_000));
    assert_eq!(out, Response::Claim(ClaimOutcome::Expired));
    assert!(s.nonces().is_empty());
}

#[test]
fn expiry_waits_for_valid_before_plus_margin_and_respects_limit() {
    let mut s = ClusterState::default();
    for n in 0..5 {
        apply1(&mut s, &at(claim(n, 1, 100 + n as u64), 1_000));
    }
    let gc = |t, limit| Command::single(t, Op::ExpireClaims { limit });
    // validBefore passed, but not the margin: nothing goes.
    assert_eq!(
        apply1(&mut s, &gc(200_000, 100)),
        Response::Expired { removed: 0 }
    );
    let t = 104_000 + nonces::RETENTION_MARGIN_MS;
    assert_eq!(apply1(&mut s, &gc(t, 2)), Response::Expired { removed: 2 });
    assert_eq!(
        apply1(&mut s, &gc(t, 100)),
        Response::Expired { removed: 3 }
    );
    assert!(s.nonces().is_empty());
    // Removing every claim takes the set digest back to the empty set's.
    assert_eq!(s.nonces().content_digest(), Default::default());
    // Once forgotten, the same authorization is refused as expired, not accepted again.
    assert_eq!(
        apply1(&mut s, &at(claim(0, 1, 100), t)),
        Response::Claim(ClaimOutcome::Expired)
    );
}

#[test]
fn time_never_moves_backwards() {
    let mut s = ClusterState::default();
    apply1(&mut s, &at(claim(1, 1, 1_000), 500_000));
    // A lagging leader stamps an earlier time: the claim is judged at the later time.
    let out = apply1(&mut s, &at(claim(2, 1, 400), 100_000));
    assert_eq!(out, Response::Claim(ClaimOutcome::Expired));
    assert_eq!(s.now_ms(), 500_000);
}

#[test]
fn snapshot_round_trip_preserves_state_and_hash() {
    let mut s = ClusterState::default();
    for n in 0..50 {
        apply1(&mut s, &at(claim(n, n % 3, 1_000 + n as u64), 10));
    }
    let bytes = s.to_bytes().unwrap();
    let back = ClusterState::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.state_hash(), s.state_hash());
    let mut other = s.clone();
    apply1(&mut other, &at(claim(200, 1, 5_000), 10));
    assert_ne!(other.state_hash(), s.state_hash());
}

fn arb_command() -> impl Strategy<Value = Command> {
    let claim = (0u8..12, 0u8..3, 1u64..2_000).prop_map(|(n, fp, vb)| {
        Op::ClaimNonce(NonceClaim {
            key: key(n),
            fingerprint: [fp; 32],
            valid_before: vb,
        })
    });
    let expire = (0u32..5).prop_map(|limit| Op::ExpireClaims { limit });
    let op = prop_oneof![4 => claim, 1 => expire];
    // Commands of one to a few operations: a batch must behave as its operations in order.
    (0u64..2_500_000, proptest::collection::vec(op, 1..4))
        .prop_map(|(at_ms, ops)| Command { at_ms, ops })
}

proptest! {
    /// Random command sequences give the same answers as the plain model, and every replica that
    /// applies the same sequence ends with the same state hash.
    #[test]
    fn registry_matches_model(cmds in proptest::collection::vec(arb_command(), 1..200)) {
        let mut state = ClusterState::default();
        let mut model = Model::default();
        for cmd in &cmds {
            prop_assert_eq!(state.apply(cmd), model.apply(cmd));
            prop_assert_eq!(state.nonces().len(), model.claims.len());
        }
        for (k, (fp, _)) in &model.claims {
            prop_assert_eq!(state.nonces().fingerprint_of(k), Some(*fp));
        }
        let mut replica = ClusterState::default();
        for cmd in &cmds {
            replica.apply(cmd);
        }
        prop_assert_eq!(replica.state_hash(), state.state_hash());
        let restored = ClusterState::from_bytes(&state.to_bytes().unwrap()).unwrap();
        prop_assert_eq!(restored, state);
    }
}
