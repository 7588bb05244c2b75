//! A follower whose sled `db` file lost its first page (overwritten with garbage) must not
//! rejoin as if nothing happened: it either refuses to start with an error naming
//! `x402-node rebuild`, or starts with everything it had. sled 0.34 instead drops the damaged
//! segment and opens an empty store: the node comes back with no vote, no log and no membership
//! (it may vote again in a term it already voted in), and the leader meets a follower whose log
//! went backwards (in debug builds openraft's `debug_assert` panics inside the leader's core).
//!
//! Ignored until the store detects it: run with `cargo test -p x402-tests --test
//! cluster_store_damage -- --ignored`.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use x402_tests::workload;
use x402_tests::LocalCluster;

#[tokio::test]
#[ignore = "store bug: sled opens a db whose first page is garbage as an empty store, silently"]
async fn follower_with_a_damaged_db_does_not_rejoin_blank() {
    let mut cluster = LocalCluster::start(3).await;
    let salt = workload::new_salt();
    let all = cluster.ids();
    workload::claim_many(&cluster.admins(&all), salt, 0..50, 4).await;
    let before = cluster.wait_converged().await;
    let leader = cluster.leader_id().await;
    let follower = *all.iter().find(|&&i| i != leader).unwrap();
    let had = before.iter().find(|s| s.id == follower).unwrap().clone();

    cluster.stop(follower);
    let db = cluster.data_dir(follower).join("raft.sled").join("db");
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(&[0xab; 4096]).unwrap();
        file.sync_all().unwrap();
    }
    cluster.restart(follower);

    // Either it exits naming `rebuild`, or whatever it serves must still hold its vote and log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(status) = cluster.admin(follower).status().await {
            assert!(
                status.term >= had.term
                    && status.last_log >= had.last_log
                    && !status.members.is_empty(),
                "node {follower} restarted on a damaged store and serves a store that lost its \
                 vote, log or membership without a word:\n  before: term {} last_log {:?} \
                 members {}\n  after:  term {} last_log {:?} members {} role {:?}",
                had.term,
                had.last_log,
                had.members.len(),
                status.term,
                status.last_log,
                status.members.len(),
                status.role
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exit = cluster.wait_exit(follower, Duration::from_secs(5)).await;
    assert!(!exit.success());
    assert!(cluster.log_text(follower).contains("x402-node rebuild"));
    // The others never noticed.
    cluster.assert_running(leader);
    cluster.wait_converged().await;
}
