//! x402 version 2 messages: networks are CAIP-2 ids (`eip155:84532`), the amount field is
//! `amount`, the resource is described once (`resource: {url, ...}`), and the payload carries
//! the whole requirement the client chose as `accepted`.
//!
//! The generic `P` is the scheme's payload; it defaults to [`ExactEvmPayload`], the only one
//! this facilitator verifies (`serde_json::Value` reads any).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::X402Version;
use super::evm::ExactEvmPayload;
use super::hexstr::Address;
use super::network::{ChainId, NetworkError};
use super::U256;

/// One payment option of a v2 resource server; also `accepted` inside the payload. Unknown
/// fields are ignored; `extra` is kept whole (clients may add keys to `accepted.extra`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    pub scheme: String,
    /// CAIP-2, e.g. `eip155:84532`; see [`PaymentRequirements::chain_id`].
    pub network: String,
    /// Token base units; v2 requires `authorization.value` to equal it exactly.
    pub amount: U256,
    /// The token contract.
    pub asset: Address,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    /// Scheme-specific; for EVM `exact`: `{name, version}` of the token's EIP-712 domain and
    /// optionally `assetTransferMethod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl PaymentRequirements {
    /// The EVM chain of `network` (`eip155:<id>` only).
    pub fn chain_id(&self) -> Result<ChainId, NetworkError> {
        ChainId::from_caip2(&self.network)
    }
}

/// The paid resource, described once per 402 answer and payload. `serviceName`, `tags` and
/// `iconUrl` are the 2026-06 spec's additions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

/// What a v2 client sends (base64 in `PAYMENT-SIGNATURE`), and `paymentPayload` of a
/// facilitator request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload<P = ExactEvmPayload> {
    /// Always 2.
    pub x402_version: X402Version<2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The option the client chose, as the client saw it.
    pub accepted: PaymentRequirements,
    pub payload: P,
    /// Extension data by extension key (`{info, schema}` each); passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// The body of v2 `POST /verify` and `POST /settle`. `paymentRequirements` is the resource
/// server's own copy of the chosen option; it may differ from `accepted` by keys the client
/// added to `extra`. The top-level `x402Version` may be absent (or `null`) on input (the payload's one is
/// authoritative); it is always written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest<P = ExactEvmPayload> {
    #[serde(default, deserialize_with = "super::common::optional_version")]
    pub x402_version: X402Version<2>,
    pub payment_payload: PaymentPayload<P>,
    pub payment_requirements: PaymentRequirements,
}

/// `POST /verify` body (same shape as settle).
pub type VerifyRequest<P = ExactEvmPayload> = FacilitatorRequest<P>;
/// `POST /settle` body (same shape as verify).
pub type SettleRequest<P = ExactEvmPayload> = FacilitatorRequest<P>;
