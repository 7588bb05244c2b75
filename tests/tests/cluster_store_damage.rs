//! A follower whose sled `db` file was damaged must not rejoin as if nothing happened.
//!
//! sled 0.34 opens such a database *silently* with less: an empty store when the first page is
//! garbage (no vote, no log, no membership: the node could vote twice in a term, and the
//! leader meets a follower whose log went backwards), a log cut short when garbage sits in the
//! middle. The store mark (`store.mark`, outside sled: store id, vote, committed index) catches
//! it: the node refuses to start with an error naming `x402-node rebuild`, and
//! `x402-node rebuild --from <leader>` brings it back with everything.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use x402_tests::workload;
use x402_tests::LocalCluster;

/// Claims written before any damage: enough log for garbage in the middle of `db` to cut it.
const INITIAL_CLAIMS: u64 = 300;
/// Claims written while a damaged follower is down, and again after its rebuild.
const CLAIMS_PER_STEP: u64 = 50;
/// How long a damaged node may take to either exit or answer.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The first 4 KiB of `db` overwritten: sled alone opens an empty store.
    FirstPage,
    /// 64 KiB of garbage in the middle of `db`: sled alone opens a log cut short (or, depending
    /// on its layout, everything; never less is acceptable).
    MiddleGarbage,
}

fn damage_db(data_dir: &Path, damage: Damage) {
    let db = data_dir.join("raft.sled").join("db");
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    let len = file.metadata().unwrap().len();
    let (offset, garbage) = match damage {
        Damage::FirstPage => (0, vec![0xab; 4096]),
        Damage::MiddleGarbage => (len / 2, vec![0x5a; 64 << 10]),
    };
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
}

/// What a restarted damaged node did.
enum Verdict {
    /// It exited; this is its `error:` line.
    Refused(String),
    /// It started and answers status.
    Started(Box<x402_protocol::wire::NodeStatus>),
}

async fn verdict(cluster: &mut LocalCluster, id: u64, log_offset: usize) -> Verdict {
    let deadline = Instant::now() + VERDICT_TIMEOUT;
    loop {
        let log = cluster.log_text(id);
        let new = log.get(log_offset..).unwrap_or_default();
        if let Some(line) = new.lines().find(|l| l.starts_with("error:")) {
            let line = line.to_string();
            let exit = cluster.wait_exit(id, VERDICT_TIMEOUT).await;
            assert!(
                !exit.success(),
                "node {id} printed {line:?} but exited with success"
            );
            return Verdict::Refused(line);
        }
        if let Ok(status) = cluster.admin(id).status().await {
            return Verdict::Started(Box::new(status));
        }
        assert!(
            Instant::now() < deadline,
            "node {id} neither started nor refused within {VERDICT_TIMEOUT:?}:\n{new}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn follower_with_a_damaged_db_refuses_to_start_and_is_rebuilt() {
    let mut cluster = LocalCluster::start(3).await;
    let salt = workload::new_salt();
    let all = cluster.ids();
    let mut written = workload::claim_many(&cluster.admins(&all), salt, 0..INITIAL_CLAIMS, 4).await;
    cluster.wait_converged().await;
    let mut next = INITIAL_CLAIMS;
    let mut damaged = Vec::new();

    for damage in [Damage::FirstPage, Damage::MiddleGarbage] {
        let leader = cluster.leader_id().await;
        // A follower not damaged before, if the leader allows.
        let follower = all
            .iter()
            .copied()
            .filter(|&i| i != leader)
            .min_by_key(|i| damaged.contains(i))
            .unwrap();
        damaged.push(follower);
        let others: Vec<u64> = all.iter().copied().filter(|&i| i != follower).collect();
        let had = cluster.status(follower).await;

        cluster.stop(follower);
        damage_db(cluster.data_dir(follower), damage);
        // The cluster goes on without it.
        written.extend(
            workload::claim_many(
                &cluster.admins(&others),
                salt,
                next..next + CLAIMS_PER_STEP,
                4,
            )
            .await,
        );
        next += CLAIMS_PER_STEP;

        let log_offset = cluster.log_text(follower).len();
        cluster.restart(follower);
        match verdict(&mut cluster, follower, log_offset).await {
            Verdict::Refused(error_line) => {
                eprintln!("{damage:?}: node {follower} refused: {error_line}");
                assert!(
                    error_line.contains("has lost data")
                        && error_line.contains("x402-node rebuild"),
                    "{damage:?}: the start-up error must say the store lost data and name \
                     `x402-node rebuild`: {error_line}"
                );
                let moved = cluster.rebuild_from_leader(follower).await;
                // The damaged store is kept aside, mark included, for a post-mortem.
                assert!(moved.join("store.mark").is_file(), "{}", moved.display());
                assert!(moved.join("raft.sled").join("db").is_file());
                cluster.restart(follower);
            }
            Verdict::Started(status) => {
                // Only acceptable if sled really kept everything.
                assert!(
                    matches!(damage, Damage::MiddleGarbage),
                    "{damage:?}: node {follower} started on a store whose first page is \
                     garbage: {status:?}"
                );
                eprintln!("{damage:?}: node {follower} started with everything: {status:?}");
                assert!(
                    status.term >= had.term
                        && status.last_log >= had.last_log
                        && !status.members.is_empty(),
                    "node {follower} restarted on a damaged store and serves a store that lost \
                     its vote, log or membership:\n  before: term {} last_log {:?} members {}\n  \
                     after:  term {} last_log {:?} members {}",
                    had.term,
                    had.last_log,
                    had.members.len(),
                    status.term,
                    status.last_log,
                    status.members.len(),
                );
            }
        }

        // It rejoins and converges; the others never noticed.
        cluster.assert_running(leader);
        cluster.promote_rebuilt(follower).await;
        let statuses = cluster.wait_converged().await;
        let back = statuses.iter().find(|s| s.id == follower).unwrap();
        assert_eq!(back.claims, written.len() as u64, "{back:?}");
        assert!(
            back.members.len() == 3 && back.members.iter().all(|m| m.voter),
            "node {follower} must be a voter again: {back:?}"
        );
        // And the cluster commits with it.
        written.extend(
            workload::claim_many(&cluster.admins(&all), salt, next..next + CLAIMS_PER_STEP, 4)
                .await,
        );
        next += CLAIMS_PER_STEP;
        cluster.wait_converged().await;
    }

    // Every damaged node holds every claim, old and new.
    for id in damaged {
        workload::assert_all_held(&cluster.admins(&[id]), &written[..10], 2).await;
        workload::assert_all_held(&cluster.admins(&[id]), &written[written.len() - 10..], 2).await;
    }
}
