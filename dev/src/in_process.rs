//! One node in this process: the node's own code (Raft, the batcher, the typed writer, the read
//! barrier, the request pipeline, the settlement driver) on memory stores, with a
//! [`MemoryChain`] and no sockets. What the millisecond tests of `dev/tests/` drive where a
//! behaviour needs a writer but not three processes: the order of the request pipeline, the
//! batcher's bookkeeping, `settle::drive`. It forms a cluster of itself and leads it, so every
//! write commits on its own log; anything about peers (forwarding, elections, partitions) is
//! for the simulations and the end-to-end tests.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use x402_node::chain::SharedChain;
use x402_node::cluster::breakers::ClusterBreakers;
use x402_node::config::{Config, Secrets};
use x402_node::facilitator::Facilitator;
use x402_node::metrics::Metrics;
use x402_node::node::{self, App, NodeSetup};
use x402_node::seams::{ConnectFuture, Connector, SharedClock, SystemClock};
use x402_node::secret::Secret;
use x402_raft_store::storage::{MemLogStore, MemSnapshotVault, StateMachineStore};

use crate::bad_requests::{payer, Spec, NAME, VERSION};
use crate::memory_chain::MemoryChain;

/// The chain of the in-process node: the bad-input table's `eip155:31337`.
pub const CHAIN_ID: u64 = 31337;
/// The admin token of the in-process node.
pub const ADMIN_TOKEN: &str = "in-process-admin-token";
/// How long [`InProcessNode::start`] waits for the node to lead its cluster of one.
const LEADERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// anvil's dev key #1 (public, test only): the node's settlement signer.
pub fn signer() -> PrivateKeySigner {
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
        .parse()
        .expect("key")
}

/// Refuses every connection: a cluster of one has no peer to reach.
struct NoPeers;

impl Connector for NoPeers {
    fn connect<'a>(&'a self, authority: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("an in-process node has no peers ({authority})"),
            ))
        })
    }
}

/// A running in-process node and its chain.
pub struct InProcessNode {
    pub app: Arc<App>,
    /// The chain of [`CHAIN_ID`]: the test token deployed, the table's payer holding 1,000,000
    /// units of it, the signer funded.
    pub chain: Arc<MemoryChain>,
    /// The test token, the one asset the node accepts.
    pub token: Address,
    _dir: tempfile::TempDir,
}

impl InProcessNode {
    /// Starts node 1, serving [`CHAIN_ID`] through [`signer`], with `extra_toml` appended to
    /// its configuration (API keys, rate limits, facilitator settings of its own sections),
    /// and waits until it leads. `network_toml` is added to the network's section
    /// (`receipt_timeout_ms = 500`, say).
    pub async fn start(network_toml: &str, extra_toml: &str) -> InProcessNode {
        let clock: SharedClock = Arc::new(SystemClock);
        let chain = MemoryChain::new(CHAIN_ID, clock.clone());
        let token = chain.deploy_token(NAME, VERSION);
        chain.mint(token, payer().address(), U256::from(1_000_000u64));
        chain.fund(signer().address(), U256::from(10u128.pow(21)));
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("signer.key");
        std::fs::write(&key_file, format!("0x{}", hex::encode(signer().to_bytes())))
            .expect("write the signer key");
        let text = format!(
            "[facilitator]\nonchain_checks = true\n\n\
             [[facilitator.networks]]\nnetwork = \"eip155:{CHAIN_ID}\"\n\
             rpc_urls = [\"http://127.0.0.1:9\"]\nsigner_key_files = [{key_file:?}]\n\
             receipt_poll_ms = 5\n{network_toml}\n\n\
             [[facilitator.networks.assets]]\naddress = \"{token}\"\nname = \"{NAME}\"\n\
             version = \"{VERSION}\"\n\n{extra_toml}\n"
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("write the configuration");
        let mut config = Config::load(Some(&path)).expect("the in-process configuration loads");
        let url = "http://127.0.0.1:9".to_string();
        config.node_id = 1;
        config.advertise_url = url.clone();
        config.bootstrap = BTreeMap::from([(1, url)]);

        let breakers = Arc::new(ClusterBreakers::new(config.breaker.clone()));
        let chains = BTreeMap::from([(CHAIN_ID, chain.clone() as SharedChain)]);
        let facilitator = Facilitator::with_chains(&config.facilitator, chains)
            .expect("the in-process facilitator");
        let app = node::start(NodeSetup {
            metrics: Metrics::new(1).expect("metrics"),
            secrets: Secrets {
                cluster_secret: Secret::new("in-process-cluster-secret"),
                admin_token: Secret::new(ADMIN_TOKEN),
            },
            clock,
            connector: Arc::new(NoPeers),
            peer_tls: None,
            log: MemLogStore::default(),
            state_machine: StateMachineStore::open(MemSnapshotVault::default())
                .expect("a memory state machine opens"),
            facilitator: Arc::new(facilitator),
            breakers,
            config,
        })
        .await
        .expect("the in-process node starts");
        let led = app
            .raft
            .wait(Some(LEADERSHIP_TIMEOUT))
            .current_leader(1, "the in-process node leads its cluster of one")
            .await;
        assert!(led.is_ok(), "the in-process node did not lead: {led:?}");
        InProcessNode {
            app,
            chain,
            token,
            _dir: dir,
        }
    }

    /// The bad-input table's payment `tag`, in this node's token.
    pub fn spec(&self, tag: u8) -> Spec {
        Spec {
            token: self.token,
            ..Spec::new(tag)
        }
    }

    /// The signer's address.
    pub fn signer(&self) -> Address {
        signer().address()
    }
}
