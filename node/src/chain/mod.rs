//! The Chain seam: everything verify and settle ask of an EVM chain, behind one object-safe trait.
//!
//! Production is [`AlloyChain`] (JSON-RPC over HTTP with failover across URLs); the simulations
//! and seam tests supply an in-memory EIP-3009 ledger behind the same [`Chain`] trait (the
//! `x402-dev` crate's `MemoryChain`; ARCHITECTURE.md, "Seams"). The trait speaks in alloy-primitives value types only ([`Address`], [`B256`],
//! [`U256`]; plain `Vec<u8>` for bytes), never in provider or RPC types, so an implementation
//! needs no alloy provider.
//!
//! Errors keep apart what a caller must treat differently ([`ChainError`]): the RPC being
//! unreachable or slow (retryable, and what a circuit breaker counts), a call that reverted (with
//! its decoded reason), a request the node refused, and an answer that makes no sense.

mod alloy_chain;
pub mod breaker;
pub mod tx;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use alloy::primitives::{Address, B256, U256};
pub use alloy_chain::{provider as rpc_provider, AlloyChain, ChainConfigError, ChainLimits};

/// What every [`Chain`] method returns.
pub type ChainFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ChainError>> + Send + 'a>>;

/// A chain shared by the node's tasks.
pub type SharedChain = Arc<dyn Chain>;

/// An `eth_call` / `eth_estimateGas` request: `data` sent to `to`, as `from` if given (the
/// facilitator's signer, so a simulation sees the same `msg.sender` as the real settlement).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallRequest {
    pub from: Option<Address>,
    pub to: Address,
    pub data: Vec<u8>,
}

/// Which transaction count [`Chain::nonce`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceTag {
    /// Mined transactions only.
    Latest,
    /// Including the node's pending pool: the next nonce to use.
    Pending,
}

/// EIP-1559 fee inputs for the next block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fees {
    /// The base fee of the next block, in wei.
    pub base_fee_per_gas: u128,
    /// The tip the node suggests (`eth_maxPriorityFeePerGas`), in wei.
    pub max_priority_fee_per_gas: u128,
}

impl Fees {
    /// `2 × base fee + tip`: survives six full blocks of base-fee growth (alloy's and ethers'
    /// default).
    pub fn max_fee_per_gas(&self) -> u128 {
        self.base_fee_per_gas
            .saturating_mul(2)
            .saturating_add(self.max_priority_fee_per_gas)
    }
}

/// One log of a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// The contract that emitted it.
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Vec<u8>,
}

/// A mined transaction's receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub transaction_hash: B256,
    /// `true` when the transaction succeeded (status 1), `false` when it reverted.
    pub status: bool,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    pub gas_used: u64,
    pub logs: Vec<Log>,
}

/// Why a chain request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No RPC endpoint answered in time (connection refused, timeout, HTTP 5xx/429, rate
    /// limits). Retryable; what a circuit breaker counts. Says nothing about the chain.
    #[error("chain RPC unavailable: {0}")]
    Unavailable(String),
    /// The call (or gas estimate) executed and reverted. `reason` is the decoded `Error(string)`
    /// (e.g. `FiatTokenV2: authorization is used or canceled`), a `Panic(uint256)` description,
    /// or `None` when the revert carried no decodable reason; `data` is the raw revert data.
    #[error("execution reverted: {}", reason.as_deref().unwrap_or("(no reason)"))]
    Reverted {
        reason: Option<String>,
        data: Vec<u8>,
    },
    /// The node answered with a JSON-RPC error that is not a revert (e.g. `nonce too low`,
    /// `insufficient funds`, `already known` on a raw transaction).
    #[error("chain RPC rejected the request ({code}): {message}")]
    Rejected { code: i64, message: String },
    /// The node answered something we cannot use (unparseable, null where a value is due).
    #[error("bad chain RPC response: {0}")]
    BadResponse(String),
}

impl ChainError {
    /// Whether retrying (on this or another endpoint) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChainError::Unavailable(_))
    }

    /// The revert reason, if this is a revert that carried one.
    pub fn revert_reason(&self) -> Option<&str> {
        match self {
            ChainError::Reverted { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }
}

/// What verify and settle ask of an EVM chain. Object-safe; every method has its own deadline.
pub trait Chain: Send + Sync + 'static {
    /// `eth_chainId`.
    fn chain_id(&self) -> ChainFuture<'_, u64>;

    /// `eth_blockNumber`: the latest block (to count a receipt's confirmations).
    fn block_number(&self) -> ChainFuture<'_, u64>;

    /// `eth_getCode` at the latest block; empty for an EOA (or an undeployed contract).
    fn code_at(&self, address: Address) -> ChainFuture<'_, Vec<u8>>;

    /// `eth_call` at the latest block; the return data, or [`ChainError::Reverted`].
    fn eth_call(&self, call: CallRequest) -> ChainFuture<'_, Vec<u8>>;

    /// `eth_estimateGas` at the latest block; [`ChainError::Reverted`] when it would revert.
    fn estimate_gas(&self, call: CallRequest) -> ChainFuture<'_, u64>;

    /// `eth_getTransactionCount` of `address`.
    fn nonce(&self, address: Address, tag: NonceTag) -> ChainFuture<'_, u64>;

    /// Base fee of the next block and the suggested tip.
    fn fees(&self) -> ChainFuture<'_, Fees>;

    /// `eth_sendRawTransaction` of a signed EIP-2718 envelope; the transaction hash.
    fn send_raw_transaction(&self, raw: Vec<u8>) -> ChainFuture<'_, B256>;

    /// `eth_getTransactionReceipt`; `None` while the transaction is not mined (or unknown).
    fn receipt(&self, tx_hash: B256) -> ChainFuture<'_, Option<Receipt>>;
}
