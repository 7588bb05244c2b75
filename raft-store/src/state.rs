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
mod set_digest;
pub mod settlements;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};
pub use nonces::{ClaimId, ClaimOutcome, NonceClaim, NonceKey, NonceRegistry};
pub use settlements::{
    InvariantViolation, Rejection, SettlementAnswer, SettlementFinish, SettlementOutcome,
    SettlementPhase, SettlementRecord, SettlementRegistry, SettlementStart, SignedSettlement,
    SignerRegistry, SignerState,
};

use settlements::Ledger;

/// How many expired claims and finished settlements one garbage-collection command may remove
/// at most, so that a single apply never stalls the log for long.
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
    /// Remove up to `limit` claims and Done settlements whose retention ended at or before the
    /// command's time, oldest first.
    ExpireClaims { limit: u32 },
    /// Tell the state machine a signer's transaction count on chain (first use, or after
    /// external use). Answered `SignerSynced`, or `Settlement(Rejected)` when it would register
    /// more than [`settlements::MAX_SIGNERS`] signers.
    SyncSigner {
        chain_id: u64,
        signer: [u8; 20],
        chain_nonce: u64,
    },
    /// Claim an authorization and reserve a signer nonce to settle it with (I2, I3).
    BeginSettlement(SettlementStart),
    /// Commit the signed transaction of an allocated settlement, before it is broadcast.
    RecordSigned(SignedSettlement),
    /// Commit the chain's verdict on a signed settlement.
    FinishSettlement(SettlementFinish),
}

/// The answer of the state machine to one operation. An applied entry answers one per operation
/// of its command, in order (none for Raft's own blank and membership entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Claim(ClaimOutcome),
    Expired { removed: u32 },
    SignerSynced { next_nonce: u64 },
    Settlement(SettlementAnswer),
}

/// Everything the cluster replicates, in one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The latest command time applied so far; never decreases.
    now_ms: u64,
    nonces: NonceRegistry,
    ledger: Ledger,
}

/// The serialised form of [`ClusterState`], used for snapshots: written from borrowed parts,
/// read back into owned ones (same bytes).
#[derive(Serialize)]
struct StateImageRef<'a> {
    now_ms: u64,
    nonces: nonces::RegistryImageRef<'a>,
    ledger: settlements::LedgerImageRef<'a>,
}

#[derive(Deserialize)]
struct StateImage {
    now_ms: u64,
    nonces: nonces::RegistryImage,
    ledger: settlements::LedgerImage,
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
                    removed: self.expire(now_ms, limit),
                }
            }
            Op::SyncSigner {
                chain_id,
                signer,
                chain_nonce,
            } => match self.ledger.sync_signer(*chain_id, *signer, *chain_nonce) {
                Ok(next_nonce) => Response::SignerSynced { next_nonce },
                Err(r) => Response::Settlement(SettlementAnswer::Rejected(r.to_string())),
            },
            Op::BeginSettlement(start) => {
                Response::Settlement(self.ledger.begin(&mut self.nonces, start, now_ms))
            }
            Op::RecordSigned(signed) => {
                Response::Settlement(self.ledger.record_signed(signed, now_ms))
            }
            Op::FinishSettlement(finish) => {
                Response::Settlement(self.ledger.finish(finish, now_ms))
            }
        }
    }

    /// Removes up to `limit` claims and Done settlements whose retention ended by `now_ms`,
    /// oldest first across both (a claim before a settlement due at the same time), so that one
    /// budget bounds the work of one command.
    fn expire(&mut self, now_ms: u64, limit: u32) -> u32 {
        let mut removed = 0;
        while removed < limit {
            let due = |t: Option<u64>| t.filter(|&t| t <= now_ms);
            let claim = due(self.nonces.next_expiry_ms());
            let settlement = due(self.ledger.settlements.next_expiry_ms());
            let progressed = match (claim, settlement) {
                (None, None) => false,
                (Some(c), Some(s)) if s < c => self.ledger.settlements.expire_one(now_ms),
                (Some(_), _) => self.nonces.expire(now_ms, 1) == 1,
                (None, Some(_)) => self.ledger.settlements.expire_one(now_ms),
            };
            if !progressed {
                break;
            }
            removed += 1;
        }
        removed
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn nonces(&self) -> &NonceRegistry {
        &self.nonces
    }

    pub fn settlements(&self) -> &SettlementRegistry {
        &self.ledger.settlements
    }

    pub fn signers(&self) -> &SignerRegistry {
        &self.ledger.signers
    }

    /// The earliest time at which `ExpireClaims` would remove something (a claim or a Done
    /// settlement), if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        [
            self.nonces.next_expiry_ms(),
            self.ledger.settlements.next_expiry_ms(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Checks every invariant of the settlement state by a full scan: O(records). For tests and
    /// simulations; apply checks the cheap ones itself in debug builds.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.ledger.check_invariants()
    }

    /// Serialises the whole state (a snapshot body).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        // Sized up front: with a million claims, growing by doubling would briefly hold twice
        // the snapshot (and copy it) on every snapshot.
        let capacity = (64 + self.nonces.len() * nonces::MAX_ENCODED_CLAIM_BYTES)
            .saturating_add(self.ledger.encoded_len_hint());
        codec::encode_record_with_capacity(
            &StateImageRef {
                now_ms: self.now_ms,
                nonces: self.nonces.image(),
                ledger: self.ledger.image(),
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
            ledger: Ledger::from_image(image.ledger),
        })
    }

    /// A hash of the whole state: equal on replicas that applied the same log, different as soon
    /// as any claim, settlement or signer counter differs. O(signers): it combines the state's
    /// clock, the claim and settlement counts, the incrementally kept digests of both sets (see
    /// `SetDigest`) and the few signer counters, so it is cheap enough for every status call
    /// even with millions of claims and settlements.
    pub fn state_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"x402-cluster state v2");
        h.update(self.now_ms.to_be_bytes());
        h.update((self.nonces.len() as u64).to_be_bytes());
        h.update(self.nonces.content_digest().to_bytes());
        let settlements = &self.ledger.settlements;
        h.update((settlements.len() as u64).to_be_bytes());
        h.update(settlements.content_digest().to_bytes());
        h.update((self.ledger.signers.len() as u64).to_be_bytes());
        for ((chain_id, signer), state) in self.ledger.signers.iter() {
            h.update(chain_id.to_be_bytes());
            h.update(signer);
            h.update(state.next_nonce.to_be_bytes());
            h.update(state.in_flight.to_be_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod settlement_tests;
#[cfg(test)]
mod tests;
