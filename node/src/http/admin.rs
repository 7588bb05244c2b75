//! The operator API (`/admin/*`): cluster status, forming the cluster, membership changes,
//! snapshots, and raw nonce claims (used by `x402ctl bench claims`).
//!
//! Callers present the admin token, or the cluster secret (a node forwarding an operator's
//! request to the leader). Membership changes must run on the leader; any other node passes the
//! request on and returns the leader's answer; the changes themselves are
//! [`crate::cluster::membership`]'s.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::ServerState;
use x402_protocol::wire::{
    self, AddLearnerRequest, BreakerStatus, ClaimRequest, ClaimResponse, InitRequest,
    LeaderMoveRequest, LeaderMoveResponse, MemberIdRequest, MembershipResponse, NodeStatus, Role,
    SignerStatus, SnapshotResponse,
};
use x402_raft_store::state::breakers::BreakerPhase;
use x402_raft_store::state::{ClaimOutcome, NonceClaim, NonceKey};

use super::error::{ApiError, JsonBody};
use crate::cluster::membership::members_of;
use crate::cluster::peer_client::PeerError;
use crate::node::App;
use crate::secret::bearer_matches;

/// How long a snapshot request waits for the snapshot to be built.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);
/// How long `POST /admin/leader/move` tries before answering that no voter took over.
const LEADER_MOVE_BOUND: Duration = Duration::from_secs(10);
/// Deadline of a membership request passed on to the leader.
const FORWARD_DEADLINE: Duration = Duration::from_secs(40);

pub fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/init", post(init))
        .route("/admin/members/add", post(add_learner))
        .route("/admin/members/promote", post(promote))
        .route("/admin/members/remove", post(remove))
        .route("/admin/claims", post(claim))
        .route("/admin/elect", post(elect))
        .route("/admin/leader/move", post(move_leader))
        .route(
            "/admin/snapshot",
            post(take_snapshot).get(download_snapshot),
        )
        .layer(DefaultBodyLimit::max(app.limits.max_body_bytes))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_admin))
}

async fn require_admin(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if bearer_matches(&app.secrets.admin_token, header)
        || bearer_matches(&app.secrets.cluster_secret, header)
    {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

async fn status(State(app): State<Arc<App>>) -> Result<Json<NodeStatus>, ApiError> {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let is_voter = membership.voter_ids().any(|id| id == app.id);
    let role = match m.state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Follower if is_voter => Role::Follower,
        ServerState::Follower | ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    };
    let committed = (app.committed)().await.map(|l| l.index);
    let (claims, hash, signers) = app.state.read(|s| {
        let signers = s
            .signers()
            .iter()
            .map(|((chain_id, address), st)| SignerStatus {
                chain_id,
                address: alloy::primitives::Address::from(address).to_checksum(None),
                next_nonce: st.next_nonce,
                in_flight: st.in_flight,
            })
            .collect::<Vec<_>>();
        (s.nonces().len() as u64, s.state_hash(), signers)
    });
    Ok(Json(NodeStatus {
        id: app.id,
        url: app.url.clone(),
        cluster_id: app.peers.identity().current().map(|id| id.to_string()),
        role,
        term: m.current_term,
        leader_id: m.current_leader,
        committed,
        applied: app.state.last_applied().map(|l| l.index),
        last_log: m.last_log_index,
        snapshot: m.snapshot.map(|l| l.index),
        purged: m.purged.map(|l| l.index),
        members: members_of(membership),
        claims,
        state_hash: hex::encode(hash),
        breakers: app
            .breakers
            .views()
            .into_iter()
            .map(|v| {
                let (state, open_until_ms) = match v.state.phase {
                    BreakerPhase::Closed => ("closed", None),
                    BreakerPhase::HalfOpen => ("half_open", None),
                    BreakerPhase::Open { until_ms } => ("open", Some(until_ms)),
                };
                BreakerStatus {
                    endpoint: v.endpoint,
                    state: state.to_owned(),
                    epoch: v.state.epoch,
                    open_until_ms,
                }
            })
            .collect(),
        signers,
        version: Some(format!(
            "{} (commit {})",
            crate::metrics::VERSION,
            crate::metrics::COMMIT
        )),
    }))
}

async fn init(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<InitRequest>,
) -> Result<Json<MembershipResponse>, ApiError> {
    Ok(Json(app.members.init(request.members).await?))
}

async fn add_learner(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<AddLearnerRequest>,
) -> Result<Response, ApiError> {
    if let Some(answer) = pass_to_leader(&app, "/admin/members/add", &request).await? {
        return Ok(answer);
    }
    let answer = app
        .members
        .add_learner(
            request.id,
            &request.url,
            request.holds_cluster_id.as_deref(),
        )
        .await?;
    Ok(Json(answer).into_response())
}

async fn promote(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<MemberIdRequest>,
) -> Result<Response, ApiError> {
    if let Some(answer) = pass_to_leader(&app, "/admin/members/promote", &request).await? {
        return Ok(answer);
    }
    Ok(Json(app.members.promote(request.id).await?).into_response())
}

async fn remove(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<MemberIdRequest>,
) -> Result<Response, ApiError> {
    if let Some(answer) = pass_to_leader(&app, "/admin/members/remove", &request).await? {
        return Ok(answer);
    }
    Ok(Json(app.members.remove(request.id).await?).into_response())
}

/// On a non-leader, sends the request to the leader and returns its answer; on the leader,
/// returns `None` so the caller handles it.
async fn pass_to_leader<T: serde::Serialize>(
    app: &App,
    path: &str,
    request: &T,
) -> Result<Option<Response>, ApiError> {
    let (leader, url) = match app.leader() {
        Some(leader) => leader,
        None => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "no leader is known; retry shortly",
            ))
        }
    };
    if leader == app.id {
        return Ok(None);
    }
    let body = serde_json::to_vec(request).map_err(|e| ApiError::internal(e.to_string()))?;
    match app
        .peers
        .post_json(&url, path, body, FORWARD_DEADLINE)
        .await
    {
        Ok(bytes) => Ok(Some(json_bytes(StatusCode::OK, bytes))),
        Err(PeerError::Status { status, body, .. }) => Ok(Some(json_bytes(status, body.into()))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_unreachable",
            e.to_string(),
        )),
    }
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn claim(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let field =
        |name: &'static str| move |e: wire::HexError| ApiError::bad_request(format!("{name}: {e}"));
    let claim = NonceClaim {
        key: NonceKey {
            chain_id: request.chain_id,
            asset: wire::parse_hex(&request.asset).map_err(field("asset"))?,
            payer: wire::parse_hex(&request.payer).map_err(field("payer"))?,
            nonce: wire::parse_hex(&request.nonce).map_err(field("nonce"))?,
        },
        fingerprint: wire::parse_hex(&request.fingerprint).map_err(field("fingerprint"))?,
        valid_before: request.valid_before,
    };
    let started = Instant::now();
    let result = app.writer.claim(claim).await;
    let outcome_label = match &result {
        Ok(_) => "ok",
        Err(e) => match e {
            crate::cluster::proposer::ProposeError::NoLeader => "no_leader",
            crate::cluster::proposer::ProposeError::Unknown => "unknown",
            crate::cluster::proposer::ProposeError::Refused(_) => "refused",
            crate::cluster::proposer::ProposeError::Overloaded => "overloaded",
        },
    };
    app.metrics
        .proposals
        .with_label_values(&[outcome_label])
        .inc();
    let claimed = result?;
    app.metrics
        .proposal_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match claimed.answer {
        ClaimOutcome::Accepted => wire::ClaimOutcome::Accepted,
        ClaimOutcome::Replay => wire::ClaimOutcome::Replay,
        ClaimOutcome::Expired => wire::ClaimOutcome::Expired,
    };
    Ok(Json(ClaimResponse {
        outcome,
        log_index: claimed.log_index,
    }))
}

/// Makes this node campaign at once (openraft's `trigger().elect()`): how an operator moves
/// leadership to a chosen node once the current leader's lease is over (openraft 0.9 has no
/// leader transfer). A no-op on the leader; voters still refuse a candidate whose log is behind.
async fn elect(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    app.raft
        .trigger()
        .elect()
        .await
        .map_err(|e| ApiError::internal(format!("raft stopped: {e}")))?;
    Ok(Json(serde_json::json!({ "campaigning": app.id })))
}

/// Hands leadership to the requested voter (or any caught-up one): on a follower the request goes
/// to the leader, which stops proposing until the voter has its last entry and has won
/// ([`crate::cluster::handoff`]). Asking for the node that already leads changes nothing.
async fn move_leader(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<LeaderMoveRequest>,
) -> Result<Response, ApiError> {
    if let Some(answer) = pass_to_leader(&app, "/admin/leader/move", &request).await? {
        return Ok(answer);
    }
    let leader = app.hand_off(request.to, LEADER_MOVE_BOUND).await?;
    Ok(Json(LeaderMoveResponse { leader }).into_response())
}

async fn take_snapshot(State(app): State<Arc<App>>) -> Result<Json<SnapshotResponse>, ApiError> {
    let applied = app.state.last_applied().map(|l| l.index);
    app.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::internal(format!("raft stopped: {e}")))?;
    let metrics = app
        .raft
        .wait(Some(SNAPSHOT_WAIT))
        .metrics(|m| m.snapshot.map(|l| l.index) >= applied, "snapshot built")
        .await
        .map_err(|e| ApiError::internal(format!("snapshot not built: {e}")))?;
    Ok(Json(SnapshotResponse {
        last_log_index: metrics.snapshot.map(|l| l.index),
    }))
}

async fn download_snapshot(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    match (app.snapshot_file)() {
        Ok(Some(bytes)) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_snapshot",
            "this node has no snapshot yet; POST /admin/snapshot first",
        )),
        Err(e) => Err(ApiError::internal(format!("cannot read snapshot: {e}"))),
    }
}
