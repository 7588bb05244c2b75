//! x402-client: what talks to an x402-cluster from outside.
//!
//! - [`wire`]: the JSON bodies of the admin/operator API, shared with `x402-node`.
//! - [`http`]: a pooled HTTP/1.1 transport (hyper) with a per-request deadline.
//! - [`admin`]: [`AdminClient`], typed calls to one node's admin API.
//! - [`error`]: [`ClientError`], the error of every call.
//! - [`bench`]: the load generator's engine (workers, failover, statistics) and `bench claims`.
//! - [`ctl`]: the `x402ctl` operator commands; the binary only parses and runs them.
//! - [`x402`]: the x402 protocol's v1/v2 wire types (verify, settle, supported) and decoder.

pub mod admin;
pub mod bench;
pub mod ctl;
pub mod error;
pub mod http;
pub mod wire;
pub mod x402;

pub use admin::AdminClient;
pub use error::ClientError;
pub use http::{HttpClient, HttpConfig};
