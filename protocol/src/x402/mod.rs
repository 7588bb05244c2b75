//! The x402 payment protocol's wire types, versions 1 and 2, as a facilitator receives and
//! answers them (`POST /verify`, `POST /settle`, `GET /supported`).
//!
//! - [`v1`], [`v2`]: `PaymentRequirements`, `PaymentPayload` and the request body of each
//!   version, field for field as the official middleware sends them (camelCase on the wire).
//! - [`request`]: [`FacilitatorRequest::from_slice`], the version-dispatching decoder of a
//!   `/verify` or `/settle` body, and its [`DecodeError`].
//! - [`response`]: [`VerifyResponse`], [`SettleResponse`], [`SupportedResponse`] (one shape
//!   for both versions).
//! - [`evm`]: the EVM `exact` (EIP-3009) payload, identical in both versions.
//! - [`network`]: v1 names and v2 CAIP-2 ids → [`ChainId`], with a [`NetworkRegistry`] the
//!   node's configuration can extend.
//! - [`reason`]: [`ReasonCode`], the `invalidReason` / `errorReason` strings.
//! - [`payment`]: [`payment::PaymentBuilder`], signed request bodies for given terms (what
//!   `x402ctl pay` and the load generator send).
//! - [`amount`], [`hexstr`], [`common`]: the field types. Amounts and EIP-3009 times are
//!   [`U256`] (decimal strings on the wire, no floating point); addresses, nonces and
//!   signatures are `0x` hex strings checked for shape ([`Address`], [`Bytes32`],
//!   [`HexBytes`]) that keep their original text.
//!
//! Unknown fields are ignored everywhere (no `deny_unknown_fields`); the free-form objects the
//! protocol passes through (`extra`, `extensions`, `outputSchema`) are kept as
//! `serde_json::Value`. The wire types need no Ethereum library; [`eip3009`] (typed data,
//! signing and strict recovery, calldata) uses alloy and is shared by the node's verifier and
//! `x402ctl pay`.

pub mod amount;
pub mod common;
pub mod eip3009;
pub mod evm;
pub mod hexstr;
pub mod network;
pub mod payment;
pub mod reason;
pub mod request;
pub mod response;
pub mod v1;
pub mod v2;

pub use amount::U256;
pub use common::{FormatError, X402Version};
pub use evm::{Authorization, Eip712Domain, ExactEvmPayload};
pub use hexstr::{Address, Bytes32, FixedHex, HexBytes};
pub use network::{ChainId, NetworkError, NetworkRegistry};
pub use reason::ReasonCode;
pub use request::{decode_request, DecodeError, FacilitatorRequest, SettleRequest, VerifyRequest};
pub use response::{SettleResponse, SupportedKind, SupportedResponse, VerifyResponse};
