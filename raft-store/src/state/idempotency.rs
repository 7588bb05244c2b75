//! The Idempotency-Key store: `Idempotency-Key` semantics (draft-ietf-httpapi-idempotency-key-
//! header) across every node of the cluster.
//!
//! A request carrying a key is *begun* in the log before it runs. The first begin of a key
//! owns it (`Started`), under an *attempt* id the node picked; the request's answer is then
//! *finished* into the record and every later request with the same key and the same request
//! fingerprint gets that answer replayed, on whichever node it arrives. Meanwhile:
//!
//! - the same key with another fingerprint is a misuse of the key: `Mismatch` (HTTP 422);
//! - the same key while the first request runs: `InFlight` (HTTP 409), unless the owner has not
//!   finished for `stale_after_ms` (it presumably died): then the new attempt takes it over;
//! - a request that ends with nothing worth keeping (a 503, a timeout) *releases* the key, so
//!   that a retry runs again.
//!
//! ```text
//! begin ──► InFlight{attempt, since} ──finish (same attempt)──► Done(answer) ──► replayed
//!               │  └─ begin after stale_after (other attempt): taken over
//!               └──release (same attempt)──► gone
//! ```
//!
//! A record (in flight or done) lives until `begin time + min(ttl_ms, MAX_IDEMPOTENCY_TTL_MS)`,
//! then is forgotten by the replicated `ExpireClaims`, oldest first through an expiry index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::set_digest::{Member, SetDigest};

/// Most keys remembered at once. A new key beyond it is answered `Full`.
pub const MAX_IDEMPOTENCY_RECORDS: usize = 1_000_000;
/// Longest answer body stored; a longer one is answered `TooLarge` (and not stored).
pub const MAX_STORED_ANSWER_BYTES: usize = 16 * 1024;
/// Longest a key is remembered (30 days); longer TTLs are clamped to it.
pub const MAX_IDEMPOTENCY_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most answer bytes stored over all records (1 GiB), so that the state (every replica holds it
/// in memory, and a snapshot must stay below `codec::MAX_STATE_BYTES`) stays bounded: a million
/// records of the largest answer would be 16 GiB. A finish beyond it is answered `TooLarge`.
pub const MAX_STORED_ANSWER_TOTAL_BYTES: u64 = 1 << 30;

/// Begin a request under an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentStart {
    /// A digest of (tenant, Idempotency-Key header).
    pub key: [u8; 32],
    /// A digest of the request (method, path, body): the same key must carry the same request.
    pub fingerprint: [u8; 32],
    /// Chosen by the node for this run of the request; finish and release must name it.
    pub attempt: [u8; 16],
    /// How long the key is remembered; at most [`MAX_IDEMPOTENCY_TTL_MS`].
    pub ttl_ms: u64,
    /// How long an unfinished attempt keeps the key from other attempts.
    pub stale_after_ms: u64,
}

/// The answer a finished request gave, replayed to its retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub status: u16,
    /// At most [`MAX_STORED_ANSWER_BYTES`].
    pub body: Vec<u8>,
}

/// Store the answer of a begun request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentFinish {
    pub key: [u8; 32],
    pub attempt: [u8; 16],
    pub answer: StoredAnswer,
}

/// The answer to `BeginIdempotent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyBegun {
    /// The attempt owns the key (new, retried, or taken over from a stale attempt): run the
    /// request.
    Started,
    /// Another attempt is running the request.
    InFlight,
    /// The key was used for another request.
    Mismatch,
    /// The request finished already; this is its answer.
    Replay(StoredAnswer),
    /// [`MAX_IDEMPOTENCY_RECORDS`] keys are remembered already.
    Full,
}

/// The answer to `FinishIdempotent` and `ReleaseIdempotent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyEnded {
    /// Finish: the answer is stored (or an answer was already: the first is kept).
    Finished,
    /// Release: the key is forgotten.
    Released,
    /// The key is not in flight under this attempt. Nothing changed.
    NotOwner,
    /// Finish: the answer is too long to store (or the store's answer bytes are used up).
    /// Nothing changed.
    TooLarge,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    InFlight { attempt: [u8; 16], since_ms: u64 },
    Done(StoredAnswer),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    fingerprint: [u8; 32],
    /// When the record may be forgotten, unix milliseconds.
    expires_at_ms: u64,
    phase: Phase,
}

impl Record {
    fn answer_bytes(&self) -> u64 {
        match &self.phase {
            Phase::Done(answer) => answer.body.len() as u64,
            Phase::InFlight { .. } => 0,
        }
    }
}

/// Everything derived from the records: rebuilt on snapshot load, updated on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Derived {
    by_expiry: BTreeSet<(u64, [u8; 32])>,
    /// Set digest of `(key, record)` pairs, for the state hash.
    content_digest: SetDigest,
    /// Bytes the records take in a snapshot, to size its buffer.
    encoded_bytes: u64,
    /// Answer body bytes over all records (bounded by [`MAX_STORED_ANSWER_TOTAL_BYTES`]).
    answer_bytes: u64,
}

impl Derived {
    fn add(&mut self, key: &[u8; 32], record: &Record) {
        let (member, len) = Member::of_encoded(key, record);
        self.content_digest.add(member);
        self.encoded_bytes = self.encoded_bytes.saturating_add(len as u64);
        self.answer_bytes = self.answer_bytes.saturating_add(record.answer_bytes());
        let fresh = self.by_expiry.insert((record.expires_at_ms, *key));
        debug_assert!(fresh, "an idempotency record indexed twice");
    }

    fn remove(&mut self, key: &[u8; 32], record: &Record) {
        let (member, len) = Member::of_encoded(key, record);
        self.content_digest.sub(member);
        self.encoded_bytes = self.encoded_bytes.saturating_sub(len as u64);
        self.answer_bytes = self.answer_bytes.saturating_sub(record.answer_bytes());
        self.by_expiry.remove(&(record.expires_at_ms, *key));
    }
}

/// Every remembered idempotency key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdempotencyStore {
    records: BTreeMap<[u8; 32], Record>,
    derived: Derived,
}

/// Serialised form of the store, written from the live map and read back into one.
#[derive(Serialize)]
pub(crate) struct StoreImageRef<'a>(&'a BTreeMap<[u8; 32], Record>);

#[derive(Deserialize)]
pub(crate) struct StoreImage(BTreeMap<[u8; 32], Record>);

impl IdempotencyStore {
    /// Begins a request under `s.key` at `now_ms`.
    pub fn begin(&mut self, s: &IdempotentStart, now_ms: u64) -> IdempotencyBegun {
        let answer = self.try_begin(s, now_ms);
        self.debug_check();
        answer
    }

    fn try_begin(&mut self, s: &IdempotentStart, now: u64) -> IdempotencyBegun {
        let Some(record) = self.records.get(&s.key) else {
            if self.records.len() >= MAX_IDEMPOTENCY_RECORDS {
                return IdempotencyBegun::Full;
            }
            self.put(
                s.key,
                Record {
                    fingerprint: s.fingerprint,
                    expires_at_ms: now.saturating_add(s.ttl_ms.min(MAX_IDEMPOTENCY_TTL_MS)),
                    phase: Phase::InFlight {
                        attempt: s.attempt,
                        since_ms: now,
                    },
                },
            );
            return IdempotencyBegun::Started;
        };
        if record.fingerprint != s.fingerprint {
            return IdempotencyBegun::Mismatch;
        }
        match &record.phase {
            Phase::Done(answer) => IdempotencyBegun::Replay(answer.clone()),
            Phase::InFlight { attempt, .. } if *attempt == s.attempt => IdempotencyBegun::Started,
            Phase::InFlight { since_ms, .. }
                if since_ms.saturating_add(s.stale_after_ms) <= now =>
            {
                // The owner has not finished in time (presumably died): this attempt takes over.
                let record = Record {
                    phase: Phase::InFlight {
                        attempt: s.attempt,
                        since_ms: now,
                    },
                    ..record.clone()
                };
                self.put(s.key, record);
                IdempotencyBegun::Started
            }
            Phase::InFlight { .. } => IdempotencyBegun::InFlight,
        }
    }

    /// Stores the answer of the attempt that owns `f.key`.
    pub fn finish(&mut self, f: &IdempotentFinish, _now_ms: u64) -> IdempotencyEnded {
        let answer = self.try_finish(f);
        self.debug_check();
        answer
    }

    fn try_finish(&mut self, f: &IdempotentFinish) -> IdempotencyEnded {
        let len = f.answer.body.len();
        if len > MAX_STORED_ANSWER_BYTES {
            return IdempotencyEnded::TooLarge;
        }
        let Some(record) = self.records.get(&f.key) else {
            return IdempotencyEnded::NotOwner;
        };
        match &record.phase {
            // The first answer stays the answer.
            Phase::Done(_) => IdempotencyEnded::Finished,
            Phase::InFlight { attempt, .. } if *attempt == f.attempt => {
                if self.derived.answer_bytes.saturating_add(len as u64)
                    > MAX_STORED_ANSWER_TOTAL_BYTES
                {
                    return IdempotencyEnded::TooLarge;
                }
                let record = Record {
                    phase: Phase::Done(f.answer.clone()),
                    ..record.clone()
                };
                self.put(f.key, record);
                IdempotencyEnded::Finished
            }
            Phase::InFlight { .. } => IdempotencyEnded::NotOwner,
        }
    }

    /// Forgets `key` if `attempt` owns it and has not finished.
    pub fn release(&mut self, key: &[u8; 32], attempt: &[u8; 16]) -> IdempotencyEnded {
        let owned = matches!(
            self.records.get(key).map(|r| &r.phase),
            Some(Phase::InFlight { attempt: a, .. }) if a == attempt
        );
        if !owned {
            return IdempotencyEnded::NotOwner;
        }
        self.remove(key);
        self.debug_check();
        IdempotencyEnded::Released
    }

    /// Number of keys remembered (in flight or done).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The earliest time at which some record may be forgotten, if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.derived.by_expiry.first().map(|&(t, _)| t)
    }

    /// Forgets the record due first, if it is due at `now_ms`.
    pub fn expire_one(&mut self, now_ms: u64) -> bool {
        let Some(&(t, key)) = self.derived.by_expiry.first() else {
            return false;
        };
        if t > now_ms {
            return false;
        }
        self.derived.by_expiry.pop_first();
        self.remove(&key);
        self.debug_check();
        true
    }

    /// Stores `record` under `key` (new or changed), keeping the derived values in step.
    fn put(&mut self, key: [u8; 32], record: Record) {
        self.remove(&key);
        self.derived.add(&key, &record);
        self.records.insert(key, record);
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(old) = self.records.remove(key) {
            self.derived.remove(key, &old);
        }
    }

    fn debug_check(&self) {
        debug_assert_eq!(
            self.records.len(),
            self.derived.by_expiry.len(),
            "an idempotency record outside the expiry index"
        );
        debug_assert!(self.derived.answer_bytes <= MAX_STORED_ANSWER_TOTAL_BYTES);
    }

    fn from_records(records: BTreeMap<[u8; 32], Record>) -> Self {
        let mut derived = Derived::default();
        for (key, record) in &records {
            derived.add(key, record);
        }
        Self { records, derived }
    }

    /// Whether the derived index and digest equal a rebuild from the records. O(records).
    pub(crate) fn is_consistent(&self) -> bool {
        Self::from_records(self.records.clone()) == *self
    }

    pub(crate) fn image(&self) -> StoreImageRef<'_> {
        StoreImageRef(&self.records)
    }

    pub(crate) fn from_image(image: StoreImage) -> Self {
        Self::from_records(image.0)
    }

    /// The digest of the set of records.
    pub(crate) fn content_digest(&self) -> SetDigest {
        self.derived.content_digest
    }

    /// Bytes [`IdempotencyStore::image`] takes when encoded, give or take a varint.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        9usize.saturating_add(usize::try_from(self.derived.encoded_bytes).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod cap_tests {
    //! The caps on records and stored bytes, with the store filled directly: through `begin`, a
    //! million records would take long in a debug build.

    use super::*;

    fn start(key: [u8; 32]) -> IdempotentStart {
        IdempotentStart {
            key,
            fingerprint: [1; 32],
            attempt: [2; 16],
            ttl_ms: 1000,
            stale_after_ms: 100,
        }
    }

    #[test]
    fn a_new_key_beyond_the_cap_is_full() {
        let mut store = IdempotencyStore::default();
        for i in 0..MAX_IDEMPOTENCY_RECORDS as u64 {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&i.to_be_bytes());
            let record = Record {
                fingerprint: [1; 32],
                expires_at_ms: i,
                phase: Phase::InFlight {
                    attempt: [2; 16],
                    since_ms: 0,
                },
            };
            store.derived.by_expiry.insert((i, key));
            store.records.insert(key, record);
        }
        let key = [0xFF; 32];
        assert_eq!(store.begin(&start(key), 0), IdempotencyBegun::Full);
        assert_eq!(store.len(), MAX_IDEMPOTENCY_RECORDS);
        // Known keys still answer.
        assert_eq!(store.begin(&start([0; 32]), 0), IdempotencyBegun::Started);
        assert!(store.expire_one(0));
        assert_eq!(store.begin(&start(key), 0), IdempotencyBegun::Started);
    }

    #[test]
    fn answers_beyond_the_total_bytes_are_too_large() {
        let mut store = IdempotencyStore::default();
        store.derived.answer_bytes = MAX_STORED_ANSWER_TOTAL_BYTES - 10;
        let key = [3; 32];
        assert_eq!(store.begin(&start(key), 0), IdempotencyBegun::Started);
        let finish = |len: usize| IdempotentFinish {
            key,
            attempt: [2; 16],
            answer: StoredAnswer {
                status: 200,
                body: vec![0; len],
            },
        };
        assert_eq!(store.finish(&finish(11), 0), IdempotencyEnded::TooLarge);
        assert_eq!(store.finish(&finish(10), 0), IdempotencyEnded::Finished);
        assert_eq!(store.derived.answer_bytes, MAX_STORED_ANSWER_TOTAL_BYTES);
        // Forgetting the record frees its bytes.
        assert!(store.expire_one(1000));
        assert_eq!(
            store.derived.answer_bytes,
            MAX_STORED_ANSWER_TOTAL_BYTES - 10
        );
    }
}
