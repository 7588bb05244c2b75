//! The x402 facilitator's protocol code. [`eip3009`] (the pure EIP-712 and calldata layer of the
//! `exact` EVM scheme) lives in `x402-client`, shared with `x402ctl pay`; it is re-exported here.

pub use x402_protocol::x402::eip3009;
