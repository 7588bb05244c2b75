//! `kill -9` of the leader under load (guarantee I7): while writers keep claiming through every
//! node, the leader is SIGKILLed; the survivors elect a new leader, writes resume, every claim
//! any node acknowledged (before or after the kill) is still held, and the killed node, once
//! restarted, catches up to the same state.

use std::time::{Duration, Instant};

use x402_protocol::wire::ClaimRequest;
use x402_tests::workload::{self, Writer};
use x402_tests::LocalCluster;

/// Concurrent writers: enough to have writes in flight at the moment of the kill.
const WORKERS: usize = 8;

#[tokio::test]
async fn leader_kill9_under_load_loses_no_acknowledged_claim() {
    let mut cluster = LocalCluster::start(3).await;
    let old_leader = cluster.leader_id().await;
    let salt = workload::new_salt();
    let writer = Writer::start(cluster.admins(&cluster.ids()), salt, 0, WORKERS);

    // Some acknowledged writes before the kill.
    writer.wait_acked(100, Duration::from_secs(30)).await;
    let acked_before = writer.acked();
    cluster.kill9(old_leader);
    let killed_at = Instant::now();

    // A new leader among the survivors.
    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, old_leader, "a dead node cannot lead");
    let elected_after = killed_at.elapsed();

    // Writes resume: acknowledged claims answered after the kill.
    writer
        .wait_acked_since(killed_at, 100, Duration::from_secs(30))
        .await;
    let report = writer.stop().await;
    let after_kill = report.acked.iter().filter(|a| a.at > killed_at).count();
    eprintln!(
        "acked {acked_before} before the kill, {after_kill} after; new leader {new_leader} \
         agreed {elected_after:?} after the kill; failed attempts (retried): {:?}",
        report.errors
    );
    assert!(
        report.unexpected.is_empty(),
        "fresh claims answered something else than accepted: {:?}",
        report.unexpected
    );
    assert!(
        report.abandoned.is_empty(),
        "claims no node answered within the deadline: {:?}",
        report.abandoned
    );

    // Every acknowledged claim is held by the survivors.
    let survivors = cluster.running_ids();
    let acked: Vec<ClaimRequest> = report.acked.iter().map(|a| a.claim.clone()).collect();
    workload::assert_all_held(&cluster.admins(&survivors), &acked, 8).await;

    // The killed node comes back and catches up to byte-equal state.
    cluster.restart(old_leader);
    let statuses = cluster.wait_converged().await;
    assert_eq!(statuses.len(), 3);
    for s in &statuses {
        assert!(
            s.claims >= acked.len() as u64,
            "node {} holds {} claims, fewer than the {} acknowledged",
            s.id,
            s.claims,
            acked.len()
        );
    }
    // And it serves them: the restarted node refuses a replay of a claim acknowledged before
    // the kill, and of one acknowledged while it was down.
    let before = report
        .acked
        .iter()
        .find(|a| a.at < killed_at)
        .expect("a claim acknowledged before the kill");
    let during = report
        .acked
        .iter()
        .find(|a| a.at > killed_at)
        .expect("a claim acknowledged after the kill");
    for a in [before, during] {
        workload::assert_all_held(
            &cluster.admins(&[old_leader]),
            std::slice::from_ref(&a.claim),
            1,
        )
        .await;
    }
    // Nothing moved in between: converged again, with the two replays added.
    cluster.wait_converged().await;
}
