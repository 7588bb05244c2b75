//! Membership changes online, driven through the real `x402ctl` binary as an operator would:
//! a 4th node is added as a learner, promoted to voter, then one of the original followers is
//! removed, all while a writer keeps claiming. Every remaining node reports the new membership,
//! the cluster still commits, and no acknowledged claim is lost.

use std::time::Duration;

use x402_protocol::wire::{ClaimRequest, ClusterStatus, MembershipResponse, Role};
use x402_tests::cluster::CONVERGE_TIMEOUT;
use x402_tests::workload::{self, Writer};
use x402_tests::LocalCluster;

fn member_set(members: &MembershipResponse) -> Vec<(u64, bool)> {
    members.members.iter().map(|m| (m.id, m.voter)).collect()
}

#[tokio::test]
async fn add_promote_remove_online_with_x402ctl() {
    let mut cluster = LocalCluster::start(3).await;
    let leader = cluster.leader_id().await;
    let salt = workload::new_salt();
    let writer = Writer::start(cluster.admins(&[1, 2, 3]), salt, 0, 4);
    writer.wait_acked(20, Duration::from_secs(30)).await;

    // A 4th node with no bootstrap members waits, uninitialized, to be added.
    let url4 = cluster.start_extra_node(4).await;
    let fresh = cluster.status(4).await;
    assert!(
        fresh.members.is_empty(),
        "node 4 must start outside any cluster: {fresh:?}"
    );
    assert_eq!(fresh.leader_id, None);

    // `x402ctl members add`, with the leader first in X402_NODES. (Through a follower first,
    // see `membership_change_through_a_follower_is_forwarded` below.)
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let leader_first: Vec<u64> = std::iter::once(leader)
        .chain([1, 2, 3].into_iter().filter(|&i| i != leader))
        .collect();
    let added: MembershipResponse = cluster
        .x402ctl_json(&leader_first, &["members", "add", "4", &url4])
        .await;
    assert_eq!(
        member_set(&added),
        [(1, true), (2, true), (3, true), (4, false)],
        "after add: {added:?}"
    );
    assert!(added.log_index.is_some());

    // Promote: waits for the learner to catch up, then makes it a voter.
    let promoted: MembershipResponse = cluster
        .x402ctl_json(&leader_first, &["members", "promote", "4"])
        .await;
    assert_eq!(
        member_set(&promoted),
        [(1, true), (2, true), (3, true), (4, true)],
        "after promote: {promoted:?}"
    );
    let acked_before_remove = writer.acked();

    // Remove one of the original followers (not the leader, not the new node).
    let removed = [1, 2, 3]
        .into_iter()
        .find(|&i| i != leader && i != follower)
        .unwrap();
    let after: MembershipResponse = cluster
        .x402ctl_json(
            &[leader, removed],
            &["members", "remove", &removed.to_string()],
        )
        .await;
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != removed).collect();
    let expected: Vec<(u64, bool)> = remaining.iter().map(|&i| (i, true)).collect();
    assert_eq!(
        member_set(&after),
        expected,
        "after remove {removed}: {after:?}"
    );

    // Writes went on during all of it.
    writer
        .wait_acked(acked_before_remove + 20, Duration::from_secs(30))
        .await;
    let report = writer.stop().await;
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert!(report.abandoned.is_empty(), "{:?}", report.abandoned);
    eprintln!(
        "{} claims acknowledged during the changes; failed attempts (retried): {:?}",
        report.acked.len(),
        report.errors
    );

    // The operator stops the removed node.
    cluster.stop(removed);

    // Every remaining node reports the new membership.
    let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let statuses = cluster.statuses_of(&remaining).await;
        let agreed = statuses.iter().all(|(_, s)| {
            s.as_ref().is_ok_and(|s| {
                s.members
                    .iter()
                    .map(|m| (m.id, m.voter))
                    .collect::<Vec<_>>()
                    == expected
            })
        });
        if agreed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the remaining nodes do not all report members {expected:?}:\n{}",
            x402_tests::cluster::describe(&statuses)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The 3-voter cluster {remaining} still commits, through the new node too.
    let more = workload::claim_many(&cluster.admins(&[4]), salt, 1_000_000..1_000_020, 4).await;
    let statuses = cluster.wait_converged_among(&remaining).await;
    let acked: Vec<ClaimRequest> = report.acked.iter().map(|a| a.claim.clone()).collect();
    for s in &statuses {
        assert!(s.claims >= (acked.len() + more.len()) as u64, "{s:?}");
    }
    workload::assert_all_held(&cluster.admins(&remaining), &acked, 8).await;

    // `x402ctl status` sees the same: every remaining node answers, one leader, node 4 a voter.
    let status: ClusterStatus = cluster.x402ctl_json(&remaining, &["status"]).await;
    assert!(status.unreachable.is_empty(), "{status:?}");
    assert_eq!(status.nodes.len(), 3);
    let leaders: Vec<u64> = status
        .nodes
        .iter()
        .filter(|n| n.role == Role::Leader)
        .map(|n| n.id)
        .collect();
    assert_eq!(leaders.len(), 1, "{status:?}");
    let node4 = status.nodes.iter().find(|n| n.id == 4).unwrap();
    assert!(
        matches!(node4.role, Role::Leader | Role::Follower),
        "{node4:?}"
    );
}

/// Membership changes through any node: `x402ctl` documents that it uses the first reachable
/// node of X402_NODES and that followers forward to the leader. Here the follower is first.
#[tokio::test]
async fn membership_change_through_a_follower_is_forwarded() {
    let mut cluster = LocalCluster::start(3).await;
    let leader = cluster.leader_id().await;
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let url4 = cluster.start_extra_node(4).await;

    // The library call, through the follower.
    let added = cluster
        .admin(follower)
        .add_learner(4, &url4)
        .await
        .unwrap_or_else(|e| panic!("members add through follower {follower}: {e}"));
    assert_eq!(
        member_set(&added),
        [(1, true), (2, true), (3, true), (4, false)]
    );
    // The CLI, with the follower first.
    let promoted: MembershipResponse = cluster
        .x402ctl_json(&[follower, leader], &["members", "promote", "4"])
        .await;
    assert_eq!(
        member_set(&promoted),
        [(1, true), (2, true), (3, true), (4, true)]
    );
    let removed: MembershipResponse = cluster
        .x402ctl_json(&[follower], &["members", "remove", "4"])
        .await;
    assert_eq!(member_set(&removed), [(1, true), (2, true), (3, true)]);
}

/// `x402ctl members replace`: the leader itself is replaced by a fresh node while a writer keeps
/// claiming. The new node joins, catches up and votes before the old one leaves (leadership
/// moved off it first), every acknowledged claim stays held, and running the command again
/// changes nothing more.
#[tokio::test]
async fn members_replace_swaps_the_leader_for_a_new_node_online() {
    let mut cluster = LocalCluster::start(3).await;
    let old = cluster.leader_id().await;
    let salt = workload::new_salt();
    let writer = Writer::start(cluster.admins(&[1, 2, 3]), salt, 0, 4);
    writer.wait_acked(20, Duration::from_secs(30)).await;

    let url4 = cluster.start_extra_node(4).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != old).collect();
    let replaced: MembershipResponse = cluster
        .x402ctl_json(&others, &["members", "replace", &old.to_string(), &url4])
        .await;
    let mut expected: Vec<(u64, bool)> = others.iter().map(|&i| (i, true)).collect();
    expected.push((4, true));
    assert_eq!(member_set(&replaced), expected, "{replaced:?}");
    let leader = cluster.wait_leader_among(&[others[0], others[1], 4]).await;
    assert_ne!(leader, old, "the replaced member cannot lead");

    // Again: nothing left to do; the membership stays.
    let again: MembershipResponse = cluster
        .x402ctl_json(&others, &["members", "replace", &old.to_string(), &url4])
        .await;
    assert_eq!(member_set(&again), expected);

    let acked = writer.acked();
    writer.wait_acked(acked + 20, Duration::from_secs(30)).await;
    let report = writer.stop().await;
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert!(report.abandoned.is_empty(), "{:?}", report.abandoned);
    cluster.stop(old);
    let remaining = [others[0], others[1], 4];
    cluster.wait_converged_among(&remaining).await;
    let acked: Vec<ClaimRequest> = report.acked.iter().map(|a| a.claim.clone()).collect();
    workload::assert_all_held(&cluster.admins(&remaining), &acked, 8).await;
}
