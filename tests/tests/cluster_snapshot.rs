//! Catch-up from a snapshot: with a small snapshot policy, a follower is stopped while the
//! others write enough to snapshot and purge the log past everything the follower has. Restarted,
//! it can only catch up by installing the leader's snapshot; it must end with byte-equal state.

use std::time::{Duration, Instant};

use x402_tests::workload;
use x402_tests::{ClusterOptions, LocalCluster};

const SNAPSHOT_AFTER_LOGS: u64 = 100;
const LOGS_TO_KEEP: u64 = 20;

#[tokio::test]
async fn stopped_follower_catches_up_from_a_snapshot() {
    let options = ClusterOptions::default()
        .env("X402_RAFT__SNAPSHOT_AFTER_LOGS", SNAPSHOT_AFTER_LOGS)
        .env("X402_RAFT__LOGS_TO_KEEP", LOGS_TO_KEEP);
    let mut cluster = LocalCluster::start_with(3, options).await;
    let salt = workload::new_salt();
    let all = cluster.ids();

    // Some history everyone has.
    let mut written = workload::claim_many(&cluster.admins(&all), salt, 0..30, 4).await;
    cluster.wait_converged().await;

    let leader = cluster.leader_id().await;
    let follower = *all.iter().find(|&&i| i != leader).unwrap();
    let behind = cluster.status(follower).await;
    let follower_last = behind.last_log.expect("follower has a log");
    cluster.stop(follower);

    // Write through the two others until the leader's log is purged past the follower's end.
    let others: Vec<u64> = all.iter().copied().filter(|&i| i != follower).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 30;
    let purged = loop {
        written
            .extend(workload::claim_many(&cluster.admins(&others), salt, next..next + 50, 8).await);
        next += 50;
        let status = cluster.status(leader).await;
        if let Some(purged) = status.purged.filter(|&p| p > follower_last) {
            break purged;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never purged past index {follower_last}: {status:?}"
        );
    };
    let leader_status = cluster.status(leader).await;
    assert!(
        leader_status.snapshot.is_some_and(|s| s >= purged),
        "purged {purged} without a snapshot covering it: {leader_status:?}"
    );

    // Restart: entries follower_last+1..=purged exist only inside the leader's snapshot.
    cluster.restart(follower);
    let statuses = cluster.wait_converged().await;
    let caught_up = statuses.iter().find(|s| s.id == follower).unwrap();
    assert_eq!(caught_up.claims, written.len() as u64);
    assert!(
        caught_up.snapshot.is_some_and(|s| s >= purged),
        "node {follower} converged without a snapshot covering the purged index {purged}: \
         {caught_up:?}"
    );
    assert!(
        caught_up.purged.is_some_and(|p| p > follower_last),
        "node {follower} should have discarded its log up to the installed snapshot: {caught_up:?}"
    );

    eprintln!(
        "follower {follower} stopped at last_log {follower_last}; leader purged to {purged}; \
         after catch-up the follower has snapshot {:?}, purged {:?}, applied {:?}",
        caught_up.snapshot, caught_up.purged, caught_up.applied
    );

    // The caught-up node serves what it got from the snapshot: every claim, replays refused.
    workload::assert_all_held(&cluster.admins(&[follower]), &written[..40], 4).await;

    // It keeps working as a follower after the install, and survives a restart on it.
    cluster.kill9(follower);
    cluster.restart(follower);
    workload::claim_many(&cluster.admins(&all), salt, next..next + 20, 4).await;
    let statuses = cluster.wait_converged().await;
    assert!(statuses
        .iter()
        .all(|s| s.claims == written.len() as u64 + 20));
}
