//! One randomized simulation run ("VOPR", after TigerBeetle's): a 3- or 5-node cluster of real
//! nodes on turmoil, settling payments on the simulated chain, under the fault schedule drawn
//! from the seed; then everything heals, the clients stop, and every checker of
//! [`crate::invariants`] (and [`crate::checks`] for the claims workload) reads the run.
//!
//! A run is a function of its seed: [`VoprReport::trace_hash`] is equal for two runs of one seed.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use x402_node::config::{BreakerSettings, LimitScope, RateRule};
use x402_protocol::wire::{AddLearnerRequest, MemberIdRequest};

use crate::api::CallError;
use crate::checks::finish_and_check;
use crate::clock::sim_elapsed_ms;
use crate::cluster::{node_authority, node_name, node_url, SimCluster, SimOptions};
use crate::faults::{Episode, Fault, FaultMode, FaultPlan, PlanLimits};
use crate::invariants::{self, Sample};
use crate::payments::{self, PayAnswer, PaymentOptions, Requirements, Signer, Step, NONCE_USED};
use crate::rng::SimRng;
use crate::signing;
use crate::workload::WorkloadOptions;
use crate::world;

/// The `/verify` limit every run enforces per client address.
pub const VERIFY_LIMIT: u32 = 40;
pub const VERIFY_WINDOW_MS: u64 = 2_000;
/// Deadline of one admin call of the harness (membership changes, elections).
const ADMIN_DEADLINE: Duration = Duration::from_secs(10);
/// The chain's base fee moves between these at every fault.
const BASE_FEES_WEI: [u128; 4] = [1_000_000_000, 1_500_000_000, 2_000_000_000, 3_000_000_000];
/// How often the status poller looks at every node.
const POLL_EVERY: Duration = Duration::from_millis(400);
const POLL_DEADLINE: Duration = Duration::from_millis(200);
/// Settle attempts per payment after the heal.
const FINAL_SETTLE_ATTEMPTS: usize = 12;
/// Deadline of one request of the final checks.
const FINAL_DEADLINE: Duration = Duration::from_secs(5);
/// Payments whose acknowledged claim is re-tried with other requirements after the heal.
const FINAL_CONFLICTS: usize = 30;

/// How one run is shaped; everything but the seed has a default.
#[derive(Clone, Debug)]
pub struct VoprOptions {
    pub seed: u64,
    /// 3 or 5 voters (drawn from the seed by [`VoprOptions::for_seed`]).
    pub nodes: u64,
    /// Simulated time during which faults happen.
    pub fault_ms: u64,
}

impl VoprOptions {
    pub fn for_seed(seed: u64) -> Self {
        let nodes = if SimRng::new(seed, 0).chance(50) {
            5
        } else {
            3
        };
        Self {
            seed,
            nodes,
            fault_ms: 30_000,
        }
    }

    fn plan_limits(&self) -> PlanLimits {
        PlanLimits {
            first_ms: 2_000,
            last_ms: self.fault_ms,
            long_outage_ms: 8_000,
            max_clock_ms: 1_000,
        }
    }

    fn sim_options(&self) -> SimOptions {
        let mut o = SimOptions::new(self.seed);
        o.nodes = self.nodes;
        o.spares = 1;
        // Coarser steps: a seed costs half the wall time; latencies stay 1–5 ms.
        o.tick = Duration::from_millis(2);
        o.snapshot_after_logs = 40;
        o.logs_to_keep = 10;
        o.purge_batch_size = 8;
        o.max_duration = Duration::from_millis(self.fault_ms) + Duration::from_secs(150);
        o.rate_limits = vec![RateRule {
            name: "verify-per-client".into(),
            per: LimitScope::ClientIp,
            limit: VERIFY_LIMIT,
            window_ms: VERIFY_WINDOW_MS,
            routes: vec!["/verify".into()],
        }];
        o.breaker = BreakerSettings {
            failures_to_open: 3,
            failure_window_ms: 2_000,
            open_ms: 1_500,
        };
        o
    }
}

/// What one run did and found.
#[derive(Clone, Debug)]
pub struct VoprReport {
    pub seed: u64,
    pub nodes: u64,
    pub plan: String,
    /// Fault modes actually applied (a drawn fault can be skipped, e.g. with no leader to cut).
    pub exercised: BTreeSet<FaultMode>,
    pub sim_ms: u64,
    pub violations: Vec<String>,
    pub summary: String,
    pub trace_hash: String,
    /// Every client request, one line each (printed with `SIM_VERBOSE=1`).
    pub attempt_lines: Vec<String>,
}

impl VoprReport {
    /// The report of a run the harness itself stopped with a panic (also a failure).
    pub fn panicked(seed: u64, nodes: u64, why: String) -> Self {
        Self {
            seed,
            nodes,
            plan: String::new(),
            exercised: BTreeSet::new(),
            sim_ms: 0,
            violations: vec![format!("the run panicked: {why}")],
            summary: format!("seed {seed} ({nodes} nodes): panicked"),
            trace_hash: String::new(),
            attempt_lines: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs seed `options.seed` to the end and reports; panics only on harness failures and on the
/// claims workload's own checks.
pub fn run(options: VoprOptions) -> VoprReport {
    let watch = signing::watch();
    let plan = FaultPlan::draw(options.seed, options.nodes, options.plan_limits());
    let described = plan.describe();
    println!("seed {}: {described}", options.seed);
    let sim_options = options.sim_options();
    let mut cluster = SimCluster::new(sim_options.clone());
    let workload = cluster.start_workload(WorkloadOptions {
        workers: 1,
        pause: Duration::from_millis(100),
        ..WorkloadOptions::default()
    });
    let payers = cluster.start_payments(PaymentOptions::default());
    let poller = Poller::start(&mut cluster);
    let mut faults = FaultRunner::new(options.seed);
    if cluster
        .wait_for_leader(Duration::from_secs(5), &[])
        .is_none()
    {
        panic!("seed {}: no leader was elected at start", options.seed);
    }

    let mut timeline: Vec<(u64, bool, usize, Episode)> = Vec::new();
    for (i, e) in plan.network.iter().chain(&plan.world).enumerate() {
        timeline.push((e.start_ms, true, i, e.clone()));
        timeline.push((e.end_ms, false, i, e.clone()));
    }
    // Ends before starts at one instant, so one fault is undone before the next is applied.
    timeline.sort_by_key(|(at, start, i, _)| (*at, *start, *i));
    for (at, start, i, episode) in timeline {
        cluster.run_until_ms(at);
        if start {
            faults.start(&mut cluster, i, &episode.fault);
        } else {
            faults.end(&mut cluster, i, &episode.fault);
        }
    }
    cluster.run_until_ms(options.fault_ms);
    faults.heal_everything(&mut cluster);
    cluster.run_for(Duration::from_secs(2));

    payers.stop();
    let mut violations = Vec::new();
    if cluster
        .wait_for(Duration::from_secs(30), |_| payers.is_done().then_some(()))
        .is_none()
    {
        violations.push("the payment clients did not stop".to_string());
    }
    poller.stop();
    let clients_stopped_ms = cluster.now_ms();
    // The claims workload's checks: convergence, no acknowledged claim lost (panics otherwise),
    // every re-claim decided in time (liveness, reported).
    let claims = finish_and_check(&mut cluster, &workload, &BTreeSet::new(), true);
    violations.extend(claims.liveness.iter().map(|l| format!("liveness: {l}")));
    final_payments(&mut cluster, &payers, &mut violations);
    cluster.run_for(Duration::from_millis(500));

    let log = payers.log();
    let chain = cluster.chain.clone();
    let token = world::token_address();
    let payer_addresses: Vec<_> = world::payers().iter().map(|p| p.address()).collect();
    let signer_addresses: Vec<_> = world::signers().iter().map(|s| s.address()).collect();
    let samples = poller.samples();
    let spread = plan.clock_spread_ms();
    violations.extend(invariants::linearizable_payments(&log));
    violations.extend(invariants::one_success_per_payment(&log));
    violations.extend(invariants::chain_settled_once(
        &log,
        &chain,
        token,
        &payer_addresses,
    ));
    violations.extend(invariants::signer_nonces(&chain, &signer_addresses));
    violations.extend(invariants::rate_limit_windows(
        &log,
        |s| matches!(s, Step::Verify(_)),
        VERIFY_LIMIT,
        VERIFY_WINDOW_MS,
        spread,
        |a| a.call_ms < clients_stopped_ms,
    ));
    violations.extend(invariants::breaker_epochs(&samples, &cluster.restarts));
    let signatures = signing::report();
    drop(watch);
    violations.extend(signatures.violations);
    violations.extend(invariants::hashes_by_applied_index(&samples));
    let end = match cluster.wait_converged(Duration::from_secs(20)) {
        Ok(end) => end,
        Err(why) => {
            violations.push(format!("the cluster did not converge at the end: {why}"));
            BTreeMap::new()
        }
    };
    let epochs: BTreeSet<u64> = end
        .values()
        .map(|s| s.breakers.iter().map(|b| b.epoch).max().unwrap_or(0))
        .collect();
    if epochs.len() > 1 {
        violations.push(format!("breaker epochs differ after the heal: {epochs:?}"));
    }

    let settled = log
        .attempts
        .iter()
        .filter(|a| matches!(a.answer, PayAnswer::Settled(_)))
        .map(|a| a.key)
        .collect::<BTreeSet<_>>()
        .len();
    let summary = format!(
        "seed {} ({} nodes): {} payments, {} settled, {} requests, {} chain transfers, {} signatures; claims: {}; {} samples; faults: {:?}; simulated {} ms",
        options.seed,
        options.nodes,
        log.payments.len(),
        settled,
        log.attempts.len(),
        chain.transfers().len(),
        signatures.signatures,
        claims.history.summary(),
        samples.len(),
        faults.exercised,
        cluster.now_ms(),
    );
    let mut h = Sha256::new();
    h.update(&described);
    for (ms, text) in cluster.events.borrow().iter() {
        h.update(format!("{ms} {text}\n"));
    }
    for a in &log.attempts {
        h.update(a.line());
        h.update("\n");
    }
    h.update(claims.history.trace_hash());
    for s in end.values() {
        h.update(format!(
            "{} {:?} {:?} {}\n",
            s.id, s.role, s.applied, s.state_hash
        ));
    }
    VoprReport {
        seed: options.seed,
        nodes: options.nodes,
        plan: described,
        exercised: faults.exercised.clone(),
        sim_ms: cluster.now_ms(),
        violations,
        summary,
        trace_hash: hex::encode(h.finalize()),
        attempt_lines: log.attempts.iter().map(|a| a.line()).collect(),
    }
}

/// Polls every node's status while the faults run.
struct Poller {
    stop: Rc<Cell<bool>>,
    samples: Rc<RefCell<Vec<Sample>>>,
}

impl Poller {
    fn start(cluster: &mut SimCluster) -> Self {
        let stop = Rc::new(Cell::new(false));
        let samples = Rc::new(RefCell::new(Vec::new()));
        let hosts = cluster.ids();
        let (stop_flag, out) = (stop.clone(), samples.clone());
        let _never_read = cluster.submit(move |client| async move {
            while !stop_flag.get() {
                let mut tasks = Vec::new();
                for id in hosts.clone() {
                    let client = client.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        (id, client.status(&node_authority(id), POLL_DEADLINE).await)
                    }));
                }
                for task in tasks {
                    if let Ok((id, Ok(status))) = task.await {
                        out.borrow_mut().push(Sample {
                            at_ms: sim_elapsed_ms(),
                            node: id,
                            applied: status.applied,
                            state_hash: status.state_hash,
                            breaker_epoch: status
                                .breakers
                                .iter()
                                .map(|b| b.epoch)
                                .max()
                                .unwrap_or(0),
                        });
                    }
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
        });
        Self { stop, samples }
    }

    fn stop(&self) {
        self.stop.set(true);
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.borrow().clone()
    }
}

/// Applies and undoes the schedule's faults, remembering what it must undo.
struct FaultRunner {
    rng: SimRng,
    exercised: BTreeSet<FaultMode>,
    /// Link cuts in force per episode: pairs of hosts.
    cuts: BTreeMap<usize, Vec<(u64, u64)>>,
    /// Clock offsets before a skew episode, to restore.
    skews: BTreeMap<usize, (u64, i64)>,
}

impl FaultRunner {
    fn new(seed: u64) -> Self {
        Self {
            rng: SimRng::new(seed, 2),
            exercised: BTreeSet::new(),
            cuts: BTreeMap::new(),
            skews: BTreeMap::new(),
        }
    }

    fn cut(&mut self, cluster: &mut SimCluster, episode: usize, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                if x != y {
                    cluster.sim.partition(node_name(x), node_name(y));
                    self.cuts.entry(episode).or_default().push((x, y));
                }
            }
        }
    }

    fn start(&mut self, cluster: &mut SimCluster, episode: usize, fault: &Fault) {
        cluster.note(format!("FAULT {fault:?}"));
        // Fees move on a real chain; a transaction signed twice is then two transactions.
        let base_fee = BASE_FEES_WEI[self.rng.below(BASE_FEES_WEI.len() as u64) as usize];
        cluster.chain.set_base_fee(base_fee);
        let hosts = cluster.ids();
        let applied = match fault {
            Fault::Isolate(node) => {
                self.cut(cluster, episode, &[*node], &hosts);
                true
            }
            Fault::Halves(a, b) => {
                self.cut(cluster, episode, a, b);
                true
            }
            Fault::LeaderMinority => match cluster.leader() {
                Some(leader) => {
                    let mut minority = vec![leader];
                    let members = cluster.members();
                    if members.len() >= 5 {
                        let others: Vec<u64> =
                            members.iter().copied().filter(|m| *m != leader).collect();
                        minority.push(*self.rng.pick(&others));
                    }
                    let majority: Vec<u64> = hosts
                        .iter()
                        .copied()
                        .filter(|h| !minority.contains(h))
                        .collect();
                    cluster.note(format!("leader node-{leader} in the minority {minority:?}"));
                    self.cut(cluster, episode, &minority, &majority);
                    true
                }
                None => false,
            },
            Fault::OneWay { from, to } => {
                cluster
                    .sim
                    .partition_oneway(node_name(*from), node_name(*to));
                true
            }
            Fault::Hold(a, b) => {
                cluster.sim.hold(node_name(*a), node_name(*b));
                true
            }
            Fault::Latency { node, ms } => {
                for h in &hosts {
                    if h != node {
                        cluster.sim.set_link_latency(
                            node_name(*node),
                            node_name(*h),
                            Duration::from_millis(*ms),
                        );
                    }
                }
                true
            }
            Fault::Loss { node, per_million } => {
                for h in &hosts {
                    if h != node {
                        cluster.sim.set_link_fail_rate(
                            node_name(*node),
                            node_name(*h),
                            *per_million as f64 / 1e6,
                        );
                    }
                }
                true
            }
            Fault::Crash(node) | Fault::LongOutage(node) => {
                if cluster.is_down(*node) || !cluster.members().contains(node) {
                    false
                } else {
                    cluster.crash(*node);
                    true
                }
            }
            Fault::ClusterRestart => {
                for id in cluster.running() {
                    cluster.crash(id);
                }
                true
            }
            Fault::MembershipChange => self.replace_member(cluster, episode),
            Fault::LeaderTransfer => self.transfer_leadership(cluster),
            Fault::ClockSkew { node, ms } | Fault::ClockJump { node, ms } => {
                let clock = cluster.clock(*node);
                let before = clock.skew_ms();
                self.skews.insert(episode, (*node, before));
                clock.set_skew_ms(before + ms);
                true
            }
            Fault::ChainOutage => {
                cluster.chain.set_unavailable(true);
                true
            }
            Fault::ChainCut(node) => {
                cluster.chain_link(*node).set_cut(true);
                true
            }
        };
        if applied {
            self.exercised.insert(fault.mode());
        } else {
            cluster.note(format!("SKIPPED {fault:?}"));
        }
    }

    fn end(&mut self, cluster: &mut SimCluster, episode: usize, fault: &Fault) {
        let hosts = cluster.ids();
        for (x, y) in self.cuts.remove(&episode).unwrap_or_default() {
            cluster.sim.repair(node_name(x), node_name(y));
        }
        match fault {
            Fault::OneWay { from, to } => {
                cluster.sim.repair_oneway(node_name(*from), node_name(*to))
            }
            Fault::Hold(a, b) => cluster.sim.release(node_name(*a), node_name(*b)),
            Fault::Latency { node, .. } => {
                for h in &hosts {
                    if h != node {
                        cluster.sim.set_link_latency(
                            node_name(*node),
                            node_name(*h),
                            cluster.options.max_latency,
                        );
                    }
                }
            }
            Fault::Loss { node, .. } => {
                for h in &hosts {
                    if h != node {
                        cluster
                            .sim
                            .set_link_fail_rate(node_name(*node), node_name(*h), 0.0);
                        cluster.sim.repair(node_name(*node), node_name(*h));
                    }
                }
            }
            Fault::Crash(node) | Fault::LongOutage(node) if cluster.is_down(*node) => {
                cluster.bounce(*node);
            }
            Fault::ClusterRestart => {
                for id in cluster.members() {
                    if cluster.is_down(id) {
                        cluster.bounce(id);
                    }
                }
            }
            Fault::ClockSkew { .. } => {
                if let Some((node, before)) = self.skews.remove(&episode) {
                    cluster.clock(node).set_skew_ms(before);
                }
            }
            Fault::ChainOutage => cluster.chain.set_unavailable(false),
            Fault::ChainCut(node) => cluster.chain_link(*node).set_cut(false),
            _ => {}
        }
        cluster.note(format!("END {fault:?}"));
    }

    /// Isolates a follower and replaces it by a spare while it is cut off.
    fn replace_member(&mut self, cluster: &mut SimCluster, episode: usize) -> bool {
        let Some(spare) = cluster.spares().first().copied() else {
            return false;
        };
        let Some((leader, followers)) = leader_and_followers(cluster) else {
            return false;
        };
        let gone = *self.rng.pick(&followers);
        let hosts = cluster.ids();
        self.cut(cluster, episode, &[gone], &hosts);
        let add = AddLearnerRequest {
            id: spare,
            url: node_url(spare),
            holds_cluster_id: None,
        };
        let authority = node_authority(leader);
        let add = serde_json::to_vec(&add).expect("encodes");
        let promote = serde_json::to_vec(&MemberIdRequest { id: spare }).expect("encodes");
        let remove = serde_json::to_vec(&MemberIdRequest { id: gone }).expect("encodes");
        let answer = cluster.call(move |c| async move {
            let call = |p: &'static str, body: Vec<u8>| {
                let c = c.clone();
                let authority = authority.clone();
                async move {
                    c.call::<serde_json::Value>(
                        hyper::Method::POST,
                        &authority,
                        p,
                        body,
                        ADMIN_DEADLINE,
                    )
                    .await
                }
            };
            call("/admin/members/add", add).await?;
            call("/admin/members/promote", promote).await?;
            call("/admin/members/remove", remove).await?;
            Ok::<_, CallError>(())
        });
        match answer {
            Ok(()) => {
                cluster.set_membership(Some(spare), Some(gone));
                cluster.note(format!(
                    "MEMBERSHIP node-{spare} added and promoted, node-{gone} removed while cut off"
                ));
                true
            }
            Err(e) => {
                // The change may have happened in part; find out from the cluster.
                cluster.note(format!("membership change failed: {e}"));
                self.learn_membership(cluster);
                false
            }
        }
    }

    /// Reads the membership from the leader after a change whose answer was lost.
    fn learn_membership(&mut self, cluster: &mut SimCluster) {
        let Some(leader) = cluster.leader() else {
            return;
        };
        if let Ok(status) = cluster.status(leader) {
            let now: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
            for id in cluster.members() {
                if !now.contains(&id) {
                    cluster.set_membership(None, Some(id));
                }
            }
            for id in now {
                if !cluster.members().contains(&id) {
                    cluster.set_membership(Some(id), None);
                }
            }
        }
    }

    /// Moves leadership: the leader's heartbeats are cut for one election timeout, then the
    /// target is told to campaign (openraft 0.9 has no leader-transfer call).
    fn transfer_leadership(&mut self, cluster: &mut SimCluster) -> bool {
        let Some((leader, followers)) = leader_and_followers(cluster) else {
            return false;
        };
        let target = *self.rng.pick(&followers);
        for f in &followers {
            cluster
                .sim
                .partition_oneway(node_name(leader), node_name(*f));
        }
        cluster.run_for(Duration::from_millis(
            cluster.options.election_max_ms + 2 * cluster.options.heartbeat_ms,
        ));
        let authority = node_authority(target);
        let _ = cluster.call(move |c| async move {
            c.call::<serde_json::Value>(
                hyper::Method::POST,
                &authority,
                "/admin/elect",
                Vec::new(),
                ADMIN_DEADLINE,
            )
            .await
        });
        for f in &followers {
            cluster.sim.repair_oneway(node_name(leader), node_name(*f));
        }
        cluster.note(format!(
            "LEADER TRANSFER from node-{leader}: node-{target} told to campaign"
        ));
        true
    }

    /// Undoes everything still in force: links, crashes, the chain; clocks keep their jumps.
    fn heal_everything(&mut self, cluster: &mut SimCluster) {
        let hosts = cluster.ids();
        for &a in &hosts {
            for &b in &hosts {
                if a < b {
                    cluster.sim.repair(node_name(a), node_name(b));
                    cluster.sim.release(node_name(a), node_name(b));
                }
            }
        }
        self.cuts.clear();
        for id in cluster.members() {
            if cluster.is_down(id) {
                cluster.bounce(id);
            }
            cluster.chain_link(id).set_cut(false);
        }
        cluster.chain.set_unavailable(false);
        cluster.note("HEAL everything");
    }
}

/// The agreed leader and the running members following it, if there is a leader and a follower.
fn leader_and_followers(cluster: &mut SimCluster) -> Option<(u64, Vec<u64>)> {
    let leader = cluster.leader()?;
    let followers: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|m| *m != leader)
        .collect();
    (!followers.is_empty()).then_some((leader, followers))
}

/// After the heal: every payment a client tried to settle is settled (or refused, if other
/// requirements claimed it first), with the transaction any earlier answer named; and some
/// acknowledged claims still refuse other requirements.
fn final_payments(
    cluster: &mut SimCluster,
    payers: &payments::PaymentClients,
    violations: &mut Vec<String>,
) {
    let log = payers.log();
    let members = cluster.members();
    let settle_keys: Vec<u64> = log
        .payments
        .iter()
        .filter(|(_, p)| !p.flood)
        .map(|(k, _)| *k)
        .collect();
    let valid_keys: Vec<u64> = log
        .attempts
        .iter()
        .filter(|a| a.answer == PayAnswer::Valid && a.step == Step::Verify(Requirements::Main))
        .map(|a| a.key)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let stride = (valid_keys.len() / FINAL_CONFLICTS).max(1);
    let conflict_keys: Vec<u64> = valid_keys.into_iter().step_by(stride).collect();
    let payments_of = log.payments.clone();
    let recorder = payers.clone();
    let outcome = cluster.call(move |_admin| async move {
        let client = Rc::new(crate::api::AdminClient::new(""));
        let signer = Rc::new(Signer::new());
        let mut unsettled = Vec::new();
        let mut tasks = Vec::new();
        for (i, key) in settle_keys.into_iter().enumerate() {
            let (client, signer, recorder) = (client.clone(), signer.clone(), recorder.clone());
            let payment = payments_of[&key].clone();
            let members = members.clone();
            tasks.push(tokio::task::spawn_local(async move {
                // Spread the settles over time a little, as real traffic would be.
                tokio::time::sleep(Duration::from_millis(i as u64 % 50 * 10)).await;
                for attempt in 0..FINAL_SETTLE_ATTEMPTS {
                    let node = members[(key as usize + attempt) % members.len()];
                    let made = payments::attempt(
                        &client,
                        &signer,
                        key,
                        &payment,
                        Step::Settle { keyed: false },
                        node,
                        FINAL_DEADLINE,
                    )
                    .await;
                    let answer = made.answer.clone();
                    recorder.record(made);
                    match answer {
                        PayAnswer::Settled(_) => return None,
                        PayAnswer::NotSettled { ref reason, .. } if reason == NONCE_USED => {
                            return None
                        }
                        _ => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                Some(key)
            }));
        }
        for task in tasks {
            if let Ok(Some(key)) = task.await {
                unsettled.push(key);
            }
        }
        for key in conflict_keys.iter().copied() {
            let payment = payments_of[&key].clone();
            let node = members[key as usize % members.len()];
            let made = payments::attempt(
                &client,
                &signer,
                key,
                &payment,
                Step::Verify(Requirements::Other),
                node,
                FINAL_DEADLINE,
            )
            .await;
            recorder.record(made);
        }
        unsettled
    });
    for key in outcome {
        violations.push(format!(
            "payment {key} was neither settled nor refused in {FINAL_SETTLE_ATTEMPTS} attempts after the heal"
        ));
    }
}
