//! Access to the facilitator API, for the cluster as a whole:
//! - [`api_keys`]: who is calling (API keys from config, compared by SHA-256);
//! - [`rate_limit`]: which counters a request spends (per API key, client IP, payer, route) and
//!   the per-request [`rate_limit::Gate`] that carries them to the log entry of the claim or
//!   settlement the request writes anyway (guarantee I4: no extra consensus round);
//! - [`leases`]: quota slices for requests that write nothing of their own (`/supported`,
//!   refused payments), taken with one command and spent locally;
//! - [`idempotency`]: the `Idempotency-Key` header across nodes.

pub mod api_keys;
pub mod idempotency;
pub mod leases;
pub mod rate_limit;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Config, IdempotencySettings};

/// The client's address, put into every request's extensions by the server loop (`None` when
/// the listener's address is not an IP socket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The facilitator routes that access control applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Verify,
    Settle,
    Supported,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Verify, Route::Settle, Route::Supported];

    pub fn path(self) -> &'static str {
        match self {
            Route::Verify => "/verify",
            Route::Settle => "/settle",
            Route::Supported => "/supported",
        }
    }
}

/// Everything access control needs, built from the config.
pub struct Access {
    pub api_keys: api_keys::ApiKeys,
    pub rate_limits: rate_limit::RateLimits,
    pub leases: Arc<leases::LeaseBook>,
    pub idempotency: IdempotencySettings,
}

impl Access {
    pub fn from_config(config: &Config, metrics: &crate::metrics::Metrics) -> Self {
        Self {
            api_keys: api_keys::ApiKeys::new(&config.auth),
            rate_limits: rate_limit::RateLimits::new(&config.rate_limits, &config.rate_limit),
            leases: Arc::new(leases::LeaseBook::new(
                config.node_id,
                config.rate_limit.lease_ms,
                metrics.leases_taken.clone(),
            )),
            idempotency: config.idempotency.clone(),
        }
    }
}
