//! The x402 facilitator's protocol code. For now only [`eip3009`], the pure (no network) EIP-712
//! and calldata layer of the `exact` EVM scheme; the `/verify`, `/settle` and `/supported`
//! endpoints build on it.

pub mod eip3009;
