//! `POST /verify`: the offline checks of [`super::payment`], the chain reads, then the
//! cluster-wide claim of the authorization (I1).
//!
//! Chain reads, in the reference's order (reference/x402-protocol.md §3.2): the payer's code
//! when its signature did not recover (ERC-1271 `isValidSignature`), the asset's code (an
//! `eth_call` to an address without code "succeeds" silently), the simulation of
//! `transferWithAuthorization` from our signer, and when it reverts the diagnosis
//! (`authorizationState`, `name`, `version`, `balanceOf`). `facilitator.onchain_checks = false`
//! skips them all (a payer whose signature does not recover is then simply refused): the cluster
//! benchmark setting. The claim comes last so that a payment that fails a check leaves no state.

use alloy::primitives::U256;
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};
use x402_protocol::x402::{FacilitatorRequest, ReasonCode, VerifyResponse};
use x402_raft_store::state::ClaimOutcome;

use super::context::Context;
use super::payment::{self, Payment, Rejection, SignatureCheck};
use super::{Facilitator, Network};
use crate::access::rate_limit::{guarded_claim, Gate, GuardedError, Limited};
use crate::chain::{CallRequest, ChainError};
use crate::cluster::proposer::ProposeError;

/// Why `/verify` could not answer at all (as opposed to answering "invalid").
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The claim could not be written (no leader, overloaded, outcome unknown).
    #[error(transparent)]
    Claim(#[from] ProposeError),
    /// A rate limit refused the payment in the claim's own log entry: this attempt claimed
    /// nothing (an earlier attempt of the same request whose answer was lost may have; the
    /// claim is then bound to this payment's own requirements, and nothing else can use it).
    #[error("rate limited")]
    Limited(Limited),
}

impl From<GuardedError> for VerifyError {
    fn from(e: GuardedError) -> Self {
        match e {
            GuardedError::Propose(e) => VerifyError::Claim(e),
            GuardedError::Limited(l) => VerifyError::Limited(l),
        }
    }
}

/// Verifies a payment whose signature and terms passed ([`authenticate`]) and, if it is
/// valid, claims its authorization for its requirements (with the gate's rate-limit admission
/// in the same log entry).
pub async fn verify(
    ctx: &Context,
    payment: &Payment,
    gate: &Gate,
) -> Result<VerifyResponse, VerifyError> {
    // Settled already (this replica knows): the reference answers "nonce already used" once
    // the transfer is mined, and so do we, also with chain reads off.
    let id = payment.nonce_key().digest();
    if ctx
        .state
        .read(|s| s.settlements().get(&id).and_then(|r| r.settled_tx()))
        .is_some()
    {
        return Ok(invalid(
            Rejection::new(
                ReasonCode::InvalidExactEvmNonceAlreadyUsed,
                "this authorization was already settled",
            )
            .with_payer(payment.payer),
        ));
    }
    if let Err(rejection) = chain_checks(ctx, payment, Simulation::Run).await {
        return Ok(invalid(rejection));
    }
    let payer = payment.payer.into_array();
    let claimed = guarded_claim(&ctx.writer, gate, &payer, payment.claim()).await?;
    Ok(match claimed.answer {
        ClaimOutcome::Accepted => VerifyResponse::valid(payment.payer_text()),
        ClaimOutcome::Replay => invalid(
            Rejection::new(
                ReasonCode::InvalidExactEvmNonceAlreadyUsed,
                "this authorization was already used for other payment requirements",
            )
            .with_payer(payment.payer),
        ),
        ClaimOutcome::Expired => invalid(
            Rejection::new(
                ReasonCode::InvalidExactEvmPayloadAuthorizationValidBefore,
                "the authorization expired before it could be claimed",
            )
            .with_payer(payment.payer),
        ),
    })
}

/// The `{isValid: false}` answer for a rejection.
pub fn invalid(rejection: Rejection) -> VerifyResponse {
    let mut response = VerifyResponse::invalid(
        rejection.reason,
        rejection.payer.map(|p| p.to_checksum(None)),
    );
    if let Some(message) = rejection.message {
        response = response.with_message(message);
    }
    response
}

/// Whether [`chain_checks`] simulates the transfer (when chain reads are on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simulation {
    Run,
    Skip,
}

/// The checks every `/verify` and `/settle` passes before anything stored is consulted: the
/// offline ones of [`payment`] in the reference's order, the signature of a contract wallet
/// (ERC-1271, on chain), then the terms (recipient, time window on this node's clock, amount).
pub async fn authenticate(
    ctx: &Context,
    request: &FacilitatorRequest,
) -> Result<Payment, Rejection> {
    authenticate_at(&ctx.facilitator, request, ctx.clock.now_ms() / 1000).await
}

/// [`authenticate`] at the unix time `now_secs`, with nothing of the node but its facilitator:
/// the layer the millisecond tests drive (`dev/tests/payment_checks.rs`).
pub async fn authenticate_at(
    facilitator: &Facilitator,
    request: &FacilitatorRequest,
    now_secs: u64,
) -> Result<Payment, Rejection> {
    let payment = payment::prepare(facilitator, request)?;
    if payment.signature_check == SignatureCheck::NeedsErc1271 {
        let network = facilitator
            .networks
            .get(&payment.chain_id)
            .ok_or_else(|| Rejection::new(ReasonCode::InvalidNetwork, "network not served"))?;
        let accepted =
            facilitator.settings.onchain_checks && erc1271_accepts(network, &payment).await?;
        if !accepted {
            return Err(Rejection::new(
                ReasonCode::InvalidExactEvmSignature,
                "the signature does not recover to authorization.from under the requirements' \
                 EIP-712 domain, and the payer is not a contract that accepts it (ERC-1271)",
            )
            .with_payer(payment.payer));
        }
    }
    payment::check_terms(&payment, request, now_secs)?;
    Ok(payment)
}

/// The chain reads after [`authenticate`] (when configured): the asset has code, and the
/// transfer simulates.
pub async fn chain_checks(
    ctx: &Context,
    payment: &Payment,
    simulation: Simulation,
) -> Result<(), Rejection> {
    let facilitator = &ctx.facilitator;
    if !facilitator.settings.onchain_checks {
        return Ok(());
    }
    let network = facilitator
        .networks
        .get(&payment.chain_id)
        .ok_or_else(|| Rejection::new(ReasonCode::InvalidNetwork, "network not served"))?;
    let deployed = network
        .asset_has_code(payment.asset)
        .await
        .map_err(|e| chain_unavailable(payment, e))?;
    if !deployed {
        return Err(Rejection::new(
            ReasonCode::AssetNotDeployedContract,
            format!(
                "asset {} has no code on {}",
                payment.asset.to_checksum(None),
                network.caip2
            ),
        )
        .with_payer(payment.payer));
    }
    if simulation == Simulation::Run {
        simulate(network, payment).await?;
    }
    Ok(())
}

/// ERC-1271: whether the payer has code and its `isValidSignature` returns the magic value.
async fn erc1271_accepts(network: &Network, payment: &Payment) -> Result<bool, Rejection> {
    let code = network
        .chain
        .code_at(payment.payer)
        .await
        .map_err(|e| chain_unavailable(payment, e))?;
    if code.is_empty() {
        return Ok(false);
    }
    let hash = eip3009::signing_hash(&payment.authorization, &payment.domain);
    let call = CallRequest {
        from: None,
        to: payment.payer,
        data: eip3009::is_valid_signature_calldata(hash, &payment.signature),
    };
    match network.chain.eth_call(call).await {
        Ok(ret) => Ok(eip3009::is_erc1271_magic(&ret)),
        Err(ChainError::Reverted { .. }) => Ok(false),
        Err(e) => Err(chain_unavailable(payment, e)),
    }
}

/// Simulates the settlement's own call, from the address that would send it.
async fn simulate(network: &Network, payment: &Payment) -> Result<(), Rejection> {
    let call = CallRequest {
        from: network.signers.first().map(|s| s.address()),
        to: payment.asset,
        data: eip3009::transfer_with_authorization(&payment.authorization, &payment.signature),
    };
    match network.chain.eth_call(call).await {
        Ok(_) => Ok(()),
        Err(ChainError::Reverted { reason, .. }) => {
            Err(diagnose(network, payment, reason.unwrap_or_default()).await)
        }
        Err(e) => Err(chain_unavailable(payment, e)),
    }
}

/// Why the simulation reverted, in the reference's order of priority.
async fn diagnose(network: &Network, payment: &Payment, revert: String) -> Rejection {
    let a: &TransferWithAuthorization = &payment.authorization;
    let view = |data: Vec<u8>| CallRequest {
        from: None,
        to: payment.asset,
        data,
    };
    let chain = &network.chain;
    let (state, name, version, balance) = tokio::join!(
        chain.eth_call(view(eip3009::authorization_state_calldata(a.from, a.nonce))),
        chain.eth_call(view(eip3009::name_calldata())),
        chain.eth_call(view(eip3009::version_calldata())),
        chain.eth_call(view(eip3009::balance_of_calldata(a.from))),
    );
    let reason = match state.ok().map(|r| eip3009::decode_bool(&r)) {
        None | Some(Err(_)) => ReasonCode::InvalidExactEvmEip3009NotSupported,
        Some(Ok(true)) => ReasonCode::InvalidExactEvmNonceAlreadyUsed,
        Some(Ok(false)) => {
            let text = |r: Result<Vec<u8>, ChainError>| {
                r.ok().and_then(|ret| eip3009::decode_string(&ret).ok())
            };
            let balance: Option<U256> = balance
                .ok()
                .and_then(|ret| eip3009::decode_uint256(&ret).ok());
            if text(name).is_some_and(|n| n != payment.domain_name) {
                ReasonCode::InvalidExactEvmTokenNameMismatch
            } else if text(version).is_some_and(|v| v != payment.domain_version) {
                ReasonCode::InvalidExactEvmTokenVersionMismatch
            } else if balance.is_some_and(|b| b < a.value) {
                ReasonCode::InvalidExactEvmInsufficientBalance
            } else {
                ReasonCode::InvalidExactEvmTransactionSimulationFailed
            }
        }
    };
    let message = if revert.is_empty() {
        "the simulated transfer reverted".to_owned()
    } else {
        format!("the simulated transfer reverted: {revert}")
    };
    Rejection::new(reason, message).with_payer(payment.payer)
}

fn chain_unavailable(payment: &Payment, e: ChainError) -> Rejection {
    Rejection::new(
        ReasonCode::UnexpectedVerifyError,
        format!("cannot read the chain: {e}"),
    )
    .with_payer(payment.payer)
}
