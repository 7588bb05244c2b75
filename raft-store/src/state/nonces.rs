//! The nonce registry: replay protection for EIP-3009 authorizations (guarantee I1).
//!
//! An authorization is identified by `(chain, asset, payer, nonce)`. The first claim binds it to a
//! *requirements fingerprint* (a digest of network, asset, payTo, amount and resource). Claiming
//! again with the same fingerprint is idempotent and gets the same answer; claiming with another
//! fingerprint is a replay and is refused. A claim is kept until the authorization's `validBefore`
//! plus [`RETENTION_MARGIN_MS`], then removed by a replicated expiry command, never by a timer.
//!
//! Claims are stored under a SHA-256 digest of their key (32 bytes instead of 80) with a second
//! index ordered by expiry, so that expiry removes the oldest claims first without scanning.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::set_digest::{Member, SetDigest};

/// How long a claim outlives its authorization's `validBefore`. The margin covers clock
/// differences between the cluster and the chain: after it, the token contract itself refuses
/// the authorization, so forgetting the claim cannot let a replay through.
pub const RETENTION_MARGIN_MS: u64 = 5 * 60 * 1000;

/// Identifies one EIP-3009 authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NonceKey {
    pub chain_id: u64,
    pub asset: [u8; 20],
    pub payer: [u8; 20],
    pub nonce: [u8; 32],
}

impl NonceKey {
    /// A collision-resistant digest of the key, used as the registry's index.
    pub fn digest(&self) -> ClaimId {
        let mut h = Sha256::new();
        h.update(self.chain_id.to_be_bytes());
        h.update(self.asset);
        h.update(self.payer);
        h.update(self.nonce);
        h.finalize().into()
    }
}

/// Most bytes one claim takes in a snapshot: id and fingerprint (32 each) and a varint time.
pub const MAX_ENCODED_CLAIM_BYTES: usize = 32 + 32 + 9;

/// The digest of a [`NonceKey`].
pub type ClaimId = [u8; 32];

/// A request to claim an authorization for one set of payment requirements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceClaim {
    pub key: NonceKey,
    /// Digest of the payment requirements this authorization is being used for.
    pub fingerprint: [u8; 32],
    /// The authorization's `validBefore`, in unix seconds.
    pub valid_before: u64,
}

/// The state machine's answer to a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimOutcome {
    /// The authorization is now (or already was) claimed for this fingerprint.
    Accepted,
    /// The authorization was already claimed for other requirements.
    Replay,
    /// The authorization's `validBefore` has passed; it can no longer be claimed.
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClaimRecord {
    fingerprint: [u8; 32],
    /// When the claim may be forgotten, unix milliseconds.
    expires_at_ms: u64,
}

/// All live claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonceRegistry {
    claims: BTreeMap<ClaimId, ClaimRecord>,
    by_expiry: BTreeSet<(u64, ClaimId)>,
    /// Sum (mod 2^256) of the digests of every live claim: a hash of the claim *set* kept up to
    /// date in O(1) per change, so replicas can be compared without serialising the state.
    content_digest: SetDigest,
}

/// A claim's contribution to the registry's [`SetDigest`]. (Hashed field by field rather than
/// through bincode: the same bytes as before settlements existed, so claim digests are stable.)
fn member(id: &ClaimId, record: &ClaimRecord) -> Member {
    let mut h = Sha256::new();
    h.update(id);
    h.update(record.fingerprint);
    h.update(record.expires_at_ms.to_be_bytes());
    Member::from_hasher(h)
}

/// Whether an authorization valid before `valid_before` (unix seconds) can no longer be used at
/// `now_ms`. The one rule for claims and settlements alike.
pub(crate) fn authorization_expired(valid_before: u64, now_ms: u64) -> bool {
    valid_before.saturating_mul(1000) <= now_ms
}

/// When a claim (or a finished settlement) of an authorization valid before `valid_before` may
/// be forgotten, unix milliseconds.
pub(crate) fn retention_end_ms(valid_before: u64) -> u64 {
    valid_before
        .saturating_mul(1000)
        .saturating_add(RETENTION_MARGIN_MS)
}

/// Serialised form of the registry, written straight from the live map (no copy) and read back
/// into one. The expiry index and the set digest are derived.
#[derive(Serialize)]
pub(crate) struct RegistryImageRef<'a>(&'a BTreeMap<ClaimId, ClaimRecord>);

#[derive(Deserialize)]
pub(crate) struct RegistryImage(BTreeMap<ClaimId, ClaimRecord>);

impl NonceRegistry {
    /// Claims `claim.key` for `claim.fingerprint` at time `now_ms`.
    pub fn claim(&mut self, claim: &NonceClaim, now_ms: u64) -> ClaimOutcome {
        let id = claim.key.digest();
        if let Some(existing) = self.claims.get(&id) {
            return if existing.fingerprint == claim.fingerprint {
                ClaimOutcome::Accepted
            } else {
                ClaimOutcome::Replay
            };
        }
        if authorization_expired(claim.valid_before, now_ms) {
            return ClaimOutcome::Expired;
        }
        let expires_at_ms = retention_end_ms(claim.valid_before);
        let record = ClaimRecord {
            fingerprint: claim.fingerprint,
            expires_at_ms,
        };
        self.content_digest.add(member(&id, &record));
        self.claims.insert(id, record);
        self.by_expiry.insert((expires_at_ms, id));
        debug_assert_eq!(self.claims.len(), self.by_expiry.len());
        ClaimOutcome::Accepted
    }

    /// Removes at most `limit` claims whose retention ended at or before `now_ms`, oldest first.
    pub fn expire(&mut self, now_ms: u64, limit: u32) -> u32 {
        let mut removed = 0;
        while removed < limit {
            let Some(&(expires_at_ms, id)) = self.by_expiry.first() else {
                break;
            };
            if expires_at_ms > now_ms {
                break;
            }
            self.by_expiry.pop_first();
            match self.claims.remove(&id) {
                Some(record) => self.content_digest.sub(member(&id, &record)),
                None => unreachable!("the expiry index names a missing claim"),
            }
            removed += 1;
        }
        debug_assert_eq!(self.claims.len(), self.by_expiry.len());
        removed
    }

    /// Whether `key` is claimed, and for which fingerprint.
    pub fn fingerprint_of(&self, key: &NonceKey) -> Option<[u8; 32]> {
        self.claims.get(&key.digest()).map(|r| r.fingerprint)
    }

    /// Number of live claims.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// The earliest time at which some claim may be expired, if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.by_expiry.first().map(|&(t, _)| t)
    }

    pub(crate) fn image(&self) -> RegistryImageRef<'_> {
        RegistryImageRef(&self.claims)
    }

    /// The digest of the set of live claims.
    pub(crate) fn content_digest(&self) -> SetDigest {
        self.content_digest
    }

    pub(crate) fn from_image(image: RegistryImage) -> Self {
        let claims = image.0;
        let by_expiry = claims
            .iter()
            .map(|(id, r)| (r.expires_at_ms, *id))
            .collect();
        let mut content_digest = SetDigest::default();
        for (id, record) in &claims {
            content_digest.add(member(id, record));
        }
        Self {
            claims,
            by_expiry,
            content_digest,
        }
    }
}
