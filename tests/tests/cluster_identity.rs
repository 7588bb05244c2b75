//! The cluster id: made when the cluster forms, held by every member, carried on every peer
//! request. A node of another cluster cannot be added (and is not changed by the attempt); a
//! node whose store was wiped and that comes back under its old id takes no part until it is
//! rebuilt, and the cluster goes on without it.

use std::time::Duration;

use x402_protocol::wire::InitRequest;
use x402_tests::metrics::sample;
use x402_tests::workload;
use x402_tests::LocalCluster;

/// `x402_peer_refused_total{reason}` of node `id` (0 before the first).
async fn refused(cluster: &LocalCluster, id: u64, reason: &str) -> f64 {
    let text = cluster.metrics_text(id).await;
    sample(&text, "x402_peer_refused_total", &[("reason", reason)]).unwrap_or(0.0)
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused_and_changes_nothing() {
    let mut cluster = LocalCluster::start(3).await;
    let statuses = cluster.wait_converged().await;
    let ours = statuses[0]
        .cluster_id
        .clone()
        .expect("a formed cluster has an id");
    assert_eq!(ours.len(), 32, "{ours}");
    for status in &statuses {
        assert_eq!(
            status.cluster_id.as_deref(),
            Some(ours.as_str()),
            "node {}",
            status.id
        );
    }

    // Node 4 forms a cluster of its own.
    let url4 = cluster.start_extra_node(4).await;
    assert_eq!(
        cluster.status(4).await.cluster_id,
        None,
        "a new node belongs to no cluster"
    );
    cluster
        .admin(4)
        .init(&InitRequest::default())
        .await
        .expect("node 4 forms its own cluster");
    cluster.wait_leader_among(&[4]).await;
    let theirs = cluster
        .status(4)
        .await
        .cluster_id
        .expect("node 4's cluster has an id");
    assert_ne!(theirs, ours);

    // Adding it to ours is refused, saying why; neither cluster's membership moves.
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let err = cluster
        .admin(leader)
        .add_learner(4, &url4)
        .await
        .expect_err("a node of another cluster cannot be added");
    let text = err.to_string();
    assert!(
        text.contains("not_joined") && text.contains(&theirs) && text.contains(&ours),
        "the refusal names both clusters: {text}"
    );
    let after = cluster.wait_converged_among(&[1, 2, 3]).await;
    assert!(after.iter().all(|s| s.members.len() == 3), "{after:?}");
    let four = cluster.status(4).await;
    assert_eq!(four.members.len(), 1, "{four:?}");
    assert_eq!(four.cluster_id.as_deref(), Some(theirs.as_str()));
    assert!(refused(&cluster, 4, "other_cluster").await >= 1.0);

    // Ours still takes writes.
    let salt = workload::new_salt();
    workload::claim_many(&cluster.admins(&[1, 2, 3]), salt, 0..10, 2).await;
}

#[tokio::test]
async fn a_wiped_node_back_under_its_old_id_takes_no_part_until_rebuilt() {
    let mut cluster = LocalCluster::start(3).await;
    let salt = workload::new_salt();
    workload::claim_many(&cluster.admins(&[1, 2, 3]), salt, 0..20, 2).await;
    let ours = cluster.wait_converged().await[0]
        .cluster_id
        .clone()
        .unwrap();
    let leader = cluster.leader_id().await;
    let wiped = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != wiped).collect();

    cluster.kill9(wiped);
    std::fs::remove_dir_all(cluster.data_dir(wiped)).expect("wipe the store");
    cluster.restart(wiped);
    cluster.wait_live(wiped).await;

    // It refuses the leader (it may have voted in a term it forgot), and counts it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refused(&cluster, wiped, "not_joined").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wiped node never refused the leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workload::claim_many(&cluster.admins(&others), salt, 20..40, 2).await;
    let status = cluster.status(wiped).await;
    assert_eq!(status.cluster_id, None, "{status:?}");
    assert_eq!(status.applied, None, "it applied nothing: {status:?}");
    assert!(status.members.is_empty(), "{status:?}");
    let log = cluster.log_text(wiped);
    assert!(
        log.contains("belongs to no cluster yet") && log.contains("x402-node rebuild"),
        "the refusal says what to do: {log}"
    );

    // The operator's way back: rebuild, then promote.
    cluster.stop(wiped);
    cluster.rebuild_from_leader(wiped).await;
    cluster.restart(wiped);
    cluster.promote_rebuilt(wiped).await;
    let statuses = cluster.wait_converged().await;
    for status in &statuses {
        assert_eq!(
            status.cluster_id.as_deref(),
            Some(ours.as_str()),
            "node {}",
            status.id
        );
    }
}
