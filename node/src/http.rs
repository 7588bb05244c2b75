//! The node's HTTP surface, one router per audience:
//! - [`facilitator`]: `/verify`, `/settle`, `/supported` (the x402 facilitator API);
//! - [`health`]: `/livez`, `/readyz`, `/metrics` (no authentication);
//! - [`admin`]: `/admin/*` for operators (admin bearer token, or the cluster secret);
//! - [`peer`]: `/raft/*` for other nodes (cluster secret), bincode bodies.

pub mod admin;
pub mod error;
pub mod facilitator;
pub mod health;
pub mod peer;

use std::sync::Arc;
use std::time::Duration;

use axum::{middleware, Router};

use crate::node::App;
use crate::serve;

/// A started node's routers: serve them to make it reachable ([`crate::serve::serve`]): `api`
/// on `listen` and `peer` on `peer_listen`, or [`Routers::single`] on `listen` when there is no
/// separate peer port.
pub struct Routers {
    /// The x402 API, health, metrics and admin.
    pub api: Router,
    /// The peer API (and admin, for members that reach each other only here).
    pub peer: Router,
    app: Arc<App>,
}

impl Routers {
    pub fn new(app: Arc<App>) -> Self {
        Self {
            api: api_router(app.clone()),
            peer: peer_router(app.clone(), true),
            app,
        }
    }

    /// Both on one listener.
    pub fn single(&self) -> Router {
        self.api.clone().merge(peer_router(self.app.clone(), false))
    }
}

/// What clients and operators reach on `listen`: the facilitator API, health and metrics,
/// admin. Every body is read in full (size and time bounded) before a handler runs.
pub fn api_router(app: Arc<App>) -> Router {
    let (max, deadline) = (app.limits.max_body_bytes, body_deadline(&app));
    Router::new()
        .merge(health::routes())
        .merge(facilitator::routes(&app))
        .merge(admin::routes(&app))
        .layer(middleware::from_fn(move |request, next| {
            serve::read_body(max, deadline, request, next)
        }))
        .with_state(app)
}

/// What members reach on `peer_listen` (or on `listen` too, without one): the peer API, and
/// with `with_admin` the admin API (a member's URL is its peer URL, and operators' commands
/// forwarded to the leader use it).
pub fn peer_router(app: Arc<App>, with_admin: bool) -> Router {
    let (max, deadline) = (app.limits.max_peer_body_bytes, body_deadline(&app));
    let mut router = peer::routes(&app).layer(middleware::from_fn(move |request, next| {
        serve::read_body(max, deadline, request, next)
    }));
    if with_admin {
        let admin_max = app.limits.max_body_bytes;
        router = router.merge(admin::routes(&app).layer(middleware::from_fn(
            move |request, next| serve::read_body(admin_max, deadline, request, next),
        )));
    }
    router.with_state(app)
}

fn body_deadline(app: &App) -> Duration {
    Duration::from_millis(app.limits.body_read_timeout_ms)
}
