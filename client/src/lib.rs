//! x402-client: what talks to an x402-cluster from outside.
//!
//! - [`wire`]: the JSON bodies of the admin/operator API, shared with `x402-node`.

pub mod wire;
