//! The `[facilitator]` section: which networks the node settles on, through which RPC URLs, for
//! which tokens, with which signer keys, and how settlement waits for the chain.
//!
//! ```toml
//! [facilitator]
//! onchain_checks = true            # false: no chain reads in /verify (benchmarks of the cluster)
//!
//! [[facilitator.networks]]
//! network = "eip155:84532"         # CAIP-2; v2 kind
//! v1_name = "base-sepolia"         # optional: also a v1 kind under this name
//! rpc_urls = ["https://base-sepolia.example/v2/KEY", "http://127.0.0.1:8546"]
//! ca_file = "/etc/x402/rpc-ca.pem"  # optional: verify https:// against this CA, not the system's
//! signer_keys_env = "X402_SIGNER_KEYS_84532"   # comma-separated 0x keys in that variable
//! signer_key_files = ["/etc/x402/signer1.key"] # one 0x key per file
//! receipt_timeout_ms = 20000
//! confirmations = 1
//! gas_limit = 200000
//!
//! [[facilitator.networks.assets]]  # accepted tokens; none listed = any EIP-3009 token
//! address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
//! name = "USDC"
//! version = "2"
//! ```
//!
//! Signer keys never appear in the TOML: they come from an environment variable or files, are
//! held as [`Secret`]s and parsed into signers once at start-up. Every node of a cluster must hold
//! the same keys for a network: the leader's reconciler signs, with the key the state machine
//! chose, a settlement whose owner died before signing.

use std::path::PathBuf;

use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};
use x402_protocol::x402::network::{split_caip2, ChainId, NetworkRegistry, EIP155};

use super::ConfigError;
use crate::secret::Secret;

/// Most networks one node serves.
pub const MAX_NETWORKS: usize = 32;
/// Most signer keys per network: the state machine's settlement start carries them all.
pub const MAX_SIGNERS_PER_NETWORK: usize = 16;
// Every signer of a network rides in its settlement starts: the state machine must take them all.
const _: () =
    assert!(MAX_SIGNERS_PER_NETWORK <= x402_raft_store::state::settlements::MAX_SIGNERS_PER_START);
/// Most accepted assets per network.
pub const MAX_ASSETS_PER_NETWORK: usize = 64;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FacilitatorSettings {
    /// Read the chain in `/verify`: payer code (ERC-1271), asset code, the simulation of the
    /// transfer and the diagnosis of a failed one. Switch off only to measure the cluster itself:
    /// the signature check and the replicated claim stay on, `/settle` still simulates nothing
    /// it did not before and broadcasts as usual.
    pub onchain_checks: bool,
    /// Simulate the transfer again in `/settle` before allocating a signer nonce. Off by default,
    /// as in the reference facilitators (`simulateInSettle`): `/verify` simulated it, the
    /// authorization is claimed since, and a settlement that still reverts costs gas, never a
    /// second transfer.
    pub simulate_in_settle: bool,
    /// How long `/settle` waits for a settlement another caller (or node) owns before it
    /// answers `settlement_pending` with the transaction hash.
    pub settle_wait_ms: u64,
    /// How often the leader's reconciler looks for settlements whose owner went quiet.
    pub reconcile_interval_ms: u64,
    /// A settlement untouched this long is taken over by the leader's reconciler: it signs an
    /// allocated nonce, or re-broadcasts the recorded bytes and reads the receipt.
    pub reconcile_after_ms: u64,
    pub networks: Vec<NetworkSettings>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// CAIP-2 id, `eip155:<chain id>`: the v2 kind.
    pub network: String,
    /// A v1 network name (e.g. `base-sepolia`) for the same chain: adds a v1 kind.
    pub v1_name: Option<String>,
    /// JSON-RPC endpoints, tried in order (failover on unavailability): `http://` or
    /// `https://`, an API key in the path or query included (it is never logged or shown).
    pub rpc_urls: Vec<String>,
    /// A PEM file of the CAs that `https://` RPC URLs are verified against, instead of the
    /// system's roots (a private CA; or a pinned one).
    pub ca_file: Option<PathBuf>,
    /// Name of an environment variable holding comma-separated `0x` signer keys.
    pub signer_keys_env: Option<String>,
    /// Files holding one `0x` signer key each.
    pub signer_key_files: Vec<PathBuf>,
    /// Accepted tokens; when empty, any token with EIP-3009 is accepted.
    pub assets: Vec<AssetSettings>,
    /// How long one settle waits for a receipt before answering `settlement_pending`.
    pub receipt_timeout_ms: u64,
    /// How often a receipt is polled while waiting.
    pub receipt_poll_ms: u64,
    /// Blocks a receipt must be buried under (1 = its own block is enough).
    pub confirmations: u64,
    /// Gas limit of a settlement transaction (a `transferWithAuthorization` takes ~60–90k).
    pub gas_limit: u64,
    /// Upper bound on `maxFeePerGas`, in wei; a settlement is refused rather than overpay.
    pub max_fee_per_gas_wei: Option<u64>,
    /// Deadline of one RPC call.
    pub rpc_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AssetSettings {
    /// The token contract, `0x` hex.
    pub address: String,
    /// Its EIP-712 domain name and version (what `extra.name` / `extra.version` must say).
    pub name: String,
    pub version: String,
}

impl Default for FacilitatorSettings {
    fn default() -> Self {
        Self {
            onchain_checks: true,
            simulate_in_settle: false,
            settle_wait_ms: 20_000,
            reconcile_interval_ms: 1_000,
            reconcile_after_ms: 3_000,
            networks: Vec::new(),
        }
    }
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            network: String::new(),
            v1_name: None,
            rpc_urls: Vec::new(),
            ca_file: None,
            signer_keys_env: None,
            signer_key_files: Vec::new(),
            assets: Vec::new(),
            receipt_timeout_ms: 20_000,
            receipt_poll_ms: 100,
            confirmations: 1,
            gas_limit: 200_000,
            max_fee_per_gas_wei: None,
            rpc_timeout_ms: 5_000,
        }
    }
}

impl NetworkSettings {
    /// The chain id of [`NetworkSettings::network`].
    pub fn chain_id(&self) -> Result<u64, ConfigError> {
        ChainId::from_caip2(&self.network)
            .map(|c| c.0)
            .map_err(|e| {
                ConfigError::Invalid(format!("facilitator network {:?}: {e}", self.network))
            })
    }

    /// Loads this network's signer keys from the environment variable and the files named.
    pub fn signers(&self) -> Result<Vec<PrivateKeySigner>, ConfigError> {
        let mut keys: Vec<Secret> = Vec::new();
        if let Some(var) = &self.signer_keys_env {
            let value = std::env::var(var).unwrap_or_default();
            keys.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(Secret::new),
            );
        }
        for path in &self.signer_key_files {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                what: "a signer key",
                path: path.clone(),
                source,
            })?;
            keys.push(Secret::new(text.trim()));
        }
        let mut signers: Vec<PrivateKeySigner> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            // The parse error is not shown: it could quote part of the key.
            let signer: PrivateKeySigner = key.expose().parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "signer key #{} of {} is not a 32-byte hex private key",
                    i + 1,
                    self.network
                ))
            })?;
            if signers.iter().any(|s| s.address() == signer.address()) {
                return Err(ConfigError::Invalid(format!(
                    "signer {} is listed twice for {}",
                    signer.address(),
                    self.network
                )));
            }
            signers.push(signer);
        }
        if signers.len() > MAX_SIGNERS_PER_NETWORK {
            return Err(ConfigError::Invalid(format!(
                "{} has {} signer keys; at most {MAX_SIGNERS_PER_NETWORK}",
                self.network,
                signers.len()
            )));
        }
        Ok(signers)
    }
}

impl FacilitatorSettings {
    /// Checks what can be checked without the chain or the keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.networks.len() > MAX_NETWORKS {
            return invalid(format!("at most {MAX_NETWORKS} facilitator networks"));
        }
        if self.reconcile_interval_ms == 0 || self.settle_wait_ms == 0 {
            return invalid(
                "facilitator.reconcile_interval_ms and settle_wait_ms must be positive".into(),
            );
        }
        let mut seen = Vec::new();
        for n in &self.networks {
            let chain_id = n.chain_id()?;
            match split_caip2(&n.network) {
                Ok((EIP155, _)) => {}
                _ => return invalid(format!("facilitator network {:?} is not eip155", n.network)),
            }
            if seen.contains(&chain_id) {
                return invalid(format!("facilitator network {} is listed twice", n.network));
            }
            seen.push(chain_id);
            if n.rpc_urls.is_empty() {
                return invalid(format!("facilitator network {} has no rpc_urls", n.network));
            }
            if n.assets.len() > MAX_ASSETS_PER_NETWORK {
                return invalid(format!(
                    "{} lists more than {MAX_ASSETS_PER_NETWORK} assets",
                    n.network
                ));
            }
            if n.receipt_timeout_ms == 0 || n.receipt_poll_ms == 0 || n.gas_limit == 0 {
                return invalid(format!(
                    "{}: receipt_timeout_ms, receipt_poll_ms and gas_limit must be positive",
                    n.network
                ));
            }
        }
        self.network_registry().map(|_| ())
    }

    /// The v1 network names: the built-in ones plus every `v1_name` (refused when a name is
    /// invalid or already names another chain).
    pub fn network_registry(&self) -> Result<NetworkRegistry, ConfigError> {
        let mut names = NetworkRegistry::builtin();
        for n in &self.networks {
            if let Some(name) = &n.v1_name {
                names
                    .add(name, ChainId(n.chain_id()?))
                    .map_err(|e| ConfigError::Invalid(format!("v1_name of {}: {e}", n.network)))?;
            }
        }
        Ok(names)
    }
}
