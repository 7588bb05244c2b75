//! The seam between a chain client and a circuit breaker: before calling an RPC endpoint the
//! client asks [`EndpointGate::admits`], afterwards it reports the outcome with
//! [`EndpointGate::record`]. The cluster's breakers (shared by every node through the log) are
//! in `cluster::breakers`; [`NoGate`] admits everything.
//!
//! Endpoints are named by a digest of their URL ([`endpoint_id`]): equal on every node that
//! configures the same URL, and free of the API keys RPC URLs often carry.

use sha2::{Digest, Sha256};
pub use x402_raft_store::state::breakers::EndpointId;

/// A circuit breaker's view of RPC endpoints.
pub trait EndpointGate: Send + Sync {
    /// Whether a call may go to `endpoint` now (an open breaker fails fast).
    fn admits(&self, endpoint: &EndpointId) -> bool;
    /// The outcome of a call to `endpoint`: `ok` is false only when the endpoint was
    /// unavailable (transport error, timeout, HTTP error), never for the chain's own answers
    /// such as reverts.
    fn record(&self, endpoint: &EndpointId, ok: bool);
    /// Makes `endpoint` known under `label` (scheme, host and port only) for status and metrics.
    fn register(&self, endpoint: &EndpointId, label: &str);
}

/// A gate that admits every call (tests, tools).
pub struct NoGate;

impl EndpointGate for NoGate {
    fn admits(&self, _: &EndpointId) -> bool {
        true
    }
    fn record(&self, _: &EndpointId, _: bool) {}
    fn register(&self, _: &EndpointId, _: &str) {}
}

/// The identity of the endpoint at `url`.
pub fn endpoint_id(url: &str) -> EndpointId {
    let digest = Sha256::digest(url.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}
