//! The replicated state as pure, deterministic state machines.
//!
//! Every [`Command`] carries the time the leader stamped on it when it was proposed (`at_ms`).
//! [`ClusterState::apply`] reads no clock, no randomness and no environment: two replicas that
//! applied the same commands hold byte-equal state, which [`ClusterState::state_hash`] lets tests
//! compare (guarantee I6 of ARCHITECTURE.md).
//!
//! Time inside the state only moves forward: a command stamped earlier than one already applied
//! (a new leader whose clock lags) is applied at the latest time seen so far.

pub mod nonces;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};
pub use nonces::{ClaimOutcome, NonceClaim, NonceKey, NonceRegistry};

/// How many expired claims one garbage-collection command may remove at most, so that a single
/// apply never stalls the log for long.
pub const MAX_EXPIRED_PER_COMMAND: u32 = 10_000;

/// Most operations one command carries (the group-commit batch size).
pub const MAX_OPS_PER_COMMAND: usize = 4096;

/// A replicated command: operations applied in order, all at the leader-stamped time the command
/// was proposed at. Many client writes share one command so that one log entry (and one fsync
/// per replica) commits them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unix time in milliseconds, read from the proposing leader's wall clock.
    pub at_ms: u64,
    pub ops: Vec<Op>,
}

impl Command {
    /// A command of one operation.
    pub fn single(at_ms: u64, op: Op) -> Self {
        Self {
            at_ms,
            ops: vec![op],
        }
    }
}

/// What a command does. New variants are only ever appended, so old log entries keep decoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Claim an EIP-3009 authorization nonce cluster-wide (I1).
    ClaimNonce(NonceClaim),
    /// Remove up to `limit` claims whose retention ended at or before the command's time.
    ExpireClaims { limit: u32 },
}

/// The answer of the state machine to one operation. An applied entry answers one per operation
/// of its command, in order (none for Raft's own blank and membership entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Claim(ClaimOutcome),
    Expired { removed: u32 },
}

/// Everything the cluster replicates, in one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The latest command time applied so far; never decreases.
    now_ms: u64,
    nonces: NonceRegistry,
}

/// The serialised form of [`ClusterState`], used for snapshots: written from borrowed parts,
/// read back into owned ones (same bytes).
#[derive(Serialize)]
struct StateImageRef<'a> {
    now_ms: u64,
    nonces: nonces::RegistryImageRef<'a>,
}

#[derive(Deserialize)]
struct StateImage {
    now_ms: u64,
    nonces: nonces::RegistryImage,
}

impl ClusterState {
    /// Applies one command, answering each of its operations. Pure: the result depends only on
    /// `self` and `cmd`.
    pub fn apply(&mut self, cmd: &Command) -> Vec<Response> {
        debug_assert!(cmd.ops.len() <= MAX_OPS_PER_COMMAND);
        self.now_ms = self.now_ms.max(cmd.at_ms);
        let now_ms = self.now_ms;
        cmd.ops.iter().map(|op| self.apply_op(op, now_ms)).collect()
    }

    fn apply_op(&mut self, op: &Op, now_ms: u64) -> Response {
        match op {
            Op::ClaimNonce(claim) => Response::Claim(self.nonces.claim(claim, now_ms)),
            Op::ExpireClaims { limit } => {
                let limit = (*limit).min(MAX_EXPIRED_PER_COMMAND);
                Response::Expired {
                    removed: self.nonces.expire(now_ms, limit),
                }
            }
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn nonces(&self) -> &NonceRegistry {
        &self.nonces
    }

    /// Serialises the whole state (a snapshot body).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        // Sized up front: with a million claims, growing by doubling would briefly hold twice
        // the snapshot (and copy it) on every snapshot.
        let capacity = 64 + self.nonces.len() * nonces::MAX_ENCODED_CLAIM_BYTES;
        codec::encode_record_with_capacity(
            &StateImageRef {
                now_ms: self.now_ms,
                nonces: self.nonces.image(),
            },
            capacity,
        )
    }

    /// Rebuilds a state from [`ClusterState::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let image: StateImage = codec::decode_state_record(bytes)?;
        Ok(Self {
            now_ms: image.now_ms,
            nonces: NonceRegistry::from_image(image.nonces),
        })
    }

    /// A hash of the whole state: equal on replicas that applied the same log, different as soon
    /// as any claim differs. O(1): it combines the state's clock, the claim count and the
    /// incrementally kept digest of the claim set (see `SetDigest`), so it is cheap enough for
    /// every status call even with millions of claims.
    pub fn state_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"x402-cluster state v1");
        h.update(self.now_ms.to_be_bytes());
        h.update((self.nonces.len() as u64).to_be_bytes());
        h.update(self.nonces.content_digest().to_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests;
