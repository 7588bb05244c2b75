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

use axum::Router;

use crate::node::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(facilitator::routes(&app))
        .merge(admin::routes(&app))
        .merge(peer::routes(&app))
        .with_state(app)
}
