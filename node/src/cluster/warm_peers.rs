//! Keeps a connection open to every member, so the first Raft message after an election never
//! waits for a TCP (and TLS) handshake.
//!
//! A node only opens connections it needs: a follower has one to the leader (forwards) and
//! answers the leader's. When it becomes leader (a hand-off, a failover) its first appends to the
//! other followers opened new connections, and under full load those took longer than the
//! append timeout (openraft's heartbeat interval, 50 ms): measured in a rolling restart at 128
//! connections, the new leader's first appends timed out twice, the followers saw no leader for
//! 150 ms and two spurious elections followed. A cheap ping to every member at start, on every
//! membership change and then periodically (below the 60 s idle close of both ends) keeps them
//! open.

use std::time::Duration;

use x402_raft_store::types::{NodeId, Raft};

use super::network::paths;
use super::peer_client::PeerClient;

/// How often every member is pinged: well below the idle timeouts of the peer client's pool and
/// of the peer listener (60 s by default).
const PING_EVERY: Duration = Duration::from_secs(20);
/// Deadline of one ping.
const PING_DEADLINE: Duration = Duration::from_secs(2);

/// Pings every other member now, whenever the membership changes, and every [`PING_EVERY`].
pub async fn run(me: NodeId, raft: Raft, peers: PeerClient) {
    let mut metrics = raft.metrics();
    let mut seen_membership;
    let mut ticker = tokio::time::interval(PING_EVERY);
    // An interval's first tick is at once: spent here, so rounds are PING_EVERY apart.
    ticker.tick().await;
    loop {
        let urls: Vec<String> = {
            let m = metrics.borrow_and_update();
            seen_membership = m.membership_config.log_id().map(|l| l.index);
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me)
                .map(|(_, node)| node.addr.clone())
                .collect()
        };
        for url in urls {
            let peers = peers.clone();
            tokio::spawn(async move {
                if let Err(e) = peers
                    .post(&url, paths::PING, Vec::new(), PING_DEADLINE)
                    .await
                {
                    tracing::debug!(peer = %url, error = %e, "peer ping failed");
                }
            });
        }
        // The next round: at the tick, or as soon as the membership changes.
        loop {
            tokio::select! {
                _ = ticker.tick() => break,
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let membership = metrics.borrow().membership_config.log_id().map(|l| l.index);
                    if membership != seen_membership {
                        break;
                    }
                }
            }
        }
    }
}
