//! The checks of a payment that need no chain, in the order of the TypeScript 2.27 reference
//! facilitator (reference/x402-protocol.md §3.2), and the requirements fingerprint.
//!
//! [`prepare`] and [`check_terms`] answer either a [`Payment`] (everything the chain checks, the claim and
//! the settlement need, in alloy types) or a [`Rejection`] with the reference's reason string.
//! The chain-dependent steps (ERC-1271 for a payer with code, asset code, simulation) are in
//! [`super::verify`]; a payer's code is only known there, so this module recovers the EOA
//! signer and leaves the comparison's failure to the caller when the payer may be a contract.

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::Eip712Domain;
use sha2::{Digest, Sha256};
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};
use x402_protocol::x402::evm::{eip712_domain, SCHEME_EXACT};
use x402_protocol::x402::{FacilitatorRequest, ReasonCode};
use x402_raft_store::state::{NonceClaim, NonceKey};

use super::{Facilitator, Network};

/// `validBefore` must be at least this far ahead of the facilitator's clock (the reference's
/// buffer for the time the settlement takes to be mined).
pub const VALID_BEFORE_BUFFER_SECS: u64 = 6;

/// A refused payment: the reason code, a message for the developer, and the payer when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: ReasonCode,
    pub message: Option<String>,
    pub payer: Option<Address>,
}

impl Rejection {
    pub fn new(reason: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: Some(message.into()),
            payer: None,
        }
    }

    pub fn with_payer(mut self, payer: Address) -> Self {
        self.payer = Some(payer);
        self
    }
}

/// How the payer's signature was checked offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// A 65-byte signature recovered to `from`.
    Eoa,
    /// It did not recover to `from` (or is not 65 bytes): valid only if `from` is a contract
    /// that accepts it through ERC-1271, which needs the chain.
    NeedsErc1271,
}

/// A payment whose offline checks passed.
#[derive(Clone, Debug)]
pub struct Payment {
    pub chain_id: u64,
    pub payer: Address,
    pub asset: Address,
    pub authorization: TransferWithAuthorization,
    pub signature: Vec<u8>,
    pub domain: Eip712Domain,
    pub signature_check: SignatureCheck,
    /// The EIP-712 name and version the requirements named (the diagnosis compares them with
    /// the token's).
    pub domain_name: String,
    pub domain_version: String,
    /// Digest of what the payment is for (see [`fingerprint`]).
    pub fingerprint: [u8; 32],
    /// `validBefore`, unix seconds.
    pub valid_before: u64,
}

impl Payment {
    /// The authorization's identity: `(chain, asset, payer, nonce)`.
    pub fn nonce_key(&self) -> NonceKey {
        NonceKey {
            chain_id: self.chain_id,
            asset: self.asset.into_array(),
            payer: self.payer.into_array(),
            nonce: self.authorization.nonce.0,
        }
    }

    /// The replicated claim this payment makes (I1).
    pub fn claim(&self) -> NonceClaim {
        NonceClaim {
            key: self.nonce_key(),
            fingerprint: self.fingerprint,
            valid_before: self.valid_before,
        }
    }

    /// The payer as the wire shows it (EIP-55).
    pub fn payer_text(&self) -> String {
        self.payer.to_checksum(None)
    }

    /// Digest of everything the payer signed and the resource server required: two requests
    /// with the same digest are the same payment for the same thing.
    pub fn content_digest(&self, request: &FacilitatorRequest) -> [u8; 32] {
        let a = &self.authorization;
        let mut h = Sha256::new();
        h.update(b"x402-cluster payment content v1");
        h.update(self.nonce_key().digest());
        h.update(a.to.as_slice());
        h.update(a.value.to_be_bytes::<32>());
        h.update(a.validAfter.to_be_bytes::<32>());
        h.update(a.validBefore.to_be_bytes::<32>());
        h.update((self.signature.len() as u64).to_be_bytes());
        h.update(&self.signature);
        h.update(request.requirements_json());
        h.finalize().into()
    }
}

/// The requirements fingerprint: network, asset, payTo, amount and resource URL. Two requests
/// with the same authorization and the same fingerprint are the same payment (idempotent);
/// with another fingerprint, a replay.
pub fn fingerprint(request: &FacilitatorRequest, chain_id: u64) -> [u8; 32] {
    let resource = match request {
        FacilitatorRequest::V1(r) => r.payment_requirements.resource.as_deref().unwrap_or(""),
        FacilitatorRequest::V2(r) => r
            .payment_payload
            .resource
            .as_ref()
            .map(|r| r.url.as_str())
            .unwrap_or(""),
    };
    let mut h = Sha256::new();
    h.update(b"x402-cluster requirements v1");
    h.update(chain_id.to_be_bytes());
    h.update(request.asset().as_bytes());
    h.update(request.pay_to().as_bytes());
    h.update(request.required_amount().to_be_bytes());
    h.update((resource.len() as u64).to_be_bytes());
    h.update(resource.as_bytes());
    h.finalize().into()
}

/// The network a request is for, if this node serves it.
pub fn network_of<'a>(
    facilitator: &'a Facilitator,
    request: &FacilitatorRequest,
) -> Result<&'a Network, Rejection> {
    let chain_id = request.chain_id(&facilitator.names).map_err(|e| {
        Rejection::new(
            ReasonCode::InvalidNetwork,
            format!("paymentRequirements.network: {e}"),
        )
    })?;
    facilitator.networks.get(&chain_id.0).ok_or_else(|| {
        Rejection::new(
            ReasonCode::InvalidNetwork,
            format!(
                "network {:?} is not served by this facilitator (see GET /supported)",
                request.network()
            ),
        )
    })
}

/// Steps 1–7 of the reference without the chain: scheme, EIP-712 domain, network (and accepted
/// asset), the typed data, and the EOA signature recovery. Whether a signature that does not
/// recover is a contract wallet's is for [`super::verify`] to settle; then [`check_terms`].
pub fn prepare(
    facilitator: &Facilitator,
    request: &FacilitatorRequest,
) -> Result<Payment, Rejection> {
    // 1. scheme, on both the client's choice and the requirements.
    if request.payload_scheme() != SCHEME_EXACT || request.scheme() != SCHEME_EXACT {
        return Err(Rejection::new(
            ReasonCode::InvalidExactEvmScheme,
            format!(
                "scheme {:?} / {:?}: this facilitator settles \"exact\"",
                request.payload_scheme(),
                request.scheme()
            ),
        ));
    }
    // 2. the EIP-712 domain the payer signed under.
    let Some(domain_text) = eip712_domain(request.extra()) else {
        return Err(Rejection::new(
            ReasonCode::InvalidExactEvmMissingEip712Domain,
            "paymentRequirements.extra must carry the token's EIP-712 \"name\" and \"version\"",
        ));
    };
    // 3. the client's network is the requirements' network, and one we serve.
    if request.payload_network() != request.network() {
        return Err(Rejection::new(
            ReasonCode::InvalidExactEvmNetworkMismatch,
            format!(
                "the payment is for {:?}, the requirements for {:?}",
                request.payload_network(),
                request.network()
            ),
        ));
    }
    let network = network_of(facilitator, request)?;
    let asset = Address::from(*request.asset().as_bytes());
    if !network.assets.is_empty() && !network.assets.contains_key(&asset) {
        return Err(Rejection::new(
            ReasonCode::InvalidPaymentRequirements,
            format!(
                "asset {} is not accepted on {} (see the node's configuration)",
                asset.to_checksum(None),
                network.caip2
            ),
        ));
    }
    let wire = &request.payload().authorization;
    let payer = Address::from(*wire.from.as_bytes());
    let authorization = TransferWithAuthorization {
        from: payer,
        to: Address::from(*wire.to.as_bytes()),
        value: U256::from_be_bytes(wire.value.to_be_bytes()),
        validAfter: U256::from_be_bytes(wire.valid_after.to_be_bytes()),
        validBefore: U256::from_be_bytes(wire.valid_before.to_be_bytes()),
        nonce: B256::from(*wire.nonce.as_bytes()),
    };
    let signature = request.payload().signature.as_bytes().to_vec();
    // 4–7. the typed data and the signature. A payer whose signature does not recover to it
    // may be a contract wallet: only the chain can tell (verify.rs).
    let domain = eip3009::domain(
        domain_text.name,
        domain_text.version,
        network.chain_id,
        asset,
    );
    let signature_check = match eip3009::recover_signer(&authorization, &domain, &signature) {
        Ok(signer) if signer == payer => SignatureCheck::Eoa,
        _ => SignatureCheck::NeedsErc1271,
    };
    Ok(Payment {
        chain_id: network.chain_id,
        payer,
        asset,
        authorization,
        signature,
        domain,
        signature_check,
        domain_name: domain_text.name.to_owned(),
        domain_version: domain_text.version.to_owned(),
        fingerprint: fingerprint(request, network.chain_id),
        valid_before: wire.valid_before_secs(),
    })
}

/// Steps 8–11 of the reference: recipient, time window (on this node's clock, `now_secs`) and
/// amount.
pub fn check_terms(
    payment: &Payment,
    request: &FacilitatorRequest,
    now_secs: u64,
) -> Result<(), Rejection> {
    let wire = &request.payload().authorization;
    let payer = payment.payer;
    let reject = |reason: ReasonCode, message: String| {
        Err(Rejection::new(reason, message).with_payer(payer))
    };
    // 8. recipient.
    if wire.to != *request.pay_to() {
        return reject(
            ReasonCode::InvalidExactEvmRecipientMismatch,
            format!(
                "authorization.to {} is not paymentRequirements.payTo {}",
                wire.to,
                request.pay_to()
            ),
        );
    }
    // 9–10. the time window, on this node's clock.
    let valid_before = payment.valid_before;
    if valid_before < now_secs.saturating_add(VALID_BEFORE_BUFFER_SECS) {
        return reject(
            ReasonCode::InvalidExactEvmPayloadAuthorizationValidBefore,
            format!(
                "validBefore {valid_before} is less than {VALID_BEFORE_BUFFER_SECS} s after now \
                 ({now_secs})"
            ),
        );
    }
    if wire.valid_after_secs() > now_secs {
        return reject(
            ReasonCode::InvalidExactEvmPayloadAuthorizationValidAfter,
            format!(
                "validAfter {} is in the future (now {now_secs})",
                wire.valid_after_secs()
            ),
        );
    }
    // 11. amount: exact in both versions, as the 2.27 reference (its v1 path names the reason
    // `invalid_exact_evm_authorization_value`, over- and under-payment alike).
    let required = request.required_amount();
    if wire.value != required {
        let reason = match request {
            FacilitatorRequest::V1(_) => ReasonCode::InvalidExactEvmAuthorizationValue,
            FacilitatorRequest::V2(_) => {
                ReasonCode::InvalidExactEvmPayloadAuthorizationValueMismatch
            }
        };
        return reject(
            reason,
            format!(
                "authorization.value {} does not match the required amount {required}",
                wire.value
            ),
        );
    }
    Ok(())
}
