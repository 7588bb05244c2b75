//! Health and metrics for load balancers, orchestrators and Prometheus: no authentication.
//!
//! `/livez` says the process serves HTTP. `/readyz` says this node can answer correctly now: a
//! leader is known and a linearizable read through it succeeds (which proves a quorum is
//! reachable and this node has applied everything committed before the check). The read costs
//! the leader a quorum round, and `/readyz` needs no authentication, so its verdict is reused
//! for [`READINESS_MAX_AGE`]: however often anyone asks, a node checks at most a few times a
//! second, and concurrent askers share one check.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::time::Instant;
use x402_protocol::wire::Readiness;

use crate::node::App;

/// How long a readiness check may wait for the leader and for apply to catch up.
const READINESS_DEADLINE: Duration = Duration::from_secs(1);
/// How long a readiness verdict is reused.
pub const READINESS_MAX_AGE: Duration = Duration::from_millis(500);

/// The last readiness verdict and when it was reached. Holding the lock while checking makes
/// concurrent askers wait for one check instead of each making one.
#[derive(Default)]
struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

pub fn routes() -> Router<Arc<App>> {
    let cache = Arc::new(ReadinessCache::default());
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move |State(app): State<Arc<App>>| readyz(app, cache.clone())),
        )
        .route("/metrics", get(metrics))
}

async fn readyz(app: Arc<App>, cache: Arc<ReadinessCache>) -> Response {
    // Not cached: a load balancer must see a shutdown at its next probe.
    let reasons = if app.is_shutting_down() {
        vec!["shutting down".to_string()]
    } else {
        let mut last = cache.last.lock().await;
        match &*last {
            Some((at, reasons)) if at.elapsed() < READINESS_MAX_AGE => reasons.clone(),
            _ => {
                let reasons = readiness(&app).await;
                *last = Some((Instant::now(), reasons.clone()));
                reasons
            }
        }
    };
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, reasons })).into_response()
}

/// Why this node is not ready now (none: it is).
async fn readiness(app: &App) -> Vec<String> {
    let mut reasons = Vec::new();
    let (fatal, leader) = {
        let metrics = app.raft.metrics();
        let m = metrics.borrow();
        (m.running_state.clone().err(), m.current_leader)
    };
    if let Some(fatal) = fatal {
        reasons.push(format!("raft stopped: {fatal}"));
    } else if leader.is_none() {
        reasons.push("no leader known".to_string());
    } else if let Err(e) = app.barrier.wait_for(READINESS_DEADLINE).await {
        reasons.push(format!("linearizable read failed: {e}"));
    }
    reasons
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(committed) = (app.committed)().await {
        app.metrics.committed_index.set(committed.index as i64);
    }
    app.metrics
        .live_claims
        .set(app.state.read(|s| s.nonces().len()) as i64);
    match app.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
