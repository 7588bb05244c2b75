//! The facilitator's answers, one shape for v1 and v2: [`VerifyResponse`], [`SettleResponse`]
//! and [`SupportedResponse`].
//!
//! These are read leniently, since they may come from other facilitators: `payer`,
//! `transaction` and `network` are plain strings (x402-rs answers `payer: ""` on failure), a
//! reason code outside [`ReasonCode::KNOWN`] is kept as [`ReasonCode::Other`], and
//! `extensions` / `extra` objects pass through as JSON. Optional fields that are absent stay
//! absent when written (never `null`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reason::ReasonCode;
use super::U256;

/// Answer of `POST /verify`: `{isValid, invalidReason?, payer?, ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<ReasonCode>,
    /// Human-readable detail (TS SDK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer's address (`authorization.from`), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// TS 2.27.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_responses: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl VerifyResponse {
    /// `{isValid: true, payer}`.
    pub fn valid(payer: impl Into<String>) -> Self {
        VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(payer.into()),
            extensions: None,
            extension_responses: None,
            extra: None,
        }
    }

    /// `{isValid: false, invalidReason, payer?}`.
    pub fn invalid(reason: ReasonCode, payer: Option<String>) -> Self {
        VerifyResponse {
            is_valid: false,
            invalid_reason: Some(reason),
            payer,
            ..VerifyResponse::valid("")
        }
    }

    /// Sets `invalidMessage`.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.invalid_message = Some(message.into());
        self
    }

    /// Why it is invalid, for a person: `invalidReason: invalidMessage` (either may be
    /// missing).
    pub fn explain(&self) -> String {
        explain(
            self.invalid_reason.as_ref(),
            self.invalid_message.as_deref(),
        )
    }
}

/// Answer of `POST /settle`: `{success, errorReason?, payer?, transaction, network, ...}`.
/// `transaction` is always written: the hash, or `""` when nothing was broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<ReasonCode>,
    /// Human-readable detail (TS SDK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Required by the v1 spec, optional in v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash; `""` when settlement failed before a broadcast. Read as `""` when
    /// absent.
    #[serde(default)]
    pub transaction: String,
    /// The network as the request named it (v1 name or CAIP-2). Read as `""` when absent.
    #[serde(default)]
    pub network: String,
    /// The amount actually settled, a decimal string. The doc reserves it for `upto`, but the
    /// TS 2.27 facilitator also sends it for v2 `exact` (see the v2 settle sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// TS 2.27.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_responses: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl SettleResponse {
    /// `{success: true, payer, transaction, network}`.
    pub fn success(
        transaction: impl Into<String>,
        network: impl Into<String>,
        payer: impl Into<String>,
    ) -> Self {
        SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(payer.into()),
            transaction: transaction.into(),
            network: network.into(),
            amount: None,
            extensions: None,
            extension_responses: None,
            extra: None,
        }
    }

    /// `{success: false, errorReason, transaction: "", network, payer?}`: nothing was
    /// broadcast.
    pub fn failure(reason: ReasonCode, network: impl Into<String>, payer: Option<String>) -> Self {
        SettleResponse {
            success: false,
            error_reason: Some(reason),
            payer,
            ..SettleResponse::success("", network, "")
        }
    }

    /// `{success: false, errorReason: "settlement_pending", transaction: <hash>, ...}`: a
    /// transaction was broadcast and its outcome is not known yet; the TS resource server
    /// settles once more with the same payload to learn it.
    pub fn pending(
        transaction: impl Into<String>,
        network: impl Into<String>,
        payer: impl Into<String>,
    ) -> Self {
        SettleResponse {
            success: false,
            error_reason: Some(ReasonCode::SettlementPending),
            ..SettleResponse::success(transaction, network, payer)
        }
    }

    /// Sets `amount`.
    pub fn with_amount(mut self, amount: U256) -> Self {
        self.amount = Some(amount.to_string());
        self
    }

    /// Sets `errorMessage`.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.error_message = Some(message.into());
        self
    }

    /// Why it did not succeed, for a person: `errorReason: errorMessage` (either may be
    /// missing).
    pub fn explain(&self) -> String {
        explain(self.error_reason.as_ref(), self.error_message.as_deref())
    }
}

/// `reason: message`, `reason`, or `(no reason given)[: message]`.
fn explain(reason: Option<&ReasonCode>, message: Option<&str>) -> String {
    let reason = reason.map_or("(no reason given)", ReasonCode::as_str);
    match message {
        Some(message) if !message.is_empty() => format!("{reason}: {message}"),
        _ => reason.to_owned(),
    }
}

/// One `(version, scheme, network)` the facilitator serves. v1 and v2 kinds sit side by
/// side in one list, each with its own `x402Version` and network style.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    pub x402_version: u32,
    pub scheme: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl SupportedKind {
    pub fn new(x402_version: u32, scheme: impl Into<String>, network: impl Into<String>) -> Self {
        SupportedKind {
            x402_version,
            scheme: scheme.into(),
            network: network.into(),
            extra: None,
        }
    }
}

/// Answer of `GET /supported`. `extensions` and `signers` read as empty when absent (as the
/// TS client does) and are always written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedResponse {
    pub kinds: Vec<SupportedKind>,
    /// Extension keys the facilitator understands.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Signer addresses by CAIP-2 pattern: the TS facilitator keys by family (`eip155:*`),
    /// x402-rs by chain (`eip155:84532`).
    #[serde(default)]
    pub signers: BTreeMap<String, Vec<String>>,
}
