//! The cluster id: which cluster a store belongs to, kept in the store beside its store id.
//!
//! A store has none until it forms a cluster (the first bootstrap member) or is joined to one
//! (by the member that adds it, or by `x402-node rebuild`); from then on it never changes.
//! Peers carry it on every request, so a node of another cluster, or a node whose store was
//! wiped (it holds no id any more), is refused instead of being mixed into this one.
//!
//! In sled it is a `meta` record made durable before [`ClusterIdStore::adopt_cluster_id`]
//! returns; in memory (simulations) it lives with the rest of the simulated disk.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The random id of one cluster, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; 16]);

impl ClusterId {
    /// A new id from `rng` (the runtime's generator, so a simulation replays it from its seed).
    pub fn random(rng: &mut impl RngCore) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

/// Why a text is not a cluster id.
#[derive(Debug, thiserror::Error)]
#[error("a cluster id is 32 hex digits")]
pub struct BadClusterId;

impl FromStr for ClusterId {
    type Err = BadClusterId;

    fn from_str(text: &str) -> Result<Self, BadClusterId> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(text.trim(), &mut id).map_err(|_| BadClusterId)?;
        Ok(Self(id))
    }
}

/// Why a store did not take a cluster id.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("this store belongs to cluster {held}, not {offered}")]
    OtherCluster { held: ClusterId, offered: ClusterId },
    #[error("cannot record the cluster id: {0}")]
    Io(#[from] io::Error),
}

pub type AdoptFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AdoptError>> + Send + 'a>>;

/// A store that remembers the cluster it belongs to.
pub trait ClusterIdStore: Send + Sync + 'static {
    /// The id this store holds, if it has been given one.
    fn cluster_id(&self) -> Option<ClusterId>;

    /// Records `id`, durably before the future completes. Taking the id the store already
    /// holds succeeds and writes nothing; another id is refused.
    fn adopt_cluster_id(&self, id: ClusterId) -> AdoptFuture<'_>;
}
