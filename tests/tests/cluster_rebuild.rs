//! `x402-node rebuild --from URL`: a follower whose sled store will not open refuses to start
//! with an error that names `rebuild`; the rebuild replaces the store with a snapshot from the
//! leader, moves the broken directory aside (never deletes it), and the node rejoins and
//! converges to the same state.
//!
//! The damage used is an overwritten start of sled's `conf` file, which sled 0.34 refuses to open.
//! (Overwriting the start of sled's `db` file instead does *not* fail: sled drops the damaged
//! segment and opens an empty or truncated store without a word; see the report of this suite.)

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use x402_tests::workload;
use x402_tests::LocalCluster;

/// Bytes written over the start of sled's `conf` file.
const GARBAGE: &[u8] = b"\x00\xffNOT-A-SLED-CONFIG\x00\xff";

#[tokio::test]
async fn store_that_will_not_open_is_rebuilt_from_the_leader() {
    let mut cluster = LocalCluster::start(3).await;
    let salt = workload::new_salt();
    let all = cluster.ids();
    let mut written = workload::claim_many(&cluster.admins(&all), salt, 0..40, 4).await;
    cluster.wait_converged().await;
    let leader = cluster.leader_id().await;
    let follower = *all.iter().find(|&&i| i != leader).unwrap();
    let others: Vec<u64> = all.iter().copied().filter(|&i| i != follower).collect();

    // Stop the follower and damage its store.
    cluster.stop(follower);
    let conf = cluster.data_dir(follower).join("raft.sled").join("conf");
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(&conf).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(GARBAGE).unwrap();
        file.sync_all().unwrap();
    }

    // The cluster goes on without it.
    written.extend(workload::claim_many(&cluster.admins(&others), salt, 40..80, 4).await);

    // Starting it fails, and the error tells the operator what to do.
    cluster.restart(follower);
    let exit = cluster.wait_exit(follower, Duration::from_secs(30)).await;
    assert!(!exit.success(), "a node on a damaged store must not start");
    assert_eq!(
        exit.code(),
        Some(65),
        "a store that needs a rebuild exits 65 (EX_DATAERR), which supervisors do not restart"
    );
    let log = cluster.log_text(follower);
    let error_line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no `error:` line in the node's output:\n{log}"));
    assert!(
        error_line.contains("will not open") && error_line.contains("x402-node rebuild"),
        "the start-up error must say the store will not open and name `x402-node rebuild`: \
         {error_line}"
    );

    // Rebuild from the leader.
    let moved = cluster.rebuild_from_leader(follower).await;
    let data_dir = cluster.data_dir(follower).to_path_buf();
    let expected_prefix = format!("{}.broken-", data_dir.display());
    assert!(
        moved.to_string_lossy().starts_with(&expected_prefix),
        "old store moved to {}, expected {expected_prefix}<secs>",
        moved.display()
    );
    // The broken store is kept, untouched.
    let kept = std::fs::read(moved.join("raft.sled").join("conf")).unwrap();
    assert!(
        kept.starts_with(GARBAGE),
        "the moved-aside store is not the old one"
    );
    assert!(data_dir.join("raft.sled").is_dir());

    // More writes while it is still down: it will need log entries after the snapshot too.
    written.extend(workload::claim_many(&cluster.admins(&others), salt, 80..100, 4).await);

    // It starts, rejoins and converges.
    cluster.restart(follower);
    cluster.promote_rebuilt(follower).await;
    let statuses = cluster.wait_converged().await;
    assert_eq!(statuses.len(), 3);
    let rebuilt = statuses.iter().find(|s| s.id == follower).unwrap();
    assert_eq!(rebuilt.claims, written.len() as u64, "{rebuilt:?}");
    assert!(
        rebuilt.members.iter().all(|m| m.voter) && rebuilt.members.len() == 3,
        "the rebuilt node must be a voter again: {rebuilt:?}"
    );

    // It serves the claims it got from the snapshot and from the log.
    workload::assert_all_held(&cluster.admins(&[follower]), &written[..5], 2).await;
    workload::assert_all_held(&cluster.admins(&[follower]), &written[95..], 2).await;

    // And it is a full member: the cluster commits with the rebuilt node and the leader only.
    let third = *others.iter().find(|&&i| i != leader).unwrap();
    cluster.kill9(third);
    workload::claim_many(&cluster.admins(&[follower]), salt, 100..110, 2).await;
    cluster.wait_converged().await;
}
