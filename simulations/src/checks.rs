//! End-of-run invariants, checked after the workload stopped and the cluster healed:
//! - the replicas converge: one agreed leader, the same applied index and state hash everywhere;
//! - no acknowledged write is lost (I7): re-claiming every acknowledged nonce with other
//!   requirements answers `replay` (it is stored), and with its own answers `accepted`;
//! - writes that certainly failed, and writes that must not have committed (sent to a leader cut
//!   off from the majority), are not stored: claiming them with other requirements is accepted;
//! - the healed cluster is live: every re-claim is decided within [`LIVENESS_DEADLINE`].
//!
//! A re-claim is idempotent (the same nonce and requirements answer the same), so one that gets
//! an undecided answer (`504 outcome_unknown`, `503`, a lost answer) is sent again, to the next
//! member, until it is decided. A definite answer that is wrong is a safety violation and panics
//! at once; a re-claim still undecided at the deadline is a liveness violation, reported in
//! [`FinalReport::liveness`]. One timed-out request is neither (seeds 1509 and 1530 once failed
//! on a single 5 s attempt that answered 504 while a five-node cluster settled after the heal).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use x402_protocol::wire::{ClaimOutcome, ClaimResponse, NodeStatus};

use crate::api::CallError;
use crate::cluster::SimCluster;
use crate::history::{Fate, History};
use crate::workload::{claim_request, Fingerprint, Workload};

/// Re-claims in flight at once during the checks.
const CHECK_CONCURRENCY: usize = 32;
/// How long one re-claim may take.
const CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// How long, from the first round, the re-claims of one check may stay undecided before the
/// cluster is called not live. Six single deadlines: elections after a heal take under 2 s in
/// every seed of the CI budget.
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between rounds of re-claims, so a cluster electing a leader is not flooded.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
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
    /// Re-claims the healed cluster did not decide within [`LIVENESS_DEADLINE`], one line each.
    pub liveness: Vec<String>,
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

    /// Panics if some re-claim was not decided in time (for scenarios, whose runs must be live).
    pub fn assert_live(&self) {
        assert!(
            self.liveness.is_empty(),
            "the healed cluster was not live:\n{}",
            self.liveness.join("\n")
        );
    }

    /// The (identical) applied index of every node at the end.
    pub fn applied(&self) -> Option<u64> {
        self.end.values().next().and_then(|s| s.applied)
    }
}

/// Stops `workload`, waits for the cluster to converge and checks the invariants above. `absent`
/// names writes (outside the workload) that must not be stored; `other_claims` says whether
/// other clients (payments) claimed nonces too. Panics on any safety violation; liveness
/// violations are in the report.
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
    let mut liveness = Vec::new();
    let ops: Vec<u64> = acked.iter().copied().collect();
    for (fingerprint, expected) in [
        (Fingerprint::Other, ClaimOutcome::Replay),
        (Fingerprint::Main, ClaimOutcome::Accepted),
    ] {
        let answers = claim_until_decided(cluster, &ops, fingerprint);
        for (op, answer) in ops.iter().zip(answers) {
            match answer {
                Ok(r) if r.outcome == expected => {}
                Err(Undecided(last)) => liveness.push(format!(
                    "acknowledged write {op} re-claimed with {fingerprint:?} was not decided within {} s after the heal; last answer: {last}",
                    LIVENESS_DEADLINE.as_secs()
                )),
                Ok(other) => panic!(
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
    let must_be_absent: Vec<u64> = failed.union(absent).copied().collect();
    let answers = claim_until_decided(cluster, &must_be_absent, Fingerprint::Other);
    for (op, answer) in must_be_absent.iter().zip(answers) {
        match answer {
            Ok(r) if r.outcome == ClaimOutcome::Accepted => {}
            Err(Undecided(last)) => liveness.push(format!(
                "write {op} (failed, or could not commit) claimed with other requirements was not decided within {} s after the heal; last answer: {last}",
                LIVENESS_DEADLINE.as_secs()
            )),
            Ok(other) => panic!(
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
    // An undecided re-claim may or may not have added its claim, so the count is exact only
    // when every re-claim was decided.
    if liveness.is_empty() {
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
    }
    FinalReport {
        history,
        converged,
        end,
        acked: acked.len(),
        failed: failed.len(),
        unknown: unknown.len(),
        liveness,
    }
}

/// The last undecided answer of a re-claim that ran out of time.
struct Undecided(String);

/// Claims every op of `ops` with `fingerprint`, in rounds: the undecided ones (`503`, `504`, a
/// lost or undelivered request) go again, each to the next member, until all are decided or
/// [`LIVENESS_DEADLINE`] has passed. Answers in the order of `ops`. A `4xx` refusal panics at
/// once: a re-claim never deserves one, so it is a wrong answer, not an undecided one.
fn claim_until_decided(
    cluster: &mut SimCluster,
    ops: &[u64],
    fingerprint: Fingerprint,
) -> Vec<Result<ClaimResponse, Undecided>> {
    let members = cluster.members();
    let started = cluster.now_ms();
    let mut answers: Vec<Result<ClaimResponse, Undecided>> = ops
        .iter()
        .map(|_| Err(Undecided("never sent".into())))
        .collect();
    for round in 0u64.. {
        let pending: Vec<usize> = (0..ops.len()).filter(|&i| answers[i].is_err()).collect();
        let out_of_time = cluster.now_ms() - started >= LIVENESS_DEADLINE.as_millis() as u64;
        if pending.is_empty() || out_of_time {
            break;
        }
        if round > 0 {
            cluster.note(format!(
                "round {round} of re-claims with {fingerprint:?}: {} undecided",
                pending.len()
            ));
            cluster.run_for(RETRY_PAUSE);
        }
        let requests = pending
            .iter()
            .map(|&i| {
                let op = ops[i];
                let node = members[((op + round) % members.len() as u64) as usize];
                (node, claim_request(op, fingerprint))
            })
            .collect();
        let round_answers = cluster.claim_many(requests, CHECK_CONCURRENCY, CHECK_DEADLINE);
        for (i, answer) in pending.into_iter().zip(round_answers) {
            answers[i] = match answer {
                Ok(r) => Ok(r),
                Err(e @ CallError::Status { status, .. }) if (400..500).contains(&status) => {
                    panic!(
                        "re-claiming write {} with {fingerprint:?} was refused: {e}",
                        ops[i]
                    )
                }
                Err(e) => Err(Undecided(e.to_string())),
            };
        }
    }
    answers
}

fn attempts_of(history: &History, op: u64) -> Vec<&crate::history::Attempt> {
    history.attempts.iter().filter(|a| a.op == op).collect()
}
