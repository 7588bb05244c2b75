//! x402-client: what talks to an x402-cluster from outside.
//!
//! - [`wire`], [`x402`]: re-exported from `x402-protocol` (the types shared with the node).
//! - [`http`]: a pooled HTTP/1.1 transport (hyper) with a per-request deadline.
//! - [`admin`]: [`AdminClient`], typed calls to one node's admin API.
//! - [`facilitator`]: [`FacilitatorClient`], one node's x402 endpoints (`/verify`, `/settle`,
//!   `/supported`).
//! - [`error`]: [`ClientError`], the error of every call.
//! - [`bench`](mod@bench): the load generator's engine (workers, failover, statistics), `bench claims`
//!   and `bench verify` / `bench settle` (pre-signed payments).
//! - [`ctl`]: the `x402ctl` operator commands; the binary only parses and runs them.

pub mod admin;
pub mod bench;
pub mod ctl;
pub mod error;
pub mod facilitator;
pub mod http;

pub use x402_protocol::{wire, x402};

pub use admin::AdminClient;
pub use error::ClientError;
pub use facilitator::FacilitatorClient;
pub use http::{HttpClient, HttpConfig};
