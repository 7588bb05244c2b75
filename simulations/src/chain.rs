//! The Chain seam in a simulation: one [`MemoryChain`] shared by every node (the "real" chain,
//! outside the hosts, so it survives crashes and checkers can look inside), reached by each node
//! through its own [`ChainLink`], which the fault schedule can cut, and which asks the node's
//! circuit breakers before every call and reports every outcome to them, exactly as
//! `AlloyChain` does with one RPC URL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use x402_dev::memory_chain::MemoryChain;
use x402_node::chain::breaker::{endpoint_id, EndpointGate, EndpointId};
use x402_node::chain::{
    Address, CallRequest, Chain, ChainError, ChainFuture, Fees, NonceTag, Receipt, B256,
};

/// The RPC URL every simulated node configures: one endpoint, one breaker, shared by the cluster.
pub const SIM_RPC_URL: &str = "http://chain.sim:8545";
/// What one chain call takes (simulated time), so calls interleave with Raft traffic.
const CALL_LATENCY: Duration = Duration::from_millis(2);

/// Whether one node can reach the chain. Kept by the harness across the node's crashes.
#[derive(Clone, Debug, Default)]
pub struct LinkSwitch {
    cut: Arc<AtomicBool>,
}

impl LinkSwitch {
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// One node's view of the shared chain.
pub struct ChainLink {
    chain: Arc<MemoryChain>,
    switch: LinkSwitch,
    gate: Arc<dyn EndpointGate>,
    endpoint: EndpointId,
}

impl ChainLink {
    pub fn new(chain: Arc<MemoryChain>, switch: LinkSwitch, gate: Arc<dyn EndpointGate>) -> Self {
        let endpoint = endpoint_id(SIM_RPC_URL);
        gate.register(&endpoint, SIM_RPC_URL);
        Self {
            chain,
            switch,
            gate,
            endpoint,
        }
    }

    /// Runs one call the way a gated RPC client does: refused at once while the breaker is open,
    /// unavailable while this node is cut off, and its outcome counted by the breaker.
    async fn gated<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ChainError>>,
    ) -> Result<T, ChainError> {
        if !self.gate.admits(&self.endpoint) {
            return Err(ChainError::Unavailable("circuit breaker open".into()));
        }
        tokio::time::sleep(CALL_LATENCY).await;
        let result = if self.switch.is_cut() {
            Err(ChainError::Unavailable(
                "node cut off from the chain".into(),
            ))
        } else {
            call.await
        };
        let reachable = !matches!(result, Err(ChainError::Unavailable(_)));
        self.gate.record(&self.endpoint, reachable);
        result
    }
}

impl Chain for ChainLink {
    fn chain_id(&self) -> ChainFuture<'_, u64> {
        Box::pin(self.gated(self.chain.chain_id()))
    }

    fn block_number(&self) -> ChainFuture<'_, u64> {
        Box::pin(self.gated(self.chain.block_number()))
    }

    fn code_at(&self, address: Address) -> ChainFuture<'_, Vec<u8>> {
        Box::pin(self.gated(self.chain.code_at(address)))
    }

    fn eth_call(&self, call: CallRequest) -> ChainFuture<'_, Vec<u8>> {
        Box::pin(self.gated(self.chain.eth_call(call)))
    }

    fn estimate_gas(&self, call: CallRequest) -> ChainFuture<'_, u64> {
        Box::pin(self.gated(self.chain.estimate_gas(call)))
    }

    fn nonce(&self, address: Address, tag: NonceTag) -> ChainFuture<'_, u64> {
        Box::pin(self.gated(self.chain.nonce(address, tag)))
    }

    fn fees(&self) -> ChainFuture<'_, Fees> {
        Box::pin(self.gated(self.chain.fees()))
    }

    fn send_raw_transaction(&self, raw: Vec<u8>) -> ChainFuture<'_, B256> {
        Box::pin(self.gated(self.chain.send_raw_transaction(raw)))
    }

    fn receipt(&self, tx_hash: B256) -> ChainFuture<'_, Option<Receipt>> {
        Box::pin(self.gated(self.chain.receipt(tx_hash)))
    }
}
