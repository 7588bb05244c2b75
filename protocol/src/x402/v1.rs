//! x402 version 1 messages: networks are names (`base-sepolia`), the amount field is
//! `maxAmountRequired`, the resource's description travels inside each requirement, and the
//! payload names its `scheme` and `network` at its top level.
//!
//! The generic `P` is the scheme's payload; it defaults to [`ExactEvmPayload`], the only one
//! this facilitator verifies (`serde_json::Value` reads any).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::X402Version;
use super::evm::ExactEvmPayload;
use super::hexstr::Address;
use super::U256;

/// One payment option of a v1 resource server (`accepts[i]` of its 402 answer, and
/// `paymentRequirements` of a facilitator request).
///
/// The spec requires `resource` and `description` too; they are optional here because a
/// facilitator does not use them (tolerant reader). Absent optional fields stay absent when
/// re-encoded; unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    pub scheme: String,
    /// A v1 name such as `base-sepolia`; see [`super::NetworkRegistry`].
    pub network: String,
    /// Token base units. The legacy v1 SDK accepts `value >= maxAmountRequired`, the TS 2.x v1
    /// path `value == maxAmountRequired`.
    pub max_amount_required: U256,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    /// The token contract.
    pub asset: Address,
    /// Scheme-specific; for EVM `exact`: `{name, version}` of the token's EIP-712 domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// What a v1 client sends (base64 in `X-PAYMENT`), and `paymentPayload` of a facilitator
/// request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload<P = ExactEvmPayload> {
    /// Always 1.
    pub x402_version: X402Version<1>,
    pub scheme: String,
    pub network: String,
    pub payload: P,
}

/// The body of v1 `POST /verify` and `POST /settle`. The top-level `x402Version` may be
/// absent (or `null`) on input (the payload's one is authoritative); it is always written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest<P = ExactEvmPayload> {
    #[serde(default, deserialize_with = "super::common::optional_version")]
    pub x402_version: X402Version<1>,
    pub payment_payload: PaymentPayload<P>,
    pub payment_requirements: PaymentRequirements,
}

/// `POST /verify` body (same shape as settle).
pub type VerifyRequest<P = ExactEvmPayload> = FacilitatorRequest<P>;
/// `POST /settle` body (same shape as verify).
pub type SettleRequest<P = ExactEvmPayload> = FacilitatorRequest<P>;
