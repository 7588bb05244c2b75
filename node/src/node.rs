//! Assembling one replica: Raft, the peer client, the proposer, background duties and the HTTP
//! router, from storage and seams chosen by the caller (the binary or a simulation).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use x402_raft_store::storage::{ClusterIdStore, SnapshotVault, StateMachineStore, StateView};
use x402_raft_store::types::{LogId, NodeId, Raft, TypeConfig};

use crate::access::{leases, Access};
use crate::cluster::batcher::{BatchLimits, Batcher};
use crate::cluster::breakers::ClusterBreakers;
use crate::cluster::expiry::{self, Expiry};
use crate::cluster::handoff::{self, HandOffError};
use crate::cluster::identity::ClusterIdentity;
use crate::cluster::membership::{Members, MembershipError};
use crate::cluster::network::Network;
use crate::cluster::peer_client::PeerClient;
use crate::cluster::proposer::{known_leader, Proposer};
use crate::cluster::read_barrier::ReadBarrier;
use crate::cluster::writer::Writer;
use crate::config::{Config, Limits, Secrets};
use crate::facilitator::context::Context;
use crate::facilitator::{reconcile, Facilitator};
use crate::metrics::Metrics;
use crate::seams::{SharedClock, SharedConnector};
use crate::tls::server::ServerTls;

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
    /// The node's peer TLS (certificate, key, cluster CA), for `https://` members.
    pub peer_tls: Option<Arc<ServerTls>>,
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
    pub barrier: ReadBarrier,
    pub members: Members,
    /// What `/verify`, `/settle` and the reconciler work with.
    pub payments: Context,
    /// Set once a shutdown began: `/readyz` answers 503 from then on.
    shutting_down: AtomicBool,
    /// When this node last became leader (none while it does not lead): a hand-off waits for
    /// the lease that starts then.
    led_since: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl App {
    /// The leader's id and URL, when known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        match known_leader(&self.raft) {
            (Some(id), Some(url)) => Some((id, url)),
            _ => None,
        }
    }

    /// Marks the node as shutting down: not ready from now on (load balancers stop sending).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Hands this leader's leadership to `to`, or to any caught-up voter, within `bound`
    /// ([`handoff`]); returns the new leader.
    pub async fn hand_off(
        &self,
        to: Option<NodeId>,
        bound: Duration,
    ) -> Result<NodeId, HandOffError> {
        let led_since = *crate::sync::lock(&self.led_since);
        handoff::hand_off(
            &self.raft,
            &self.proposer,
            &self.peers,
            to,
            bound,
            led_since,
        )
        .await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid raft configuration: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft failed to start: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
}

/// Builds and starts a replica. Bind the listener *before* calling this: Raft starts sending
/// RPCs at once, and a peer that finds nobody listening backs off for a while.
pub async fn start<LS, V>(setup: NodeSetup<LS, V>) -> Result<Arc<App>, StartError>
where
    LS: RaftLogStorage<TypeConfig> + ClusterIdStore + Clone,
    V: SnapshotVault,
{
    let NodeSetup {
        config,
        secrets,
        clock,
        connector,
        peer_tls,
        metrics,
        log,
        state_machine,
        facilitator,
        breakers,
    } = setup;
    let id = config.node_id;
    let identity = ClusterIdentity::new(Arc::new(log.clone()));
    let peers = PeerClient::new(
        connector,
        peer_tls,
        identity,
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
    let writer = Writer::new(batcher.clone());
    let barrier = ReadBarrier::new(id, raft.clone(), peers.clone(), proposer.timeout());
    let payments = Context {
        id,
        facilitator: facilitator.clone(),
        state: state.clone(),
        writer: writer.clone(),
        barrier: barrier.clone(),
        clock: clock.clone(),
    };
    let members = Members::new(
        id,
        config.member_url(),
        raft.clone(),
        peers.clone(),
        config.bootstrap.clone(),
    );
    let app = Arc::new(App {
        id,
        url: config.member_url(),
        raft: raft.clone(),
        proposer,
        writer,
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
        barrier,
        members,
        payments,
        shutting_down: AtomicBool::new(false),
        led_since: std::sync::Mutex::new(None),
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
    tokio::spawn(crate::cluster::warm_peers::run(
        id,
        app.raft.clone(),
        app.peers.clone(),
    ));
    tokio::spawn(leases::run_sweeper(
        app.access.leases.clone(),
        app.writer.clone(),
        Duration::from_millis((config.rate_limit.lease_ms / 2).max(100)),
    ));
    let expiry = Expiry {
        leadership: app.barrier.clone(),
        proposer: app.proposer.clone(),
        state: app.state.clone(),
        clock: app.clock.clone(),
    };
    tokio::spawn(expiry::run(
        expiry,
        Duration::from_millis(config.limits.expiry_interval_ms),
    ));
    tokio::spawn(reconcile::run(
        app.payments.clone(),
        app.metrics.unfinished_settlements.clone(),
    ));
    tokio::spawn(bootstrap_if_first(app.clone()));
    Ok(app)
}

/// Keeps the breaker gauges in step with the applied state.
async fn refresh_breaker_metrics(app: Arc<App>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        app.breakers.refresh_metrics();
    }
}

/// How often the first bootstrap member tries again to reach the others.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(300);

/// On first start, the lowest-id bootstrap member forms the cluster once every bootstrap
/// member answers (each must take the cluster id first, see `Members::init`).
async fn bootstrap_if_first(app: Arc<App>) {
    let Some((&first, _)) = app.bootstrap.first_key_value() else {
        return;
    };
    if first != app.id {
        return;
    }
    let mut told = false;
    loop {
        match app.raft.is_initialized().await {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot tell whether the cluster is initialized");
                return;
            }
        }
        match app.members.init(BTreeMap::new()).await {
            Ok(_) => {
                tracing::info!(
                    cluster_id = ?app.peers.identity().current(),
                    "formed the cluster from the bootstrap members"
                );
                return;
            }
            Err(MembershipError::NotJoined { id, url, error }) => {
                if !told {
                    tracing::info!(member = id, %url, %error,
                        "waiting for every bootstrap member before forming the cluster");
                    told = true;
                }
                tokio::time::sleep(BOOTSTRAP_RETRY).await;
            }
            Err(MembershipError::AlreadyInitialized(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap initialization refused");
                return;
            }
        }
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
                let leads = m.current_leader == Some(app.id);
                *crate::sync::lock(&app.led_since) = leads.then(tokio::time::Instant::now);
            }
            previous_leader = m.current_leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
