//! The fault scenarios the tests run, each a function of its seed that panics on any violated
//! invariant and otherwise reports what happened:
//! - [`partition_leader`]: the leader is cut off from the other nodes (clients still reach it),
//!   a new leader takes over, the old one commits nothing, the cluster heals and loses nothing;
//! - [`crash_leader`]: the leader crashes, writes continue, it restarts and catches up through a
//!   snapshot install (the log it lacks has been purged).

use std::collections::BTreeSet;
use std::time::Duration;

use sha2::{Digest, Sha256};
use x402_protocol::wire::{ClaimResponse, NodeStatus};

use crate::api::CallError;
use crate::checks::{finish_and_check, FinalReport};
use crate::clock::sim_elapsed_ms;
use crate::cluster::{node_authority, SimCluster, SimOptions};
use crate::workload::{claim_request, Fingerprint, Workload, WorkloadOptions};

/// How long the first leader may take to appear, and a replacement after a fault.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new leader may take to purge the log a crashed node lacks. openraft purges in
/// batches of `purge_batch_size` entries (1024 in the node's configuration), so this takes
/// over 1,000 writes.
const PURGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restarted node may take to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes sent straight to the isolated old leader.
const PROBES: u64 = 8;
/// Write numbers of the probes (far from the workload's).
const PROBE_BASE: u64 = 1 << 40;

/// When the partition starts and how long each phase lasts (simulated time).
#[derive(Clone, Copy, Debug)]
pub struct PartitionTiming {
    pub partition_at_ms: u64,
    pub partition_for_ms: u64,
    pub after_heal_ms: u64,
}

impl PartitionTiming {
    pub fn standard() -> Self {
        Self {
            partition_at_ms: 2_000,
            partition_for_ms: 4_000,
            after_heal_ms: 2_000,
        }
    }

    /// Still long enough for the old leader's writes to time out before the heal.
    pub fn short() -> Self {
        Self {
            partition_at_ms: 1_000,
            partition_for_ms: 3_000,
            after_heal_ms: 1_000,
        }
    }
}

/// What a scenario observed.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub seed: u64,
    pub old_leader: u64,
    pub new_leader: u64,
    /// From the fault to a new leader agreed by a majority.
    pub failover: Duration,
    pub final_report: FinalReport,
    /// Simulated time of the whole run.
    pub sim_time: Duration,
    /// Hash of the client history, the fault log and the final statuses: equal for two runs of
    /// one seed.
    pub trace_hash: String,
}

impl ScenarioReport {
    fn new(
        cluster: &SimCluster,
        old_leader: u64,
        new_leader: u64,
        failover: Duration,
        final_report: FinalReport,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(final_report.history.trace_hash());
        for (ms, text) in cluster.events.borrow().iter() {
            h.update(format!("{ms} {text}\n"));
        }
        for s in final_report.end.values() {
            h.update(format!(
                "{} {:?} {:?} {:?} {} {}\n",
                s.id, s.role, s.applied, s.last_log, s.claims, s.state_hash
            ));
        }
        Self {
            seed: cluster.options.seed,
            old_leader,
            new_leader,
            failover,
            sim_time: cluster.sim.elapsed(),
            trace_hash: hex::encode(h.finalize()),
            final_report,
        }
    }

    pub fn print(&self) {
        let f = &self.final_report;
        println!(
            "seed {}: leader node-{} -> node-{} in {:?}; {} acked, {} failed, {} unknown writes; \
             final applied {:?}, state hash {}; simulated {:?}; trace {}",
            self.seed,
            self.old_leader,
            self.new_leader,
            self.failover,
            f.acked,
            f.failed,
            f.unknown,
            f.applied(),
            f.state_hash(),
            self.sim_time,
            self.trace_hash
        );
    }
}

/// Cuts the leader off from the other nodes for a while (the clients still reach it) under a
/// continuous write load, then heals. Asserts:
/// - a new leader is agreed by the majority within [`ELECTION_TIMEOUT`];
/// - the isolated old leader commits nothing: its commit and applied indexes stay frozen, no
///   write sent to it during the partition is answered `accepted` before the heal, and the
///   probe writes sent only to it are absent after the heal;
/// - the majority keeps acknowledging writes during the partition;
/// - after the heal: the checks of [`finish_and_check`].
pub fn partition_leader(seed: u64, timing: PartitionTiming) -> ScenarioReport {
    let (mut cluster, workload) = start_with_workload(seed);

    cluster.run_until_ms(timing.partition_at_ms);
    let old = cluster
        .leader()
        .expect("no agreed leader before the partition");
    let acked_before = workload.history().acked().len();
    assert!(
        acked_before > 0,
        "no write was acknowledged before the partition"
    );
    cluster.note(format!(
        "leader node-{old}; {acked_before} writes acknowledged so far"
    ));
    let partition_ms = cluster.now_ms();
    let heal_ms = partition_ms + timing.partition_for_ms;
    cluster.isolate(old);

    // Writes sent only to the old leader while it is cut off: it still believes it leads, so
    // it appends them, but it cannot commit them.
    let probe_deadline = Duration::from_millis(cluster.options.propose_timeout_ms + 1_000);
    let mut probes = cluster.submit(move |client| async move {
        let mut handles = Vec::new();
        for op in PROBE_BASE..PROBE_BASE + PROBES {
            let client = client.clone();
            handles.push(tokio::task::spawn_local(async move {
                let request = claim_request(op, Fingerprint::Main);
                let answer = client
                    .claim(&node_authority(old), &request, probe_deadline)
                    .await;
                (op, answer, sim_elapsed_ms())
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("probe task"));
        }
        out
    });

    let (new, _) = cluster
        .wait_for_leader(ELECTION_TIMEOUT, &[old])
        .expect("the majority did not elect a new leader");
    let failover = Duration::from_millis(cluster.now_ms() - partition_ms);
    cluster.note(format!(
        "new leader node-{new} agreed by the majority {failover:?} after the partition"
    ));
    // Anything in flight when the links were cut is settled by now.
    cluster.run_until_ms(cluster.now_ms().max(partition_ms + 300));
    let frozen = cluster
        .status(old)
        .expect("the isolated old leader answers its clients");

    cluster.run_until_ms(heal_ms - 50);
    let late = cluster
        .status(old)
        .expect("the isolated old leader answers its clients");
    cluster.note(format!(
        "isolated node-{old} reports role {:?} term {}, committed {:?} (frozen at {:?}), last log {:?}",
        late.role, late.term, late.committed, frozen.committed, late.last_log
    ));
    assert_frozen(old, &frozen, &late);
    let probe_answers: Vec<(u64, Result<ClaimResponse, CallError>, u64)> = probes
        .try_take()
        .expect("the probe writes to the old leader were not answered before the heal");
    for (op, answer, at) in &probe_answers {
        assert!(
            answer.is_err(),
            "write {op} sent to the isolated old leader node-{old} was answered {answer:?} at {at} ms"
        );
    }
    cluster.note(format!(
        "{} probe writes to node-{old} answered: {:?}",
        probe_answers.len(),
        probe_answers
            .iter()
            .map(|(_, a, _)| a.as_ref().err().map(CallError::label))
            .collect::<BTreeSet<_>>()
    ));
    let accepted_by_old = workload.accepted_by(old, partition_ms, heal_ms);
    assert_eq!(
        accepted_by_old, 0,
        "the isolated old leader node-{old} answered {accepted_by_old} workload writes `accepted` during the partition"
    );
    let accepted_by_majority: usize = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != old)
        .map(|id| workload.accepted_by(id, partition_ms, heal_ms))
        .sum();
    assert!(
        accepted_by_majority > 0,
        "the majority acknowledged no write during the partition"
    );
    cluster.note(format!(
        "{accepted_by_majority} writes acknowledged by the majority during the partition"
    ));

    cluster.heal(old);
    cluster.run_for(Duration::from_millis(timing.after_heal_ms));
    let absent: BTreeSet<u64> = (PROBE_BASE..PROBE_BASE + PROBES).collect();
    let final_report = finish_and_check(&mut cluster, &workload, &absent, false);
    final_report.assert_live();
    ScenarioReport::new(&cluster, old, new, failover, final_report)
}

fn assert_frozen(old: u64, frozen: &NodeStatus, late: &NodeStatus) {
    assert_eq!(
        late.committed, frozen.committed,
        "the isolated old leader node-{old} advanced its commit index"
    );
    assert_eq!(
        late.applied, frozen.applied,
        "the isolated old leader node-{old} applied entries it could not have committed"
    );
    assert_eq!(
        late.claims, frozen.claims,
        "the isolated old leader node-{old} changed its state"
    );
}

/// Crashes the leader under a continuous write load, keeps it down until the new leader has
/// purged the log it lacks, restarts it. Asserts:
/// - a new leader is agreed by the remaining majority within [`ELECTION_TIMEOUT`];
/// - writes keep being acknowledged while it is down;
/// - the restarted node catches up (through a snapshot install) within [`CATCH_UP_TIMEOUT`];
/// - the checks of [`finish_and_check`], so it ends with the same state hash as the others.
pub fn crash_leader(seed: u64) -> ScenarioReport {
    let (mut cluster, workload) = start_with_workload(seed);

    cluster.run_until_ms(2_000);
    let old = cluster.leader().expect("no agreed leader before the crash");
    let before = cluster.status(old).expect("the leader answers");
    let crash_ms = cluster.now_ms();
    cluster.crash(old);
    let (new, _) = cluster
        .wait_for_leader(ELECTION_TIMEOUT, &[old])
        .expect("the remaining nodes did not elect a new leader");
    let failover = Duration::from_millis(cluster.now_ms() - crash_ms);
    cluster.note(format!(
        "new leader node-{new} agreed {failover:?} after the crash (node-{old} had last log {:?})",
        before.last_log
    ));

    // Down until the new leader has purged the log the crashed node lacks, so that it can
    // only catch up through a snapshot install.
    cluster.run_until_ms(crash_ms + 1_000);
    let leader_status = cluster
        .wait_for(PURGE_TIMEOUT, |c| {
            c.status(new).ok().filter(|s| s.purged > before.last_log)
        })
        .unwrap_or_else(|| {
            panic!(
                "node-{new} did not purge its log past {:?} (what node-{old} has) within {PURGE_TIMEOUT:?}",
                before.last_log
            )
        });
    let acked_while_down: usize = cluster
        .ids()
        .into_iter()
        .map(|id| workload.accepted_by(id, crash_ms, cluster.now_ms()))
        .sum();
    assert!(
        acked_while_down > 0,
        "no write was acknowledged while node-{old} was down"
    );
    cluster.note(format!(
        "{acked_while_down} writes acknowledged while node-{old} was down; leader committed {:?}, snapshot {:?}, purged {:?}",
        leader_status.committed, leader_status.snapshot, leader_status.purged
    ));

    let bounce_ms = cluster.now_ms();
    cluster.bounce(old);
    let target = leader_status.committed;
    let caught_up = cluster
        .wait_for(CATCH_UP_TIMEOUT, |c| {
            c.status(old).ok().filter(|s| s.applied >= target)
        })
        .unwrap_or_else(|| panic!("node-{old} did not catch up to {target:?} after its restart"));
    cluster.note(format!(
        "node-{old} caught up {} ms after its restart: applied {:?}, snapshot {:?}, role {:?}",
        cluster.now_ms() - bounce_ms,
        caught_up.applied,
        caught_up.snapshot,
        caught_up.role
    ));
    assert!(
        caught_up.snapshot >= leader_status.purged,
        "node-{old} caught up past purged entries without a snapshot covering them"
    );

    cluster.run_for(Duration::from_secs(1));
    let final_report = finish_and_check(&mut cluster, &workload, &BTreeSet::new(), false);
    final_report.assert_live();
    ScenarioReport::new(&cluster, old, new, failover, final_report)
}

/// A 3-node cluster with the writers running and a leader elected.
fn start_with_workload(seed: u64) -> (SimCluster, Workload) {
    let mut cluster = SimCluster::new(SimOptions::new(seed));
    let workload = cluster.start_workload(WorkloadOptions::default());
    let (first, took) = cluster
        .wait_for_leader(ELECTION_TIMEOUT, &[])
        .expect("no leader was elected at start");
    cluster.note(format!("initial leader node-{first} after {took:?}"));
    (cluster, workload)
}
