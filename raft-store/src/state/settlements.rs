//! Settlements: exactly one on-chain transfer per authorization (guarantee I2), paid for with
//! signer nonces that the log hands out with no repeat and no gap (guarantee I3).
//!
//! A settlement is a replicated record, keyed like a nonce claim, that only moves forward:
//!
//! ```text
//! BeginSettlement ──► Allocated{signer, nonce, call} ──RecordSigned──► Signed{.., raw_tx}
//!                                                                         │
//!                                       Done{signer, nonce, outcome} ◄────┘ FinishSettlement
//! ```
//!
//! - `BeginSettlement` claims the authorization exactly like `ClaimNonce` does (so `/verify` and
//!   `/settle` see one registry) and reserves the next nonce of one of the proposer's signers. The
//!   state machine, not the chain, counts each signer's nonces: two settlements never get the
//!   same `(chain, signer, nonce)`, and every nonce handed out is below the signer's counter.
//! - `RecordSigned` commits the signed bytes *before* anyone broadcasts them. From then on these
//!   bytes are the only transaction ever sent for the authorization, whoever sends it.
//! - `FinishSettlement` commits the receipt's verdict. The first one wins; later ones get it.
//! - One payment buys one resource: a settled authorization gives `success: true` to exactly one
//!   request, the one whose random taker token the record holds (`success_taker`). The request
//!   that commits the verdict takes it in the same entry; a request that finds the record done
//!   takes it with `TakeSuccess`, once. Every other request learns the transaction hash and is
//!   refused.
//! - `ReplaceSettlement` recovers a settlement whose signer nonce another transaction used (the
//!   key was used outside the cluster): the signed transaction can never be mined, so the same
//!   call is allocated a fresh nonce, above the chain's count, and signed again. The replaced
//!   hash is kept, so an outcome of either transaction is recognised.
//!
//! An allocated nonce can never be given back: the chain executes a signer's transactions in
//! nonce order, so a nonce left unused would block every later one. That is why an `Allocated`
//! record cannot finish (it must be signed, by its owner or by the leader's reconciler with the
//! recorded `call`) and why neither it nor a `Signed` record ever expires. A `Done` record is
//! kept as long as the nonce claim would be, then forgotten by the same `ExpireClaims` command.
//!
//! Every transition goes through one place (`SettlementRegistry::{insert, update, expire_one}`),
//! which keeps the indexes (unfinished ids for the reconciler, expiry order for GC), the set
//! digest for the state hash and the snapshot size in step with the records.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::nonces::{self, ClaimId, ClaimOutcome, NonceClaim, NonceKey, NonceRegistry};
use super::set_digest::{Member, SetDigest};

/// Most signers one `BeginSettlement` may offer: a node holds a handful of keys per chain.
pub const MAX_SIGNERS_PER_START: usize = 16;
/// Most bytes of the token call a settlement records (`transferWithAuthorization` calldata is
/// about 400 bytes; smart-wallet signatures make it longer, never kilobytes).
pub const MAX_CALL_BYTES: usize = 8 * 1024;
/// Most bytes of a signed transaction: the call plus the EIP-1559 envelope and signature.
pub const MAX_RAW_TX_BYTES: usize = 16 * 1024;
/// Most bytes of a failure's x402 reason code.
pub const MAX_REASON_BYTES: usize = 128;
/// Most bytes of a failure's human-readable message.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Most signers the cluster keeps counters for, over all chains. Signers are never forgotten
/// (their counters protect I3), so the map must not grow without bound.
pub const MAX_SIGNERS: usize = 4096;

/// Most times one settlement's transaction may be replaced. Each replacement needs the chain to
/// show the signer nonce consumed by another transaction; more than a few means something other
/// than a stray transaction is using the key, and the settlement is left for an operator.
pub const MAX_REPLACEMENTS: usize = 4;

/// A random token a `/settle` request draws; the record keeps the one that received the
/// settlement's success.
pub type SuccessTaker = [u8; 16];

/// Most bytes one signer takes in a snapshot: varint chain id, address, varint counters.
const MAX_ENCODED_SIGNER_BYTES: usize = 9 + 20 + 9 + 5;

/// A request to settle an authorization: claim it and reserve a signer nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementStart {
    /// Claims the nonce exactly like `Op::ClaimNonce`.
    pub claim: NonceClaim,
    /// The node that proposes it (for the reconciler and logs).
    pub owner: u64,
    /// The token call to sign (calldata), recorded so that the leader's reconciler can sign the
    /// allocated nonce if the owner dies before it does. At most [`MAX_CALL_BYTES`].
    pub call: Vec<u8>,
    /// The signer addresses the proposer holds for `claim.key.chain_id`; at most
    /// [`MAX_SIGNERS_PER_START`].
    pub signers: Vec<[u8; 20]>,
}

/// The signed transaction of an allocated settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSettlement {
    pub id: ClaimId,
    pub signer: [u8; 20],
    pub nonce: u64,
    pub tx_hash: [u8; 32],
    /// The EIP-2718 bytes to broadcast; at most [`MAX_RAW_TX_BYTES`], never empty.
    pub raw_tx: Vec<u8>,
}

/// The chain's verdict on a signed settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementFinish {
    pub id: ClaimId,
    /// The transaction the verdict is about: must be the signed one.
    pub tx_hash: [u8; 32],
    pub outcome: SettlementOutcome,
    /// The request committing the verdict: if it is a success nobody took yet, this request
    /// takes it (no extra round for the common case).
    pub taker: Option<SuccessTaker>,
}

/// A signed settlement whose signer nonce the chain shows used by another transaction: it can
/// never be mined, so `call` is signed again at a fresh nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementReplace {
    pub id: ClaimId,
    /// The signed transaction being replaced (the record's current one).
    pub tx_hash: [u8; 32],
    /// The signer's count of mined transactions, read from the chain: above the record's nonce.
    pub chain_nonce: u64,
    /// The token call to sign again (the replaced transaction's input); at most
    /// [`MAX_CALL_BYTES`].
    pub call: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementOutcome {
    Settled {
        tx_hash: [u8; 32],
    },
    Failed {
        /// An x402 reason code; at most [`MAX_REASON_BYTES`].
        reason: String,
        /// At most [`MAX_MESSAGE_BYTES`].
        message: Option<String>,
        tx_hash: Option<[u8; 32]>,
    },
}

impl SettlementOutcome {
    /// The transaction the outcome names, if any.
    pub fn tx_hash(&self) -> Option<[u8; 32]> {
        match self {
            Self::Settled { tx_hash } => Some(*tx_hash),
            Self::Failed { tx_hash, .. } => *tx_hash,
        }
    }
}

/// One settlement as the state machine holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    pub key: NonceKey,
    pub fingerprint: [u8; 32],
    /// The authorization's `validBefore`, unix seconds.
    pub valid_before: u64,
    pub owner: u64,
    /// The command time of the last transition (the reconciler ages records by it).
    pub updated_at_ms: u64,
    pub phase: SettlementPhase,
    /// The request that received the settlement's one `success: true` (I2); `None` until a
    /// request takes it, and always `None` for a failed settlement.
    pub success_taker: Option<SuccessTaker>,
    /// Transactions signed for this settlement earlier whose nonces other transactions used,
    /// oldest first; at most [`MAX_REPLACEMENTS`].
    pub replaced: Vec<[u8; 32]>,
}

impl SettlementRecord {
    /// The settled transaction, if the settlement is done and succeeded.
    pub fn settled_tx(&self) -> Option<[u8; 32]> {
        match &self.phase {
            SettlementPhase::Done {
                outcome: SettlementOutcome::Settled { tx_hash },
                ..
            } => Some(*tx_hash),
            _ => None,
        }
    }

    /// Whether `taker` is the request that received the success.
    pub fn success_is(&self, taker: &SuccessTaker) -> bool {
        self.success_taker.as_ref() == Some(taker)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementPhase {
    /// A signer nonce is reserved; the owner must sign it and RecordSigned.
    Allocated {
        signer: [u8; 20],
        nonce: u64,
        call: Vec<u8>,
    },
    /// The signed transaction is committed; only these bytes may ever be broadcast.
    Signed {
        signer: [u8; 20],
        nonce: u64,
        tx_hash: [u8; 32],
        raw_tx: Vec<u8>,
    },
    Done {
        signer: [u8; 20],
        nonce: u64,
        outcome: SettlementOutcome,
    },
}

impl SettlementPhase {
    /// The signer nonce the settlement holds, in every phase.
    pub fn signer_nonce(&self) -> ([u8; 20], u64) {
        match self {
            Self::Allocated { signer, nonce, .. }
            | Self::Signed { signer, nonce, .. }
            | Self::Done { signer, nonce, .. } => (*signer, *nonce),
        }
    }

    /// Allocated or Signed: the nonce is in flight.
    pub fn is_unfinished(&self) -> bool {
        !matches!(self, Self::Done { .. })
    }
}

/// A signer's nonce counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerState {
    /// The nonce the next settlement gets.
    pub next_nonce: u64,
    /// Settlements holding a nonce of this signer that are not done yet.
    pub in_flight: u32,
}

impl SignerState {
    /// Whether one more nonce can be handed out. EIP-2681 caps nonces below `u64::MAX`; the
    /// `in_flight` cap only keeps the counter from wrapping.
    fn can_allocate(&self) -> bool {
        self.next_nonce < u64::MAX && self.in_flight < u32::MAX
    }
}

/// The state machine's answer to a settlement operation.
// `Current` is boxed: unboxed it would make every `Response` (a claim's answer needs 8 bytes)
// about 260 bytes, some 1 MiB of answers for a full 4096-operation entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementAnswer {
    /// BeginSettlement created the record: the caller signs `nonce` with `signer`, then
    /// RecordSigned.
    Allocated { signer: [u8; 20], nonce: u64 },
    /// The record as it now stands: Begin found an existing settlement with the same
    /// fingerprint; RecordSigned / Finish applied (or had already been applied by someone else —
    /// first one wins).
    Current(Box<SettlementRecord>),
    /// Begin: the authorization is claimed (by /verify or another settlement) for another
    /// fingerprint.
    Replay,
    /// Begin: validBefore has passed (same rule as NonceRegistry::claim), also when the
    /// authorization was claimed in time by /verify. Nothing changed.
    Expired,
    /// Begin: none of the proposer's signers is synced for this chain (or can take another
    /// nonce). Nothing changed, not even a claim.
    NoSigner,
    /// The op does not fit: unknown id, wrong signer/nonce for the allocation, Finish of an
    /// Allocated record, Finish with a tx hash other than the signed one, limits exceeded.
    /// Nothing changed.
    Rejected(Rejection),
}

/// Why an operation was answered [`SettlementAnswer::Rejected`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("{count} signers offered, at most {MAX_SIGNERS_PER_START}")]
    TooManySignersOffered { count: usize },
    #[error("a call of {len} bytes, at most {MAX_CALL_BYTES}")]
    CallTooLong { len: usize },
    #[error("a signed transaction of {len} bytes, at most {MAX_RAW_TX_BYTES}")]
    RawTxTooLong { len: usize },
    #[error("an empty signed transaction")]
    EmptyRawTx,
    #[error("a reason of {len} bytes, at most {MAX_REASON_BYTES}")]
    ReasonTooLong { len: usize },
    #[error("a message of {len} bytes, at most {MAX_MESSAGE_BYTES}")]
    MessageTooLong { len: usize },
    #[error("{MAX_SIGNERS} signers are registered already")]
    TooManySigners,
    #[error("no settlement has this id")]
    UnknownSettlement,
    #[error("the settlement allocated nonce {nonce} of signer 0x{}, not the one signed", hex::encode(.signer))]
    OtherAllocation { signer: [u8; 20], nonce: u64 },
    #[error("the settlement is allocated but not signed: its nonce must be signed and broadcast")]
    NotSigned,
    #[error("the settlement signed transaction 0x{}, not the one finished", hex::encode(.signed))]
    OtherTransaction { signed: [u8; 32] },
    #[error("the outcome names a transaction other than the signed one")]
    OutcomeOfOtherTransaction,
    #[error("signer nonce {nonce} is not used on chain yet (the chain counts {chain_nonce})")]
    NonceNotConsumed { nonce: u64, chain_nonce: u64 },
    #[error("the settlement was replaced {MAX_REPLACEMENTS} times already")]
    TooManyReplacements,
    #[error("the signer's nonces are exhausted")]
    SignerExhausted,
}

/// A broken invariant of the settlement state, found by [`Ledger::check_invariants`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    #[error("signer {chain_id}/0x{} counts {counted} in flight, {actual} unfinished settlements use it", hex::encode(.signer))]
    InFlight {
        chain_id: u64,
        signer: [u8; 20],
        counted: u32,
        actual: u64,
    },
    #[error("a settlement holds nonce {nonce} of signer {chain_id}/0x{}, which is not registered", hex::encode(.signer))]
    UnknownSigner {
        chain_id: u64,
        signer: [u8; 20],
        nonce: u64,
    },
    #[error("a settlement holds nonce {nonce} of signer {chain_id}/0x{}, whose next nonce is {next}", hex::encode(.signer))]
    NonceNotHandedOut {
        chain_id: u64,
        signer: [u8; 20],
        nonce: u64,
        next: u64,
    },
    #[error("two settlements hold nonce {nonce} of signer {chain_id}/0x{}", hex::encode(.signer))]
    NonceTwice {
        chain_id: u64,
        signer: [u8; 20],
        nonce: u64,
    },
    #[error("a settlement is stored under an id that is not its key's digest")]
    WrongId,
    #[error("the indexes, digest or size of the settlements are out of step with the records")]
    Derived,
    #[error(
        "the indexes or digest of the rate limits are out of step with the windows and leases"
    )]
    RateLimits,
    #[error("the index, digest or sizes of the idempotency records are out of step with them")]
    Idempotency,
}

/// Everything derived from the records: rebuilt on snapshot load, updated on every transition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Derived {
    /// Ids of Allocated and Signed records, so the reconciler scans O(unfinished), not O(all).
    unfinished: BTreeSet<ClaimId>,
    /// (retention end, id) of Done records: expiry takes the oldest first without a scan.
    by_expiry: BTreeSet<(u64, ClaimId)>,
    /// Set digest of `(id, record)` pairs, for the state hash.
    content_digest: SetDigest,
    /// Bytes the records take in a snapshot (id plus bincode of each), to size its buffer.
    encoded_bytes: u64,
}

impl Derived {
    fn add(&mut self, id: &ClaimId, record: &SettlementRecord) {
        let (member, len) = Member::of_encoded(id, record);
        self.content_digest.add(member);
        self.encoded_bytes = self.encoded_bytes.saturating_add(len as u64);
        let fresh = if record.phase.is_unfinished() {
            self.unfinished.insert(*id)
        } else {
            self.by_expiry
                .insert((nonces::retention_end_ms(record.valid_before), *id))
        };
        debug_assert!(fresh, "a settlement indexed twice");
    }

    fn remove(&mut self, id: &ClaimId, record: &SettlementRecord) {
        let (member, len) = Member::of_encoded(id, record);
        self.content_digest.sub(member);
        self.encoded_bytes = self.encoded_bytes.saturating_sub(len as u64);
        let present = if record.phase.is_unfinished() {
            self.unfinished.remove(id)
        } else {
            self.by_expiry
                .remove(&(nonces::retention_end_ms(record.valid_before), *id))
        };
        debug_assert!(present, "a settlement missing from its index");
    }
}

/// All settlement records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettlementRegistry {
    records: BTreeMap<ClaimId, SettlementRecord>,
    derived: Derived,
}

impl SettlementRegistry {
    fn from_records(records: BTreeMap<ClaimId, SettlementRecord>) -> Self {
        let mut derived = Derived::default();
        for (id, record) in &records {
            derived.add(id, record);
        }
        Self { records, derived }
    }

    /// The settlement of the authorization whose key digests to `id`.
    pub fn get(&self, id: &ClaimId) -> Option<&SettlementRecord> {
        self.records.get(id)
    }

    /// The Allocated and Signed records, in id order. O(unfinished), however many are done.
    pub fn unfinished(&self) -> impl Iterator<Item = (&ClaimId, &SettlementRecord)> + '_ {
        self.derived
            .unfinished
            .iter()
            .filter_map(|id| self.records.get_key_value(id))
    }

    /// Number of records, finished or not.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of Allocated and Signed records.
    pub fn unfinished_len(&self) -> usize {
        self.derived.unfinished.len()
    }

    /// The earliest time at which some Done record may be forgotten, if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.derived.by_expiry.first().map(|&(t, _)| t)
    }

    pub(crate) fn content_digest(&self) -> SetDigest {
        self.derived.content_digest
    }

    fn insert(&mut self, id: ClaimId, record: SettlementRecord) {
        self.derived.add(&id, &record);
        let previous = self.records.insert(id, record);
        debug_assert!(previous.is_none(), "a settlement created twice");
    }

    /// Changes the record `id` with `change`, keeping everything derived in step. Returns the
    /// record as it now is, or `None` (and changes nothing) if there is no such record.
    fn update(
        &mut self,
        id: &ClaimId,
        change: impl FnOnce(&mut SettlementRecord),
    ) -> Option<&SettlementRecord> {
        let record = self.records.get_mut(id)?;
        self.derived.remove(id, record);
        change(record);
        self.derived.add(id, record);
        Some(record)
    }

    /// Forgets the Done record whose retention ends first, if it ended at or before `now_ms`.
    pub(crate) fn expire_one(&mut self, now_ms: u64) -> bool {
        let Some(&(expires_at_ms, id)) = self.derived.by_expiry.first() else {
            return false;
        };
        if expires_at_ms > now_ms {
            return false;
        }
        match self.records.remove(&id) {
            Some(record) => self.derived.remove(&id, &record),
            // The index is kept with the records, in the same apply.
            None => unreachable!("the expiry index names a missing settlement"),
        }
        true
    }
}

/// Every signer's nonce counter, by `(chain_id, address)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignerRegistry {
    signers: BTreeMap<(u64, [u8; 20]), SignerState>,
}

impl SignerRegistry {
    pub fn get(&self, chain_id: u64, signer: &[u8; 20]) -> Option<&SignerState> {
        self.signers.get(&(chain_id, *signer))
    }

    /// All signers, in `(chain_id, address)` order.
    pub fn iter(&self) -> impl Iterator<Item = ((u64, [u8; 20]), &SignerState)> + '_ {
        self.signers.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.signers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Of `offered`, the registered signer of `chain_id` with the fewest nonces in flight (ties:
    /// the lowest address), so that load spreads and the choice is the same on every replica.
    fn choose(&self, chain_id: u64, offered: &[[u8; 20]]) -> Option<[u8; 20]> {
        offered
            .iter()
            .filter_map(|a| {
                self.get(chain_id, a)
                    .filter(|s| s.can_allocate())
                    .map(|s| (s.in_flight, *a))
            })
            .min()
            .map(|(_, a)| a)
    }
}

/// Serialised form of the settlement state, written from the live maps and read back into owned
/// ones (same bytes). Indexes, digest and sizes are derived.
#[derive(Serialize)]
pub(crate) struct LedgerImageRef<'a> {
    records: &'a BTreeMap<ClaimId, SettlementRecord>,
    signers: &'a BTreeMap<(u64, [u8; 20]), SignerState>,
}

#[derive(Deserialize)]
pub(crate) struct LedgerImage {
    records: BTreeMap<ClaimId, SettlementRecord>,
    signers: BTreeMap<(u64, [u8; 20]), SignerState>,
}

/// Settlement records and signer counters: one value because the invariants of I3 span both
/// (a signer's `in_flight` counts the unfinished records holding its nonces).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub(crate) settlements: SettlementRegistry,
    pub(crate) signers: SignerRegistry,
}

impl Ledger {
    /// `SyncSigner`: registers a signer at the chain's count, or raises an idle signer's counter
    /// to it. Never lowers a counter (a nonce handed out must never be handed out again), and
    /// never raises one under settlements in flight: the chain's count then may or may not
    /// include our own transactions, and a raise past them would leave a gap.
    pub(crate) fn sync_signer(
        &mut self,
        chain_id: u64,
        signer: [u8; 20],
        chain_nonce: u64,
    ) -> Result<u64, Rejection> {
        let registered = self.signers.signers.len();
        let next = match self.signers.signers.get_mut(&(chain_id, signer)) {
            Some(state) => {
                if state.in_flight == 0 && chain_nonce > state.next_nonce {
                    state.next_nonce = chain_nonce;
                }
                state.next_nonce
            }
            None if registered >= MAX_SIGNERS => return Err(Rejection::TooManySigners),
            None => {
                self.signers.signers.insert(
                    (chain_id, signer),
                    SignerState {
                        next_nonce: chain_nonce,
                        in_flight: 0,
                    },
                );
                chain_nonce
            }
        };
        self.debug_check();
        Ok(next)
    }

    /// `BeginSettlement`: claims the authorization and reserves a signer nonce for it.
    pub(crate) fn begin(
        &mut self,
        nonces: &mut NonceRegistry,
        start: &SettlementStart,
        now_ms: u64,
    ) -> SettlementAnswer {
        let answer = self.try_begin(nonces, start, now_ms);
        self.debug_check();
        answer.unwrap_or_else(SettlementAnswer::Rejected)
    }

    fn try_begin(
        &mut self,
        nonces: &mut NonceRegistry,
        start: &SettlementStart,
        now_ms: u64,
    ) -> Result<SettlementAnswer, Rejection> {
        if start.signers.len() > MAX_SIGNERS_PER_START {
            return Err(Rejection::TooManySignersOffered {
                count: start.signers.len(),
            });
        }
        if start.call.len() > MAX_CALL_BYTES {
            return Err(Rejection::CallTooLong {
                len: start.call.len(),
            });
        }
        let claim = &start.claim;
        let id = claim.key.digest();
        if let Some(existing) = self.settlements.get(&id) {
            return Ok(if existing.fingerprint == claim.fingerprint {
                SettlementAnswer::Current(Box::new(existing.clone()))
            } else {
                SettlementAnswer::Replay
            });
        }
        // The signer is chosen before the claim is made so that, like every refusal, "no
        // signer" leaves the state as it was: the proposer syncs its signers and begins again.
        let chain_id = claim.key.chain_id;
        let Some(signer) = self.signers.choose(chain_id, &start.signers) else {
            return Ok(SettlementAnswer::NoSigner);
        };
        match nonces.claim(claim, now_ms) {
            ClaimOutcome::Replay => return Ok(SettlementAnswer::Replay),
            ClaimOutcome::Expired => return Ok(SettlementAnswer::Expired),
            // Claimed earlier (by /verify) for these requirements, but validBefore has passed
            // since: the token would refuse the transfer, so spending a signer nonce on it only
            // burns gas. Nothing changed: a claim past validBefore is accepted only if it
            // already existed.
            ClaimOutcome::Accepted if nonces::authorization_expired(claim.valid_before, now_ms) => {
                return Ok(SettlementAnswer::Expired)
            }
            ClaimOutcome::Accepted => {}
        }
        let nonce = match self.signers.signers.get_mut(&(chain_id, signer)) {
            Some(state) => {
                let nonce = state.next_nonce;
                // `choose` only picks signers that can allocate: neither counter wraps.
                state.next_nonce += 1;
                state.in_flight += 1;
                nonce
            }
            // `choose` picked it from this map a moment ago, in the same apply.
            None => unreachable!("the chosen signer vanished"),
        };
        self.settlements.insert(
            id,
            SettlementRecord {
                key: claim.key,
                fingerprint: claim.fingerprint,
                valid_before: claim.valid_before,
                owner: start.owner,
                updated_at_ms: now_ms,
                phase: SettlementPhase::Allocated {
                    signer,
                    nonce,
                    call: start.call.clone(),
                },
                success_taker: None,
                replaced: Vec::new(),
            },
        );
        Ok(SettlementAnswer::Allocated { signer, nonce })
    }

    /// `RecordSigned`: commits the signed bytes of an allocated settlement.
    pub(crate) fn record_signed(
        &mut self,
        signed: &SignedSettlement,
        now_ms: u64,
    ) -> SettlementAnswer {
        let answer = self.try_record_signed(signed, now_ms);
        self.debug_check();
        answer.unwrap_or_else(SettlementAnswer::Rejected)
    }

    fn try_record_signed(
        &mut self,
        signed: &SignedSettlement,
        now_ms: u64,
    ) -> Result<SettlementAnswer, Rejection> {
        let len = signed.raw_tx.len();
        if len > MAX_RAW_TX_BYTES {
            return Err(Rejection::RawTxTooLong { len });
        }
        // Empty bytes would become "the only transaction ever sent" and could never be mined.
        if len == 0 {
            return Err(Rejection::EmptyRawTx);
        }
        let record = self
            .settlements
            .get(&signed.id)
            .ok_or(Rejection::UnknownSettlement)?;
        match &record.phase {
            SettlementPhase::Allocated { signer, nonce, .. }
                if *signer == signed.signer && *nonce == signed.nonce => {}
            SettlementPhase::Allocated { signer, nonce, .. } => {
                return Err(Rejection::OtherAllocation {
                    signer: *signer,
                    nonce: *nonce,
                })
            }
            // Someone signed first (the owner or the reconciler): theirs are the bytes.
            SettlementPhase::Signed { .. } | SettlementPhase::Done { .. } => {
                return Ok(SettlementAnswer::Current(Box::new(record.clone())))
            }
        }
        let record = self.settlements.update(&signed.id, |r| {
            r.phase = SettlementPhase::Signed {
                signer: signed.signer,
                nonce: signed.nonce,
                tx_hash: signed.tx_hash,
                raw_tx: signed.raw_tx.clone(),
            };
            r.updated_at_ms = now_ms;
        });
        record
            .cloned()
            .map(|r| SettlementAnswer::Current(Box::new(r)))
            .ok_or(Rejection::UnknownSettlement)
    }

    /// `FinishSettlement`: commits the chain's verdict on a signed settlement.
    pub(crate) fn finish(&mut self, finish: &SettlementFinish, now_ms: u64) -> SettlementAnswer {
        let answer = self.try_finish(finish, now_ms);
        self.debug_check();
        answer.unwrap_or_else(SettlementAnswer::Rejected)
    }

    fn try_finish(
        &mut self,
        finish: &SettlementFinish,
        now_ms: u64,
    ) -> Result<SettlementAnswer, Rejection> {
        if let SettlementOutcome::Failed {
            reason, message, ..
        } = &finish.outcome
        {
            if reason.len() > MAX_REASON_BYTES {
                return Err(Rejection::ReasonTooLong { len: reason.len() });
            }
            if let Some(m) = message.as_ref().filter(|m| m.len() > MAX_MESSAGE_BYTES) {
                return Err(Rejection::MessageTooLong { len: m.len() });
            }
        }
        let record = self
            .settlements
            .get(&finish.id)
            .ok_or(Rejection::UnknownSettlement)?;
        let (signer, nonce) = match &record.phase {
            // The first verdict committed is the verdict; a success nobody took yet goes to
            // this request.
            SettlementPhase::Done { .. } => {
                return Ok(self.take_success(&finish.id, finish.taker, now_ms));
            }
            SettlementPhase::Allocated { .. } => return Err(Rejection::NotSigned),
            SettlementPhase::Signed { tx_hash, .. } if *tx_hash != finish.tx_hash => {
                return Err(Rejection::OtherTransaction { signed: *tx_hash })
            }
            SettlementPhase::Signed { signer, nonce, .. } => (*signer, *nonce),
        };
        // The verdict may name a transaction this one replaced: the chain can show, late, that
        // the replaced one was mined after all.
        if finish
            .outcome
            .tx_hash()
            .is_some_and(|h| h != finish.tx_hash && !record.replaced.contains(&h))
        {
            return Err(Rejection::OutcomeOfOtherTransaction);
        }
        let chain_id = record.key.chain_id;
        let record = self
            .settlements
            .update(&finish.id, |r| {
                r.phase = SettlementPhase::Done {
                    signer,
                    nonce,
                    outcome: finish.outcome.clone(),
                };
                if matches!(finish.outcome, SettlementOutcome::Settled { .. }) {
                    r.success_taker = finish.taker;
                }
                r.updated_at_ms = now_ms;
            })
            .cloned()
            .ok_or(Rejection::UnknownSettlement)?;
        match self.signers.signers.get_mut(&(chain_id, signer)) {
            Some(state) => {
                assert!(state.in_flight > 0, "a signed settlement was not in flight");
                state.in_flight -= 1;
            }
            None => unreachable!("a settlement of an unknown signer"),
        }
        Ok(SettlementAnswer::Current(Box::new(record)))
    }

    /// `TakeSuccess`: gives a settled authorization's success to `taker` if nobody took it
    /// yet. Answers the record as it now stands (the caller compares its taker); a record that
    /// is unfinished or failed is left as it is.
    pub(crate) fn take(
        &mut self,
        id: &ClaimId,
        taker: SuccessTaker,
        now_ms: u64,
    ) -> SettlementAnswer {
        if self.settlements.get(id).is_none() {
            return SettlementAnswer::Rejected(Rejection::UnknownSettlement);
        }
        self.take_success(id, Some(taker), now_ms)
    }

    /// The record `id` (which exists), with its success given to `taker` if it is settled and
    /// nobody took it.
    fn take_success(
        &mut self,
        id: &ClaimId,
        taker: Option<SuccessTaker>,
        now_ms: u64,
    ) -> SettlementAnswer {
        let free = self
            .settlements
            .get(id)
            .is_some_and(|r| r.settled_tx().is_some() && r.success_taker.is_none());
        let record = match taker {
            Some(taker) if free => self.settlements.update(id, |r| {
                r.success_taker = Some(taker);
                r.updated_at_ms = now_ms;
            }),
            _ => self.settlements.get(id),
        };
        match record {
            Some(r) => SettlementAnswer::Current(Box::new(r.clone())),
            None => SettlementAnswer::Rejected(Rejection::UnknownSettlement),
        }
    }

    /// `ReplaceSettlement`: gives a signed settlement whose nonce another transaction used a
    /// fresh nonce of the same signer, at least the chain's count (those below it are all used
    /// on chain, so no gap is left), and records the replaced hash.
    pub(crate) fn replace(&mut self, replace: &SettlementReplace, now_ms: u64) -> SettlementAnswer {
        let answer = self.try_replace(replace, now_ms);
        self.debug_check();
        answer.unwrap_or_else(SettlementAnswer::Rejected)
    }

    fn try_replace(
        &mut self,
        replace: &SettlementReplace,
        now_ms: u64,
    ) -> Result<SettlementAnswer, Rejection> {
        if replace.call.len() > MAX_CALL_BYTES {
            return Err(Rejection::CallTooLong {
                len: replace.call.len(),
            });
        }
        let record = self
            .settlements
            .get(&replace.id)
            .ok_or(Rejection::UnknownSettlement)?;
        let (signer, nonce) = match &record.phase {
            SettlementPhase::Signed {
                signer,
                nonce,
                tx_hash,
                ..
            } if *tx_hash == replace.tx_hash => (*signer, *nonce),
            // Replaced already (a retry of this op), or finished: the record as it stands.
            _ => return Ok(SettlementAnswer::Current(Box::new(record.clone()))),
        };
        if replace.chain_nonce <= nonce {
            return Err(Rejection::NonceNotConsumed {
                nonce,
                chain_nonce: replace.chain_nonce,
            });
        }
        if record.replaced.len() >= MAX_REPLACEMENTS {
            return Err(Rejection::TooManyReplacements);
        }
        let chain_id = record.key.chain_id;
        let state = self
            .signers
            .signers
            .get_mut(&(chain_id, signer))
            .ok_or(Rejection::UnknownSettlement)?;
        let fresh = state.next_nonce.max(replace.chain_nonce);
        if fresh == u64::MAX {
            return Err(Rejection::SignerExhausted);
        }
        // The record stays unfinished: `in_flight` already counts it.
        state.next_nonce = fresh + 1;
        self.settlements.update(&replace.id, |r| {
            r.phase = SettlementPhase::Allocated {
                signer,
                nonce: fresh,
                call: replace.call.clone(),
            };
            r.replaced.push(replace.tx_hash);
            r.updated_at_ms = now_ms;
        });
        Ok(SettlementAnswer::Allocated {
            signer,
            nonce: fresh,
        })
    }

    pub(crate) fn image(&self) -> LedgerImageRef<'_> {
        LedgerImageRef {
            records: &self.settlements.records,
            signers: &self.signers.signers,
        }
    }

    pub(crate) fn from_image(image: LedgerImage) -> Self {
        let ledger = Self {
            settlements: SettlementRegistry::from_records(image.records),
            signers: SignerRegistry {
                signers: image.signers,
            },
        };
        debug_assert_eq!(ledger.check_invariants(), Ok(()));
        ledger
    }

    /// Bytes [`Ledger::image`] takes when encoded, give or take a few varint bytes: to size
    /// the snapshot buffer without encoding twice.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        let records = usize::try_from(self.settlements.derived.encoded_bytes).unwrap_or(usize::MAX);
        (2 * 9usize)
            .saturating_add(records)
            .saturating_add(self.signers.len() * MAX_ENCODED_SIGNER_BYTES)
    }

    /// The cheap invariants, checked after every operation in debug builds: every record is in
    /// exactly one index, and the signers' `in_flight` add up to the unfinished records.
    /// O(signers), which [`MAX_SIGNERS`] bounds; the full check is [`Ledger::check_invariants`].
    fn debug_check(&self) {
        let s = &self.settlements;
        debug_assert_eq!(
            s.records.len(),
            s.derived.unfinished.len() + s.derived.by_expiry.len(),
            "a settlement record outside the indexes"
        );
        debug_assert_eq!(
            self.signers
                .signers
                .values()
                .map(|st| u64::from(st.in_flight))
                .sum::<u64>(),
            s.derived.unfinished.len() as u64,
            "in-flight counters disagree with the unfinished settlements"
        );
    }

    /// Every invariant, by a full scan (tests, snapshot load in debug builds):
    /// - each signer's `in_flight` is the number of unfinished records using it;
    /// - each record's nonce is below its signer's `next_nonce` (was handed out);
    /// - no two records hold the same `(chain, signer, nonce)`;
    /// - records are stored under their key's digest, and the derived indexes, digest and
    ///   size equal a rebuild from the records.
    pub(crate) fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut in_flight: BTreeMap<(u64, [u8; 20]), u64> = BTreeMap::new();
        let mut held: BTreeSet<(u64, [u8; 20], u64)> = BTreeSet::new();
        for (id, record) in &self.settlements.records {
            if record.key.digest() != *id {
                return Err(InvariantViolation::WrongId);
            }
            let chain_id = record.key.chain_id;
            let (signer, nonce) = record.phase.signer_nonce();
            let Some(state) = self.signers.get(chain_id, &signer) else {
                return Err(InvariantViolation::UnknownSigner {
                    chain_id,
                    signer,
                    nonce,
                });
            };
            if nonce >= state.next_nonce {
                return Err(InvariantViolation::NonceNotHandedOut {
                    chain_id,
                    signer,
                    nonce,
                    next: state.next_nonce,
                });
            }
            if !held.insert((chain_id, signer, nonce)) {
                return Err(InvariantViolation::NonceTwice {
                    chain_id,
                    signer,
                    nonce,
                });
            }
            if record.phase.is_unfinished() {
                *in_flight.entry((chain_id, signer)).or_default() += 1;
            }
        }
        for (&(chain_id, signer), state) in &self.signers.signers {
            let actual = in_flight.get(&(chain_id, signer)).copied().unwrap_or(0);
            if u64::from(state.in_flight) != actual {
                return Err(InvariantViolation::InFlight {
                    chain_id,
                    signer,
                    counted: state.in_flight,
                    actual,
                });
            }
        }
        if SettlementRegistry::from_records(self.settlements.records.clone()) != self.settlements {
            return Err(InvariantViolation::Derived);
        }
        Ok(())
    }
}
