//! [`SimCluster`]: n real `x402-node` replicas on turmoil hosts `node-1..node-n`, a control
//! client the test drives synchronously (status, claims, leader, convergence), an optional
//! workload client, and fault helpers (partitions, crash, bounce).
//!
//! Each node's log and snapshot store are created once, outside its host, so they outlive a
//! crash or bounce like a disk would. The harness iterates only ordered collections and reads no
//! wall clock, so a run is a function of its seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use x402_dev::memory_chain::MemoryChain;
use x402_node::chain::SharedChain;
use x402_node::cluster::breakers::ClusterBreakers;
use x402_node::config::{
    AssetSettings, BreakerSettings, Config, FacilitatorSettings, NetworkSettings, RateRule, Secrets,
};
use x402_node::facilitator::Facilitator;
use x402_node::metrics::Metrics;
use x402_node::node::{self, NodeSetup};
use x402_node::secret::Secret;
use x402_protocol::wire::{ClaimRequest, ClaimResponse, NodeStatus, Role};
use x402_raft_store::storage::{MemLogStore, MemSnapshotVault, StateMachineStore};

use crate::api::{AdminClient, CallError};
use crate::chain::{ChainLink, LinkSwitch, SIM_RPC_URL};
use crate::clock::SimClock;
use crate::net::{TurmoilConnector, TurmoilListener};
use crate::payments::{PaymentClients, PaymentOptions};
use crate::workload::{self, Workload, WorkloadOptions};

/// Port every node listens on.
pub const PORT: u16 = 7001;
/// The admin bearer token of every simulated node.
pub const ADMIN_TOKEN: &str = "sim-admin-token-000000";
/// The cluster secret of every simulated node.
pub const CLUSTER_SECRET: &str = "sim-cluster-secret-000000";
/// Host name of the control client.
pub const CONTROL_HOST: &str = "control";
/// Host name of the workload client.
pub const WORKLOAD_HOST: &str = "client";

/// Host name of the payment clients.
pub const PAYMENTS_HOST: &str = "payers";

/// Deadline of one status call.
const STATUS_DEADLINE: Duration = Duration::from_millis(500);
/// How often waiting helpers look again.
const POLL: Duration = Duration::from_millis(50);

pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

pub fn node_authority(id: u64) -> String {
    format!("node-{id}:{PORT}")
}

pub fn node_url(id: u64) -> String {
    format!("http://{}", node_authority(id))
}

/// How a simulated cluster is built.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Number of voters, named `node-1..node-n`; node 1 forms the cluster on first start.
    pub nodes: u64,
    /// Extra nodes `node-(n+1)..`, running from the start outside the cluster until a
    /// membership change adds them.
    pub spares: u64,
    /// Entries a purge removes at least (low, so purges and snapshot installs happen).
    pub purge_batch_size: u64,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Low, so snapshots, log purges and snapshot installs happen within a short run.
    pub snapshot_after_logs: u64,
    pub logs_to_keep: u64,
    /// How long a node lets a write take before answering `504 outcome_unknown`.
    pub propose_timeout_ms: u64,
    /// Simulated time one step advances.
    pub tick: Duration,
    /// Simulated time after which turmoil fails the run.
    pub max_duration: Duration,
    pub min_latency: Duration,
    pub max_latency: Duration,
    /// The cluster-wide rate limits every node enforces.
    pub rate_limits: Vec<RateRule>,
    pub breaker: BreakerSettings,
    /// How long a settlement waits for its receipt before answering `settlement_pending`.
    pub receipt_timeout_ms: u64,
}

impl SimOptions {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            spares: 0,
            purge_batch_size: 1024,
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_after_logs: 50,
            logs_to_keep: 10,
            propose_timeout_ms: 2_000,
            tick: Duration::from_millis(1),
            max_duration: Duration::from_secs(120),
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(5),
            rate_limits: Vec::new(),
            breaker: BreakerSettings::default(),
            receipt_timeout_ms: 3_000,
        }
    }

    /// The configuration node `id` runs with.
    pub fn node_config(&self, id: u64) -> Config {
        let mut config = Config {
            node_id: id,
            listen: format!("0.0.0.0:{PORT}"),
            advertise_url: node_url(id),
            bootstrap: (1..=self.nodes).map(|n| (n, node_url(n))).collect(),
            ..Config::default()
        };
        config.raft.heartbeat_ms = self.heartbeat_ms;
        config.raft.election_min_ms = self.election_min_ms;
        config.raft.election_max_ms = self.election_max_ms;
        config.raft.snapshot_after_logs = self.snapshot_after_logs;
        config.raft.logs_to_keep = self.logs_to_keep;
        config.raft.purge_batch_size = self.purge_batch_size;
        config.limits.propose_timeout_ms = self.propose_timeout_ms;
        config.rate_limits = self.rate_limits.clone();
        config.breaker = self.breaker.clone();
        config.facilitator = self.facilitator_settings();
        config
    }

    /// One network, [`crate::world::CHAIN_ID`], served through [`SIM_RPC_URL`] with the
    /// simulation's token and signer keys.
    pub fn facilitator_settings(&self) -> FacilitatorSettings {
        FacilitatorSettings {
            networks: vec![NetworkSettings {
                network: format!("eip155:{}", crate::world::CHAIN_ID),
                rpc_urls: vec![SIM_RPC_URL.to_string()],
                signer_keys_env: Some(crate::world::SIGNER_KEYS_ENV.to_string()),
                assets: vec![AssetSettings {
                    address: crate::world::token_address().to_checksum(None),
                    name: crate::world::TOKEN_NAME.to_string(),
                    version: crate::world::TOKEN_VERSION.to_string(),
                }],
                receipt_timeout_ms: self.receipt_timeout_ms,
                receipt_poll_ms: 50,
                rpc_timeout_ms: 1_000,
                ..NetworkSettings::default()
            }],
            ..FacilitatorSettings::default()
        }
    }
}

/// The secrets of every simulated node.
pub fn secrets() -> Secrets {
    Secrets {
        cluster_secret: Secret::new(CLUSTER_SECRET),
        admin_token: Secret::new(ADMIN_TOKEN),
    }
}

/// What survives a node's crash: its "disk" and its clock.
#[derive(Clone)]
struct Disk {
    log: MemLogStore,
    vault: MemSnapshotVault,
    clock: SimClock,
    chain_link: LinkSwitch,
    chain: Arc<MemoryChain>,
}

/// A job the control client runs; its answer travels back through a oneshot channel.
type Job = Box<dyn FnOnce(Rc<AdminClient>) -> Pin<Box<dyn Future<Output = ()>>>>;

/// An answer the control client will deliver later (see [`SimCluster::submit`]).
pub struct Pending<T> {
    rx: oneshot::Receiver<T>,
}

impl<T> Pending<T> {
    /// The answer, once it has arrived.
    pub fn try_take(&mut self) -> Option<T> {
        match self.rx.try_recv() {
            Ok(v) => Some(v),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => panic!("the control client dropped a job"),
        }
    }
}

/// A simulated cluster and its clients.
pub struct SimCluster {
    pub sim: turmoil::Sim<'static>,
    pub options: SimOptions,
    disks: BTreeMap<u64, Disk>,
    down: BTreeSet<u64>,
    /// The nodes in the cluster's membership (voters and learners), as the harness changed it.
    members: BTreeSet<u64>,
    /// When each node was restarted (simulated ms).
    pub restarts: BTreeMap<u64, Vec<u64>>,
    /// Nodes removed from the membership (their ids are never reused).
    removed: BTreeSet<u64>,
    /// The chain every node settles on (outside the hosts: it survives every crash).
    pub chain: Arc<MemoryChain>,
    control: mpsc::UnboundedSender<Job>,
    /// Fault and milestone log: (simulated ms, text).
    pub events: Rc<RefCell<Vec<(u64, String)>>>,
}

impl SimCluster {
    /// Builds the simulation: seeds openraft's randomness on this thread, registers the nodes
    /// and the control client. Nothing runs until the simulation is stepped.
    pub fn new(options: SimOptions) -> Self {
        crate::init_tracing();
        x402_raft_store::runtime::seed_thread_rng(options.seed);
        let chain = crate::world::new_chain();
        let mut sim = turmoil::Builder::new()
            .rng_seed(options.seed)
            .tick_duration(options.tick)
            .simulation_duration(options.max_duration)
            .min_message_latency(options.min_latency)
            .max_message_latency(options.max_latency)
            .tcp_capacity(1 << 16)
            // A link made lossy by the schedule (`set_link_fail_rate`) comes back after ~20 ms.
            .repair_rate(0.05)
            .build();
        let mut disks = BTreeMap::new();
        for id in 1..=options.nodes + options.spares {
            let disk = Disk {
                log: MemLogStore::default(),
                vault: MemSnapshotVault::default(),
                clock: SimClock::new(),
                chain_link: LinkSwitch::default(),
                chain: chain.clone(),
            };
            disks.insert(id, disk.clone());
            let config = options.node_config(id);
            sim.host(node_name(id), move || {
                run_node(config.clone(), disk.clone())
            });
        }
        let nodes = options.nodes;
        let (control, jobs) = mpsc::unbounded_channel();
        sim.client(CONTROL_HOST, run_control(jobs));
        Self {
            sim,
            options,
            disks,
            down: BTreeSet::new(),
            members: (1..=nodes).collect(),
            removed: BTreeSet::new(),
            restarts: BTreeMap::new(),
            chain,
            control,
            events: Rc::default(),
        }
    }

    /// Starts the workload client. Call at most once per cluster.
    pub fn start_workload(&mut self, options: WorkloadOptions) -> Workload {
        let (workload, future) =
            workload::client_future(self.options.nodes, options, ADMIN_TOKEN.to_string());
        self.sim.client(WORKLOAD_HOST, future);
        workload
    }

    /// Starts the payment clients. Call at most once per cluster.
    pub fn start_payments(&mut self, options: PaymentOptions) -> PaymentClients {
        let (clients, future) =
            crate::payments::clients_future(self.options.seed, self.options.nodes, options);
        self.sim.client(PAYMENTS_HOST, future);
        clients
    }

    /// Node ids, `1..=n`.
    pub fn ids(&self) -> Vec<u64> {
        self.disks.keys().copied().collect()
    }

    /// Members of the cluster not crashed.
    pub fn running(&self) -> Vec<u64> {
        self.members
            .iter()
            .copied()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// The cluster's members as the harness last changed them.
    pub fn members(&self) -> Vec<u64> {
        self.members.iter().copied().collect()
    }

    /// Hosts not in the membership and never removed from it.
    pub fn spares(&self) -> Vec<u64> {
        (self.options.nodes + 1..=self.options.nodes + self.options.spares)
            .filter(|id| !self.members.contains(id) && !self.removed.contains(id))
            .collect()
    }

    /// Records a membership change the cluster acknowledged.
    pub fn set_membership(&mut self, added: Option<u64>, removed: Option<u64>) {
        if let Some(id) = added {
            self.members.insert(id);
        }
        if let Some(id) = removed {
            self.members.remove(&id);
            self.removed.insert(id);
        }
    }

    /// A node's clock, to skew it.
    pub fn clock(&self, id: u64) -> SimClock {
        self.disks[&id].clock.clone()
    }

    /// Whether node `id` reaches the chain (kept across its crashes).
    pub fn chain_link(&self, id: u64) -> LinkSwitch {
        self.disks[&id].chain_link.clone()
    }

    /// Simulated milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        self.sim.elapsed().as_millis() as u64
    }

    /// Records a milestone (printed with `--nocapture`).
    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        println!("[{:>6} ms] {text}", self.now_ms());
        self.events.borrow_mut().push((self.now_ms(), text));
    }

    /// Advances the simulation by one tick.
    pub fn step(&mut self) {
        if let Err(e) = self.sim.step() {
            panic!("simulation failed at {} ms: {e}", self.now_ms());
        }
    }

    /// Advances the simulation by `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.sim.elapsed() + duration;
        while self.sim.elapsed() < until {
            self.step();
        }
    }

    /// Advances the simulation until `ms` simulated milliseconds since the start.
    pub fn run_until_ms(&mut self, ms: u64) {
        while self.now_ms() < ms {
            self.step();
        }
    }

    /// Steps until `check` answers `Some`, looking every 50 ms, for at most `timeout`.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<T> {
        let until = self.sim.elapsed() + timeout;
        loop {
            if let Some(v) = check(self) {
                return Some(v);
            }
            if self.sim.elapsed() >= until {
                return None;
            }
            self.run_for(POLL);
        }
    }

    /// Hands `job` to the control client; its answer arrives while the simulation runs.
    pub fn submit<T, F, Fut>(&mut self, job: F) -> Pending<T>
    where
        T: 'static,
        F: FnOnce(Rc<AdminClient>) -> Fut + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = tx.send(job(client).await);
            })
        });
        if self.control.send(job).is_err() {
            panic!("the control client has stopped");
        }
        Pending { rx }
    }

    /// Runs `job` on the control client and steps the simulation until it answers.
    pub fn call<T, F, Fut>(&mut self, job: F) -> T
    where
        T: 'static,
        F: FnOnce(Rc<AdminClient>) -> Fut + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let mut pending = self.submit(job);
        loop {
            if let Some(v) = pending.try_take() {
                return v;
            }
            self.step();
        }
    }

    /// `GET /admin/status` of one node.
    pub fn status(&mut self, id: u64) -> Result<NodeStatus, CallError> {
        self.call(move |c| async move { c.status(&node_authority(id), STATUS_DEADLINE).await })
    }

    /// The status of every running node, asked concurrently.
    pub fn statuses(&mut self) -> BTreeMap<u64, Result<NodeStatus, CallError>> {
        let ids = self.running();
        self.call(move |c| async move {
            let mut handles = Vec::new();
            for id in ids {
                let c = c.clone();
                handles.push((
                    id,
                    tokio::task::spawn_local(async move {
                        c.status(&node_authority(id), STATUS_DEADLINE).await
                    }),
                ));
            }
            let mut out = BTreeMap::new();
            for (id, handle) in handles {
                let status = handle
                    .await
                    .unwrap_or_else(|e| Err(CallError::Lost(e.to_string())));
                out.insert(id, status);
            }
            out
        })
    }

    /// `POST /admin/claims` on one node.
    pub fn claim(
        &mut self,
        id: u64,
        request: ClaimRequest,
        deadline: Duration,
    ) -> Result<ClaimResponse, CallError> {
        self.call(move |c| async move { c.claim(&node_authority(id), &request, deadline).await })
    }

    /// Many claims, at most `concurrency` in flight; answers in the order of `requests`.
    pub fn claim_many(
        &mut self,
        requests: Vec<(u64, ClaimRequest)>,
        concurrency: usize,
        deadline: Duration,
    ) -> Vec<Result<ClaimResponse, CallError>> {
        self.call(move |c| async move {
            let permits = Arc::new(Semaphore::new(concurrency.max(1)));
            let mut handles = Vec::new();
            for (id, request) in requests {
                let c = c.clone();
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                handles.push(tokio::task::spawn_local(async move {
                    let answer = c.claim(&node_authority(id), &request, deadline).await;
                    drop(permit);
                    answer
                }));
            }
            let mut out = Vec::new();
            for handle in handles {
                out.push(
                    handle
                        .await
                        .unwrap_or_else(|e| Err(CallError::Lost(e.to_string()))),
                );
            }
            out
        })
    }

    /// The leader a majority of the cluster agrees on (same leader id and term), provided that
    /// node itself reports being leader in that term. A partitioned old leader that still calls
    /// itself leader is not enough.
    pub fn leader(&mut self) -> Option<u64> {
        let statuses = self.statuses();
        leader_of(&statuses, self.options.nodes)
    }

    /// Waits up to `timeout` for an agreed leader other than the `excluded` nodes; answers it and
    /// how long it took.
    pub fn wait_for_leader(
        &mut self,
        timeout: Duration,
        excluded: &[u64],
    ) -> Option<(u64, Duration)> {
        let started = self.sim.elapsed();
        let excluded = excluded.to_vec();
        let leader = self.wait_for(timeout, |c| c.leader().filter(|l| !excluded.contains(l)))?;
        Some((leader, self.sim.elapsed() - started))
    }

    /// Waits until every running node answers, all follow one agreed leader, exactly one node
    /// reports the leader role, and all have applied the same index (the leader's commit index)
    /// with the same state hash. Answers the statuses, or the last reason they did not agree.
    pub fn wait_converged(
        &mut self,
        timeout: Duration,
    ) -> Result<BTreeMap<u64, NodeStatus>, String> {
        let mut last = String::from("not checked");
        let nodes = self.options.nodes;
        let result = self.wait_for(timeout, |c| {
            let statuses = c.statuses();
            match converged(&statuses, nodes) {
                Ok(all) => Some(all),
                Err(why) => {
                    last = why;
                    None
                }
            }
        });
        result.ok_or(last)
    }

    /// Cuts every link between `id` and the other nodes (clients still reach it).
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != id {
                self.sim.partition(node_name(id), node_name(other));
            }
        }
        self.note(format!("PARTITION node-{id} from the other nodes"));
    }

    /// Restores every link between `id` and the other nodes.
    pub fn heal(&mut self, id: u64) {
        for other in self.ids() {
            if other != id {
                self.sim.repair(node_name(id), node_name(other));
            }
        }
        self.note(format!("HEAL node-{id}"));
    }

    /// Whether node `id` is crashed.
    pub fn is_down(&self, id: u64) -> bool {
        self.down.contains(&id)
    }

    /// Stops a node's software at once; its stores are kept.
    pub fn crash(&mut self, id: u64) {
        self.sim.crash(node_name(id));
        self.down.insert(id);
        self.note(format!("CRASH node-{id}"));
    }

    /// Restarts a node's software on its kept stores.
    pub fn bounce(&mut self, id: u64) {
        self.sim.bounce(node_name(id));
        self.down.remove(&id);
        let now = self.now_ms();
        self.restarts.entry(id).or_default().push(now);
        self.note(format!("BOUNCE node-{id}"));
    }
}

/// See [`SimCluster::leader`].
pub fn leader_of(
    statuses: &BTreeMap<u64, Result<NodeStatus, CallError>>,
    nodes: u64,
) -> Option<u64> {
    let majority = nodes as usize / 2 + 1;
    let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for status in statuses.values().flatten() {
        if let Some(leader) = status.leader_id {
            *votes.entry((leader, status.term)).or_default() += 1;
        }
    }
    votes.into_iter().find_map(|((leader, term), count)| {
        let confirmed = matches!(
            statuses.get(&leader),
            Some(Ok(s)) if s.role == Role::Leader && s.term == term
        );
        (count >= majority && confirmed).then_some(leader)
    })
}

/// See [`SimCluster::wait_converged`].
pub fn converged(
    statuses: &BTreeMap<u64, Result<NodeStatus, CallError>>,
    nodes: u64,
) -> Result<BTreeMap<u64, NodeStatus>, String> {
    let mut all = BTreeMap::new();
    for (id, status) in statuses {
        match status {
            Ok(s) => {
                all.insert(*id, s.clone());
            }
            Err(e) => return Err(format!("node-{id} did not answer: {e}")),
        }
    }
    let leader = leader_of(statuses, nodes).ok_or("no agreed leader")?;
    let leaders: Vec<u64> = all
        .values()
        .filter(|s| s.role == Role::Leader)
        .map(|s| s.id)
        .collect();
    if leaders != [leader] {
        return Err(format!("nodes in the leader role: {leaders:?}"));
    }
    let committed = all[&leader].committed;
    for s in all.values() {
        if s.leader_id != Some(leader) {
            return Err(format!(
                "node-{} follows {:?}, not {leader}",
                s.id, s.leader_id
            ));
        }
        if s.applied != committed {
            return Err(format!(
                "node-{} applied {:?}, leader committed {committed:?}",
                s.id, s.applied
            ));
        }
        if s.state_hash != all[&leader].state_hash {
            return Err(format!(
                "node-{} state hash differs from the leader's",
                s.id
            ));
        }
    }
    Ok(all)
}

async fn run_node(config: Config, disk: Disk) -> turmoil::Result {
    let id = config.node_id;
    let metrics = Metrics::new(id).map_err(|e| e.to_string())?;
    let state_machine = StateMachineStore::open(disk.vault).map_err(|e| e.to_string())?;
    crate::signing::register(id, state_machine.view());
    // Listening before Raft starts: peers that find nobody listening back off.
    let listener = TurmoilListener::bind(&config.listen).await?;
    let (limits, _) = x402_node::serve::ServeLimits::from_config(&config.limits);
    let breakers = Arc::new(ClusterBreakers::new(config.breaker.clone()));
    let link = ChainLink::new(
        disk.chain.clone(),
        disk.chain_link.clone(),
        breakers.clone(),
    );
    let chains = BTreeMap::from([(crate::world::CHAIN_ID, Arc::new(link) as SharedChain)]);
    let facilitator =
        Facilitator::with_chains(&config.facilitator, chains).map_err(|e| e.to_string())?;
    let app = node::start(NodeSetup {
        config,
        secrets: secrets(),
        clock: Arc::new(disk.clock),
        connector: Arc::new(TurmoilConnector),
        peer_tls: None,
        metrics,
        log: disk.log,
        state_machine,
        facilitator: Arc::new(facilitator),
        breakers,
    })
    .await
    .map_err(|e| e.to_string())?;
    x402_node::serve::serve(
        listener,
        x402_node::http::Routers::new(app).single(),
        limits,
        None,
        std::future::pending::<()>(),
    )
    .await;
    Ok(())
}

/// The control client: runs each job it receives as its own task, until the cluster is dropped.
async fn run_control(mut jobs: mpsc::UnboundedReceiver<Job>) -> turmoil::Result {
    let client = Rc::new(AdminClient::new(ADMIN_TOKEN));
    while let Some(job) = jobs.recv().await {
        tokio::task::spawn_local(job(client.clone()));
    }
    Ok(())
}
