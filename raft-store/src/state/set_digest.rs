//! An order-independent digest of a set, kept up to date in O(1) per change.
//!
//! The replicated state holds millions of records (claims, finished settlements). Hashing all
//! of them for every status call would cost seconds, so each registry keeps the wrapping sum
//! (mod 2^256) of its members' SHA-256 digests instead: adding a member adds its digest,
//! removing it subtracts it, changing it does both. Two sets are equal (up to SHA-256
//! collisions) exactly when their sums are, whatever order the members arrived in, which is what
//! [`super::ClusterState::state_hash`] needs to compare replicas.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::codec;

/// The digest of a set: the wrapping sum of its members' [`Member`] digests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SetDigest([u64; 4]);

/// One member's contribution to a [`SetDigest`]: a SHA-256, read as a 256-bit number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member([u64; 4]);

impl Member {
    /// The member whose digest is the finished `hasher`.
    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        let d: [u8; 32] = hasher.finalize().into();
        let limb = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Self([limb(0), limb(1), limb(2), limb(3)])
    }

    /// The member `SHA-256(id ‖ bincode(value))`, and how many bytes `id ‖ bincode(value)` take:
    /// exactly what the pair adds to a snapshot when it is an entry of a serialised map.
    pub(crate) fn of_encoded<T: Serialize>(id: &[u8; 32], value: &T) -> (Self, usize) {
        let mut hasher = Sha256::new();
        hasher.update(id);
        let encoded = match codec::encode_into(value, &mut HashWriter(&mut hasher)) {
            Ok(n) => n,
            // Plain data into a hasher cannot fail; were it ever to, the state hash would mean
            // nothing, and a node that cannot vouch for its state stops (crash-only).
            Err(e) => panic!("cannot encode a set member: {e}"),
        };
        (Self::from_hasher(hasher), id.len() + encoded)
    }
}

impl Member {
    /// A member from a few words, by a fast non-cryptographic mix (splitmix64 finalizers, four
    /// independently seeded lanes): for records that change on every request (rate-limit
    /// buckets), where SHA-256 would cost more than the change itself. Good enough to tell
    /// replicas apart; not meant to resist someone crafting collisions (replicas are not
    /// adversaries of each other).
    pub(crate) fn from_words(words: &[u64]) -> Self {
        const SEEDS: [u64; 4] = [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        ];
        fn mix(mut z: u64) -> u64 {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        let mut lanes = SEEDS;
        for &w in words {
            for lane in &mut lanes {
                *lane = mix(*lane ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
            }
        }
        Self(lanes.map(mix))
    }
}

/// Feeds bytes written by an encoder straight into a hasher, without an intermediate buffer.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SetDigest {
    pub(crate) fn add(&mut self, member: Member) {
        let mut carry = 0u64;
        for (limb, x) in self.0.iter_mut().zip(member.0) {
            let (a, c1) = limb.overflowing_add(x);
            let (b, c2) = a.overflowing_add(carry);
            *limb = b;
            carry = u64::from(c1) + u64::from(c2);
        }
    }

    pub(crate) fn sub(&mut self, member: Member) {
        let mut borrow = 0u64;
        for (limb, x) in self.0.iter_mut().zip(member.0) {
            let (a, b1) = limb.overflowing_sub(x);
            let (b, b2) = a.overflowing_sub(borrow);
            *limb = b;
            borrow = u64::from(b1) + u64::from(b2);
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> Member {
        Member::of_encoded(&[n; 32], &u64::from(n)).0
    }

    #[test]
    fn order_does_not_matter_and_sub_undoes_add() {
        let (mut a, mut b) = (SetDigest::default(), SetDigest::default());
        for n in 0..10 {
            a.add(member(n));
        }
        for n in (0..10).rev() {
            b.add(member(n));
        }
        assert_eq!(a, b);
        for n in 0..10 {
            a.sub(member(n));
        }
        assert_eq!(a, SetDigest::default());
    }

    #[test]
    fn encoded_size_is_id_plus_bincode() {
        let value = (7u64, vec![1u8, 2, 3]);
        let (_, len) = Member::of_encoded(&[0; 32], &value);
        assert_eq!(len, 32 + codec::encode(&value).unwrap().len());
    }
}
