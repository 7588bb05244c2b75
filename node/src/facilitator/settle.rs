//! `POST /settle`: exactly one on-chain transfer per authorization (I2), from signer nonces the
//! log hands out (I3), whichever node is asked and whichever dies.
//!
//! A settlement is a replicated record that moves `Allocated → Signed → Done`:
//! 1. after every check, `BeginSettlement` claims the authorization (as `/verify` does) and
//!    allocates `(signer, nonce)` from the state machine's counter for that signer: no two
//!    settlements ever get the same pair, and none is skipped;
//! 2. the owner signs that nonce and commits the signed bytes with `RecordSigned` *before*
//!    broadcasting them; from then on those bytes are the only transaction ever sent for this
//!    authorization (a re-broadcast by anyone has the same hash);
//! 3. whoever holds the record broadcasts it, waits for the receipt, and commits the outcome with
//!    `FinishSettlement` (the first outcome committed wins and is what every caller gets).
//!
//! A caller that finds the record in flight follows it (broadcast, receipt) up to its deadline,
//! then answers `settlement_pending` with the hash (that answer has not used up the success: the
//! retry the official SDK makes gets it). One payment buys one resource: of all the requests
//! that follow a settlement to success, exactly one is answered `success: true`, the one that
//! commits the verdict or, once it is committed, the first that takes it (each request draws a
//! random taker token; the record keeps the winner's). Every other request is refused with
//! `invalid_exact_evm_nonce_already_used` and the transaction hash, so an honest retrier sees
//! what happened; a retrier that must get the answer again sends the same `Idempotency-Key` or
//! `payment-identifier`. A failed settlement answers its failure to everyone.
//!
//! When the chain shows the settlement's signer nonce used by another transaction (the key was
//! used outside the cluster) while the authorization is still unused, the transaction can never
//! be mined: `ReplaceSettlement` allocates the same call a fresh nonce above the chain's count and
//! it is signed again, so the payment still settles within seconds. The leader's reconciler
//! finishes records whose owner went quiet ([`super::reconcile`]).

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use tokio::time::Instant;
use x402_protocol::x402::eip3009;
use x402_protocol::x402::{ReasonCode, SettleResponse};
use x402_raft_store::state::{
    ClaimId, Rejection as LedgerRejection, SettlementAnswer, SettlementFinish, SettlementOutcome,
    SettlementPhase, SettlementRecord, SettlementReplace, SettlementStart, SignedSettlement,
    SuccessTaker,
};

use super::context::Context;
use super::payment::{Payment, Rejection};
use super::verify::{self, Simulation};
use super::Network;
use crate::access::rate_limit::{guarded_begin_settlement, Gate, GuardedError, Limited};
use crate::chain::tx::{self, sign_eip1559, Eip1559Request};
use crate::chain::{CallRequest, ChainError, Fees, NonceTag, Receipt};
use crate::cluster::proposer::ProposeError;
use crate::cluster::writer::{Replaced, StepError};

/// Why `/settle` could not answer at all.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A rate limit refused the payment in the settlement's first log entry: this attempt
    /// claimed and allocated nothing (an earlier attempt whose answer was lost may have; the
    /// reconciler then finishes that settlement like any other).
    #[error("rate limited")]
    Limited(Limited),
    /// The state machine refused a settlement step (nothing changed).
    #[error("the state machine refused a settlement step: {0}")]
    Rejected(LedgerRejection),
    #[error("this node does not hold the key of signer {0}")]
    MissingSigner(Address),
    #[error("signing failed: {0}")]
    Signing(#[from] alloy::signers::Error),
    #[error("cannot read the chain's fees: {0}")]
    Fees(ChainError),
    #[error("a recorded transaction does not decode")]
    UndecodableRecord,
}

impl From<GuardedError> for SettleError {
    fn from(e: GuardedError) -> Self {
        match e {
            GuardedError::Propose(e) => SettleError::Propose(e),
            GuardedError::Limited(l) => SettleError::Limited(l),
        }
    }
}

impl From<StepError> for SettleError {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Propose(e) => SettleError::Propose(e),
            StepError::Rejected(why) => SettleError::Rejected(why),
        }
    }
}

/// Settles `payment` (whose signature and terms passed) for the request `taker`: see the
/// module documentation. `network_text` is the request's network as sent, for the answer.
pub async fn settle(
    ctx: &Context,
    payment: &Payment,
    network_text: &str,
    gate: &Gate,
    taker: SuccessTaker,
) -> Result<SettleResponse, SettleError> {
    let fail = |r: Rejection| failure(r, network_text);
    let Some(network) = ctx.facilitator.networks.get(&payment.chain_id) else {
        return Ok(fail(Rejection::new(
            ReasonCode::InvalidNetwork,
            "network not served",
        )));
    };
    let follow = Follow {
        ctx,
        network,
        payment,
        network_text,
        taker,
    };
    let id = payment.nonce_key().digest();
    // A settlement of this authorization already exists: follow it (no chain checks: after it
    // is mined the simulation would fail with "authorization is used").
    if let Some(record) = local_record(ctx, &id) {
        return follow.record(record).await;
    }
    let simulation = if ctx.facilitator.settings.simulate_in_settle {
        Simulation::Run
    } else {
        Simulation::Skip
    };
    if let Err(rejection) = verify::chain_checks(ctx, payment, simulation).await {
        // Another node may have settled this very payment and our replica not applied its
        // record yet: look again with a linearizable read before calling it a failure.
        if rejection.reason == ReasonCode::InvalidExactEvmNonceAlreadyUsed
            && ctx.barrier.wait().await.is_ok()
        {
            if let Some(record) = local_record(ctx, &id) {
                return follow.record(record).await;
            }
        }
        return Ok(fail(rejection));
    }
    let record = match begin(ctx, network, payment, gate).await? {
        Begun::Record(record) => record,
        Begun::Refused(rejection) => return Ok(fail(rejection)),
    };
    follow.record(*record).await
}

enum Begun {
    Record(Box<SettlementRecord>),
    Refused(Rejection),
}

/// `BeginSettlement`, then (when it allocated a nonce to us) signing and `RecordSigned`.
async fn begin(
    ctx: &Context,
    network: &Network,
    payment: &Payment,
    gate: &Gate,
) -> Result<Begun, SettleError> {
    if network.signers.is_empty() {
        return Ok(Begun::Refused(Rejection::new(
            ReasonCode::UnexpectedSettleError,
            format!("this node holds no signer key for {}", network.caip2),
        )));
    }
    let start = SettlementStart {
        claim: payment.claim(),
        owner: ctx.id,
        call: settlement_call(payment),
        signers: network
            .signer_addresses()
            .iter()
            .map(|a| a.into_array())
            .collect(),
    };
    // Fees first: an allocation is signed the moment the log hands it out, with no wait in
    // between (and a chain that cannot tell its fees would not take the transaction anyway).
    let fees = match network.fees().await {
        Ok(fees) => fees,
        Err(e) => {
            return Ok(Begun::Refused(
                Rejection::new(
                    ReasonCode::UnexpectedSettleError,
                    format!("cannot read the chain's fees: {e}"),
                )
                .with_payer(payment.payer),
            ))
        }
    };
    let mut synced = false;
    loop {
        let payer = payment.payer.into_array();
        let answer = guarded_begin_settlement(&ctx.writer, gate, &payer, start.clone()).await?;
        let refused = |reason, message: &str| {
            Ok(Begun::Refused(
                Rejection::new(reason, message).with_payer(payment.payer),
            ))
        };
        return match answer {
            SettlementAnswer::Allocated { signer, nonce } => {
                let signer = Address::from(signer);
                let allocation = Allocation {
                    id: payment.nonce_key().digest(),
                    asset: payment.asset,
                    signer,
                    nonce,
                    call: settlement_call(payment),
                };
                match sign_allocation(ctx, network, allocation, fees, SignedBy::Owner).await {
                    Ok(record) => Ok(Begun::Record(Box::new(record))),
                    // The nonce is ours but unsigned (the key is missing, say): the leader's
                    // reconciler signs it with the recorded call; follow the record meanwhile.
                    Err(e) => {
                        tracing::warn!(error = %e, "allocated settlement not signed yet");
                        Ok(Begun::Record(Box::new(allocated_record(
                            ctx, payment, signer, nonce,
                        ))))
                    }
                }
            }
            SettlementAnswer::Current(record) => Ok(Begun::Record(record)),
            SettlementAnswer::Replay => refused(
                ReasonCode::InvalidExactEvmNonceAlreadyUsed,
                "this authorization was already used for other payment requirements",
            ),
            SettlementAnswer::Expired => refused(
                ReasonCode::InvalidExactEvmPayloadAuthorizationValidBefore,
                "the authorization expired before it could be settled",
            ),
            SettlementAnswer::NoSigner if !synced => {
                // First use of these keys by the cluster: tell it their nonces, then retry.
                super::signers::sync(ctx, network).await;
                synced = true;
                continue;
            }
            SettlementAnswer::NoSigner => refused(
                ReasonCode::UnexpectedSettleError,
                "the signer keys' nonces could not be read from the chain",
            ),
            SettlementAnswer::Rejected(why) => Err(SettleError::Rejected(why)),
        };
    }
}

/// A signer nonce the log handed to a settlement, and the call to sign at it.
pub struct Allocation {
    pub id: ClaimId,
    /// The token the call is for.
    pub asset: Address,
    pub signer: Address,
    pub nonce: u64,
    pub call: Vec<u8>,
}

/// Who signs an allocation (in the log line; the simulations check the reconciler's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedBy {
    /// The node whose `BeginSettlement` got the allocation.
    Owner,
    /// The node whose `ReplaceSettlement` got a fresh nonce for it.
    Replacer,
    /// The leader's reconciler, for an owner that went quiet.
    Reconciler,
}

impl SignedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SignedBy::Owner => "owner",
            SignedBy::Replacer => "replacer",
            SignedBy::Reconciler => "reconciler",
        }
    }
}

/// Target of the log line every signature writes.
pub const SIGNING_TARGET: &str = "x402::settlement";

/// Signs an allocation with `fees` and commits the bytes. Nothing is signed for an allocation
/// this replica already knows to be gone (signed by another node, replaced, finished), and
/// nothing is awaited between that look and the signature. The answer is the record as
/// committed: ours, or the bytes someone else recorded first.
pub async fn sign_allocation(
    ctx: &Context,
    network: &Network,
    allocation: Allocation,
    fees: Fees,
    by: SignedBy,
) -> Result<SettlementRecord, SettleError> {
    let Allocation {
        id,
        asset,
        signer,
        nonce,
        call,
    } = allocation;
    if let Some(record) = local_record(ctx, &id) {
        let ours = matches!(
            &record.phase,
            SettlementPhase::Allocated { signer: s, nonce: n, .. } if *s == signer.0 && *n == nonce
        );
        if !ours {
            return Ok(record);
        }
    }
    let signed = sign_transaction(network, fees, signer, nonce, asset, call)?;
    tracing::info!(
        target: SIGNING_TARGET,
        settlement = %B256::from(id),
        by = by.as_str(),
        tx = %signed.hash,
        %signer,
        nonce,
        "signed a settlement"
    );
    let record = ctx
        .writer
        .record_signed(SignedSettlement {
            id,
            signer: signer.into_array(),
            nonce,
            tx_hash: signed.hash.0,
            raw_tx: signed.raw,
        })
        .await?;
    Ok(record)
}

/// Signs a call of `to` with `input` from `signer` at `nonce`, with the given fees (capped by
/// the network's `max_fee_per_gas_wei`).
pub fn sign_transaction(
    network: &Network,
    fees: Fees,
    signer: Address,
    nonce: u64,
    to: Address,
    input: Vec<u8>,
) -> Result<crate::chain::tx::SignedTransaction, SettleError> {
    let key = network
        .signer(&signer)
        .ok_or(SettleError::MissingSigner(signer))?;
    let mut max_fee = fees.max_fee_per_gas();
    let mut tip = fees.max_priority_fee_per_gas;
    if let Some(cap) = network.settings.max_fee_per_gas_wei {
        max_fee = max_fee.min(u128::from(cap));
        tip = tip.min(max_fee);
    }
    let request = Eip1559Request {
        chain_id: network.chain_id,
        nonce,
        gas_limit: network.settings.gas_limit,
        max_fee_per_gas: max_fee,
        max_priority_fee_per_gas: tip,
        to: Some(to),
        value: U256::ZERO,
        input,
    };
    Ok(sign_eip1559(key, &request)?)
}

/// One `/settle` request following a settlement record.
struct Follow<'a> {
    ctx: &'a Context,
    network: &'a Network,
    payment: &'a Payment,
    network_text: &'a str,
    taker: SuccessTaker,
}

impl Follow<'_> {
    /// Follows `record` to its outcome or to the caller's deadline, and answers: the success if
    /// this request holds it, a refusal with the hash if another does.
    async fn record(&self, record: SettlementRecord) -> Result<SettleResponse, SettleError> {
        let (ctx, network, payment) = (self.ctx, self.network, self.payment);
        if record.fingerprint != payment.fingerprint {
            return Ok(failure(
                Rejection::new(
                    ReasonCode::InvalidExactEvmNonceAlreadyUsed,
                    "this authorization was already used for other payment requirements",
                )
                .with_payer(payment.payer),
                self.network_text,
            ));
        }
        let payer = payment.payer_text();
        let deadline = Instant::now()
            + Duration::from_millis(
                network
                    .settings
                    .receipt_timeout_ms
                    .min(ctx.facilitator.settings.settle_wait_ms),
            );
        let id = payment.nonce_key().digest();
        let driven = drive(ctx, network, &id, record, deadline, Some(self.taker)).await?;
        let record = match driven {
            Driven::Done(record) => *record,
            Driven::Pending(Some(tx_hash)) => {
                return Ok(
                    SettleResponse::pending(tx_hash.to_string(), self.network_text, payer)
                        .with_message("the transaction was broadcast; its receipt is not in yet"),
                )
            }
            Driven::Pending(None) => {
                return Ok(SettleResponse::failure(
                    ReasonCode::SettlementPending,
                    self.network_text,
                    Some(payer),
                )
                .with_message(
                    "the settlement is being signed by another node; settle again shortly",
                ))
            }
        };
        let record = match (record.settled_tx(), record.success_taker) {
            // Done by someone else (the reconciler, a request that timed out): take it.
            (Some(_), None) => take_success(ctx, id, self.taker).await?,
            _ => record,
        };
        Ok(match (record.settled_tx(), &record.phase) {
            (Some(tx_hash), _) if record.success_is(&self.taker) => {
                SettleResponse::success(B256::from(tx_hash).to_string(), self.network_text, &payer)
            }
            (Some(tx_hash), _) => already_settled(B256::from(tx_hash), self.network_text, &payer),
            (None, SettlementPhase::Done { outcome, .. }) => {
                response_of(outcome, self.network_text, &payer)
            }
            (None, _) => unreachable!("drive answers Done only with a finished record"),
        })
    }
}

/// The answer to every request but the one that received a settlement's success.
fn already_settled(tx_hash: B256, network: &str, payer: &str) -> SettleResponse {
    let mut r = SettleResponse::failure(
        ReasonCode::InvalidExactEvmNonceAlreadyUsed,
        network,
        Some(payer.to_owned()),
    )
    .with_message(format!(
        "this authorization was already settled by transaction {tx_hash}, and that success was \
         answered to another request; retry with the same Idempotency-Key or payment-identifier \
         to get that answer again"
    ));
    r.transaction = tx_hash.to_string();
    r
}

/// Gives a settled authorization's success to `taker` if nobody took it; the record after.
async fn take_success(
    ctx: &Context,
    id: ClaimId,
    taker: SuccessTaker,
) -> Result<SettlementRecord, SettleError> {
    Ok(ctx.writer.take_success(id, taker).await?)
}

/// Where a settlement stands after [`drive`].
pub enum Driven {
    /// The record, done.
    Done(Box<SettlementRecord>),
    /// Not finished by the deadline; the transaction hash once it is signed.
    Pending(Option<B256>),
}

/// Moves a settlement record forward until it is done or `deadline` passes (at least one round
/// either way): waits for its bytes while it is only allocated, broadcasts them, reads the
/// receipt and commits the outcome (for `taker`, the request driving it, if any), and signs it
/// again at a fresh nonce when another transaction used its nonce.
pub async fn drive(
    ctx: &Context,
    network: &Network,
    id: &ClaimId,
    mut record: SettlementRecord,
    deadline: Instant,
    taker: Option<SuccessTaker>,
) -> Result<Driven, SettleError> {
    let poll = Duration::from_millis(network.settings.receipt_poll_ms);
    let mut broadcast: Option<B256> = None;
    loop {
        match &record.phase {
            SettlementPhase::Done { .. } => return Ok(Driven::Done(Box::new(record))),
            SettlementPhase::Allocated { .. } => {}
            SettlementPhase::Signed {
                signer,
                nonce,
                tx_hash,
                raw_tx,
            } => {
                let tx_hash = B256::from(*tx_hash);
                if broadcast != Some(tx_hash) {
                    rebroadcast(network, raw_tx.clone(), tx_hash).await;
                    broadcast = Some(tx_hash);
                }
                let signer = Address::from(*signer);
                let now_ms = ctx.clock.now_ms();
                match read_outcome(network, &record, signer, *nonce, tx_hash, now_ms).await {
                    Verdict::Decided(outcome) => {
                        let done = finish(ctx, *id, tx_hash, outcome, taker).await?;
                        return Ok(Driven::Done(Box::new(done)));
                    }
                    Verdict::NonceUsedElsewhere { chain_nonce } => {
                        let call = tx::call_of(raw_tx).ok_or(SettleError::UndecodableRecord)?;
                        tracing::warn!(%tx_hash, %signer, nonce, chain_nonce,
                            "another transaction used this settlement's signer nonce; signing it again");
                        record =
                            replace(ctx, network, *id, &record, tx_hash, chain_nonce, call).await?;
                        continue;
                    }
                    Verdict::Undecided => {}
                }
            }
        }
        if Instant::now() + poll > deadline {
            let hash = match &record.phase {
                SettlementPhase::Signed { tx_hash, .. } => Some(B256::from(*tx_hash)),
                _ => None,
            };
            return Ok(Driven::Pending(hash));
        }
        tokio::time::sleep(poll).await;
        // Someone else may have moved it meanwhile (signed it, finished it).
        if let Some(latest) = local_record(ctx, id) {
            record = latest;
        }
    }
}

/// `ReplaceSettlement`, then signing the fresh allocation; the record after.
async fn replace(
    ctx: &Context,
    network: &Network,
    id: ClaimId,
    record: &SettlementRecord,
    tx_hash: B256,
    chain_nonce: u64,
    call: Vec<u8>,
) -> Result<SettlementRecord, SettleError> {
    let fees = network.fees().await.map_err(SettleError::Fees)?;
    let replaced = ctx
        .writer
        .replace_settlement(SettlementReplace {
            id,
            tx_hash: tx_hash.0,
            chain_nonce,
            call: call.clone(),
        })
        .await?;
    match replaced {
        Replaced::Allocated { signer, nonce } => {
            let allocation = Allocation {
                id,
                asset: Address::from(record.key.asset),
                signer: Address::from(signer),
                nonce,
                call,
            };
            sign_allocation(ctx, network, allocation, fees, SignedBy::Replacer).await
        }
        Replaced::Current(record) => Ok(*record),
    }
}

/// Sends the recorded bytes again. Errors are expected and harmless: "already known", or
/// "nonce too low" once it is mined (or once another transaction used the nonce, which
/// [`read_outcome`] tells apart); an unreachable RPC is retried on the next round.
pub async fn rebroadcast(network: &Network, raw: Vec<u8>, tx_hash: B256) {
    match network.chain.send_raw_transaction(raw).await {
        Ok(hash) if hash != tx_hash => {
            tracing::error!(%hash, %tx_hash, "the chain hashed recorded bytes differently");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(%tx_hash, error = %e, "broadcast not accepted"),
    }
}

/// How long a signed settlement must have gone without a receipt, while the chain shows its
/// authorization used by some other transaction, before it is judged failed. A node can count a
/// mined transaction before it serves the receipt (anvil does, under load), so an immediate
/// judgement would fail settlements that succeeded.
pub const REPLACED_AFTER_MS: u64 = 30_000;

/// What the chain says of a signed settlement.
pub enum Verdict {
    /// Its receipt (with enough confirmations), or the authorization used by a transaction
    /// that is not ours for longer than [`REPLACED_AFTER_MS`].
    Decided(SettlementOutcome),
    /// The signer's nonce was used by another transaction while the authorization is unused:
    /// this transaction can never be mined, and signing the call again is safe.
    NonceUsedElsewhere { chain_nonce: u64 },
    /// Not yet (or the chain could not be read).
    Undecided,
}

/// Reads the chain's verdict on the signed transaction `tx_hash` of `record` (its signer and
/// nonce given).
pub async fn read_outcome(
    network: &Network,
    record: &SettlementRecord,
    signer: Address,
    nonce: u64,
    tx_hash: B256,
    now_ms: u64,
) -> Verdict {
    let chain = &network.chain;
    match chain.receipt(tx_hash).await {
        Ok(Some(receipt)) => {
            if network.settings.confirmations > 1 {
                let (Some(mined), Ok(latest)) = (receipt.block_number, chain.block_number().await)
                else {
                    return Verdict::Undecided;
                };
                if latest.saturating_add(1) < mined.saturating_add(network.settings.confirmations) {
                    return Verdict::Undecided;
                }
            }
            Verdict::Decided(judge(network, record, &receipt, tx_hash).await)
        }
        Ok(None) => {
            let Ok(mined_count) = chain.nonce(signer, NonceTag::Latest).await else {
                return Verdict::Undecided;
            };
            if mined_count <= nonce {
                return Verdict::Undecided;
            }
            // The nonce is used. By this transaction, just mined? Read the receipt once more.
            match chain.receipt(tx_hash).await {
                Ok(Some(receipt)) => {
                    return Verdict::Decided(judge(network, record, &receipt, tx_hash).await)
                }
                Ok(None) => {}
                Err(_) => return Verdict::Undecided,
            }
            if let Some(outcome) = replaced_success(network, record).await {
                return Verdict::Decided(outcome);
            }
            // Read after the count, so a used authorization shows if our own transaction
            // used it (state only moves forward on one node).
            let used = chain
                .eth_call(CallRequest {
                    from: None,
                    to: Address::from(record.key.asset),
                    data: eip3009::authorization_state_calldata(
                        Address::from(record.key.payer),
                        B256::from(record.key.nonce),
                    ),
                })
                .await
                .ok()
                .and_then(|ret| eip3009::decode_bool(&ret).ok());
            match used {
                Some(false) => Verdict::NonceUsedElsewhere {
                    chain_nonce: mined_count,
                },
                Some(true) if record.updated_at_ms.saturating_add(REPLACED_AFTER_MS) <= now_ms => {
                    Verdict::Decided(SettlementOutcome::Failed {
                        reason: ReasonCode::InvalidTransactionState.as_str().to_owned(),
                        message: Some(
                            "the authorization was used on chain by a transaction that is not \
                             this settlement's"
                                .to_owned(),
                        ),
                        tx_hash: Some(tx_hash.0),
                    })
                }
                _ => Verdict::Undecided,
            }
        }
        Err(_) => Verdict::Undecided,
    }
}

/// The verdict of a receipt; a reverted transaction of a settlement that was signed again is a
/// success if one of its replaced transactions was mined after all and transferred.
async fn judge(
    network: &Network,
    record: &SettlementRecord,
    receipt: &Receipt,
    tx_hash: B256,
) -> SettlementOutcome {
    let outcome = judge_receipt(record, receipt, tx_hash);
    if matches!(outcome, SettlementOutcome::Failed { .. }) {
        if let Some(settled) = replaced_success(network, record).await {
            return settled;
        }
    }
    outcome
}

/// A replaced transaction of `record` that is mined and transferred, if any.
async fn replaced_success(
    network: &Network,
    record: &SettlementRecord,
) -> Option<SettlementOutcome> {
    for hash in &record.replaced {
        let hash = B256::from(*hash);
        if let Ok(Some(receipt)) = network.chain.receipt(hash).await {
            let outcome = judge_receipt(record, &receipt, hash);
            if matches!(outcome, SettlementOutcome::Settled { .. }) {
                return Some(outcome);
            }
        }
    }
    None
}

/// Success needs status 1 and the token's `Transfer(from, to, value)` in the receipt.
fn judge_receipt(record: &SettlementRecord, receipt: &Receipt, tx_hash: B256) -> SettlementOutcome {
    if !receipt.status {
        return SettlementOutcome::Failed {
            reason: ReasonCode::InvalidExactEvmTransactionFailed
                .as_str()
                .to_owned(),
            message: Some("the settlement transaction reverted".to_owned()),
            tx_hash: Some(tx_hash.0),
        };
    }
    let asset = Address::from(record.key.asset);
    let payer = Address::from(record.key.payer);
    let transferred = receipt.logs.iter().any(|log| {
        log.address == asset
            && eip3009::decode_transfer_log(&log.topics, &log.data)
                .is_some_and(|(from, _, _)| from == payer)
    });
    if transferred {
        SettlementOutcome::Settled { tx_hash: tx_hash.0 }
    } else {
        SettlementOutcome::Failed {
            reason: ReasonCode::InvalidExactEvmTransferEventMismatch
                .as_str()
                .to_owned(),
            message: Some("the receipt has no Transfer from the payer by the token".to_owned()),
            tx_hash: Some(tx_hash.0),
        }
    }
}

/// Commits an outcome (and the success to `taker`, if it is one nobody took); the record as
/// committed, whose outcome is the one committed first (ours or another's).
pub async fn finish(
    ctx: &Context,
    id: ClaimId,
    tx_hash: B256,
    outcome: SettlementOutcome,
    taker: Option<SuccessTaker>,
) -> Result<SettlementRecord, SettleError> {
    let record = ctx
        .writer
        .finish_settlement(SettlementFinish {
            id,
            tx_hash: tx_hash.0,
            outcome,
            taker,
        })
        .await?;
    Ok(record)
}

/// The settle answer for a stored outcome.
fn response_of(outcome: &SettlementOutcome, network: &str, payer: &str) -> SettleResponse {
    match outcome {
        SettlementOutcome::Settled { tx_hash } => {
            SettleResponse::success(B256::from(*tx_hash).to_string(), network, payer)
        }
        SettlementOutcome::Failed {
            reason,
            message,
            tx_hash,
        } => {
            let mut r =
                SettleResponse::failure(ReasonCode::parse(reason), network, Some(payer.to_owned()));
            if let Some(hash) = tx_hash {
                r.transaction = B256::from(*hash).to_string();
            }
            if let Some(m) = message {
                r = r.with_message(m.clone());
            }
            r
        }
    }
}

/// The `{success: false}` answer for a rejection (nothing was broadcast).
pub fn failure(rejection: Rejection, network: &str) -> SettleResponse {
    let mut r = SettleResponse::failure(
        rejection.reason,
        network,
        rejection.payer.map(|p| p.to_checksum(None)),
    );
    if let Some(m) = rejection.message {
        r = r.with_message(m);
    }
    r
}

/// The record as `BeginSettlement` left it, for when this replica has not applied it yet.
fn allocated_record(
    ctx: &Context,
    payment: &Payment,
    signer: Address,
    nonce: u64,
) -> SettlementRecord {
    let id = payment.nonce_key().digest();
    local_record(ctx, &id).unwrap_or_else(|| SettlementRecord {
        key: payment.nonce_key(),
        fingerprint: payment.fingerprint,
        valid_before: payment.valid_before,
        owner: ctx.id,
        updated_at_ms: ctx.clock.now_ms(),
        phase: SettlementPhase::Allocated {
            signer: signer.into_array(),
            nonce,
            call: settlement_call(payment),
        },
        success_taker: None,
        replaced: Vec::new(),
    })
}

/// The calldata of a payment's settlement: `transferWithAuthorization` on the token.
pub fn settlement_call(payment: &Payment) -> Vec<u8> {
    eip3009::transfer_with_authorization(&payment.authorization, &payment.signature)
}

/// This replica's copy of a settlement record.
pub fn local_record(ctx: &Context, id: &ClaimId) -> Option<SettlementRecord> {
    ctx.state.read(|s| s.settlements().get(id).cloned())
}
