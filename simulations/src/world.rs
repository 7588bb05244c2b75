//! The simulated world outside the cluster: one EVM chain ([`MemoryChain`]) with our EIP-3009
//! token, the facilitator's signer keys (funded with ETH), and payers holding tokens. Every value
//! here is fixed, so a run depends on its seed only.

use std::sync::{Arc, Once, OnceLock};

use alloy::signers::local::PrivateKeySigner;
use x402_dev::memory_chain::MemoryChain;
use x402_node::chain::{Address, U256};

use crate::clock::SimClock;

/// The chain of every simulated payment (base-sepolia's id; v2 network `eip155:84532`).
pub const CHAIN_ID: u64 = 84_532;
/// The token's EIP-712 domain.
pub const TOKEN_NAME: &str = "USD Coin";
pub const TOKEN_VERSION: &str = "2";
/// Where the nodes read their signer keys from (set once per process by [`new_chain`]).
pub const SIGNER_KEYS_ENV: &str = "X402_SIM_SIGNER_KEYS";
/// Settlement signers of the facilitator.
pub const SIGNERS: usize = 2;
/// Payers of the simulated clients.
pub const PAYERS: usize = 8;
/// What each payer holds: far more than any run spends.
const PAYER_TOKENS: u64 = 1_000_000_000_000;
/// ETH each signer holds for gas.
const SIGNER_WEI: u128 = 1_000_000_000_000_000_000_000;

fn key(tag: u8, index: usize) -> [u8; 32] {
    let mut k = [tag; 32];
    k[31] = index as u8 + 1;
    k
}

/// The facilitator's signer keys.
pub fn signers() -> Vec<PrivateKeySigner> {
    (0..SIGNERS)
        .map(|i| PrivateKeySigner::from_bytes(&key(0x5e, i).into()).expect("a valid key"))
        .collect()
}

/// The payers' keys.
pub fn payers() -> Vec<PrivateKeySigner> {
    (0..PAYERS)
        .map(|i| PrivateKeySigner::from_bytes(&key(0x9a, i).into()).expect("a valid key"))
        .collect()
}

/// The token's address: the first contract deployed on a [`MemoryChain`].
pub fn token_address() -> Address {
    static TOKEN: OnceLock<Address> = OnceLock::new();
    *TOKEN.get_or_init(|| {
        MemoryChain::new(CHAIN_ID, Arc::new(SimClock::new()))
            .deploy_token(TOKEN_NAME, TOKEN_VERSION)
    })
}

/// A fresh chain: the token deployed, signers funded, payers holding tokens; and the signer
/// keys published in [`SIGNER_KEYS_ENV`] for the nodes' configuration.
pub fn new_chain() -> Arc<MemoryChain> {
    static PUBLISH: Once = Once::new();
    PUBLISH.call_once(|| {
        let csv = (0..SIGNERS)
            .map(|i| hex::encode(key(0x5e, i)))
            .collect::<Vec<_>>()
            .join(",");
        std::env::set_var(SIGNER_KEYS_ENV, csv);
    });
    let chain = MemoryChain::new(CHAIN_ID, Arc::new(SimClock::new()));
    let token = chain.deploy_token(TOKEN_NAME, TOKEN_VERSION);
    assert_eq!(token, token_address(), "the token's address is fixed");
    for signer in signers() {
        chain.fund(signer.address(), U256::from(SIGNER_WEI));
    }
    for payer in payers() {
        chain.mint(token, payer.address(), U256::from(PAYER_TOKENS));
    }
    chain
}
