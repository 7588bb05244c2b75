//! Development support, in a crate of its own so that no node carries it (an architecture test
//! holds `x402-node` off it):
//!
//! - [`memory_chain`]: [`memory_chain::MemoryChain`], an in-memory EVM chain with our EIP-3009
//!   token behind the node's `Chain` seam, for the simulations and fast seam tests; its
//!   differential test (`tests/memory_chain.rs`) holds it to anvil running the real contracts;
//! - [`devchain`]: the one anvil launcher of the workspace, our TestUSDC deployed on it, and
//!   the `x402-devchain` binary that the quickstart and `deploy/local` scripts start;
//! - [`in_process`]: one node in this process on memory stores and a `MemoryChain`, for the
//!   millisecond tests of the request pipeline, the batcher and the settlement driver;
//! - [`tls_front`]: an `https://` front (a test CA, a TLS terminator) for anvil, for the https
//!   RPC tests;
//! - [`bad_requests`]: the table of wrong facilitator requests, sent by the end-to-end test and
//!   run through the checks in process.

pub mod bad_requests;
pub mod canonical;
pub mod devchain;
pub mod in_process;
pub mod memory_chain;
pub mod process;
pub mod tls_front;
