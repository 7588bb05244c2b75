//! End-to-end test support for x402-cluster: real `x402-node` processes on loopback.
//!
//! - [`cluster`]: [`LocalCluster`], a harness that starts, kills, restarts and watches nodes.
//! - [`single_node`]: the one-node Raft of the sled `kill -9` crash test.
//! - [`workload`]: distinct nonce claims, retrying claim calls and a background writer that
//!   records every acknowledged claim.
//! - [`devchain`]: anvil with our EIP-3009 TestUSDC, the dev accounts, and the `[facilitator]`
//!   TOML that points nodes at it (the `x402-dev` crate's, here for the tests' paths).
//! - [`http`]: plain requests to a node, answered with status, headers and JSON.
//! - [`metrics`]: samples of a node's `/metrics`.
//! - [`resource_server`]: the official SDK's resource servers and paying scripts
//!   (`deploy/local/demo`) as processes.
//!
//! The tests themselves live in `tests/cluster_*.rs` (and the sled crash test in
//! `tests/crash_*.rs`); nextest runs them one at a time (`.config/nextest.toml`).

pub mod cluster;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod resource_server;
pub mod rpc_proxy;
pub mod single_node;
pub mod tls;
pub mod workload;

pub use x402_dev::devchain;

pub use cluster::{ClusterOptions, LocalCluster};
pub use devchain::{Anvil, DevChain, DevToken};
