//! x402-node: one replica of an x402-cluster.
//!
//! - [`access`]: API keys, cluster-wide rate limits, leased quota, `Idempotency-Key`;
//! - [`config`]: the TOML + environment configuration and its secrets;
//! - [`seams`]: network, clock (and, through `x402-raft-store`, storage) behind traits, so the
//!   same code runs on tokio or inside turmoil;
//! - [`cluster`]: Raft RPC over HTTP, forwarding writes to the leader, background duties;
//! - [`http`]: the axum routers (admin, health, metrics, peer API);
//! - [`node`]: assembling and serving one replica;
//! - [`tls`]: rustls configurations (today: the client of `https://` RPC endpoints).

pub mod access;
pub mod chain;
pub mod cluster;
pub mod config;
pub mod facilitator;
pub mod http;
pub mod metrics;
pub mod node;
pub mod rebuild;
pub mod seams;
pub mod secret;
pub mod serve;
pub mod sync;
pub mod tls;
