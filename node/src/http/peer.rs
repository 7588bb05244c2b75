//! The peer API (`/raft/*`): what other nodes call. Bodies are bincode, decoded with a size limit;
//! callers authenticate with the shared cluster secret and carry this cluster's id (checked by
//! [`crate::cluster::identity`]; `/raft/join`, which gives a node the id, is the one call
//! without it), and every Raft message passes [`crate::cluster::peer_guard`] before openraft
//! sees it.
//!
//! Raft RPC handlers answer the whole `Result` of the local `Raft` call, so the caller can tell a
//! Raft-level refusal (a higher term, a conflict) from a transport failure.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use x402_raft_store::codec;
use x402_raft_store::state::MAX_OPS_PER_COMMAND;
use x402_raft_store::types::{NodeId, TypeConfig};

use super::error::ApiError;
use x402_raft_store::storage::AdoptError;

use crate::cluster::identity;
use crate::cluster::membership::JoinRequest;
use crate::cluster::network::paths;
use crate::cluster::peer_guard::{self, PeerView};
use crate::cluster::proposer::ProposeRequest;
use crate::cluster::read_barrier::ReadIndexReply;
use crate::node::App;
use crate::secret::bearer_matches;
use crate::serve::PeerCertificate;

pub fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::PROPOSE, post(propose))
        .route(paths::READ_INDEX, post(read_index))
        .route(paths::JOIN, post(join))
        .route(paths::ELECT, post(elect))
        .route(paths::PING, post(|| async { reply(&()) }))
        .layer(DefaultBodyLimit::max(app.limits.max_peer_body_bytes))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_peer))
}

async fn require_peer(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !bearer_matches(&app.secrets.cluster_secret, header) {
        return ApiError::unauthorized().into_response();
    }
    let identity = app.peers.identity();
    if request.uri().path() != paths::JOIN {
        let offered = request
            .headers()
            .get(identity::HEADER)
            .map(|v| v.as_bytes());
        if let Err(why) = identity.check(offered) {
            app.metrics.refused_peer(why.label());
            if identity.should_log(&why) {
                tracing::warn!(%why, path = request.uri().path(), "refused a peer request");
            }
            return ApiError::new(StatusCode::FORBIDDEN, why.label(), why.to_string())
                .into_response();
        }
    }
    // Under mutual TLS only members may speak Raft (anyone the cluster CA certified may ask to
    // join, or use the admin API with the secret).
    let certified = request
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|c| c.0);
    if let Some(node) = certified {
        let path = request.uri().path();
        if path.starts_with("/raft/") && path != paths::JOIN && !is_member_or_unknown(&app, node) {
            app.metrics.refused_peer("not_a_member");
            tracing::debug!(
                node,
                path,
                "refused a peer request from a node outside the membership"
            );
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "not_a_member",
                format!("node {node} is not a member of this node's membership"),
            )
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    // The caller checks the answer came from its own cluster too.
    if let Some(id) = identity.current() {
        if let Ok(value) = header::HeaderValue::from_str(&id.to_string()) {
            response.headers_mut().insert(identity::HEADER, value);
        }
    }
    response
}

/// Whether `node` is in the membership this node knows (or it knows none yet: a node being
/// added hears from the leader before it learns the membership that names them both).
fn is_member_or_unknown(app: &App, node: NodeId) -> bool {
    let metrics = app.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let mut nodes = membership.nodes().peekable();
    nodes.peek().is_none() || membership.get_node(&node).is_some()
}

/// `POST /raft/join`: take the cluster id a member gives (forming the cluster, or adding this
/// node). A node that holds another id refuses and changes nothing.
async fn join(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let request: JoinRequest = decode(&body)?;
    if request.node_id != app.id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_node",
            format!("this is node {}, not node {}", app.id, request.node_id),
        ));
    }
    match app.peers.identity().join(request.cluster_id).await {
        Ok(()) => Ok(reply(&())),
        Err(AdoptError::OtherCluster { held, offered }) => {
            let why = identity::Refusal::OtherCluster { held, offered };
            app.metrics.refused_peer(why.label());
            tracing::warn!(%why, "refused to join another cluster");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                why.label(),
                why.to_string(),
            ))
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    codec::decode(body).map_err(|e| ApiError::bad_request(format!("undecodable peer body: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Response {
    match codec::encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => ApiError::internal(format!("cannot encode reply: {e}")).into_response(),
    }
}

/// What this node knows when it checks a peer's message.
/// The node id the connection's certificate names (none without mutual TLS).
fn certified(sender: Option<Extension<PeerCertificate>>) -> Option<NodeId> {
    sender.and_then(|Extension(PeerCertificate(id))| id)
}

fn peer_view(app: &App, certified_sender: Option<NodeId>) -> PeerView {
    let receiver = app.raft.metrics();
    let metrics = receiver.borrow();
    let membership = metrics.membership_config.membership();
    PeerView {
        self_id: app.id,
        current_term: metrics.current_term,
        members: membership.nodes().map(|(id, _)| *id).collect(),
        voters: membership.voter_ids().collect(),
        max_entries: crate::config::MAX_PAYLOAD_ENTRIES_ACCEPTED,
        max_snapshot_bytes: codec::MAX_STATE_BYTES as u64,
        certified_sender,
    }
}

/// A refused peer message: counted, logged, answered 400 (the sender sees a network error).
fn refuse(app: &App, what: &str, why: peer_guard::Refused) -> ApiError {
    app.metrics.refused_peer(why.label());
    tracing::warn!(%why, what, "refused a peer message");
    ApiError::bad_request(format!("{what} refused: {why}"))
}

async fn append(
    State(app): State<Arc<App>>,
    sender: Option<Extension<PeerCertificate>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: AppendEntriesRequest<TypeConfig> = decode(&body)?;
    peer_guard::check_append(&request, &peer_view(&app, certified(sender)))
        .map_err(|why| refuse(&app, "append", why))?;
    Ok(reply(&app.raft.append_entries(request).await))
}

async fn vote(
    State(app): State<Arc<App>>,
    sender: Option<Extension<PeerCertificate>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: VoteRequest<NodeId> = decode(&body)?;
    peer_guard::check_vote(&request, &peer_view(&app, certified(sender)))
        .map_err(|why| refuse(&app, "vote", why))?;
    Ok(reply(&app.raft.vote(request).await))
}

async fn snapshot(
    State(app): State<Arc<App>>,
    sender: Option<Extension<PeerCertificate>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
    peer_guard::check_snapshot(&request, &peer_view(&app, certified(sender)))
        .map_err(|why| refuse(&app, "snapshot", why))?;
    Ok(reply(&app.raft.install_snapshot(request).await))
}

async fn propose(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let request: ProposeRequest = decode(&body)?;
    if request.ops.len() > MAX_OPS_PER_COMMAND {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_OPS_PER_COMMAND} operations per forward"
        )));
    }
    Ok(reply(&app.batcher.propose_forwarded(request.ops).await))
}

/// `POST /raft/elect`: campaign at once, as the leader handing off asks a caught-up voter to
/// (refused while this node shuts down).
/// Harmless from anyone else holding the secret: a voter refuses a candidate whose log is
/// behind, and a live leader's lease refuses it too.
async fn elect(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    // A node on its way out must not take over: the leader handing off asks another one.
    if app.is_shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this node is shutting down",
        ));
    }
    app.raft
        .trigger()
        .elect()
        .await
        .map_err(|e| ApiError::internal(format!("raft stopped: {e}")))?;
    Ok(reply(&()))
}

async fn read_index(State(app): State<Arc<App>>) -> Response {
    let answer = match app.raft.get_read_log_id().await {
        Ok((read_log_id, _applied)) => ReadIndexReply::Index(read_log_id.map(|l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            ReadIndexReply::NotLeader
        }
        Err(e) => ReadIndexReply::Failed(e.to_string()),
    };
    reply(&answer)
}
