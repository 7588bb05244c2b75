//! The x402 facilitator on top of the replicated state: `/verify`, `/settle`, `/supported`.
//!
//! - [`payment`]: the checks that need no chain (scheme, network, EIP-712 domain, signature of
//!   an EOA, recipient, time window, amount) and the requirements fingerprint;
//! - [`verify`]: the chain reads of `/verify` (ERC-1271, asset code, simulation and its
//!   diagnosis), then the cluster-wide claim (I1);
//! - [`settle`]: exactly-once settlement (I2) with signer nonces allocated by the log (I3);
//! - [`reconcile`]: the leader's duty of finishing settlements whose owner went quiet;
//! - [`signers`]: telling the state machine each signer's transaction count on chain.
//!
//! One [`Facilitator`] per node holds every configured network: its chain client, its signer
//! keys and its settings. The code above takes a [`context::Context`]: the few parts of the node
//! it needs (state, typed writer, read barrier, clock), not the node.

pub mod context;
pub mod payment;
pub mod reconcile;
pub mod settle;
pub mod signers;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use x402_protocol::x402::network::NetworkRegistry;
use x402_protocol::x402::{SupportedKind, SupportedResponse};

use crate::chain::breaker::EndpointGate;
use crate::chain::{AlloyChain, ChainError, ChainLimits, Fees, SharedChain};
use crate::config::{ConfigError, FacilitatorSettings, NetworkSettings};
use crate::tls::{rpc_http_client, Roots};

/// One network the node settles on.
pub struct Network {
    pub chain_id: u64,
    /// `eip155:<chain id>`.
    pub caip2: String,
    pub v1_name: Option<String>,
    pub chain: SharedChain,
    pub signers: Vec<PrivateKeySigner>,
    /// Accepted tokens (address → EIP-712 name and version); empty accepts any.
    pub assets: BTreeMap<Address, (String, String)>,
    pub settings: NetworkSettings,
    /// The last fees read and when: every settlement signs with fees, and reading them costs
    /// two RPC calls, so they are reused for [`FEES_MAX_AGE`].
    fees: Mutex<Option<(Instant, Fees)>>,
    /// Assets seen with code, and when (the reference caches this for 15 minutes too).
    deployed_assets: Mutex<BTreeMap<Address, Instant>>,
}

/// How long an asset seen with code is not asked about again.
pub const ASSET_CODE_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Most assets remembered per network (a caller can name any address).
pub const MAX_REMEMBERED_ASSETS: usize = 1024;

/// How long fees read from the chain are reused. `maxFeePerGas` is twice the base fee plus the
/// tip, which absorbs several blocks of base-fee growth.
pub const FEES_MAX_AGE: Duration = Duration::from_secs(1);

impl Network {
    /// Whether `asset` has code (a contract: an `eth_call` to an address without code succeeds
    /// silently). Positive answers are remembered for [`ASSET_CODE_MAX_AGE`].
    pub async fn asset_has_code(&self, asset: Address) -> Result<bool, ChainError> {
        if let Ok(seen) = self.deployed_assets.lock() {
            if seen
                .get(&asset)
                .is_some_and(|at| at.elapsed() < ASSET_CODE_MAX_AGE)
            {
                return Ok(true);
            }
        }
        let deployed = !self.chain.code_at(asset).await?.is_empty();
        if deployed {
            if let Ok(mut seen) = self.deployed_assets.lock() {
                if seen.len() >= MAX_REMEMBERED_ASSETS {
                    seen.clear();
                }
                seen.insert(asset, Instant::now());
            }
        }
        Ok(deployed)
    }

    /// The chain's fees, at most [`FEES_MAX_AGE`] old.
    pub async fn fees(&self) -> Result<Fees, ChainError> {
        if let Ok(cached) = self.fees.lock() {
            if let Some((at, fees)) = *cached {
                if at.elapsed() < FEES_MAX_AGE {
                    return Ok(fees);
                }
            }
        }
        let fees = self.chain.fees().await?;
        if let Ok(mut cached) = self.fees.lock() {
            *cached = Some((Instant::now(), fees));
        }
        Ok(fees)
    }

    /// The signer key for `address`, if this node holds it.
    pub fn signer(&self, address: &Address) -> Option<&PrivateKeySigner> {
        self.signers.iter().find(|s| s.address() == *address)
    }

    /// The addresses of this node's signers, in configuration order.
    pub fn signer_addresses(&self) -> Vec<Address> {
        self.signers.iter().map(|s| s.address()).collect()
    }
}

/// Every network the node serves, and the facilitator-wide settings.
pub struct Facilitator {
    pub networks: BTreeMap<u64, Network>,
    /// v1 names, built-in plus configured.
    pub names: NetworkRegistry,
    pub settings: FacilitatorSettings,
    /// The JSON-RPC clients [`Facilitator::from_settings`] built, by network, for the start-up
    /// probe (none when the chains were given: simulations and seam tests).
    rpc_clients: Vec<(String, u64, Arc<AlloyChain>)>,
}

/// One RPC URL's answer to `eth_chainId` ([`Facilitator::probe_rpc_urls`]).
#[derive(Debug)]
pub struct RpcUrlReport {
    pub network: String,
    /// `scheme://host:port`: the URL without what may hold a key.
    pub endpoint: String,
    /// The chain id the network's CAIP-2 id names.
    pub expected: u64,
    pub answer: Result<u64, ChainError>,
}

/// The production chain client of a network: its URLs through a client with its roots.
fn alloy_chain(n: &NetworkSettings) -> Result<AlloyChain, ConfigError> {
    let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(format!("{}: {e}", n.network));
    let limits = ChainLimits {
        call_timeout: Duration::from_millis(n.rpc_timeout_ms.max(1)),
    };
    let client = rpc_http_client(&Roots::for_urls(&n.rpc_urls, n.ca_file.as_deref()))
        .map_err(|e| invalid(&e))?;
    AlloyChain::new(&n.rpc_urls, limits, &client).map_err(|e| invalid(&e))
}

impl Facilitator {
    /// Builds the networks of `settings`, each with an [`AlloyChain`] over its RPC URLs behind
    /// `gate` (the cluster's circuit breakers).
    pub fn from_settings(
        settings: &FacilitatorSettings,
        gate: Arc<dyn EndpointGate>,
    ) -> Result<Self, ConfigError> {
        let mut chains = BTreeMap::new();
        let mut rpc_clients = Vec::new();
        for n in &settings.networks {
            let chain_id = n.chain_id()?;
            let chain = Arc::new(alloy_chain(n)?.with_gate(gate.clone()));
            rpc_clients.push((n.network.clone(), chain_id, chain.clone()));
            chains.insert(chain_id, chain as SharedChain);
        }
        let mut facilitator = Self::with_chains(settings, chains)?;
        facilitator.rpc_clients = rpc_clients;
        Ok(facilitator)
    }

    /// Asks every RPC URL of every network for its chain id, on its own: one report per URL,
    /// for the start-up log (a wrong chain, a refused certificate, a dead URL).
    pub async fn probe_rpc_urls(&self) -> Vec<RpcUrlReport> {
        let mut reports = Vec::new();
        for (network, expected, chain) in &self.rpc_clients {
            for (endpoint, answer) in chain.probe().await {
                reports.push(RpcUrlReport {
                    network: network.clone(),
                    endpoint,
                    expected: *expected,
                    answer,
                });
            }
        }
        reports
    }

    /// Builds the networks of `settings` on the given chains (one per configured chain id): the
    /// seam tests and simulations use to put a `x402_dev::memory_chain::MemoryChain` in place.
    pub fn with_chains(
        settings: &FacilitatorSettings,
        mut chains: BTreeMap<u64, SharedChain>,
    ) -> Result<Self, ConfigError> {
        settings.validate()?;
        let mut networks = BTreeMap::new();
        for n in &settings.networks {
            let chain_id = n.chain_id()?;
            let chain = chains.remove(&chain_id).ok_or_else(|| {
                ConfigError::Invalid(format!("no chain client for {}", n.network))
            })?;
            let mut assets = BTreeMap::new();
            for a in &n.assets {
                let address: Address = a.address.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "asset {:?} of {} is not an address",
                        a.address, n.network
                    ))
                })?;
                assets.insert(address, (a.name.clone(), a.version.clone()));
            }
            networks.insert(
                chain_id,
                Network {
                    chain_id,
                    caip2: n.network.clone(),
                    v1_name: n.v1_name.clone(),
                    chain,
                    signers: n.signers()?,
                    assets,
                    settings: n.clone(),
                    fees: Mutex::new(None),
                    deployed_assets: Mutex::new(BTreeMap::new()),
                },
            );
        }
        Ok(Self {
            networks,
            names: settings.network_registry()?,
            settings: settings.clone(),
            rpc_clients: Vec::new(),
        })
    }

    /// The `GET /supported` answer: one v2 kind per network, one v1 kind per network with a v1
    /// name, and the signer addresses by chain (`eip155:<id>`) and by family (`eip155:*`).
    pub fn supported(&self) -> SupportedResponse {
        let mut kinds = Vec::new();
        let mut signers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in self.networks.values() {
            if let Some(name) = &n.v1_name {
                kinds.push(SupportedKind::new(1, "exact", name.clone()));
            }
            kinds.push(SupportedKind::new(2, "exact", n.caip2.clone()));
            let addresses: Vec<String> = n
                .signers
                .iter()
                .map(|s| s.address().to_checksum(None))
                .collect();
            signers
                .entry("eip155:*".to_owned())
                .or_default()
                .extend(addresses.iter().cloned());
            signers.insert(n.caip2.clone(), addresses);
        }
        if let Some(all) = signers.get_mut("eip155:*") {
            all.sort();
            all.dedup();
        }
        SupportedResponse {
            kinds,
            // A settlement's retry with the same payment-identifier id gets its first answer
            // (crate::access::idempotency).
            extensions: vec![crate::access::idempotency::PAYMENT_IDENTIFIER.to_owned()],
            signers,
        }
    }
}
