//! The replicated state as pure, deterministic state machines.
//!
//! Every [`Command`] carries the time the leader stamped on it when it was proposed (`at_ms`).
//! [`ClusterState::apply`] reads no clock, no randomness and no environment: two replicas that
//! applied the same commands hold byte-equal state, which [`ClusterState::state_hash`] lets tests
//! compare (guarantee I6 of ARCHITECTURE.md).
//!
//! Time inside the state only moves forward: a command stamped earlier than one already applied
//! (a new leader whose clock lags) is applied at the latest time seen so far.
//!
//! The registries, one module each:
//! - [`nonces`]: claims of EIP-3009 authorizations (I1);
//! - [`settlements`]: settlement records and signer nonce counters (I2, I3);
//! - [`rate_limits`]: cluster-wide sliding-window rate limits and their leases (I4), applied
//!   alone or as the guard of another operation in the same entry ([`Op::Guarded`]);
//! - [`breakers`]: the shared circuit breaker of each chain RPC endpoint (I5);
//! - [`idempotency`]: Idempotency-Key records, so a retried request gets the first answer.
//!
//! Everything that expires (claims, Done settlements, rate windows and leases, idempotency
//! records) is forgotten only by the replicated [`Op::ExpireClaims`], oldest first across all.

pub mod breakers;
pub mod idempotency;
pub mod nonces;
pub mod rate_limits;
mod set_digest;
pub mod settlements;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};
pub use breakers::{
    BreakerAnswer, BreakerBoard, BreakerMove, BreakerPhase, BreakerState, BreakerTransition,
    EndpointId,
};
pub use idempotency::{
    IdempotencyBegun, IdempotencyEnded, IdempotencyStore, IdempotentFinish, IdempotentStart,
    StoredAnswer,
};
pub use nonces::{ClaimId, ClaimOutcome, NonceClaim, NonceKey, NonceRegistry};
pub use rate_limits::{
    Admission, AdmissionVerdict, LeaseGrant, LeaseId, LeaseRequest, Quota, RateKey, RateLimiter,
    SubjectId,
};
pub use settlements::{
    InvariantViolation, Rejection, SettlementAnswer, SettlementFinish, SettlementOutcome,
    SettlementPhase, SettlementRecord, SettlementRegistry, SettlementReplace, SettlementStart,
    SignedSettlement, SignerRegistry, SignerState, SuccessTaker,
};

use settlements::Ledger;

/// How many expired records (claims, finished settlements, rate windows and leases, idempotency
/// records) one garbage-collection command may remove at most, so that a single apply never
/// stalls the log for long.
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
    /// Remove up to `limit` claims, Done settlements, rate windows and leases and idempotency
    /// records whose retention ended at or before the command's time, oldest first.
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
    /// Admit a request against rate limits (all keys or none) and, if admitted, apply `op` in
    /// the same entry (no extra consensus round). Answered `Guarded`; an admitted `op` counts
    /// even if its own answer is a refusal (the admission is for the request, whatever its
    /// outcome).
    Guarded { admission: Admission, op: GuardedOp },
    /// Take admissions of one rate key to spend locally (I4). Answered `Lease`.
    TakeLease(LeaseRequest),
    /// Give back a lease's unspent admissions, once. Answered `LeaseReturned`.
    ReturnLease { id: LeaseId, unused: u32 },
    /// Move an endpoint's circuit breaker (I5). Answered `Breaker`.
    MoveBreaker(BreakerMove),
    /// Begin a request under an Idempotency-Key. Answered `Idempotency`.
    BeginIdempotent(IdempotentStart),
    /// Store the answer of a begun request. Answered `Idempotency`.
    FinishIdempotent(IdempotentFinish),
    /// Forget a begun request that ended without an answer worth storing. Answered
    /// `Idempotency`.
    ReleaseIdempotent { key: [u8; 32], attempt: [u8; 16] },
    /// Give a settled authorization's one success to the request `taker`, if nobody took it.
    /// Answered `Settlement(Current)`: the record, whose `success_taker` says who has it.
    TakeSuccess { id: ClaimId, taker: SuccessTaker },
    /// Sign a settlement again at a fresh nonce: its signer nonce was used by another
    /// transaction. Answered `Settlement(Allocated)`, or `Current` if it was replaced or
    /// finished already.
    ReplaceSettlement(SettlementReplace),
}

/// The operations a rate-limit admission can ride with: the writes a paying request makes
/// anyway. A type of its own, not `Op`, so a guard cannot nest (nor a hostile entry nest it
/// deep enough to exhaust the decoder's stack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuardedOp {
    ClaimNonce(NonceClaim),
    BeginSettlement(SettlementStart),
}

/// The answer of the state machine to one operation. An applied entry answers one per operation
/// of its command, in order (none for Raft's own blank and membership entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Claim(ClaimOutcome),
    Expired {
        removed: u32,
    },
    SignerSynced {
        next_nonce: u64,
    },
    Settlement(SettlementAnswer),
    /// `response` is None when the admission was refused (then `op` was not applied).
    Guarded {
        verdict: AdmissionVerdict,
        response: Option<Box<Response>>,
    },
    Lease(LeaseGrant),
    LeaseReturned {
        returned: u32,
    },
    Breaker(BreakerAnswer),
    IdempotencyBegun(IdempotencyBegun),
    IdempotencyEnded(IdempotencyEnded),
}

impl Op {
    /// The answer contract: whether apply can answer this operation with `response`. Each
    /// operation has its own answers (written here once, with the operations' documentation);
    /// `apply` keeps the contract (asserted in debug builds, so every test checks it), a node
    /// checks it on answers that cross the network (a forwarded write's), and the typed
    /// writes of the node rely on it instead of handling answers that cannot happen.
    pub fn answered_by(&self, response: &Response) -> bool {
        use SettlementAnswer as S;
        match (self, response) {
            (Op::ClaimNonce(_), Response::Claim(_))
            | (Op::ExpireClaims { .. }, Response::Expired { .. })
            | (Op::SyncSigner { .. }, Response::SignerSynced { .. })
            | (Op::SyncSigner { .. }, Response::Settlement(S::Rejected(_)))
            | (Op::BeginSettlement(_), Response::Settlement(_))
            | (Op::RecordSigned(_), Response::Settlement(S::Current(_) | S::Rejected(_)))
            | (Op::TakeSuccess { .. }, Response::Settlement(S::Current(_) | S::Rejected(_)))
            | (
                Op::ReplaceSettlement(_),
                Response::Settlement(S::Allocated { .. } | S::Current(_) | S::Rejected(_)),
            )
            | (Op::TakeLease(_), Response::Lease(_))
            | (Op::ReturnLease { .. }, Response::LeaseReturned { .. })
            | (Op::MoveBreaker(_), Response::Breaker(_))
            | (Op::BeginIdempotent(_), Response::IdempotencyBegun(_)) => true,
            (Op::FinishSettlement(_), Response::Settlement(S::Current(record))) => {
                !record.phase.is_unfinished()
            }
            (Op::FinishSettlement(_), Response::Settlement(S::Rejected(_))) => true,
            (Op::FinishIdempotent(_), Response::IdempotencyEnded(ended)) => matches!(
                ended,
                IdempotencyEnded::Finished
                    | IdempotencyEnded::NotOwner
                    | IdempotencyEnded::TooLarge
            ),
            (Op::ReleaseIdempotent { .. }, Response::IdempotencyEnded(ended)) => matches!(
                ended,
                IdempotencyEnded::Released | IdempotencyEnded::NotOwner
            ),
            (Op::Guarded { op, .. }, Response::Guarded { verdict, response }) => {
                match (verdict, response) {
                    (AdmissionVerdict::Admitted { .. }, Some(inner)) => matches!(
                        (op, &**inner),
                        (GuardedOp::ClaimNonce(_), Response::Claim(_))
                            | (GuardedOp::BeginSettlement(_), Response::Settlement(_))
                    ),
                    (AdmissionVerdict::Limited { .. }, None) => true,
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

impl GuardedOp {
    /// The operation on its own, without an admission.
    pub fn into_op(self) -> Op {
        match self {
            GuardedOp::ClaimNonce(claim) => Op::ClaimNonce(claim),
            GuardedOp::BeginSettlement(start) => Op::BeginSettlement(start),
        }
    }
}

/// Everything the cluster replicates, in one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The latest command time applied so far; never decreases.
    now_ms: u64,
    nonces: NonceRegistry,
    ledger: Ledger,
    rate_limits: RateLimiter,
    breakers: BreakerBoard,
    idempotency: IdempotencyStore,
}

/// The serialised form of [`ClusterState`], used for snapshots: written from borrowed parts,
/// read back into owned ones (same bytes).
#[derive(Serialize)]
struct StateImageRef<'a> {
    now_ms: u64,
    nonces: nonces::RegistryImageRef<'a>,
    ledger: settlements::LedgerImageRef<'a>,
    rate_limits: rate_limits::RateImageRef<'a>,
    breakers: breakers::BoardImageRef<'a>,
    idempotency: idempotency::StoreImageRef<'a>,
}

#[derive(Deserialize)]
struct StateImage {
    now_ms: u64,
    nonces: nonces::RegistryImage,
    ledger: settlements::LedgerImage,
    rate_limits: rate_limits::RateImage,
    breakers: breakers::BoardImage,
    idempotency: idempotency::StoreImage,
}

impl ClusterState {
    /// Applies one command, answering each of its operations. Pure: the result depends only on
    /// `self` and `cmd`.
    pub fn apply(&mut self, cmd: &Command) -> Vec<Response> {
        debug_assert!(cmd.ops.len() <= MAX_OPS_PER_COMMAND);
        self.now_ms = self.now_ms.max(cmd.at_ms);
        let now_ms = self.now_ms;
        cmd.ops
            .iter()
            .map(|op| {
                let response = self.apply_op(op, now_ms);
                debug_assert!(op.answered_by(&response), "{op:?} answered {response:?}");
                response
            })
            .collect()
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
                Err(r) => Response::Settlement(SettlementAnswer::Rejected(r)),
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
            Op::Guarded { admission, op } => {
                let verdict = self.rate_limits.admit(admission, now_ms);
                let response = match verdict {
                    AdmissionVerdict::Admitted { .. } => Some(Box::new(match op {
                        GuardedOp::ClaimNonce(claim) => {
                            Response::Claim(self.nonces.claim(claim, now_ms))
                        }
                        GuardedOp::BeginSettlement(start) => {
                            Response::Settlement(self.ledger.begin(&mut self.nonces, start, now_ms))
                        }
                    })),
                    AdmissionVerdict::Limited { .. } => None,
                };
                Response::Guarded { verdict, response }
            }
            Op::TakeLease(request) => Response::Lease(self.rate_limits.take_lease(request, now_ms)),
            Op::ReturnLease { id, unused } => Response::LeaseReturned {
                returned: self.rate_limits.return_lease(*id, *unused, now_ms),
            },
            Op::MoveBreaker(m) => Response::Breaker(self.breakers.apply(m, now_ms)),
            Op::BeginIdempotent(start) => {
                Response::IdempotencyBegun(self.idempotency.begin(start, now_ms))
            }
            Op::FinishIdempotent(finish) => {
                Response::IdempotencyEnded(self.idempotency.finish(finish, now_ms))
            }
            Op::ReleaseIdempotent { key, attempt } => {
                Response::IdempotencyEnded(self.idempotency.release(key, attempt))
            }
            Op::TakeSuccess { id, taker } => {
                Response::Settlement(self.ledger.take(id, *taker, now_ms))
            }
            Op::ReplaceSettlement(replace) => {
                Response::Settlement(self.ledger.replace(replace, now_ms))
            }
        }
    }

    /// Removes up to `limit` records whose retention ended by `now_ms`, oldest first across
    /// every registry (at equal times in the order claim, settlement, rate limit, idempotency
    /// record), so that one budget bounds the work of one command.
    fn expire(&mut self, now_ms: u64, limit: u32) -> u32 {
        let mut removed = 0;
        while removed < limit {
            let next = [
                (self.nonces.next_expiry_ms(), Expiring::Claim),
                (
                    self.ledger.settlements.next_expiry_ms(),
                    Expiring::Settlement,
                ),
                (self.rate_limits.next_expiry_ms(), Expiring::RateLimit),
                (self.idempotency.next_expiry_ms(), Expiring::Idempotency),
            ];
            let due = next
                .into_iter()
                .filter_map(|(t, what)| t.filter(|&t| t <= now_ms).map(|t| (t, what)))
                .min();
            let progressed = match due {
                None => false,
                Some((_, Expiring::Claim)) => self.nonces.expire(now_ms, 1) == 1,
                Some((_, Expiring::Settlement)) => self.ledger.settlements.expire_one(now_ms),
                Some((_, Expiring::RateLimit)) => self.rate_limits.expire_one(now_ms),
                Some((_, Expiring::Idempotency)) => self.idempotency.expire_one(now_ms),
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

    pub fn rate_limits(&self) -> &RateLimiter {
        &self.rate_limits
    }

    pub fn breakers(&self) -> &BreakerBoard {
        &self.breakers
    }

    pub fn idempotency(&self) -> &IdempotencyStore {
        &self.idempotency
    }

    /// The earliest time at which `ExpireClaims` would remove something (a claim, a Done
    /// settlement, a rate window or lease, an idempotency record), if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        [
            self.nonces.next_expiry_ms(),
            self.ledger.settlements.next_expiry_ms(),
            self.rate_limits.next_expiry_ms(),
            self.idempotency.next_expiry_ms(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Checks every invariant of the settlement state, and that the indexes and digests of the
    /// rate limits and idempotency records are in step with them, by a full scan: O(records).
    /// For tests and simulations; apply checks the cheap ones itself in debug builds.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.ledger.check_invariants()?;
        if !self.rate_limits.is_consistent() {
            return Err(InvariantViolation::RateLimits);
        }
        if !self.idempotency.is_consistent() {
            return Err(InvariantViolation::Idempotency);
        }
        Ok(())
    }

    /// Serialises the whole state (a snapshot body).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        // Sized up front: with a million claims, growing by doubling would briefly hold twice
        // the snapshot (and copy it) on every snapshot.
        let capacity = (64 + self.nonces.len() * nonces::MAX_ENCODED_CLAIM_BYTES)
            .saturating_add(self.ledger.encoded_len_hint())
            .saturating_add(self.rate_limits.encoded_len_hint())
            .saturating_add(self.breakers.encoded_len_hint())
            .saturating_add(self.idempotency.encoded_len_hint());
        codec::encode_record_with_capacity(
            &StateImageRef {
                now_ms: self.now_ms,
                nonces: self.nonces.image(),
                ledger: self.ledger.image(),
                rate_limits: self.rate_limits.image(),
                breakers: self.breakers.image(),
                idempotency: self.idempotency.image(),
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
            rate_limits: RateLimiter::from_image(image.rate_limits),
            breakers: BreakerBoard::from_image(image.breakers),
            idempotency: IdempotencyStore::from_image(image.idempotency),
        })
    }

    /// A hash of the whole state: equal on replicas that applied the same log, different as soon
    /// as any claim, settlement, signer counter, rate window or lease, breaker or idempotency
    /// record differs. O(signers + breakers): it combines the state's clock, the size and the
    /// incrementally kept digest (see `SetDigest`) of each large set, and the few signer
    /// counters and breakers, so it is cheap enough for every status call even with millions
    /// of records.
    pub fn state_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"x402-cluster state v3");
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
        h.update((self.rate_limits.subjects() as u64).to_be_bytes());
        h.update((self.rate_limits.leases() as u64).to_be_bytes());
        h.update(self.rate_limits.content_digest().to_bytes());
        self.breakers.hash_into(&mut h);
        h.update((self.idempotency.len() as u64).to_be_bytes());
        h.update(self.idempotency.content_digest().to_bytes());
        h.finalize().into()
    }
}

/// The registries `ExpireClaims` takes from, in the order they go at equal times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Expiring {
    Claim,
    Settlement,
    RateLimit,
    Idempotency,
}

#[cfg(test)]
mod breaker_tests;
#[cfg(test)]
mod guarded_tests;
#[cfg(test)]
mod idempotency_tests;
#[cfg(test)]
mod model;
#[cfg(test)]
mod rate_limit_tests;
#[cfg(test)]
mod settlement_tests;
#[cfg(test)]
mod tests;
