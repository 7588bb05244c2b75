//! Which cluster this node belongs to, and the check every peer request passes against it.
//!
//! The id is made once, by the first bootstrap member before it forms the cluster, and given
//! to every other member before it takes part: to the other bootstrap members by the one that
//! forms the cluster, to a new member by the leader that adds it (`POST /raft/join`), to a
//! rebuilt node by `x402-node rebuild`. A node never takes an id from ordinary traffic. So:
//!
//! - a node of another cluster (a copied config, a wrong URL) carries another id and is
//!   refused by everyone, and refuses them;
//! - a node whose store was wiped and that comes back under its old id holds no id: it refuses
//!   the leader's messages (it may have voted in a term it forgot: Raft is only safe if it
//!   never votes again, so it must be rebuilt or added anew), and nobody accepts its own.
//!
//! Refusals change nothing: they are answered before Raft or any handler sees the request,
//! counted in `x402_peer_refused_total{reason}` and logged (at most once per
//! [`LOG_EVERY`] per reason, since a refused leader retries many times a second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x402_raft_store::runtime::ThreadRng;
use x402_raft_store::storage::{AdoptError, ClusterId, ClusterIdStore, MemLogStore};

/// The request (and answer) header that carries the sender's cluster id.
pub const HEADER: &str = "x402-cluster-id";
/// Refusals of one reason are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a peer request was refused for its cluster id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this node belongs to no cluster yet: it is new (add it with `x402ctl members add`) or \
         lost its store (run `x402-node rebuild`); refusing a peer of cluster {offered:?}"
    )]
    NotJoined { offered: Option<ClusterId> },
    #[error("the peer sent no cluster id (this node belongs to cluster {held})")]
    Missing { held: ClusterId },
    #[error("the peer belongs to cluster {offered}, this node to cluster {held}")]
    OtherCluster { held: ClusterId, offered: ClusterId },
    #[error("the cluster id header does not read as one")]
    Unreadable,
}

impl Refusal {
    /// The `reason` label of the refusal metric.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotJoined { .. } => "not_joined",
            Refusal::Missing { .. } => "no_cluster_id",
            Refusal::OtherCluster { .. } => "other_cluster",
            Refusal::Unreadable => "bad_cluster_id",
        }
    }
}

/// This node's cluster id, kept in its log store. Cheap to clone.
#[derive(Clone)]
pub struct ClusterIdentity {
    store: Arc<dyn ClusterIdStore>,
    /// Unix seconds of the last logged refusal, per reason (see [`LOG_EVERY`]).
    last_logged: Arc<[AtomicU64; 4]>,
}

impl ClusterIdentity {
    pub fn new(store: Arc<dyn ClusterIdStore>) -> Self {
        Self {
            store,
            last_logged: Arc::new(Default::default()),
        }
    }

    /// An identity kept in memory only: for a tool that talks to a cluster it is not part of
    /// (`x402-node rebuild` before the store exists), given the id it learned.
    pub fn of_tool(id: Option<ClusterId>) -> Self {
        let store = MemLogStore::new();
        if let Some(id) = id {
            store.record_cluster_id(id);
        }
        Self::new(Arc::new(store))
    }

    pub fn current(&self) -> Option<ClusterId> {
        self.store.cluster_id()
    }

    /// The id of the cluster this node forms: the one it holds, or a new one, made durable.
    pub async fn form(&self) -> Result<ClusterId, AdoptError> {
        if let Some(id) = self.current() {
            return Ok(id);
        }
        let id = ClusterId::random(&mut ThreadRng);
        self.store.adopt_cluster_id(id).await?;
        Ok(id)
    }

    /// Takes `id` (durably), or confirms it is the one held.
    pub async fn join(&self, id: ClusterId) -> Result<(), AdoptError> {
        let first = self.current().is_none();
        self.store.adopt_cluster_id(id).await?;
        if first {
            tracing::info!(cluster_id = %id, "joined the cluster");
        }
        Ok(())
    }

    /// Checks a peer request's cluster id header.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), Refusal> {
        let offered = match header {
            None => None,
            Some(bytes) => Some(
                std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| text.parse::<ClusterId>().ok())
                    .ok_or(Refusal::Unreadable)?,
            ),
        };
        match (self.current(), offered) {
            (None, offered) => Err(Refusal::NotJoined { offered }),
            (Some(held), None) => Err(Refusal::Missing { held }),
            (Some(held), Some(offered)) if held != offered => {
                Err(Refusal::OtherCluster { held, offered })
            }
            _ => Ok(()),
        }
    }

    /// Whether a refusal of this reason should be logged now (one line per [`LOG_EVERY`]).
    pub fn should_log(&self, why: &Refusal) -> bool {
        let slot = match why {
            Refusal::NotJoined { .. } => 0,
            Refusal::Missing { .. } => 1,
            Refusal::OtherCluster { .. } => 2,
            Refusal::Unreadable => 3,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_logged[slot].load(Ordering::Relaxed);
        now >= last + LOG_EVERY.as_secs()
            && self.last_logged[slot]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_accepts_only_its_own_cluster() {
        let node = ClusterIdentity::of_tool(None);
        let ours = ClusterId([1; 16]);
        let text = ours.to_string();
        assert_eq!(
            node.check(Some(text.as_bytes())),
            Err(Refusal::NotJoined {
                offered: Some(ours)
            }),
            "ordinary traffic never gives a node its id"
        );
        node.join(ours).await.unwrap();
        assert_eq!(node.check(Some(text.as_bytes())), Ok(()));
        assert_eq!(node.check(None), Err(Refusal::Missing { held: ours }));
        let theirs = ClusterId([2; 16]);
        assert_eq!(
            node.check(Some(theirs.to_string().as_bytes())),
            Err(Refusal::OtherCluster {
                held: ours,
                offered: theirs
            })
        );
        assert_eq!(node.check(Some(b"\xff")), Err(Refusal::Unreadable));
        assert!(node.join(theirs).await.is_err(), "the id never changes");
        assert_eq!(node.form().await.unwrap(), ours);
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let node = ClusterIdentity::of_tool(None);
        let why = Refusal::NotJoined { offered: None };
        assert!(node.should_log(&why));
        assert!(!node.should_log(&why));
        assert!(node.should_log(&Refusal::Unreadable));
    }
}
