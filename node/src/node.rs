//! Assembling one replica: Raft, the peer client, the proposer, background duties and the HTTP
//! router, from storage and seams chosen by the caller (the binary or a simulation).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use openraft::storage::RaftLogStorage;
use openraft::BasicNode;
use x402_raft_store::storage::{SnapshotVault, StateMachineStore, StateView};
use x402_raft_store::types::{LogId, NodeId, Raft, TypeConfig};

use crate::access::{leases, Access};
use crate::cluster::batcher::{BatchLimits, Batcher};
use crate::cluster::breakers::ClusterBreakers;
use crate::cluster::expiry;
use crate::cluster::network::Network;
use crate::cluster::peer_client::PeerClient;
use crate::cluster::proposer::Proposer;
use crate::cluster::writer::Writer;
use crate::config::{Config, Limits, Secrets};
use crate::facilitator::{reconcile, Facilitator};
use crate::http;
use crate::metrics::Metrics;
use crate::seams::{SharedClock, SharedConnector};

/// Reads the highest committed log id the log store recorded.
pub type CommittedReader =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Option<LogId>> + Send>> + Send + Sync>;
/// Reads the latest snapshot as one self-describing file.
pub type SnapshotFileReader = Arc<dyn Fn() -> io::Result<Option<Vec<u8>>> + Send + Sync>;

/// Everything a node is built from.
pub struct NodeSetup<LS, V: SnapshotVault> {
    pub config: Config,
    pub secrets: Secrets,
    pub clock: SharedClock,
    pub connector: SharedConnector,
    pub metrics: Metrics,
    pub log: LS,
    pub state_machine: StateMachineStore<V>,
    /// The networks this node verifies and settles on (their chain clients and signer keys).
    pub facilitator: Arc<Facilitator>,
    /// The circuit breakers the facilitator's chain clients consult; wired to the log here.
    pub breakers: Arc<ClusterBreakers>,
}

/// What every request handler can reach.
pub struct App {
    pub id: NodeId,
    /// The URL members reach this node at (its peer API).
    pub url: String,
    pub raft: Raft,
    pub proposer: Proposer,
    /// Group commit; takes the batches followers forward (writes of this node go through
    /// `writer`, which sits on it).
    pub batcher: Batcher,
    /// Typed writes, one method per operation.
    pub writer: Writer,
    pub peers: PeerClient,
    pub secrets: Secrets,
    pub limits: Limits,
    pub metrics: Metrics,
    pub state: StateView,
    pub committed: CommittedReader,
    pub snapshot_file: SnapshotFileReader,
    pub bootstrap: BTreeMap<NodeId, String>,
    pub clock: SharedClock,
    pub facilitator: Arc<Facilitator>,
    /// API keys, rate limits, leases, idempotency settings.
    pub access: Access,
    pub breakers: Arc<ClusterBreakers>,
    /// `/readyz`'s last verdict, reused for a moment.
    pub readiness: http::health::ReadinessCache,
}

impl App {
    /// URL of a member, from the membership this node knows.
    pub fn member_url(&self, id: NodeId) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The leader's id and URL, when known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let leader = self.raft.metrics().borrow().current_leader?;
        Some((leader, self.member_url(leader)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid raft configuration: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft failed to start: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
}

/// A started replica: serve its routers to make it reachable ([`crate::serve::serve`]):
/// `api` on `listen` and `peer` on `peer_listen`, or [`RunningNode::single_router`] on `listen`
/// when there is no separate peer port.
pub struct RunningNode {
    pub app: Arc<App>,
    /// The x402 API, health, metrics and admin.
    pub api: Router,
    /// The peer API (and admin, for members that reach each other only here).
    pub peer: Router,
}

impl RunningNode {
    /// Both routers on one listener.
    pub fn single_router(&self) -> Router {
        self.api.clone().merge(self.peer_only())
    }

    fn peer_only(&self) -> Router {
        http::peer_router(self.app.clone(), false)
    }
}

/// Builds and starts a replica. Bind the listener *before* calling this: Raft starts sending
/// RPCs at once, and a peer that finds nobody listening backs off for a while.
pub async fn start<LS, V>(setup: NodeSetup<LS, V>) -> Result<RunningNode, StartError>
where
    LS: RaftLogStorage<TypeConfig> + Clone,
    V: SnapshotVault,
{
    let NodeSetup {
        config,
        secrets,
        clock,
        connector,
        metrics,
        log,
        state_machine,
        facilitator,
        breakers,
    } = setup;
    let id = config.node_id;
    let peers = PeerClient::new(
        connector,
        secrets.cluster_secret.clone(),
        config.limits.max_peer_body_bytes,
    );
    let raft_config = Arc::new(config.openraft().validate()?);
    let state = state_machine.view();
    let vault = state_machine.vault().clone();
    let raft = Raft::new(
        id,
        raft_config,
        Network::new(id, peers.clone()),
        log.clone(),
        state_machine,
    )
    .await?;
    let committed: CommittedReader = Arc::new(move || {
        let mut log = log.clone();
        Box::pin(async move { log.read_committed().await.ok().flatten() })
    });
    let proposer = Proposer::new(
        id,
        raft.clone(),
        peers.clone(),
        clock.clone(),
        Duration::from_millis(config.limits.propose_timeout_ms),
    );
    let batcher = Batcher::start(
        proposer.clone(),
        BatchLimits {
            max_queued_ops: config.limits.max_queued_writes,
            max_ops_per_entry: config.limits.max_writes_per_entry,
            max_entries_in_flight: config.limits.max_entries_in_flight,
        },
    );
    let access = Access::from_config(&config, &metrics);
    let app = Arc::new(App {
        id,
        url: config.member_url(),
        raft: raft.clone(),
        proposer,
        writer: Writer::new(batcher.clone()),
        batcher,
        peers,
        secrets,
        limits: config.limits.clone(),
        metrics,
        state,
        committed,
        snapshot_file: Arc::new(move || vault.load_file()),
        bootstrap: config.bootstrap.clone(),
        clock,
        facilitator,
        access,
        breakers,
        readiness: Default::default(),
    });
    app.breakers.attach(
        app.state.clone(),
        app.writer.clone(),
        app.clock.clone(),
        app.metrics.breaker_state.clone(),
        app.metrics.breaker_epoch.clone(),
    );
    tokio::spawn(refresh_breaker_metrics(app.clone()));
    tokio::spawn(watch_raft_metrics(app.clone()));
    tokio::spawn(leases::run_sweeper(
        app.access.leases.clone(),
        app.writer.clone(),
        Duration::from_millis((config.rate_limit.lease_ms / 2).max(100)),
    ));
    tokio::spawn(expiry::run(
        app.clone(),
        Duration::from_millis(config.limits.expiry_interval_ms),
    ));
    tokio::spawn(reconcile::run(app.clone()));
    bootstrap_if_first(&app).await;
    let api = http::api_router(app.clone());
    let peer = http::peer_router(app.clone(), true);
    Ok(RunningNode { app, api, peer })
}

/// Keeps the breaker gauges in step with the applied state.
async fn refresh_breaker_metrics(app: Arc<App>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        app.breakers.refresh_metrics();
    }
}

/// On first start, the lowest-id bootstrap member forms the cluster; the others are contacted.
async fn bootstrap_if_first(app: &App) {
    let Some((&first, _)) = app.bootstrap.first_key_value() else {
        return;
    };
    if first != app.id {
        return;
    }
    match app.raft.is_initialized().await {
        Ok(false) => {
            let members: BTreeMap<NodeId, BasicNode> = app
                .bootstrap
                .iter()
                .map(|(id, url)| (*id, BasicNode::new(url)))
                .collect();
            match app.raft.initialize(members).await {
                Ok(()) => tracing::info!("formed the cluster from the bootstrap members"),
                Err(e) => tracing::warn!(error = %e, "bootstrap initialization refused"),
            }
        }
        Ok(true) => {}
        Err(e) => tracing::error!(error = %e, "cannot tell whether the cluster is initialized"),
    }
}

async fn watch_raft_metrics(app: Arc<App>) {
    let mut rx = app.raft.metrics();
    let mut previous_leader = None;
    loop {
        {
            let m = rx.borrow_and_update();
            app.metrics.observe_raft(&m, previous_leader);
            if m.current_leader != previous_leader {
                tracing::info!(leader = ?m.current_leader, term = m.current_term, "leader changed");
            }
            previous_leader = m.current_leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
