//! `x402-node rebuild`: replace a store that will not open with a peer's snapshot.
//!
//! sled 0.34 databases sometimes fail to reopen after a crash (ARCHITECTURE.md, known hazards).
//! Rather than lose the node, the operator rebuilds it: the broken directory is moved aside (never
//! deleted), a fresh snapshot is taken on a healthy peer and installed, and the node restarts
//! with the peer's term as its vote, so it can never vote twice in a term it may already have
//! voted in. The leader then sends it whatever the snapshot does not cover.

use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use x402_client::wire::NodeStatus;
use x402_raft_store::storage::rebuild_from_snapshot;
use x402_raft_store::types::Vote;

use crate::cluster::peer_client::{PeerClient, JSON};
use crate::config::Config;
use crate::seams::TokioConnector;

/// Largest snapshot a rebuild will download.
const MAX_SNAPSHOT_BYTES: usize = 4 << 30;
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(600);
const STATUS_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("peer {peer}: {source}")]
    Peer {
        peer: String,
        source: crate::cluster::peer_client::PeerError,
    },
    #[error("peer {peer} answered an unreadable status: {source}")]
    Status {
        peer: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Store(#[from] x402_raft_store::storage::OpenError),
}

/// Rebuilds the store of the node described by `config` from the peer at `peer_url`. Returns
/// where the old data directory was moved.
pub async fn rebuild(config: &Config, peer_url: &str) -> Result<PathBuf, RebuildError> {
    let secrets = config.secrets()?;
    let peers = PeerClient::new(
        std::sync::Arc::new(TokioConnector),
        secrets.cluster_secret.clone(),
        MAX_SNAPSHOT_BYTES,
    );
    let peer_err = |source| RebuildError::Peer {
        peer: peer_url.to_string(),
        source,
    };
    // A fresh snapshot keeps the log the leader must replay afterwards short.
    peers
        .call(
            Method::POST,
            peer_url,
            "/admin/snapshot",
            JSON,
            Vec::new(),
            SNAPSHOT_DEADLINE,
        )
        .await
        .map_err(peer_err)?;
    let status = peers
        .call(
            Method::GET,
            peer_url,
            "/admin/status",
            JSON,
            Vec::new(),
            STATUS_DEADLINE,
        )
        .await
        .map_err(peer_err)?;
    let status: NodeStatus =
        serde_json::from_slice(&status).map_err(|source| RebuildError::Status {
            peer: peer_url.to_string(),
            source,
        })?;
    let snapshot = peers
        .call(
            Method::GET,
            peer_url,
            "/admin/snapshot",
            JSON,
            Vec::new(),
            SNAPSHOT_DEADLINE,
        )
        .await
        .map_err(peer_err)?;
    let vote = Vote::new(status.term, config.node_id);
    Ok(rebuild_from_snapshot(&config.data_dir, &snapshot, vote)?)
}
