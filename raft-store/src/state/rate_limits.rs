//! Cluster-wide rate limits (guarantee I4): for every subject, at most `limit` admissions in
//! *every* sliding window of `window_ms`, however many nodes admit, never N × limit. Under-use is
//! allowed; overshoot never.
//!
//! Each subject has a window counted in sub-buckets of `bucket_ms = ⌈window_ms /
//! BUCKETS_PER_WINDOW⌉` (at least 1 ms); time `t` falls in bucket `t / bucket_ms`. At time `now`
//! every stored bucket from `(now − window_ms) / bucket_ms` on is counted — the oldest one, which
//! only partly overlaps the window, whole (conservative), and buckets in the future (which
//! leases create) too. An admission is allowed while the count is below the limit and adds one
//! to the bucket of `now`.
//!
//! Why that is enough: an admission at `t` stays counted while `now < t + window_ms` (its bucket
//! ends after `t`), so whenever the limit-th admission of a window is decided, every earlier
//! one of that window is still counted.
//!
//! Requests that have no log write of their own (GET /supported) use *leases*: a node takes
//! `want` admissions for `lease_ms` at once and spends them locally anywhere in
//! `[now, now + lease_ms]`. The grant is counted in the bucket of the lease's *end*, so it stays
//! counted until the last local spend has left every window. Unspent admissions are given back
//! by `ReturnLease`, exactly once. Lease ids make both operations idempotent: a retried
//! `TakeLease` gets the first grant without counting again, a second return gives back nothing.
//!
//! A subject's limit and window come with every request (the operator may change them). A new
//! limit is just stored; a new window re-buckets conservatively: everything counted moves into
//! one bucket of the new width that ends no earlier than the latest old one, and the subject's
//! open leases can no longer be returned (their bucket is gone).
//!
//! A window is forgotten once none of its buckets is counted any more, a lease record when its
//! bucket is no longer counted; both by the replicated `ExpireClaims`, oldest first through an
//! expiry index. Limits on every input fail *closed*: a request that cannot be counted is
//! refused, never admitted uncounted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::set_digest::{Member, SetDigest};

/// Sub-buckets per window: the window is counted in steps of a tenth of its length.
pub const BUCKETS_PER_WINDOW: u64 = 10;
/// Most keys one admission may name.
pub const MAX_RATE_KEYS_PER_OP: usize = 8;
/// Most subjects counted at once. A new subject beyond it is refused (fail closed).
pub const MAX_RATE_SUBJECTS: usize = 1_000_000;
/// Most lease records kept at once. A lease beyond it is not granted.
pub const MAX_LEASES: usize = 100_000;
/// Longest lease; longer requests are clamped to it.
pub const MAX_LEASE_MS: u64 = 60_000;
/// Longest window (31 days). Longer (and zero) windows are refused.
pub const MAX_WINDOW_MS: u64 = 31 * 24 * 3600 * 1000;
/// The retry-after of a request that cannot be counted as asked (a malformed key, too many
/// keys, no room for another subject or lease): waiting does not necessarily help, so it only
/// paces the caller.
pub const REFUSED_RETRY_AFTER_MS: u64 = 1000;

/// Bytes one window takes in a snapshot, apart from its buckets: subject, varint limit,
/// varint window, varint bucket count.
const MAX_ENCODED_WINDOW_BYTES: usize = 32 + 5 + 9 + 9;
/// Bytes one bucket takes in a snapshot: varint index and count.
const MAX_ENCODED_BUCKET_BYTES: usize = 9 + 5;
/// Bytes one lease record takes in a snapshot: id, subject, window, bucket, granted, returned.
const MAX_ENCODED_LEASE_BYTES: usize = 18 + 32 + 9 + 9 + 5 + 6;

/// Whom a limit counts: a digest of (tenant, route, payer, ...) chosen by the node.
/// A 128-bit digest naming a counter (a number rather than a byte array: one value to encode
/// and decode in every log entry, not sixteen).
pub type SubjectId = u128;

/// One limit to count an admission against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RateKey {
    pub subject: SubjectId,
    /// Admissions allowed per window; 1 or more.
    pub limit: u32,
    /// 1 ms to [`MAX_WINDOW_MS`].
    pub window_ms: u64,
}

/// The limits one request is admitted against: all of them or none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// At most [`MAX_RATE_KEYS_PER_OP`]. A key listed twice counts once.
    pub keys: Vec<RateKey>,
}

/// Where a subject stands (for `RateLimit-*` / `Retry-After` headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    /// Milliseconds until the count next decreases (0 if nothing is counted).
    pub reset_after_ms: u64,
}

/// The answer to an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmissionVerdict {
    /// All keys had room; each was counted once. `quota` is the key with the least remaining
    /// after counting (None if no keys).
    Admitted { quota: Option<Quota> },
    /// Some key was full; nothing was counted (all-or-nothing). `quota` of the refusing key
    /// with the longest retry_after.
    Limited { quota: Quota, retry_after_ms: u64 },
}

/// Names a lease: the node that takes it and a sequence number of that node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId {
    pub node: u64,
    pub seq: u64,
}

/// A node's request for `want` admissions of `key` to spend locally within `lease_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub id: LeaseId,
    pub key: RateKey,
    pub want: u32,
    /// Clamped to [`MAX_LEASE_MS`]: the node must not spend the grant later than
    /// `now + min(lease_ms, MAX_LEASE_MS)`.
    pub lease_ms: u64,
}

/// The answer to a lease request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Admissions the node may spend locally (0 to `want`).
    pub granted: u32,
    pub quota: Quota,
    /// Milliseconds until a lease could be granted; 0 when granted > 0 (or nothing was
    /// wanted and there is room).
    pub retry_after_ms: u64,
}

/// The bucket width of a window of `window_ms`: never zero.
fn bucket_ms(window_ms: u64) -> u64 {
    window_ms.div_ceil(BUCKETS_PER_WINDOW).max(1)
}

/// Whether a key can be counted at all: positive limit, window in 1..=MAX_WINDOW_MS.
fn valid(key: &RateKey) -> bool {
    key.limit > 0 && key.window_ms > 0 && key.window_ms <= MAX_WINDOW_MS
}

/// The quota reported with a refusal that is not about the count.
fn refused_quota(limit: u32) -> Quota {
    Quota {
        limit,
        remaining: 0,
        reset_after_ms: 0,
    }
}

/// One subject's counts. Never stored empty: a window whose buckets are all gone is removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    limit: u32,
    window_ms: u64,
    /// Bucket index → admissions counted in it (never 0).
    buckets: BTreeMap<u64, u32>,
}

impl Window {
    fn empty(key: &RateKey) -> Self {
        Self {
            limit: key.limit,
            window_ms: key.window_ms,
            buckets: BTreeMap::new(),
        }
    }

    fn bucket_ms(&self) -> u64 {
        bucket_ms(self.window_ms)
    }

    /// The bucket time `t` falls in.
    fn index(&self, t: u64) -> u64 {
        t / self.bucket_ms()
    }

    /// The oldest bucket counted at `now`.
    fn lowest(&self, now: u64) -> u64 {
        now.saturating_sub(self.window_ms) / self.bucket_ms()
    }

    /// The first moment at which bucket `index` is no longer counted.
    fn end_of(&self, index: u64) -> u64 {
        end_of(index, self.window_ms)
    }

    fn counted(&self, now: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buckets
            .range(self.lowest(now)..)
            .map(|(&i, &c)| (i, c))
    }

    /// Admissions counted at `now`.
    fn used(&self, now: u64) -> u64 {
        self.counted(now).map(|(_, c)| u64::from(c)).sum()
    }

    /// When the window may be forgotten: once its newest bucket is no longer counted.
    fn expires_at(&self) -> Option<u64> {
        self.buckets.last_key_value().map(|(&i, _)| self.end_of(i))
    }

    /// Drops the buckets no longer counted at `now` (they never will be again: time only moves
    /// forward).
    fn prune(&mut self, now: u64) {
        let lowest = self.lowest(now);
        if self
            .buckets
            .first_key_value()
            .is_some_and(|(&i, _)| i < lowest)
        {
            self.buckets = self.buckets.split_off(&lowest);
        }
    }

    fn add(&mut self, index: u64, n: u32) {
        if n > 0 {
            let c = self.buckets.entry(index).or_insert(0);
            *c = c.saturating_add(n);
        }
    }

    fn quota(&self, now: u64) -> Quota {
        let used = u32::try_from(self.used(now)).unwrap_or(u32::MAX);
        Quota {
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_after_ms: self.reset_after(now),
        }
    }

    /// Milliseconds until the oldest counted bucket leaves (0 if nothing is counted).
    fn reset_after(&self, now: u64) -> u64 {
        self.counted(now)
            .next()
            .map_or(0, |(i, _)| self.end_of(i).saturating_sub(now))
    }

    /// Milliseconds until the count is below the limit again, at least 1 (for a full window).
    fn retry_after(&self, now: u64) -> u64 {
        let limit = u64::from(self.limit);
        let mut left = self.used(now);
        for (i, c) in self.counted(now) {
            left = left.saturating_sub(u64::from(c));
            if left < limit {
                return self.end_of(i).saturating_sub(now).max(1);
            }
        }
        REFUSED_RETRY_AFTER_MS
    }
}

/// The first moment at which bucket `index` of a window of `window_ms` is no longer counted.
fn end_of(index: u64, window_ms: u64) -> u64 {
    index
        .saturating_add(1)
        .saturating_mul(bucket_ms(window_ms))
        .saturating_add(window_ms)
}

/// The window `key` sees at `now`: the stored one (or a new empty one) with `key`'s limit and
/// no bucket older than the window. If `key` names another window length, everything counted
/// is re-bucketed into one bucket of the new width that ends no earlier than the newest old
/// bucket and not before `now`'s (then the second value is true).
fn view(stored: Option<&Window>, key: &RateKey, now: u64) -> (Window, bool) {
    match stored {
        None => (Window::empty(key), false),
        Some(w) if w.window_ms == key.window_ms => {
            let mut w = w.clone();
            w.limit = key.limit;
            w.prune(now);
            (w, false)
        }
        Some(old) => {
            let mut new = Window::empty(key);
            let total = old.used(now);
            if let Some((last, _)) = old.counted(now).last() {
                // The last millisecond of the newest old bucket: every admission counted there
                // (or spent under a lease ending there) happened at or before it.
                let last_ms = last
                    .saturating_add(1)
                    .saturating_mul(old.bucket_ms())
                    .saturating_sub(1);
                let index = new.index(now).max(new.index(last_ms));
                new.add(index, u32::try_from(total).unwrap_or(u32::MAX));
            }
            (new, true)
        }
    }
}

/// A lease the cluster granted: its admissions are counted in `bucket` of `subject`'s window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    subject: SubjectId,
    /// The window length the bucket index is in.
    window_ms: u64,
    bucket: u64,
    /// Never 0: refusals are not recorded.
    granted: u32,
    /// What `ReturnLease` gave back; `Some` once returned (or once it can no longer be).
    returned: Option<u32>,
}

impl Lease {
    /// When the lease's bucket is no longer counted: the record may be forgotten.
    fn expires_at(&self) -> u64 {
        end_of(self.bucket, self.window_ms)
    }
}

/// An item of the expiry index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Expiring {
    Window(SubjectId),
    Lease(LeaseId),
}

fn window_member(subject: &SubjectId, w: &Window) -> Member {
    let mut h = Sha256::new();
    h.update(b"rate window");
    h.update(subject.to_le_bytes());
    h.update(w.limit.to_be_bytes());
    h.update(w.window_ms.to_be_bytes());
    Member::from_hasher(h)
}

/// A bucket's member: it changes on every admission, so it is mixed, not SHA-256'd
/// ([`Member::from_words`]).
fn bucket_member(subject: &SubjectId, index: u64, count: u32) -> Member {
    Member::from_words(&[
        0x7261_7465_5f62_6b74, // "rate_bkt"
        *subject as u64,
        (*subject >> 64) as u64,
        index,
        u64::from(count),
    ])
}

fn lease_member(id: &LeaseId, lease: &Lease) -> Member {
    let mut h = Sha256::new();
    h.update(b"rate lease");
    h.update(id.node.to_be_bytes());
    h.update(id.seq.to_be_bytes());
    h.update(lease.subject.to_le_bytes());
    h.update(lease.window_ms.to_be_bytes());
    h.update(lease.bucket.to_be_bytes());
    h.update(lease.granted.to_be_bytes());
    match lease.returned {
        None => h.update([0]),
        Some(n) => {
            h.update([1]);
            h.update(n.to_be_bytes());
        }
    }
    Member::from_hasher(h)
}

/// Everything derived from the windows and leases: rebuilt on snapshot load, updated on every
/// change (only through `RateLimiter::{put_window, put_lease, remove_lease}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Derived {
    /// (when it may be forgotten, what): expiry takes the oldest first without a scan.
    by_expiry: BTreeSet<(u64, Expiring)>,
    /// The leases of each subject, to close them when the subject's window is re-bucketed.
    leases_by_subject: BTreeSet<(SubjectId, LeaseId)>,
    /// Set digest of window settings, buckets `(subject, index, count)` and leases: one member
    /// per bucket, so counting an admission re-hashes one bucket, not the window.
    content_digest: SetDigest,
    /// Buckets stored over all windows, to size the snapshot buffer.
    buckets: usize,
}

/// The rate limits of every subject and the leases granted on them.
///
/// The mutating methods expect `now_ms` never to decrease from one call to the next, as
/// [`super::ClusterState`] guarantees (`check` and `used` may be asked about any time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimiter {
    windows: BTreeMap<SubjectId, Window>,
    leases: BTreeMap<LeaseId, Lease>,
    derived: Derived,
}

/// Serialised form of the rate limiter, written from the live maps and read back into owned
/// ones (same bytes). Indexes and digest are derived.
#[derive(Serialize)]
pub(crate) struct RateImageRef<'a> {
    windows: &'a BTreeMap<SubjectId, Window>,
    leases: &'a BTreeMap<LeaseId, Lease>,
}

#[derive(Deserialize)]
pub(crate) struct RateImage {
    windows: BTreeMap<SubjectId, Window>,
    leases: BTreeMap<LeaseId, Lease>,
}

impl RateLimiter {
    /// Counts one admission against every key of `admission` at `now_ms`, or none if any key is
    /// full (or cannot be counted).
    pub fn admit(&mut self, admission: &Admission, now_ms: u64) -> AdmissionVerdict {
        // The verdict first, reading windows in place; then the counting, in place for the
        // usual key (a known window of the same length), by a rebuilt window otherwise.
        let verdict = self.verdict(admission, now_ms);
        if let AdmissionVerdict::Admitted { .. } = verdict {
            let mut counted: Vec<&RateKey> = Vec::with_capacity(admission.keys.len());
            for key in &admission.keys {
                if counted.contains(&key) {
                    continue;
                }
                counted.push(key);
                let in_place = self
                    .windows
                    .get(&key.subject)
                    .is_some_and(|w| w.window_ms == key.window_ms);
                if in_place {
                    self.bump(&key.subject, key.limit, now_ms);
                } else {
                    let (mut window, rebucketed) =
                        view(self.windows.get(&key.subject), key, now_ms);
                    window.add(window.index(now_ms), 1);
                    self.put_window(key.subject, Some(window));
                    if rebucketed {
                        self.close_leases(&key.subject);
                    }
                }
            }
        }
        self.debug_check();
        verdict
    }

    /// Counts one admission at `now` in `subject`'s stored window, updating only what changes
    /// (pruned buckets, the bumped bucket, the expiry): the path of almost every request.
    fn bump(&mut self, subject: &SubjectId, limit: u32, now: u64) {
        // The caller found or made the window a moment ago, in the same apply.
        let Some(w) = self.windows.get_mut(subject) else {
            unreachable!("bump of an unknown window");
        };
        let d = &mut self.derived;
        let old_expiry = w.expires_at();
        if w.limit != limit {
            d.content_digest.sub(window_member(subject, w));
            w.limit = limit;
            d.content_digest.add(window_member(subject, w));
        }
        let lowest = w.lowest(now);
        while let Some((&i, &c)) = w.buckets.first_key_value() {
            if i >= lowest {
                break;
            }
            d.content_digest.sub(bucket_member(subject, i, c));
            d.buckets = d.buckets.saturating_sub(1);
            w.buckets.pop_first();
        }
        let index = w.index(now);
        match w.buckets.get_mut(&index) {
            Some(c) => {
                d.content_digest.sub(bucket_member(subject, index, *c));
                *c = c.saturating_add(1);
                d.content_digest.add(bucket_member(subject, index, *c));
            }
            None => {
                w.buckets.insert(index, 1);
                d.content_digest.add(bucket_member(subject, index, 1));
                d.buckets = d.buckets.saturating_add(1);
            }
        }
        let new_expiry = w.expires_at();
        if old_expiry != new_expiry {
            if let Some(t) = old_expiry {
                d.by_expiry.remove(&(t, Expiring::Window(*subject)));
            }
            if let Some(t) = new_expiry {
                d.by_expiry.insert((t, Expiring::Window(*subject)));
            }
        }
    }

    /// The verdict `admit` would give, without counting (a node's local pre-check on its
    /// applied state).
    pub fn check(&self, admission: &Admission, now_ms: u64) -> AdmissionVerdict {
        self.verdict(admission, now_ms)
    }

    /// The verdict on `admission`, with the quota counting it would leave. Shared by `admit` and
    /// `check` so that they cannot disagree; a stored window is read in place, not copied.
    fn verdict(&self, admission: &Admission, now: u64) -> AdmissionVerdict {
        if admission.keys.len() > MAX_RATE_KEYS_PER_OP {
            let verdict = AdmissionVerdict::Limited {
                quota: refused_quota(0),
                retry_after_ms: REFUSED_RETRY_AFTER_MS,
            };
            return verdict;
        }
        let mut keys: Vec<RateKey> = Vec::with_capacity(admission.keys.len());
        let mut refusal: Option<(Quota, u64)> = None;
        let mut refuse = |quota: Quota, retry_after_ms: u64| {
            if refusal.is_none_or(|(_, r)| retry_after_ms > r) {
                refusal = Some((quota, retry_after_ms));
            }
        };
        let mut new_subjects = 0usize;
        let mut quotas: Vec<Quota> = Vec::with_capacity(admission.keys.len());
        for key in &admission.keys {
            if keys.contains(key) {
                continue;
            }
            keys.push(*key);
            // One subject with two different limits in one request cannot be counted once.
            let conflicting = keys.iter().filter(|k| k.subject == key.subject).count() > 1;
            if conflicting || !valid(key) {
                refuse(refused_quota(key.limit), REFUSED_RETRY_AFTER_MS);
                continue;
            }
            let stored = self.windows.get(&key.subject);
            if stored.is_none() {
                if self.windows.len().saturating_add(new_subjects) >= MAX_RATE_SUBJECTS {
                    refuse(refused_quota(key.limit), REFUSED_RETRY_AFTER_MS);
                    continue;
                }
                new_subjects += 1;
            }
            if let Some(w) = stored {
                if w.window_ms == key.window_ms {
                    let limit = key.limit;
                    let used = w.used(now);
                    if used >= u64::from(limit) {
                        let w = Window { limit, ..w.clone() };
                        refuse(w.quota(now), w.retry_after(now));
                        continue;
                    }
                    // The quota `admit` would report: one more counted in the bucket of `now`.
                    let here = w.index(now);
                    let oldest = w.counted(now).next().map_or(here, |(i, _)| i.min(here));
                    let used = u32::try_from(used.saturating_add(1)).unwrap_or(u32::MAX);
                    quotas.push(Quota {
                        limit,
                        remaining: limit.saturating_sub(used),
                        reset_after_ms: w.end_of(oldest).saturating_sub(now),
                    });
                    continue;
                }
            }
            let (mut window, _) = view(stored, key, now);
            if window.used(now) >= u64::from(window.limit) {
                refuse(window.quota(now), window.retry_after(now));
                continue;
            }
            window.add(window.index(now), 1);
            quotas.push(window.quota(now));
        }
        if let Some((quota, retry_after_ms)) = refusal {
            let verdict = AdmissionVerdict::Limited {
                quota,
                retry_after_ms,
            };
            return verdict;
        }
        let quota = quotas.into_iter().min_by_key(|q| q.remaining);
        AdmissionVerdict::Admitted { quota }
    }

    /// Grants up to `request.want` admissions of `request.key` to spend locally within the
    /// lease. A retried request (same id) gets the first grant and counts nothing.
    pub fn take_lease(&mut self, request: &LeaseRequest, now_ms: u64) -> LeaseGrant {
        let grant = self.try_take_lease(request, now_ms);
        self.debug_check();
        grant
    }

    fn try_take_lease(&mut self, request: &LeaseRequest, now: u64) -> LeaseGrant {
        let key = &request.key;
        let refused = |quota: Quota| LeaseGrant {
            granted: 0,
            quota,
            retry_after_ms: REFUSED_RETRY_AFTER_MS,
        };
        if !valid(key) {
            return refused(refused_quota(key.limit));
        }
        let stored = self.windows.get(&key.subject);
        if let Some(lease) = self.leases.get(&request.id) {
            // An id names one lease: whatever was granted first is the answer.
            let (window, _) = view(stored, key, now);
            return LeaseGrant {
                granted: lease.granted,
                quota: window.quota(now),
                retry_after_ms: 0,
            };
        }
        if stored.is_none() && self.windows.len() >= MAX_RATE_SUBJECTS {
            return refused(refused_quota(key.limit));
        }
        let (mut window, rebucketed) = view(stored, key, now);
        let used = window.used(now);
        let room = u64::from(window.limit).saturating_sub(used);
        let granted = u32::try_from(room.min(u64::from(request.want))).unwrap_or(0);
        if granted == 0 {
            let retry_after_ms = if room == 0 {
                window.retry_after(now)
            } else {
                0
            };
            return LeaseGrant {
                granted,
                quota: window.quota(now),
                retry_after_ms,
            };
        }
        if self.leases.len() >= MAX_LEASES {
            return refused(window.quota(now));
        }
        let end = now.saturating_add(request.lease_ms.min(MAX_LEASE_MS));
        let bucket = window.index(end);
        window.add(bucket, granted);
        let quota = window.quota(now);
        let lease = Lease {
            subject: key.subject,
            window_ms: window.window_ms,
            bucket,
            granted,
            returned: None,
        };
        self.put_window(key.subject, Some(window));
        if rebucketed {
            self.close_leases(&key.subject);
        }
        self.put_lease(request.id, lease);
        LeaseGrant {
            granted,
            quota,
            retry_after_ms: 0,
        }
    }

    /// Gives back `unused` admissions of lease `id` (at most what it was granted), once: a
    /// second return, a return of an unknown lease or of one whose bucket is no longer counted
    /// gives back 0. Answers how many were given back.
    pub fn return_lease(&mut self, id: LeaseId, unused: u32, now_ms: u64) -> u32 {
        let returned = self.try_return_lease(id, unused, now_ms);
        self.debug_check();
        returned
    }

    fn try_return_lease(&mut self, id: LeaseId, unused: u32, now: u64) -> u32 {
        let Some(mut lease) = self.leases.get(&id).copied() else {
            return 0;
        };
        if lease.returned.is_some() || now >= lease.expires_at() {
            return 0;
        }
        let window = self
            .windows
            .get(&lease.subject)
            .filter(|w| w.window_ms == lease.window_ms);
        let counted = window
            .and_then(|w| w.buckets.get(&lease.bucket))
            .copied()
            .unwrap_or(0);
        // The lease's bucket holds at least its grant until it is returned: only returns take
        // from a bucket, each at most its own grant, and re-bucketing closes the leases.
        debug_assert!(counted >= lease.granted, "a lease's bucket lost its grant");
        let n = unused.min(lease.granted).min(counted);
        if let Some(mut window) = window.cloned().filter(|_| n > 0) {
            match window.buckets.get_mut(&lease.bucket) {
                Some(c) if *c > n => *c -= n,
                _ => {
                    window.buckets.remove(&lease.bucket);
                }
            }
            window.prune(now);
            self.put_window(lease.subject, Some(window));
        }
        lease.returned = Some(n);
        self.put_lease(id, lease);
        n
    }

    /// Admissions counted for `subject` at `now_ms` (0 if unknown).
    pub fn used(&self, subject: &SubjectId, now_ms: u64) -> u32 {
        self.windows
            .get(subject)
            .map_or(0, |w| u32::try_from(w.used(now_ms)).unwrap_or(u32::MAX))
    }

    /// Number of windows kept.
    pub fn subjects(&self) -> usize {
        self.windows.len()
    }

    /// Number of lease records kept.
    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// The earliest time at which a window or a lease record may be forgotten, if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.derived.by_expiry.first().map(|&(t, _)| t)
    }

    /// Forgets the window or lease record due first, if it is due at `now_ms`.
    pub fn expire_one(&mut self, now_ms: u64) -> bool {
        let Some(&(t, item)) = self.derived.by_expiry.first() else {
            return false;
        };
        if t > now_ms {
            return false;
        }
        self.derived.by_expiry.pop_first();
        match item {
            // No bucket of it is counted any more: forgetting it forgets nothing that counts.
            Expiring::Window(subject) => self.put_window(subject, None),
            Expiring::Lease(id) => self.remove_lease(&id),
        }
        self.debug_check();
        true
    }

    /// Stores `window` as `subject`'s (removes it when `None` or empty), keeping every
    /// derived value in step.
    fn put_window(&mut self, subject: SubjectId, window: Option<Window>) {
        let window = window.filter(|w| !w.buckets.is_empty());
        let old = match window {
            Some(w) => self.windows.insert(subject, w),
            None => self.windows.remove(&subject),
        };
        let new = self.windows.get(&subject);
        let d = &mut self.derived;
        let empty = BTreeMap::new();
        let old_buckets = old.as_ref().map_or(&empty, |w| &w.buckets);
        let new_buckets = new.map_or(&empty, |w| &w.buckets);
        for (&i, &c) in old_buckets {
            if new_buckets.get(&i) != Some(&c) {
                d.content_digest.sub(bucket_member(&subject, i, c));
            }
            if !new_buckets.contains_key(&i) {
                d.buckets = d.buckets.saturating_sub(1);
            }
        }
        for (&i, &c) in new_buckets {
            if old_buckets.get(&i) != Some(&c) {
                d.content_digest.add(bucket_member(&subject, i, c));
            }
            if !old_buckets.contains_key(&i) {
                d.buckets = d.buckets.saturating_add(1);
            }
        }
        let settings = |w: &Window| (w.limit, w.window_ms);
        if old.as_ref().map(settings) != new.map(settings) {
            if let Some(old) = &old {
                d.content_digest.sub(window_member(&subject, old));
            }
            if let Some(new) = new {
                d.content_digest.add(window_member(&subject, new));
            }
        }
        let old_expiry = old.as_ref().and_then(Window::expires_at);
        let new_expiry = new.and_then(Window::expires_at);
        if old_expiry != new_expiry {
            if let Some(t) = old_expiry {
                d.by_expiry.remove(&(t, Expiring::Window(subject)));
            }
            if let Some(t) = new_expiry {
                d.by_expiry.insert((t, Expiring::Window(subject)));
            }
        }
    }

    /// Stores a lease record (new or changed), keeping every derived value in step.
    fn put_lease(&mut self, id: LeaseId, lease: Lease) {
        self.remove_lease(&id);
        let d = &mut self.derived;
        d.content_digest.add(lease_member(&id, &lease));
        d.by_expiry
            .insert((lease.expires_at(), Expiring::Lease(id)));
        d.leases_by_subject.insert((lease.subject, id));
        self.leases.insert(id, lease);
    }

    fn remove_lease(&mut self, id: &LeaseId) {
        if let Some(lease) = self.leases.remove(id) {
            let d = &mut self.derived;
            d.content_digest.sub(lease_member(id, &lease));
            d.by_expiry
                .remove(&(lease.expires_at(), Expiring::Lease(*id)));
            d.leases_by_subject.remove(&(lease.subject, *id));
        }
    }

    /// Closes the open leases of `subject` after its window was re-bucketed: their bucket no
    /// longer exists, so nothing can be given back (conservative: under-use only).
    fn close_leases(&mut self, subject: &SubjectId) {
        let low = (*subject, LeaseId { node: 0, seq: 0 });
        let high = (
            *subject,
            LeaseId {
                node: u64::MAX,
                seq: u64::MAX,
            },
        );
        let ids: Vec<LeaseId> = self
            .derived
            .leases_by_subject
            .range(low..=high)
            .map(|&(_, id)| id)
            .collect();
        for id in ids {
            if let Some(lease) = self.leases.get(&id).copied() {
                if lease.returned.is_none() {
                    self.put_lease(
                        id,
                        Lease {
                            returned: Some(0),
                            ..lease
                        },
                    );
                }
            }
        }
    }

    /// The cheap invariants, after every change in debug builds.
    fn debug_check(&self) {
        let d = &self.derived;
        debug_assert_eq!(
            d.by_expiry.len(),
            self.windows.len() + self.leases.len(),
            "a window or lease outside the expiry index"
        );
        debug_assert_eq!(d.leases_by_subject.len(), self.leases.len());
    }

    /// Whether the derived indexes and digest equal a rebuild from the records, and no window
    /// is empty (tests, snapshot load in debug builds). O(everything).
    pub(crate) fn is_consistent(&self) -> bool {
        self.windows.values().all(|w| !w.buckets.is_empty())
            && Self::from_parts(self.windows.clone(), self.leases.clone()) == *self
    }

    fn from_parts(windows: BTreeMap<SubjectId, Window>, leases: BTreeMap<LeaseId, Lease>) -> Self {
        let mut limiter = Self::default();
        for (subject, window) in windows {
            limiter.put_window(subject, Some(window));
        }
        for (id, lease) in leases {
            limiter.put_lease(id, lease);
        }
        limiter
    }

    pub(crate) fn image(&self) -> RateImageRef<'_> {
        RateImageRef {
            windows: &self.windows,
            leases: &self.leases,
        }
    }

    pub(crate) fn from_image(image: RateImage) -> Self {
        let limiter = Self::from_parts(image.windows, image.leases);
        debug_assert!(limiter.is_consistent());
        limiter
    }

    /// The digest of every window, bucket and lease.
    pub(crate) fn content_digest(&self) -> SetDigest {
        self.derived.content_digest
    }

    /// Bytes [`RateLimiter::image`] takes when encoded, at most (to size the snapshot buffer).
    pub(crate) fn encoded_len_hint(&self) -> usize {
        (2 * 9usize)
            .saturating_add(self.windows.len().saturating_mul(MAX_ENCODED_WINDOW_BYTES))
            .saturating_add(
                self.derived
                    .buckets
                    .saturating_mul(MAX_ENCODED_BUCKET_BYTES),
            )
            .saturating_add(self.leases.len().saturating_mul(MAX_ENCODED_LEASE_BYTES))
    }
}

#[cfg(test)]
mod cap_tests {
    //! The caps on subjects and leases, with the limiter filled directly: through `admit`, a
    //! million subjects would take long in a debug build. (The digest is left out, so these
    //! limiters are not `is_consistent`.)

    use super::*;

    fn id(i: usize) -> SubjectId {
        (0xEE << 64) | i as u128
    }

    fn key(subject: SubjectId) -> RateKey {
        RateKey {
            subject,
            limit: 10,
            window_ms: 1000,
        }
    }

    fn admit_one(r: &mut RateLimiter, subject: SubjectId, now: u64) -> AdmissionVerdict {
        let a = Admission {
            keys: vec![key(subject)],
        };
        let checked = r.check(&a, now);
        let verdict = r.admit(&a, now);
        assert_eq!(verdict, checked);
        verdict
    }

    #[test]
    fn a_new_subject_beyond_the_cap_is_refused() {
        let mut r = RateLimiter::default();
        for i in 0..MAX_RATE_SUBJECTS - 1 {
            let w = Window {
                limit: 10,
                window_ms: 1000,
                buckets: BTreeMap::from([(i as u64 / 1000, 1)]),
            };
            let t = w.expires_at().unwrap_or(0);
            r.derived.by_expiry.insert((t, Expiring::Window(id(i))));
            r.windows.insert(id(i), w);
        }
        // The last free place, then none: refused, fail closed, for entries and leases alike.
        let newest = id(MAX_RATE_SUBJECTS);
        let now = MAX_RATE_SUBJECTS as u64;
        assert!(matches!(
            admit_one(&mut r, newest, now),
            AdmissionVerdict::Admitted { .. }
        ));
        let refused = AdmissionVerdict::Limited {
            quota: Quota {
                limit: 10,
                remaining: 0,
                reset_after_ms: 0,
            },
            retry_after_ms: REFUSED_RETRY_AFTER_MS,
        };
        assert_eq!(admit_one(&mut r, id(usize::MAX), now), refused);
        let two_new = Admission {
            keys: vec![key(newest), key(id(usize::MAX - 1))],
        };
        assert_eq!(r.admit(&two_new, now), refused);
        let lease = LeaseRequest {
            id: LeaseId { node: 1, seq: 1 },
            key: key(id(usize::MAX)),
            want: 1,
            lease_ms: 0,
        };
        assert_eq!(r.take_lease(&lease, now).granted, 0);
        assert_eq!(r.subjects(), MAX_RATE_SUBJECTS);
        // Known subjects are still counted.
        assert!(matches!(
            admit_one(&mut r, id(7), now),
            AdmissionVerdict::Admitted { .. }
        ));
        // Once a window expires there is room again.
        assert!(r.expire_one(now));
        assert!(matches!(
            admit_one(&mut r, id(usize::MAX), now),
            AdmissionVerdict::Admitted { .. }
        ));
    }

    #[test]
    fn no_lease_is_granted_beyond_the_cap() {
        let mut r = RateLimiter::default();
        let subject = id(0);
        for seq in 0..MAX_LEASES as u64 {
            let id = LeaseId { node: 2, seq };
            let lease = Lease {
                subject,
                window_ms: 1000,
                bucket: 0,
                granted: 1,
                returned: Some(1),
            };
            r.derived
                .by_expiry
                .insert((lease.expires_at(), Expiring::Lease(id)));
            r.derived.leases_by_subject.insert((subject, id));
            r.leases.insert(id, lease);
        }
        let request = LeaseRequest {
            id: LeaseId { node: 1, seq: 1 },
            key: key(subject),
            want: 3,
            lease_ms: 100,
        };
        let grant = r.take_lease(&request, 0);
        assert_eq!(grant.granted, 0);
        assert_eq!(grant.retry_after_ms, REFUSED_RETRY_AFTER_MS);
        assert_eq!(grant.quota.remaining, 10);
        assert_eq!(r.subjects(), 0, "a refused lease counts nothing");
        // Expired lease records make room.
        assert!(r.expire_one(1100));
        assert_eq!(r.take_lease(&request, 1100).granted, 3);
    }
}
