//! `x402-node rebuild`: replace a store that will not open with a peer's snapshot.
//!
//! sled 0.34 databases sometimes fail to reopen after a crash (ARCHITECTURE.md, known hazards), and
//! a store that lost acknowledged data refuses to open. Rather than lose the node, the operator
//! rebuilds it. A node that lost its store has also lost its vote: Raft is only safe if it can
//! never vote twice in a term, so the node first leaves the voters (as etcd's procedure for a
//! member with lost data), and comes back as a learner that must be promoted again:
//!
//! 1. the node is removed from the membership, through the peer (which passes it to the leader);
//! 2. the peer takes a fresh snapshot (it includes the removal, so the rebuilt node knows it is not
//!    a voter and never campaigns) and the node's store is replaced by it; the broken directory is
//!    moved aside, never deleted;
//! 3. the node is added back as a learner, its new store holding the peer's cluster id (it is
//!    the same node of the same cluster, rebuilt); the leader sends it the rest of the log once
//!    it runs;
//! 4. the operator starts it and, once it has caught up, runs `x402ctl members promote <id>`.

use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use x402_protocol::wire::{AddLearnerRequest, MemberIdRequest, NodeStatus};
use x402_raft_store::storage::{rebuild_from_snapshot, ClusterId};
use x402_raft_store::types::Vote;
use x402_tls::server::ServerTls;

use crate::cluster::identity::ClusterIdentity;
use crate::cluster::peer_client::{PeerClient, JSON};
use crate::config::Config;
use crate::seams::TokioConnector;

/// Largest snapshot a rebuild will download.
const MAX_SNAPSHOT_BYTES: usize = 4 << 30;
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(600);
const STATUS_DEADLINE: Duration = Duration::from_secs(10);
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);

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
    #[error("{0}")]
    Tls(#[from] x402_tls::TlsError),
    #[error("peer {peer} reports no cluster id (it belongs to no cluster, or is older)")]
    NoClusterId { peer: String },
}

/// Rebuilds the store of the node described by `config` from the peer at `peer_url`. Returns
/// where the old data directory was moved.
pub async fn rebuild(config: &Config, peer_url: &str) -> Result<PathBuf, RebuildError> {
    let secrets = config.secrets()?;
    let tls = match config.tls.peer_files()? {
        Some(files) => Some(ServerTls::load(files)?),
        None => None,
    };
    let peers = PeerClient::new(
        std::sync::Arc::new(TokioConnector),
        tls,
        ClusterIdentity::of_tool(None),
        secrets.cluster_secret.clone(),
        MAX_SNAPSHOT_BYTES,
    );
    let peer_err = |source| RebuildError::Peer {
        peer: peer_url.to_string(),
        source,
    };
    let get = |path: &'static str, deadline| {
        peers.call(Method::GET, peer_url, path, JSON, Vec::new(), deadline)
    };
    let post = |path: &'static str, body: Vec<u8>, deadline| {
        peers.call(Method::POST, peer_url, path, JSON, body, deadline)
    };
    let status: NodeStatus = decode_status(
        peer_url,
        &get("/admin/status", STATUS_DEADLINE)
            .await
            .map_err(peer_err)?,
    )?;
    let cluster_id: ClusterId = status
        .cluster_id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| RebuildError::NoClusterId {
            peer: peer_url.to_string(),
        })?;
    if status.members.iter().any(|m| m.id == config.node_id) {
        let body = member_body(config.node_id);
        post("/admin/members/remove", body, MEMBERSHIP_DEADLINE)
            .await
            .map_err(peer_err)?;
    }
    post("/admin/snapshot", Vec::new(), SNAPSHOT_DEADLINE)
        .await
        .map_err(peer_err)?;
    let snapshot = get("/admin/snapshot", SNAPSHOT_DEADLINE)
        .await
        .map_err(peer_err)?;
    // No vote at all: the node is not a voter of the membership in the snapshot, and a learner
    // must accept the leader's vote, whatever its term.
    let moved = rebuild_from_snapshot(&config.data_dir, &snapshot, Vote::default(), cluster_id)?;
    let body = serde_json::to_vec(&AddLearnerRequest {
        id: config.node_id,
        url: config.member_url(),
        holds_cluster_id: Some(cluster_id.to_string()),
    })
    .unwrap_or_default();
    post("/admin/members/add", body, MEMBERSHIP_DEADLINE)
        .await
        .map_err(peer_err)?;
    Ok(moved)
}

fn member_body(id: u64) -> Vec<u8> {
    serde_json::to_vec(&MemberIdRequest { id }).unwrap_or_default()
}

fn decode_status(peer: &str, body: &[u8]) -> Result<NodeStatus, RebuildError> {
    serde_json::from_slice(body).map_err(|source| RebuildError::Status {
        peer: peer.to_string(),
        source,
    })
}
