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
//! then answers `settlement_pending` with the hash; a caller that finds it done gets the stored
//! outcome. The leader's reconciler finishes records whose owner went quiet
//! ([`super::reconcile`]).

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use tokio::time::Instant;
use x402_client::x402::eip3009;
use x402_client::x402::{FacilitatorRequest, ReasonCode, SettleResponse};
use x402_raft_store::state::{
    ClaimId, GuardedOp, Op, SettlementAnswer, SettlementFinish, SettlementOutcome, SettlementPhase,
    SettlementRecord, SettlementStart, SignedSettlement,
};
use x402_raft_store::Response;

use super::payment::{self, Payment, Rejection};
use super::verify::{self, Simulation};
use super::Network;
use crate::access::rate_limit::{propose_guarded, Gate, GuardedError, Limited};
use crate::chain::tx::{sign_eip1559, Eip1559Request};
use crate::chain::{NonceTag, Receipt};
use crate::cluster::proposer::ProposeError;
use crate::cluster::read_barrier;
use crate::node::App;

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
    #[error("the state machine refused a settlement step: {0}")]
    Refused(String),
}

impl From<GuardedError> for SettleError {
    fn from(e: GuardedError) -> Self {
        match e {
            GuardedError::Propose(e) => SettleError::Propose(e),
            GuardedError::Limited(l) => SettleError::Limited(l),
            GuardedError::Unexpected(e) => SettleError::Refused(e),
        }
    }
}

/// Settles `request`: see the module documentation.
pub async fn settle(
    app: &App,
    request: &FacilitatorRequest,
    gate: &Gate,
) -> Result<SettleResponse, SettleError> {
    let network_text = request.network().to_owned();
    let fail = |r: Rejection| failure(r, &network_text);
    let payment = match payment::prepare(&app.facilitator, request) {
        Ok(p) => p,
        Err(r) => return Ok(fail(r)),
    };
    let Some(network) = app.facilitator.networks.get(&payment.chain_id) else {
        return Ok(fail(Rejection::new(
            ReasonCode::InvalidNetwork,
            "network not served",
        )));
    };
    let id = payment.nonce_key().digest();
    // A settlement of this authorization already exists: follow it (no chain checks: after it
    // is mined the simulation would fail with "authorization is used").
    if let Some(record) = local_record(app, &id) {
        return follow_existing(app, network, &payment, &network_text, record).await;
    }
    let now_secs = app.clock.now_ms() / 1000;
    let simulation = if app.facilitator.settings.simulate_in_settle {
        Simulation::Run
    } else {
        Simulation::Skip
    };
    if let Err(rejection) = verify::check_payment(app, request, now_secs, simulation).await {
        // Another node may have settled this very payment and our replica not applied its
        // record yet: look again with a linearizable read before calling it a failure.
        if rejection.reason == ReasonCode::InvalidExactEvmNonceAlreadyUsed
            && read_barrier::wait_linearizable(app, app.proposer.timeout())
                .await
                .is_ok()
        {
            if let Some(record) = local_record(app, &id) {
                return follow_existing(app, network, &payment, &network_text, record).await;
            }
        }
        return Ok(fail(rejection));
    }
    let record = match begin(app, network, &payment, gate).await? {
        Begun::Record(record) => record,
        Begun::Refused(rejection) => return Ok(fail(rejection)),
    };
    follow_existing(app, network, &payment, &network_text, record).await
}

enum Begun {
    Record(SettlementRecord),
    Refused(Rejection),
}

/// `BeginSettlement`, then (when it allocated a nonce to us) signing and `RecordSigned`.
async fn begin(
    app: &App,
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
        owner: app.id,
        call: settlement_call(payment),
        signers: network
            .signer_addresses()
            .iter()
            .map(|a| a.into_array())
            .collect(),
    };
    let mut synced = false;
    loop {
        let payer = payment.payer.into_array();
        let committed = propose_guarded(
            &app.batcher,
            gate,
            &payer,
            GuardedOp::BeginSettlement(start.clone()),
        )
        .await?;
        let answer = settlement_answer(committed.response)?;
        let refused = |reason, message: &str| {
            Ok(Begun::Refused(
                Rejection::new(reason, message).with_payer(payment.payer),
            ))
        };
        return match answer {
            SettlementAnswer::Allocated { signer, nonce } => {
                let signer = Address::from(signer);
                match sign_and_record(app, network, payment, signer, nonce).await {
                    Ok(record) => Ok(Begun::Record(record)),
                    // The nonce is ours but unsigned (fees unreadable, say): the leader's
                    // reconciler signs it with the recorded call; follow the record meanwhile.
                    Err(e) => {
                        tracing::warn!(error = %e, "allocated settlement not signed yet");
                        Ok(Begun::Record(allocated_record(app, payment, signer, nonce)))
                    }
                }
            }
            SettlementAnswer::Current(record) => Ok(Begun::Record(*record)),
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
                super::reconcile::sync_signers(app, network).await;
                synced = true;
                continue;
            }
            SettlementAnswer::NoSigner => refused(
                ReasonCode::UnexpectedSettleError,
                "the signer keys' nonces could not be read from the chain",
            ),
            SettlementAnswer::Rejected(why) => Err(SettleError::Refused(why)),
        };
    }
}

/// Signs the allocated `(signer, nonce)` for `payment` and commits the bytes. The answer is the
/// record as committed: ours, or the bytes someone else (the reconciler) recorded first.
pub async fn sign_and_record(
    app: &App,
    network: &Network,
    payment: &Payment,
    signer: Address,
    nonce: u64,
) -> Result<SettlementRecord, SettleError> {
    let id = payment.nonce_key().digest();
    let signed = sign_transaction(
        network,
        signer,
        nonce,
        payment.asset,
        settlement_call(payment),
    )
    .await?;
    let answer = propose_settlement(
        app,
        Op::RecordSigned(SignedSettlement {
            id,
            signer: signer.into_array(),
            nonce,
            tx_hash: signed.hash.0,
            raw_tx: signed.raw,
        }),
    )
    .await?;
    match answer {
        SettlementAnswer::Current(record) => Ok(*record),
        other => Err(SettleError::Refused(format!("{other:?}"))),
    }
}

/// Signs a call of `to` with `input` from `signer` at `nonce`, with the chain's current fees.
pub async fn sign_transaction(
    network: &Network,
    signer: Address,
    nonce: u64,
    to: Address,
    input: Vec<u8>,
) -> Result<crate::chain::tx::SignedTransaction, SettleError> {
    let key = network
        .signer(&signer)
        .ok_or_else(|| SettleError::Refused(format!("this node does not hold signer {signer}")))?;
    let fees = network
        .fees()
        .await
        .map_err(|e| SettleError::Refused(format!("cannot read fees: {e}")))?;
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
    sign_eip1559(key, &request).map_err(|e| SettleError::Refused(format!("signing failed: {e}")))
}

/// Follows a settlement record to its outcome or to the caller's deadline.
async fn follow_existing(
    app: &App,
    network: &Network,
    payment: &Payment,
    network_text: &str,
    record: SettlementRecord,
) -> Result<SettleResponse, SettleError> {
    if record.fingerprint != payment.fingerprint {
        return Ok(failure(
            Rejection::new(
                ReasonCode::InvalidExactEvmNonceAlreadyUsed,
                "this authorization was already used for other payment requirements",
            )
            .with_payer(payment.payer),
            network_text,
        ));
    }
    let payer = payment.payer_text();
    let deadline = Instant::now()
        + Duration::from_millis(
            network
                .settings
                .receipt_timeout_ms
                .min(app.facilitator.settings.settle_wait_ms),
        );
    let id = payment.nonce_key().digest();
    match drive(app, network, &id, record, deadline).await? {
        Driven::Done(outcome) => Ok(response_of(&outcome, network_text, &payer)),
        Driven::Pending(Some(tx_hash)) => {
            Ok(
                SettleResponse::pending(tx_hash.to_string(), network_text, payer)
                    .with_message("the transaction was broadcast; its receipt is not in yet"),
            )
        }
        Driven::Pending(None) => Ok(SettleResponse::failure(
            ReasonCode::SettlementPending,
            network_text,
            Some(payer),
        )
        .with_message("the settlement is being signed by another node; settle again shortly")),
    }
}

/// Where a settlement stands after [`drive`].
pub enum Driven {
    Done(SettlementOutcome),
    /// Not finished by the deadline; the transaction hash once it is signed.
    Pending(Option<B256>),
}

/// Moves a settlement record forward until it is done or `deadline` passes: waits for its bytes
/// while it is only allocated, broadcasts them, reads the receipt and commits the outcome.
pub async fn drive(
    app: &App,
    network: &Network,
    id: &ClaimId,
    mut record: SettlementRecord,
    deadline: Instant,
) -> Result<Driven, SettleError> {
    let poll = Duration::from_millis(network.settings.receipt_poll_ms);
    let mut broadcast = false;
    loop {
        match &record.phase {
            SettlementPhase::Done { outcome, .. } => return Ok(Driven::Done(outcome.clone())),
            SettlementPhase::Allocated { .. } => {}
            SettlementPhase::Signed {
                signer,
                nonce,
                tx_hash,
                raw_tx,
            } => {
                let tx_hash = B256::from(*tx_hash);
                if !broadcast {
                    rebroadcast(network, raw_tx.clone(), tx_hash).await;
                    broadcast = true;
                }
                let signer = Address::from(*signer);
                let now_ms = app.clock.now_ms();
                if let Some(outcome) =
                    read_outcome(network, &record, signer, *nonce, tx_hash, now_ms).await
                {
                    return finish(app, *id, tx_hash, outcome).await.map(Driven::Done);
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
        if let Some(latest) = local_record(app, id) {
            record = latest;
        }
    }
}

/// Sends the recorded bytes again. Errors are expected and harmless: "already known", or
/// "nonce too low" once it is mined; an unreachable RPC is retried on the next round.
pub async fn rebroadcast(network: &Network, raw: Vec<u8>, tx_hash: B256) {
    match network.chain.send_raw_transaction(raw).await {
        Ok(hash) if hash != tx_hash => {
            tracing::error!(%hash, %tx_hash, "the chain hashed recorded bytes differently");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(%tx_hash, error = %e, "broadcast not accepted"),
    }
}

/// How long a signed settlement must have gone without a receipt, while its signer's mined
/// count is past its nonce, before it is judged replaced by another transaction. A node can
/// count a mined transaction before it serves the receipt (anvil does, under load), so an
/// immediate judgement would fail settlements that succeeded.
pub const REPLACED_AFTER_MS: u64 = 30_000;

/// The outcome of a signed settlement if the chain has decided it: its receipt (with enough
/// confirmations), or the signer's nonce consumed by some other transaction for longer than
/// [`REPLACED_AFTER_MS`].
pub async fn read_outcome(
    network: &Network,
    record: &SettlementRecord,
    signer: Address,
    nonce: u64,
    tx_hash: B256,
    now_ms: u64,
) -> Option<SettlementOutcome> {
    match network.chain.receipt(tx_hash).await {
        Ok(Some(receipt)) => {
            if network.settings.confirmations > 1 {
                let mined = receipt.block_number?;
                let latest = network.chain.block_number().await.ok()?;
                if latest.saturating_add(1) < mined.saturating_add(network.settings.confirmations) {
                    return None;
                }
            }
            Some(judge_receipt(record, &receipt, tx_hash))
        }
        Ok(None) => {
            // Our nonce used by another transaction (the key was used outside the cluster):
            // this one can never be mined. Read the receipt once more in case it just was.
            if record.updated_at_ms.saturating_add(REPLACED_AFTER_MS) > now_ms {
                return None;
            }
            let mined_count = network.chain.nonce(signer, NonceTag::Latest).await.ok()?;
            if mined_count <= nonce {
                return None;
            }
            match network.chain.receipt(tx_hash).await {
                Ok(Some(receipt)) => Some(judge_receipt(record, &receipt, tx_hash)),
                Ok(None) => Some(SettlementOutcome::Failed {
                    reason: ReasonCode::InvalidTransactionState.as_str().to_owned(),
                    message: Some(format!(
                        "signer nonce {nonce} was consumed by another transaction"
                    )),
                    tx_hash: Some(tx_hash.0),
                }),
                Err(_) => None,
            }
        }
        Err(_) => None,
    }
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

/// Commits an outcome; the answer is the outcome committed first (ours or another's).
pub async fn finish(
    app: &App,
    id: ClaimId,
    tx_hash: B256,
    outcome: SettlementOutcome,
) -> Result<SettlementOutcome, SettleError> {
    let answer = propose_settlement(
        app,
        Op::FinishSettlement(SettlementFinish {
            id,
            tx_hash: tx_hash.0,
            outcome,
        }),
    )
    .await?;
    match answer {
        SettlementAnswer::Current(record) => match record.phase {
            SettlementPhase::Done { outcome, .. } => Ok(outcome),
            other => Err(SettleError::Refused(format!(
                "a finished settlement is still {other:?}"
            ))),
        },
        other => Err(SettleError::Refused(format!("{other:?}"))),
    }
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
fn allocated_record(app: &App, payment: &Payment, signer: Address, nonce: u64) -> SettlementRecord {
    let id = payment.nonce_key().digest();
    local_record(app, &id).unwrap_or_else(|| SettlementRecord {
        key: payment.nonce_key(),
        fingerprint: payment.fingerprint,
        valid_before: payment.valid_before,
        owner: app.id,
        updated_at_ms: app.clock.now_ms(),
        phase: SettlementPhase::Allocated {
            signer: signer.into_array(),
            nonce,
            call: settlement_call(payment),
        },
    })
}

/// The calldata of a payment's settlement: `transferWithAuthorization` on the token.
pub fn settlement_call(payment: &Payment) -> Vec<u8> {
    eip3009::transfer_with_authorization(&payment.authorization, &payment.signature)
}

/// This replica's copy of a settlement record.
pub fn local_record(app: &App, id: &ClaimId) -> Option<SettlementRecord> {
    app.state.read(|s| s.settlements().get(id).cloned())
}

/// Proposes one settlement operation through the batcher and unwraps its answer.
async fn propose_settlement(app: &App, op: Op) -> Result<SettlementAnswer, SettleError> {
    settlement_answer(app.batcher.propose(op).await?.response)
}

/// The settlement answer in a state machine response.
fn settlement_answer(response: Response) -> Result<SettlementAnswer, SettleError> {
    match response {
        Response::Settlement(answer) => Ok(answer),
        other => Err(SettleError::Refused(format!(
            "unexpected answer to a settlement step: {other:?}"
        ))),
    }
}
