//! Decoding the body of `POST /verify` and `POST /settle`: [`FacilitatorRequest::from_slice`]
//! tells v1 from v2 and returns the typed request, or a [`DecodeError`] that names the field
//! at fault in wire terms (`paymentRequirements.payTo`).
//!
//! Where the version lives: both versions carry `x402Version` twice, at the top of the body
//! and inside `paymentPayload` (the TS client copies the latter into the former). The payload's
//! one is authoritative (the reference facilitators dispatch on it) and required; the top-level
//! one may be absent, but when present it must be a supported version and agree.
//!
//! Checks run in this order, each failing with its own error: JSON syntax; the body is an
//! object; the top-level `x402Version`; `paymentPayload` present; its `x402Version` present,
//! supported and equal to the top-level one; `paymentRequirements` present; its `scheme` is
//! `exact`, its `extra.assetTransferMethod` (if any) is `eip3009`, and for v2 its `network` is
//! `eip155:<chainId>`; then every field of the typed message. v1 network *names* are not
//! resolved here, since the node's configuration may add names: use
//! [`FacilitatorRequest::chain_id`]. A request that decodes may still fail verification
//! (mismatched networks, amounts, recipients): that is the verifier's business, answered with
//! a [`ReasonCode`], not a decode error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::echo;
use super::evm::{ExactEvmPayload, SCHEME_EXACT, TRANSFER_METHOD_EIP3009};
use super::hexstr::Address;
use super::network::{ChainId, NetworkError, NetworkRegistry};
use super::reason::ReasonCode;
use super::{v1, v2, U256};

/// A decoded `POST /verify` or `POST /settle` body of either version, with the EVM `exact`
/// payload. Serializes as the inner message (each carries its own `x402Version`).
// Both variants are large (v2 is a few hundred bytes larger); a request is decoded once per
// HTTP call, so boxing would buy nothing but an allocation and a clumsier match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum FacilitatorRequest {
    V1(v1::FacilitatorRequest),
    V2(v2::FacilitatorRequest),
}

/// `POST /verify` body (same shape as settle).
pub type VerifyRequest = FacilitatorRequest;
/// `POST /settle` body (same shape as verify).
pub type SettleRequest = FacilitatorRequest;

/// [`FacilitatorRequest::from_slice`].
pub fn decode_request(body: &[u8]) -> Result<FacilitatorRequest, DecodeError> {
    FacilitatorRequest::from_slice(body)
}

impl FacilitatorRequest {
    /// Decodes a request body; see the module documentation for the order of checks. Never
    /// panics, whatever the bytes.
    pub fn from_slice(body: &[u8]) -> Result<FacilitatorRequest, DecodeError> {
        let probe: Probe = parse(body)?;
        let version = probe.version()?;
        let requirements = probe
            .payment_requirements
            .ok_or_else(|| DecodeError::MissingField("paymentRequirements".into()))?;
        requirements.check(version)?;
        Ok(match version {
            1 => FacilitatorRequest::V1(parse(body)?),
            _ => FacilitatorRequest::V2(parse(body)?),
        })
    }

    /// 1 or 2.
    pub fn x402_version(&self) -> u8 {
        match self {
            FacilitatorRequest::V1(_) => 1,
            FacilitatorRequest::V2(_) => 2,
        }
    }

    /// The signed EIP-3009 authorization and its signature.
    pub fn payload(&self) -> &ExactEvmPayload {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_payload.payload,
            FacilitatorRequest::V2(r) => &r.payment_payload.payload,
        }
    }

    /// The scheme the client chose: v1 `paymentPayload.scheme`, v2 `accepted.scheme`.
    pub fn payload_scheme(&self) -> &str {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_payload.scheme,
            FacilitatorRequest::V2(r) => &r.payment_payload.accepted.scheme,
        }
    }

    /// The network the client chose: v1 `paymentPayload.network`, v2 `accepted.network`.
    pub fn payload_network(&self) -> &str {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_payload.network,
            FacilitatorRequest::V2(r) => &r.payment_payload.accepted.network,
        }
    }

    /// `paymentRequirements.scheme` (always `exact` after decoding).
    pub fn scheme(&self) -> &str {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_requirements.scheme,
            FacilitatorRequest::V2(r) => &r.payment_requirements.scheme,
        }
    }

    /// `paymentRequirements.network`: a v1 name or a v2 CAIP-2 id, as received.
    pub fn network(&self) -> &str {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_requirements.network,
            FacilitatorRequest::V2(r) => &r.payment_requirements.network,
        }
    }

    /// The chain of `paymentRequirements.network`: a v1 name through `networks`, a v2 id
    /// directly.
    pub fn chain_id(&self, networks: &NetworkRegistry) -> Result<ChainId, NetworkError> {
        networks.resolve(self.x402_version(), self.network())
    }

    /// The required amount: v1 `maxAmountRequired`, v2 `amount`.
    pub fn required_amount(&self) -> U256 {
        match self {
            FacilitatorRequest::V1(r) => r.payment_requirements.max_amount_required,
            FacilitatorRequest::V2(r) => r.payment_requirements.amount,
        }
    }

    /// `paymentRequirements.payTo`.
    pub fn pay_to(&self) -> &Address {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_requirements.pay_to,
            FacilitatorRequest::V2(r) => &r.payment_requirements.pay_to,
        }
    }

    /// `paymentRequirements.asset`: the token contract.
    pub fn asset(&self) -> &Address {
        match self {
            FacilitatorRequest::V1(r) => &r.payment_requirements.asset,
            FacilitatorRequest::V2(r) => &r.payment_requirements.asset,
        }
    }

    /// `paymentRequirements.maxTimeoutSeconds`.
    pub fn max_timeout_seconds(&self) -> u64 {
        match self {
            FacilitatorRequest::V1(r) => r.payment_requirements.max_timeout_seconds,
            FacilitatorRequest::V2(r) => r.payment_requirements.max_timeout_seconds,
        }
    }

    /// `paymentRequirements.extra` (EIP-712 domain name and version for `exact`).
    pub fn extra(&self) -> Option<&Value> {
        match self {
            FacilitatorRequest::V1(r) => r.payment_requirements.extra.as_ref(),
            FacilitatorRequest::V2(r) => r.payment_requirements.extra.as_ref(),
        }
    }

    /// `paymentPayload.extensions` (v2 only; v1 payloads have none).
    pub fn extensions(&self) -> Option<&Value> {
        match self {
            FacilitatorRequest::V1(_) => None,
            FacilitatorRequest::V2(r) => r.payment_payload.extensions.as_ref(),
        }
    }

    /// `paymentRequirements` as JSON, re-encoded from the decoded value (keys in a fixed
    /// order), so two requests with the same requirements give the same bytes.
    pub fn requirements_json(&self) -> Vec<u8> {
        let encoded = match self {
            FacilitatorRequest::V1(r) => serde_json::to_vec(&r.payment_requirements),
            FacilitatorRequest::V2(r) => serde_json::to_vec(&r.payment_requirements),
        };
        // Serializing a decoded value into memory cannot fail (no maps with non-string keys).
        encoded.unwrap_or_default()
    }
}

impl From<v1::FacilitatorRequest> for FacilitatorRequest {
    fn from(request: v1::FacilitatorRequest) -> Self {
        FacilitatorRequest::V1(request)
    }
}

impl From<v2::FacilitatorRequest> for FacilitatorRequest {
    fn from(request: v2::FacilitatorRequest) -> Self {
        FacilitatorRequest::V2(request)
    }
}

/// Why a `/verify` or `/settle` body was not decoded. The messages are meant for the developer
/// of the resource server that sent it; [`DecodeError::reason`] gives the closest reason code
/// for a node that answers `{isValid: false}` rather than HTTP 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the request body is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "the request body must be a JSON object \
         {{\"x402Version\", \"paymentPayload\", \"paymentRequirements\"}}"
    )]
    NotAnObject,
    /// A required field is absent (or `null`); the path is in wire terms, e.g.
    /// `paymentPayload.payload.authorization.nonce`.
    #[error("missing field {0}")]
    MissingField(String),
    /// `x402Version` (at `field`) is not a non-negative integer.
    #[error("{field} must be an integer (1 or 2), got {got}")]
    InvalidVersion { field: &'static str, got: String },
    #[error("unsupported x402Version {0} (this facilitator speaks versions 1 and 2)")]
    UnsupportedVersion(u64),
    #[error("x402Version {top_level} disagrees with paymentPayload.x402Version {payload}")]
    VersionMismatch { top_level: u64, payload: u64 },
    #[error(
        "unsupported scheme {0:?} in paymentRequirements.scheme \
         (this facilitator supports \"exact\")"
    )]
    UnsupportedScheme(String),
    #[error(
        "unsupported asset transfer method {0} in paymentRequirements.extra.assetTransferMethod \
         (this facilitator supports \"eip3009\")"
    )]
    UnsupportedTransferMethod(String),
    #[error("unsupported paymentRequirements.network: {0}")]
    UnsupportedNetwork(NetworkError),
    /// A field of the wrong type or format, e.g. path `paymentRequirements.payTo`, message
    /// `address must be 0x followed by 40 hex digits, got 4 digits`. The path is
    /// `request body` for a fault of the body itself (a duplicate top-level key).
    #[error("invalid {path}: {message}")]
    InvalidField { path: String, message: String },
}

impl DecodeError {
    /// The reason code closest to this error, for a node that answers a malformed request
    /// with `{isValid: false}` / `{success: false}` instead of HTTP 400.
    pub fn reason(&self) -> ReasonCode {
        let in_requirements = |path: &str| path.starts_with("paymentRequirements");
        match self {
            DecodeError::NotJson(_) | DecodeError::NotAnObject => ReasonCode::InvalidPayload,
            DecodeError::InvalidVersion { .. }
            | DecodeError::UnsupportedVersion(_)
            | DecodeError::VersionMismatch { .. } => ReasonCode::InvalidX402Version,
            DecodeError::UnsupportedScheme(_) => ReasonCode::UnsupportedScheme,
            DecodeError::UnsupportedTransferMethod(_) => ReasonCode::UnsupportedPayloadType,
            DecodeError::UnsupportedNetwork(_) => ReasonCode::InvalidNetwork,
            DecodeError::MissingField(path) | DecodeError::InvalidField { path, .. } => {
                if in_requirements(path) {
                    ReasonCode::InvalidPaymentRequirements
                } else if path == "x402Version" {
                    ReasonCode::InvalidX402Version
                } else {
                    ReasonCode::InvalidPayload
                }
            }
        }
    }

    fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
        use serde_json::error::Category;
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            Category::Io | Category::Syntax | Category::Eof => {
                DecodeError::NotJson(inner.to_string())
            }
            Category::Data => {
                let message = without_position(&inner);
                let at_root = path == ".";
                if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.strip_suffix('`'))
                {
                    return DecodeError::MissingField(if at_root {
                        field.to_owned()
                    } else {
                        format!("{path}.{field}")
                    });
                }
                if at_root {
                    if message.starts_with("invalid type") || message.starts_with("invalid length")
                    {
                        return DecodeError::NotAnObject;
                    }
                    // E.g. a duplicate top-level key.
                    return DecodeError::InvalidField {
                        path: "request body".into(),
                        message,
                    };
                }
                DecodeError::InvalidField { path, message }
            }
        }
    }
}

/// serde_json's message without its " at line L column C" (the path says where).
fn without_position(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match full.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => full,
    }
}

/// One pass of serde over the whole body, errors carrying the path of the failing field.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(DecodeError::from_serde)?;
    de.end()
        .map_err(|err| DecodeError::NotJson(err.to_string()))?;
    Ok(value)
}

/// The few fields that decide how to read the rest; everything else is skipped unread.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct Probe {
    #[serde(rename = "x402Version")]
    x402_version: Option<Value>,
    #[serde(rename = "paymentPayload")]
    payment_payload: Option<PayloadProbe>,
    #[serde(rename = "paymentRequirements")]
    payment_requirements: Option<RequirementsProbe>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct PayloadProbe {
    #[serde(rename = "x402Version")]
    x402_version: Option<Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct RequirementsProbe {
    scheme: Option<Value>,
    network: Option<Value>,
    extra: Option<ExtraProbe>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct ExtraProbe {
    #[serde(rename = "assetTransferMethod")]
    asset_transfer_method: Option<Value>,
}

impl Probe {
    /// The version of the request: 1 or 2.
    fn version(&self) -> Result<u8, DecodeError> {
        let top_level = match &self.x402_version {
            Some(value) => Some(supported(version_number(value, "x402Version")?)?),
            None => None,
        };
        let payload = self
            .payment_payload
            .as_ref()
            .ok_or_else(|| DecodeError::MissingField("paymentPayload".into()))?;
        let value = payload
            .x402_version
            .as_ref()
            .ok_or_else(|| DecodeError::MissingField("paymentPayload.x402Version".into()))?;
        let inner = version_number(value, "paymentPayload.x402Version")?;
        match top_level {
            Some(top) if u64::from(top) != inner => Err(DecodeError::VersionMismatch {
                top_level: u64::from(top),
                payload: inner,
            }),
            _ => supported(inner),
        }
    }
}

impl RequirementsProbe {
    /// Scheme, transfer method and (v2) network: what this facilitator can serve at all.
    /// Wrong types are left to the typed pass, which reports them with their path.
    fn check(&self, version: u8) -> Result<(), DecodeError> {
        if let Some(Value::String(scheme)) = &self.scheme {
            if scheme != SCHEME_EXACT {
                return Err(DecodeError::UnsupportedScheme(echo(scheme)));
            }
        }
        let method = self
            .extra
            .as_ref()
            .and_then(|extra| extra.asset_transfer_method.as_ref());
        match method {
            None | Some(Value::Null) => {}
            Some(Value::String(m)) if m == TRANSFER_METHOD_EIP3009 => {}
            Some(other) => {
                return Err(DecodeError::UnsupportedTransferMethod(echo(
                    &other.to_string(),
                )))
            }
        }
        if version == 2 {
            if let Some(Value::String(network)) = &self.network {
                ChainId::from_caip2(network).map_err(DecodeError::UnsupportedNetwork)?;
            }
        }
        Ok(())
    }
}

fn version_number(value: &Value, field: &'static str) -> Result<u64, DecodeError> {
    value.as_u64().ok_or_else(|| DecodeError::InvalidVersion {
        field,
        got: echo(&value.to_string()),
    })
}

fn supported(version: u64) -> Result<u8, DecodeError> {
    match version {
        1 => Ok(1),
        2 => Ok(2),
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}
