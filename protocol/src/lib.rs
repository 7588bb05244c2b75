//! x402-protocol: what the node and everything that talks to it agree on, and nothing else (no
//! HTTP client, no CLI, no server).
//!
//! - [`x402`]: the x402 protocol's v1/v2 wire types (verify, settle, supported), the decoder of
//!   facilitator requests, reason codes, networks, EIP-3009 typed data, signing and recovery;
//! - [`wire`]: the JSON bodies of the admin/operator API.

pub mod wire;
pub mod x402;
