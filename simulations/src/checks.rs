//! End-of-run invariants, checked after the workload stopped and the cluster healed:
//! - the replicas converge: one agreed leader, the same applied index and state hash everywhere;
//! - no acknowledged write is lost (I7): re-claiming every acknowledged nonce with other
//!   requirements answers `replay` (it is stored), and with its own answers `accepted`;
//! - writes that certainly failed, and writes that must not have committed (sent to a leader cut
//!   off from the majority), are not stored: claiming them with other requirements is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use x402_protocol::wire::{ClaimOutcome, NodeStatus};

use crate::cluster::SimCluster;
use crate::history::{Fate, History};
use crate::workload::{claim_request, Fingerprint, Workload};

/// Re-claims in flight at once during the checks.
const CHECK_CONCURRENCY: usize = 32;
const CHECK_DEADLINE: Duration = Duration::from_secs(5);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the final checks found.
#[derive(Clone, Debug)]
pub struct FinalReport {
    pub history: History,
    /// Statuses after the workload stopped and the cluster converged, before the checks wrote.
    pub converged: BTreeMap<u64, NodeStatus>,
    /// Statuses at the very end.
    pub end: BTreeMap<u64, NodeStatus>,
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl FinalReport {
    /// The (identical) state hash of every node at the end.
    pub fn state_hash(&self) -> &str {
        &self
            .end
            .values()
            .next()
            .expect("at least one node")
            .state_hash
    }

    /// The (identical) applied index of every node at the end.
    pub fn applied(&self) -> Option<u64> {
        self.end.values().next().and_then(|s| s.applied)
    }
}

/// Stops `workload`, waits for the cluster to converge and checks the invariants above. `absent`
/// names writes (outside the workload) that must not be stored; `other_claims` says whether
/// other clients (payments) claimed nonces too. Panics on any violation.
pub fn finish_and_check(
    cluster: &mut SimCluster,
    workload: &Workload,
    absent: &BTreeSet<u64>,
    other_claims: bool,
) -> FinalReport {
    workload.stop();
    cluster
        .wait_for(STOP_TIMEOUT, |_| workload.is_done().then_some(()))
        .expect("the workload did not stop");
    let history = workload.history();
    cluster.note(format!("workload stopped: {}", history.summary()));
    let anomalies = history.anomalies();
    assert!(
        anomalies.is_empty(),
        "fresh nonces answered other than `accepted`: {anomalies:#?}"
    );

    let converged = cluster
        .wait_converged(CONVERGE_TIMEOUT)
        .unwrap_or_else(|why| panic!("the cluster did not converge: {why}"));
    let fates = history.fates();
    let acked = history.acked();
    let failed = history.ops_with(Fate::Failed);
    let unknown = history.ops_with(Fate::Unknown);
    for s in converged.values() {
        assert!(
            s.claims as usize >= acked.len() && (other_claims || s.claims as usize <= fates.len()),
            "node-{} holds {} claims; {} writes were acknowledged and {} attempted",
            s.id,
            s.claims,
            acked.len(),
            fates.len()
        );
    }
    cluster.note(format!(
        "converged: applied {:?}, {} claims, state hash {}",
        converged.values().next().and_then(|s| s.applied),
        converged.values().next().map_or(0, |s| s.claims),
        &converged.values().next().map_or("", |s| &s.state_hash)[..16],
    ));

    // Acknowledged writes are stored: another fingerprint is a replay, their own is accepted.
    let members = cluster.members();
    let target = |op: u64| members[(op % members.len() as u64) as usize];
    for (fingerprint, expected) in [
        (Fingerprint::Other, ClaimOutcome::Replay),
        (Fingerprint::Main, ClaimOutcome::Accepted),
    ] {
        let requests = acked
            .iter()
            .map(|&op| (target(op), claim_request(op, fingerprint)))
            .collect();
        let answers = cluster.claim_many(requests, CHECK_CONCURRENCY, CHECK_DEADLINE);
        for (op, answer) in acked.iter().zip(answers) {
            match answer {
                Ok(r) if r.outcome == expected => {}
                other => panic!(
                    "acknowledged write {op} re-claimed with {fingerprint:?}: expected {expected:?}, got {other:?}; its attempts: {:#?}",
                    attempts_of(&history, *op)
                ),
            }
        }
    }
    cluster.note(format!(
        "all {} acknowledged claims are stored (replay with other requirements)",
        acked.len()
    ));

    // Writes that certainly failed, or could not commit, are not stored.
    let must_be_absent: BTreeSet<u64> = failed.union(absent).copied().collect();
    let requests = must_be_absent
        .iter()
        .map(|&op| (target(op), claim_request(op, Fingerprint::Other)))
        .collect();
    let answers = cluster.claim_many(requests, CHECK_CONCURRENCY, CHECK_DEADLINE);
    for (op, answer) in must_be_absent.iter().zip(answers) {
        match answer {
            Ok(r) if r.outcome == ClaimOutcome::Accepted => {}
            other => panic!(
                "write {op} should not be stored (it failed, or could not commit), but claiming it with other requirements answered {other:?}; its attempts: {:#?}",
                attempts_of(&history, *op)
            ),
        }
    }
    cluster.note(format!(
        "{} writes that failed or could not commit are not stored",
        must_be_absent.len()
    ));

    let end = cluster
        .wait_converged(CONVERGE_TIMEOUT)
        .unwrap_or_else(|why| panic!("the cluster did not converge after the checks: {why}"));
    for s in end.values() {
        let before = converged[&s.id].claims;
        assert_eq!(
            s.claims,
            before + must_be_absent.len() as u64,
            "node-{}: the checks should have added exactly the {} absent claims to {before}",
            s.id,
            must_be_absent.len()
        );
    }
    FinalReport {
        history,
        converged,
        end,
        acked: acked.len(),
        failed: failed.len(),
        unknown: unknown.len(),
    }
}

fn attempts_of(history: &History, op: u64) -> Vec<&crate::history::Attempt> {
    history.attempts.iter().filter(|a| a.op == op).collect()
}
