//! Unit and property tests of the cluster-wide rate limits (I4): never more than `limit`
//! admissions in any window, leases included.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::rate_limits::{
    MAX_LEASE_MS, MAX_RATE_KEYS_PER_OP, MAX_WINDOW_MS, REFUSED_RETRY_AFTER_MS,
};
use super::*;

const T: u64 = 10_000;

fn subject(n: u8) -> SubjectId {
    u128::from(n)
}

fn key(n: u8, limit: u32, window_ms: u64) -> RateKey {
    RateKey {
        subject: subject(n),
        limit,
        window_ms,
    }
}

fn one(k: RateKey) -> Admission {
    Admission { keys: vec![k] }
}

fn lease(seq: u64, k: RateKey, want: u32, lease_ms: u64) -> LeaseRequest {
    LeaseRequest {
        id: LeaseId { node: 1, seq },
        key: k,
        want,
        lease_ms,
    }
}

fn quota(limit: u32, remaining: u32, reset_after_ms: u64) -> Quota {
    Quota {
        limit,
        remaining,
        reset_after_ms,
    }
}

fn admitted(q: Quota) -> AdmissionVerdict {
    AdmissionVerdict::Admitted { quota: Some(q) }
}

fn limited(q: Quota, retry_after_ms: u64) -> AdmissionVerdict {
    AdmissionVerdict::Limited {
        quota: q,
        retry_after_ms,
    }
}

/// Admits at `now` after checking that `check` gives the same verdict without changing anything.
fn admit(r: &mut RateLimiter, a: &Admission, now: u64) -> AdmissionVerdict {
    let before = r.clone();
    let checked = r.check(a, now);
    assert_eq!(*r, before, "check changed the limiter");
    let verdict = r.admit(a, now);
    assert_eq!(verdict, checked, "check and admit disagree");
    if matches!(verdict, AdmissionVerdict::Limited { .. }) {
        assert_eq!(*r, before, "a refusal changed the limiter");
    }
    assert!(r.is_consistent());
    verdict
}

#[test]
fn admits_up_to_the_limit_then_limits_until_the_oldest_bucket_leaves() {
    // 3 per second, buckets of 100 ms: admissions at T are in bucket 100, counted until 11_100.
    let k = key(1, 3, 1000);
    let mut r = RateLimiter::default();
    for remaining in [2, 1, 0] {
        assert_eq!(
            admit(&mut r, &one(k), T),
            admitted(quota(3, remaining, 1100))
        );
    }
    assert_eq!(admit(&mut r, &one(k), T), limited(quota(3, 0, 1100), 1100));
    assert_eq!(
        admit(&mut r, &one(k), T + 500),
        limited(quota(3, 0, 600), 600)
    );
    assert_eq!(admit(&mut r, &one(k), 11_099), limited(quota(3, 0, 1), 1));
    assert_eq!(r.used(&k.subject, 11_099), 3);
    assert_eq!(r.used(&k.subject, 11_100), 0);
    assert_eq!(admit(&mut r, &one(k), 11_100), admitted(quota(3, 2, 1100)));
    assert_eq!(r.used(&subject(9), T), 0);
}

#[test]
fn retry_after_waits_for_enough_buckets_to_leave() {
    let k = key(1, 3, 1000);
    let mut r = RateLimiter::default();
    for t in [T, T + 300, T + 600] {
        assert!(matches!(
            admit(&mut r, &one(k), t),
            AdmissionVerdict::Admitted { .. }
        ));
    }
    // The oldest admission (bucket 100) leaves at 11_100: one slot frees then.
    assert_eq!(
        admit(&mut r, &one(k), T + 900),
        limited(quota(3, 0, 200), 200)
    );
    assert!(matches!(
        admit(&mut r, &one(k), 11_100),
        AdmissionVerdict::Admitted { .. }
    ));
}

#[test]
fn the_window_slides() {
    let k = key(1, 5, 1000);
    let mut r = RateLimiter::default();
    for _ in 0..5 {
        admit(&mut r, &one(k), T + 42);
    }
    assert!(matches!(
        admit(&mut r, &one(k), T + 42 + 999),
        AdmissionVerdict::Limited { .. }
    ));
    // window_ms + bucket_ms after the admissions, all of them have left.
    for _ in 0..5 {
        assert!(matches!(
            admit(&mut r, &one(k), T + 42 + 1000 + 100),
            AdmissionVerdict::Admitted { .. }
        ));
    }
}

#[test]
fn several_keys_are_all_or_nothing_and_the_longest_retry_is_reported() {
    let a = key(1, 1, 1000);
    let b = key(2, 5, 1000);
    let c = key(3, 1, 5000);
    let mut r = RateLimiter::default();
    let both = Admission { keys: vec![a, b] };
    // The key with the least remaining after counting is reported.
    assert_eq!(admit(&mut r, &both, T), admitted(quota(1, 0, 1100)));
    assert_eq!(r.used(&b.subject, T), 1);
    assert_eq!(admit(&mut r, &both, T), limited(quota(1, 0, 1100), 1100));
    assert_eq!(r.used(&b.subject, T), 1, "nothing counted on refusal");
    assert_eq!(admit(&mut r, &one(b), T), admitted(quota(5, 3, 1100)));
    admit(&mut r, &one(c), T);
    // a and c both full: c frees later (5 s window, 500 ms buckets).
    let all = Admission {
        keys: vec![a, b, c],
    };
    assert_eq!(admit(&mut r, &all, T), limited(quota(1, 0, 5500), 5500));
    assert_eq!(r.used(&b.subject, T), 2);
    // No keys: admitted, nothing to report.
    assert_eq!(
        admit(&mut r, &Admission::default(), T),
        AdmissionVerdict::Admitted { quota: None }
    );
}

#[test]
fn a_key_listed_twice_counts_once_and_one_subject_with_two_limits_is_refused() {
    let k = key(1, 5, 1000);
    let mut r = RateLimiter::default();
    assert_eq!(
        admit(&mut r, &Admission { keys: vec![k, k] }, T),
        admitted(quota(5, 4, 1100))
    );
    let conflicting = Admission {
        keys: vec![k, key(1, 6, 1000)],
    };
    assert_eq!(
        admit(&mut r, &conflicting, T),
        limited(quota(6, 0, 0), REFUSED_RETRY_AFTER_MS)
    );
    assert_eq!(r.used(&k.subject, T), 1);
}

#[test]
fn malformed_admissions_are_refused_without_panic() {
    let mut r = RateLimiter::default();
    for bad in [
        key(1, 0, 1000),
        key(1, 5, 0),
        key(1, 5, MAX_WINDOW_MS + 1),
        key(1, 5, u64::MAX),
    ] {
        assert_eq!(
            admit(&mut r, &one(bad), T),
            limited(quota(bad.limit, 0, 0), REFUSED_RETRY_AFTER_MS)
        );
        let grant = r.take_lease(&lease(1, bad, 3, 100), T);
        assert_eq!(grant.granted, 0);
        assert_eq!(grant.retry_after_ms, REFUSED_RETRY_AFTER_MS);
    }
    let too_many = Admission {
        keys: (0..=MAX_RATE_KEYS_PER_OP as u8)
            .map(|n| key(n, 5, 1000))
            .collect(),
    };
    assert_eq!(
        admit(&mut r, &too_many, T),
        limited(quota(0, 0, 0), REFUSED_RETRY_AFTER_MS)
    );
    assert_eq!(r, RateLimiter::default());
    // Extreme but valid values: the largest window and limit, at the end of time.
    let big = key(2, u32::MAX, MAX_WINDOW_MS);
    for now in [0, u64::MAX - 1, u64::MAX] {
        assert!(matches!(
            admit(&mut r, &one(big), now),
            AdmissionVerdict::Admitted { .. }
        ));
        let grant = r.take_lease(&lease(now, big, u32::MAX, u64::MAX), now);
        assert!(grant.granted > 0);
        r.return_lease(LeaseId { node: 1, seq: now }, u32::MAX, now);
        assert!(r.is_consistent());
    }
    while r.expire_one(u64::MAX) {}
}

#[test]
fn a_lease_is_counted_at_its_end_and_a_retry_counts_nothing() {
    let k = key(1, 10, 1000);
    let mut r = RateLimiter::default();
    let req = lease(1, k, 5, 2000);
    let grant = r.take_lease(&req, T);
    // Counted in bucket 120 (12_000 / 100), which leaves at 13_100.
    assert_eq!(
        grant,
        LeaseGrant {
            granted: 5,
            quota: quota(10, 5, 3100),
            retry_after_ms: 0
        }
    );
    assert_eq!(r.take_lease(&req, T + 10), grant_at(5, 10, 5, 3090));
    assert_eq!(r.used(&k.subject, T), 5);
    assert_eq!(r.leases(), 1);
    for _ in 0..5 {
        admit(&mut r, &one(k), T);
    }
    // Full: the admissions of T leave first (11_100), which is enough.
    assert_eq!(admit(&mut r, &one(k), T), limited(quota(10, 0, 1100), 1100));
    // Still counted long after the admissions: the lease may be spent until 12_000.
    assert_eq!(r.used(&k.subject, 13_099), 5);
    assert_eq!(r.used(&k.subject, 13_100), 0);
    // A lease wanting more than is left gets what is left; a full window grants nothing.
    let more = r.take_lease(&lease(2, k, 50, 0), 11_200);
    assert_eq!(more.granted, 5);
    let none = r.take_lease(&lease(3, k, 1, 0), 11_200);
    assert_eq!(none.granted, 0);
    assert_eq!(none.quota.remaining, 0);
    // Lease 2 (bucket 112, leaves at 12_300) frees first.
    assert_eq!(none.retry_after_ms, 1100);
    assert_eq!(r.leases(), 2, "a refused lease leaves no record");
}

fn grant_at(granted: u32, limit: u32, remaining: u32, reset_after_ms: u64) -> LeaseGrant {
    LeaseGrant {
        granted,
        quota: quota(limit, remaining, reset_after_ms),
        retry_after_ms: 0,
    }
}

#[test]
fn a_lease_is_returned_exactly_once_and_never_after_its_bucket_left() {
    let k = key(1, 10, 1000);
    let mut r = RateLimiter::default();
    let id = LeaseId { node: 1, seq: 1 };
    r.take_lease(&lease(1, k, 6, 2000), T);
    assert_eq!(r.return_lease(id, 4, 12_001), 4);
    assert_eq!(r.used(&k.subject, 12_001), 2);
    assert_eq!(r.return_lease(id, 4, 12_002), 0);
    assert_eq!(r.used(&k.subject, 12_002), 2);
    // More than granted gives back at most the grant (bucket 140, leaves at 15_100).
    let id2 = LeaseId { node: 1, seq: 2 };
    assert_eq!(r.take_lease(&lease(2, k, 3, 2000), 12_002).granted, 3);
    assert_eq!(r.return_lease(id2, 100, 12_003), 3);
    assert_eq!(r.used(&k.subject, 12_003), 2);
    // Unknown lease.
    assert_eq!(r.return_lease(LeaseId { node: 9, seq: 9 }, 1, 12_003), 0);
    // After the lease's bucket left (15_100), returning gives nothing, before or after expiry.
    let id3 = LeaseId { node: 1, seq: 3 };
    assert_eq!(r.take_lease(&lease(3, k, 2, 2000), 12_003).granted, 2);
    assert_eq!(r.return_lease(id3, 2, 15_100), 0);
    assert_eq!(r.used(&k.subject, 15_100), 0);
    while r.expire_one(15_100) {}
    assert_eq!(r.leases(), 0);
    assert_eq!(r.subjects(), 0);
    assert_eq!(r.return_lease(id3, 2, 15_100), 0);
    assert!(r.is_consistent());
    // Giving everything back leaves nothing counted, and the window goes at once.
    r.take_lease(&lease(4, k, 2, 0), 20_000);
    assert_eq!(r.return_lease(LeaseId { node: 1, seq: 4 }, 2, 20_000), 2);
    assert_eq!(r.subjects(), 0);
    assert_eq!(r.leases(), 1);
    assert!(r.is_consistent());
}

#[test]
fn lease_length_is_clamped() {
    let k = key(1, 10, 1000);
    let mut r = RateLimiter::default();
    r.take_lease(&lease(1, k, 1, u64::MAX), T);
    let end = T + MAX_LEASE_MS;
    assert_eq!(r.used(&k.subject, end + 999), 1);
    // Bucket of `end` leaves at end + bucket + window.
    assert_eq!(r.next_expiry_ms(), Some(end + 100 + 1000));
}

#[test]
fn windows_and_leases_expire_once_nothing_is_counted() {
    let k = key(1, 10, 1000);
    let mut r = RateLimiter::default();
    admit(&mut r, &one(k), T);
    assert_eq!(r.next_expiry_ms(), Some(11_100));
    r.take_lease(&lease(1, k, 2, 500), T);
    // Lease bucket 105: the lease record and the window both go at 11_600.
    assert_eq!(r.next_expiry_ms(), Some(11_600));
    assert!(!r.expire_one(11_599));
    assert_eq!(r.used(&k.subject, 11_599), 2);
    assert!(r.expire_one(11_600));
    assert!(r.expire_one(11_600));
    assert!(!r.expire_one(11_600));
    assert_eq!((r.subjects(), r.leases()), (0, 0));
    assert_eq!(r.next_expiry_ms(), None);
    assert_eq!(r, RateLimiter::default());
}

#[test]
fn a_new_limit_is_stored_and_a_new_window_rebuckets_conservatively() {
    let mut r = RateLimiter::default();
    for _ in 0..3 {
        admit(&mut r, &one(key(1, 3, 1000)), T);
    }
    // A higher limit: room again, the same window.
    assert_eq!(
        admit(&mut r, &one(key(1, 4, 1000)), T),
        admitted(quota(4, 0, 1100))
    );
    // A lease on the 1 s window, then the window becomes 10 s: all 5 move into one bucket of
    // the new width (1 s) that ends no earlier than the lease's, and the lease is closed.
    r.take_lease(&lease(1, key(1, 5, 1000), 1, 2000), T);
    assert_eq!(r.used(&subject(1), T), 5);
    assert!(matches!(
        admit(&mut r, &one(key(1, 6, 10_000)), T),
        AdmissionVerdict::Admitted { .. }
    ));
    assert_eq!(r.used(&subject(1), T), 6);
    // The five stay counted in bucket 12 (12_000..13_000, holding the lease's end), which
    // leaves at 23_000; the new admission in bucket 10 leaves at 21_000.
    assert_eq!(r.used(&subject(1), 20_999), 6);
    assert_eq!(r.used(&subject(1), 22_999), 5);
    assert_eq!(r.used(&subject(1), 23_000), 0);
    // The lease's bucket is gone: nothing can be given back.
    assert_eq!(r.return_lease(LeaseId { node: 1, seq: 1 }, 1, T), 0);
    assert!(r.is_consistent());
    // Back to a short window: nothing counted is lost.
    assert!(matches!(
        admit(&mut r, &one(key(1, 7, 1000)), T + 1),
        AdmissionVerdict::Admitted { .. }
    ));
    assert_eq!(r.used(&subject(1), T + 1), 7);
    assert!(r.is_consistent());
}

#[test]
fn guarded_through_the_state_counts_per_command_time() {
    let k = key(1, 2, 1000);
    let mut s = ClusterState::default();
    let guarded = |n: u8| Op::Guarded {
        admission: one(k),
        op: GuardedOp::ClaimNonce(NonceClaim {
            key: NonceKey {
                chain_id: u64::from(n),
                asset: [0; 20],
                payer: [0; 20],
                nonce: [0; 32],
            },
            fingerprint: [1; 32],
            valid_before: u64::MAX / 1000,
        }),
    };
    // Three in one entry: the third is refused, the entry's time counts for all.
    let answers = s.apply(&Command {
        at_ms: T,
        ops: vec![guarded(0), guarded(1), guarded(2)],
    });
    let verdicts: Vec<bool> = answers
        .iter()
        .map(|a| {
            matches!(
                a,
                Response::Guarded {
                    response: Some(_),
                    ..
                }
            )
        })
        .collect();
    assert_eq!(verdicts, [true, true, false]);
    assert_eq!(s.rate_limits().used(&k.subject, T), 2);
}

// ---------------------------------------------------------------------------------------------
// Property: never more than `limit` in any window, with entries and leases mixed.

/// The subjects of the property test: (limit, window_ms). 995 ms windows have 100 ms buckets.
const SUBJECTS: [(u32, u64); 3] = [(3, 1000), (5, 995), (2, 3000)];

fn rate_key(i: usize) -> RateKey {
    let (limit, window_ms) = SUBJECTS[i];
    key(i as u8 + 1, limit, window_ms)
}

#[derive(Clone, Debug)]
enum Step {
    Advance(u64),
    /// Subjects named by the bits of the mask (1 to 3 keys).
    Admit(u8),
    Take {
        subject: usize,
        want: u32,
        lease_ms: u64,
        spend: u32,
        offsets: Vec<u64>,
    },
    /// Take again the lease taken `n`-th (mod the number taken).
    RetryTake(usize),
    /// Return every lease that ended by now (and return one of them twice).
    ReturnDue,
    Expire(u32),
    Snapshot,
}

fn arb_step() -> impl Strategy<Value = Step> {
    let take = (
        0..SUBJECTS.len(),
        0u32..6,
        prop_oneof![8 => 0u64..2500, 1 => Just(MAX_LEASE_MS + 10_000)],
        0u32..7,
        proptest::collection::vec(any::<u64>(), 6),
    )
        .prop_map(|(subject, want, lease_ms, spend, offsets)| Step::Take {
            subject,
            want,
            lease_ms,
            spend,
            offsets,
        });
    prop_oneof![
        6 => (0u64..700).prop_map(Step::Advance),
        8 => (1u8..8).prop_map(Step::Admit),
        3 => take,
        1 => any::<usize>().prop_map(Step::RetryTake),
        2 => Just(Step::ReturnDue),
        1 => (0u32..4).prop_map(Step::Expire),
        1 => Just(Step::Snapshot),
    ]
}

/// A lease as the test's node sees it.
struct Taken {
    request: LeaseRequest,
    at_ms: u64,
    granted: u32,
    spent: u32,
    returned: bool,
}

impl Taken {
    fn end_ms(&self) -> u64 {
        self.at_ms + self.request.lease_ms.min(MAX_LEASE_MS)
    }

    /// When the limiter forgets the lease: its bucket is no longer counted.
    fn forgotten_at_ms(&self) -> u64 {
        let w = self.request.key.window_ms;
        let bucket_ms = w.div_ceil(10).max(1);
        (self.end_ms() / bucket_ms + 1) * bucket_ms + w
    }
}

fn apply_one(s: &mut ClusterState, at_ms: u64, op: Op) -> Response {
    let mut answers = s.apply(&Command::single(at_ms, op));
    assert_eq!(answers.len(), 1);
    answers.remove(0)
}

/// Runs `steps`, checking every answer, and at the end that no window of any subject holds more
/// than its limit.
fn run_steps(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut state = ClusterState::default();
    let mut now = T;
    let mut times: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut taken: Vec<Taken> = Vec::new();
    let mut claims = 0u64;
    for step in steps {
        match step {
            Step::Advance(ms) => now += ms,
            Step::Admit(mask) => {
                let subjects: Vec<usize> = (0..SUBJECTS.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .collect();
                let admission = Admission {
                    keys: subjects.iter().map(|&i| rate_key(i)).collect(),
                };
                claims += 1;
                let claim = NonceClaim {
                    key: NonceKey {
                        chain_id: claims,
                        asset: [0; 20],
                        payer: [0; 20],
                        nonce: [0; 32],
                    },
                    fingerprint: [1; 32],
                    valid_before: u64::MAX / 1000,
                };
                let checked = state.rate_limits().check(&admission, now);
                let answer = apply_one(
                    &mut state,
                    now,
                    Op::Guarded {
                        admission,
                        op: GuardedOp::ClaimNonce(claim.clone()),
                    },
                );
                let Response::Guarded { verdict, response } = answer else {
                    return Err(TestCaseError::fail("not a guarded answer"));
                };
                prop_assert_eq!(verdict, checked);
                let claimed = state.nonces().fingerprint_of(&claim.key).is_some();
                match verdict {
                    AdmissionVerdict::Admitted { quota } => {
                        prop_assert_eq!(
                            response,
                            Some(Box::new(Response::Claim(ClaimOutcome::Accepted)))
                        );
                        prop_assert!(claimed);
                        let q = quota.expect("keys were named");
                        prop_assert!(q.remaining < q.limit);
                        for &i in &subjects {
                            times.entry(i).or_default().push(now);
                        }
                    }
                    AdmissionVerdict::Limited {
                        quota,
                        retry_after_ms,
                    } => {
                        prop_assert_eq!(response, None);
                        prop_assert!(!claimed);
                        prop_assert_eq!(quota.remaining, 0);
                        prop_assert!(retry_after_ms >= 1);
                    }
                }
            }
            Step::Take {
                subject,
                want,
                lease_ms,
                spend,
                offsets,
            } => {
                let request = LeaseRequest {
                    id: LeaseId {
                        node: 7,
                        seq: taken.len() as u64,
                    },
                    key: rate_key(*subject),
                    want: *want,
                    lease_ms: *lease_ms,
                };
                let Response::Lease(grant) = apply_one(&mut state, now, Op::TakeLease(request))
                else {
                    return Err(TestCaseError::fail("not a lease answer"));
                };
                prop_assert!(grant.granted <= *want);
                if grant.granted > 0 {
                    prop_assert_eq!(grant.retry_after_ms, 0);
                } else if *want > 0 {
                    prop_assert!(grant.retry_after_ms >= 1);
                    prop_assert_eq!(grant.quota.remaining, 0);
                }
                let t = Taken {
                    request,
                    at_ms: now,
                    granted: grant.granted,
                    spent: 0,
                    returned: false,
                };
                let spent = (*spend).min(grant.granted);
                let length = t.end_ms() - now;
                for offset in offsets.iter().take(spent as usize) {
                    times
                        .entry(*subject)
                        .or_default()
                        .push(now + offset % (length + 1));
                }
                taken.push(Taken { spent, ..t });
            }
            Step::RetryTake(n) => {
                if taken.is_empty() {
                    continue;
                }
                let i = n % taken.len();
                let t = &taken[i];
                let subject = t.request.key.subject;
                let used = state.rate_limits().used(&subject, now);
                let Response::Lease(grant) = apply_one(&mut state, now, Op::TakeLease(t.request))
                else {
                    return Err(TestCaseError::fail("not a lease answer"));
                };
                if t.granted > 0 && now < t.forgotten_at_ms() {
                    // While the record is kept, a retry is answered the first grant, uncounted.
                    prop_assert_eq!(grant.granted, t.granted);
                    prop_assert_eq!(state.rate_limits().used(&subject, now), used);
                } else if state.rate_limits().used(&subject, now) > used {
                    // A retry of a refused or forgotten lease may be a new lease under the
                    // same id; the node, which acts on one answer only, spends none of it.
                    prop_assert_eq!(
                        state.rate_limits().used(&subject, now),
                        used + grant.granted
                    );
                    taken[i] = Taken {
                        request: t.request,
                        at_ms: now,
                        granted: grant.granted,
                        spent: 0,
                        returned: false,
                    };
                }
            }
            Step::ReturnDue => {
                let mut last = None;
                for t in taken
                    .iter_mut()
                    .filter(|t| !t.returned && t.end_ms() <= now)
                {
                    t.returned = true;
                    let unused = t.granted - t.spent;
                    let answer = apply_one(
                        &mut state,
                        now,
                        Op::ReturnLease {
                            id: t.request.id,
                            unused,
                        },
                    );
                    let Response::LeaseReturned { returned } = answer else {
                        return Err(TestCaseError::fail("not a return answer"));
                    };
                    if t.granted > 0 && now < t.forgotten_at_ms() {
                        prop_assert_eq!(returned, unused);
                    } else {
                        prop_assert_eq!(returned, 0);
                    }
                    last = Some(t.request.id);
                }
                if let Some(id) = last {
                    let again = apply_one(&mut state, now, Op::ReturnLease { id, unused: 1 });
                    prop_assert_eq!(again, Response::LeaseReturned { returned: 0 });
                }
            }
            Step::Expire(limit) => {
                apply_one(&mut state, now, Op::ExpireClaims { limit: *limit });
            }
            Step::Snapshot => {
                let restored = ClusterState::from_bytes(&state.to_bytes().unwrap()).unwrap();
                prop_assert_eq!(restored.state_hash(), state.state_hash());
                prop_assert_eq!(&restored, &state);
                state = restored;
            }
        }
        prop_assert_eq!(state.check_invariants(), Ok(()));
        for i in 0..SUBJECTS.len() {
            let k = rate_key(i);
            prop_assert!(state.rate_limits().used(&k.subject, now) <= k.limit);
        }
    }
    for (i, times) in &mut times {
        let (limit, window_ms) = SUBJECTS[*i];
        times.sort_unstable();
        for (a, start) in times.iter().enumerate() {
            let within = times[a..]
                .iter()
                .take_while(|&&t| t < start + window_ms)
                .count();
            prop_assert!(
                within <= limit as usize,
                "subject {}: {} admissions in [{}, {})",
                i,
                within,
                start,
                start + window_ms
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Random admissions and leases (spent at random times within the lease, returned after its
    /// end): for every subject, no window of `window_ms` holds more than `limit` admissions.
    /// `check` agrees with `admit`; a guarded op is applied exactly when admitted; retries
    /// count nothing; snapshots in the middle change nothing.
    #[test]
    fn never_more_than_the_limit_in_any_window(
        steps in proptest::collection::vec(arb_step(), 1..150)
    ) {
        run_steps(&steps)?;
    }
}
