//! x402-raft-store: the replicated state of an x402-cluster.
//!
//! Three layers, each usable without the next:
//! - [`state`]: pure, deterministic state machines (nonce claims, settlements, rate limits and
//!   their leases, circuit breakers, idempotency keys) and the [`Command`] / [`Response`] types
//!   that drive them. No I/O, no clock, no randomness.
//! - [`types`]: the openraft type configuration that carries those commands.
//! - [`storage`]: openraft `RaftLogStorage` and `RaftStateMachine` on sled (production) and on
//!   memory (simulation); both share the apply code of [`state`].
//!
//! This crate never imports HTTP or Ethereum code (see ARCHITECTURE.md).

pub mod codec;
pub mod runtime;
pub mod state;
pub mod storage;
pub mod types;

pub use state::{Command, Op, Response};
pub use types::{NodeId, Raft, TypeConfig};
