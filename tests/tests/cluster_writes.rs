//! Writes through every node of a real 3-node cluster (guarantee I1): a claim made through a
//! follower is accepted, the same claim through another node is accepted again (idempotent), a
//! different fingerprint is a replay, an expired authorization is refused; afterwards every node
//! holds byte-equal state at the same log position (I6).

use x402_protocol::wire::{ClaimOutcome, ClaimRequest};
use x402_tests::workload::{self, claim, unix_now, with_fingerprint};
use x402_tests::LocalCluster;

#[tokio::test]
async fn writes_through_every_node() {
    let cluster = LocalCluster::start(3).await;
    let leader = cluster.leader_id().await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let salt = workload::new_salt();

    // A fresh claim through a follower (forwarded to the leader).
    let first = claim(salt, 0);
    let answer = cluster.admin(followers[0]).claim(&first).await.unwrap();
    assert_eq!(
        answer.outcome,
        ClaimOutcome::Accepted,
        "fresh claim via follower"
    );

    // The same authorization with the same fingerprint through every other node: same answer.
    for node in [followers[1], leader] {
        let again = cluster.admin(node).claim(&first).await.unwrap();
        assert_eq!(
            again.outcome,
            ClaimOutcome::Accepted,
            "same claim, same fingerprint via node {node} must be idempotent"
        );
        assert!(again.log_index > answer.log_index);
    }

    // Another fingerprint, through every node: a replay each time.
    let replay = with_fingerprint(&first, 0x22);
    for node in cluster.ids() {
        let answer = cluster.admin(node).claim(&replay).await.unwrap();
        assert_eq!(
            answer.outcome,
            ClaimOutcome::Replay,
            "same authorization, other fingerprint via node {node}"
        );
    }

    // An authorization whose validBefore has passed is refused and not stored.
    for (node, valid_before) in [(followers[1], unix_now() - 10), (leader, 1)] {
        let expired = ClaimRequest {
            valid_before,
            ..claim(salt, 1000 + node)
        };
        let answer = cluster.admin(node).claim(&expired).await.unwrap();
        assert_eq!(
            answer.outcome,
            ClaimOutcome::Expired,
            "valid_before {valid_before} via node {node}"
        );
    }

    // More fresh claims, round-robin over all nodes, concurrently.
    let more = workload::claim_many(&cluster.admins(&cluster.ids()), salt, 1..31, 6).await;
    assert_eq!(more.len(), 30);

    // Every node: same applied index, same claims, byte-equal state.
    let statuses = cluster.wait_converged().await;
    assert_eq!(statuses.len(), 3);
    for s in &statuses {
        assert_eq!(
            s.claims, 31,
            "node {} holds {} claims; expected the 31 accepted ones (expired ones are not stored)",
            s.id, s.claims
        );
        assert_eq!(s.applied, statuses[0].applied);
        assert_eq!(s.state_hash, statuses[0].state_hash);
        assert_eq!(s.leader_id, Some(leader));
        assert_eq!(s.members.len(), 3);
        assert!(s.members.iter().all(|m| m.voter));
    }
    // The last write's log index is applied everywhere.
    let last = statuses[0].applied.unwrap();
    assert!(last >= answer.log_index);
}
