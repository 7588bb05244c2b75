//! The x402 facilitator API as the official SDKs call it: `POST /verify`, `POST /settle`,
//! `GET /supported`.
//!
//! Statuses follow the reference facilitators (reference/x402-protocol.md §1.3): a well-formed
//! request that fails a check answers 200 with `isValid: false` / `success: false` and a reason
//! code; a body that is not a valid request answers 400 with the same shape (so the TS client
//! still surfaces the reason) and a message naming the field; a request the cluster could not
//! decide (no leader, overloaded, outcome unknown) answers 503/504 with an error body and
//! changes nothing it would not redo on a retry.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use prometheus::{Histogram, IntCounterVec};
use serde::Serialize;
use tokio::time::Instant;
use x402_client::x402::{
    decode_request, DecodeError, FacilitatorRequest, ReasonCode, SettleResponse, VerifyResponse,
};
use x402_raft_store::state::idempotency::MAX_STORED_ANSWER_BYTES;

use super::error::ApiError;
use crate::access::idempotency::{self, Begun};
use crate::access::leases::LeaseError;
use crate::access::rate_limit::{refused, set_quota_headers, Gate};
use crate::access::{ClientAddr, Route};
use crate::facilitator::settle::{self, SettleError};
use crate::facilitator::verify::{self, VerifyError};
use crate::node::App;

pub fn routes(app: &App) -> Router<Arc<App>> {
    Router::new()
        .route("/verify", post(verify_handler))
        .route("/settle", post(settle_handler))
        .route("/supported", get(supported))
        .layer(DefaultBodyLimit::max(app.limits.max_body_bytes))
}

async fn supported(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Response {
    let client = client.and_then(|Extension(ClientAddr(ip))| ip);
    guarded(
        &app,
        Route::Supported,
        &headers,
        client,
        None,
        |_gate| async { Json(app.facilitator.supported()).into_response() },
    )
    .await
}

/// What every facilitator request goes through around its endpoint, in order: the API key
/// (401/403), the rate-limit pre-check on this replica's state (429 without any work), the
/// `Idempotency-Key` (a stored answer, 409 or 422 instead of running), the endpoint itself, then
/// the count of a request that wrote nothing (a leased slice; 429 if none is left), the
/// `X-RateLimit-*` headers, and the answer stored under its idempotency key.
async fn guarded<F, Fut>(
    app: &Arc<App>,
    route: Route,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    body: Option<&Bytes>,
    run: F,
) -> Response
where
    F: FnOnce(Arc<Gate>) -> Fut,
    Fut: Future<Output = Response>,
{
    let access = &app.access;
    let caller = match access.api_keys.authenticate(headers, route) {
        Ok(caller) => caller,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let gate = Arc::new(if access.rate_limits.is_empty() {
        Gate::open()
    } else {
        let ip = access.rate_limits.client_ip(headers, client);
        access.rate_limits.gate(route, caller.as_ref(), ip)
    });
    if !gate.keys().is_empty() {
        let now_ms = app.clock.now_ms();
        // Only an early refusal: skipped while an apply holds the state (the log entry, or the
        // lease, decides anyway), so that no request waits for a batch to be applied.
        let verdict = app
            .state
            .try_read(|s| s.rate_limits().check(gate.admission(), now_ms));
        if let Some(limited) = verdict.and_then(refused) {
            app.metrics
                .rate_limited
                .with_label_values(&[route.path()])
                .inc();
            return limited.into_response();
        }
    }
    let idempotency_key = match body {
        Some(_) => match idempotency::key_of(headers, &access.idempotency) {
            Ok(key) => key,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let mut key_claim = None;
    let mut response = match (idempotency_key, body) {
        (Some(key), Some(body)) => {
            match idempotency::begin(
                &app.batcher,
                &access.idempotency,
                caller.as_ref(),
                &key,
                route,
                body,
            )
            .await
            {
                Begun::Run(claim) => {
                    key_claim = Some(claim);
                    run(gate.clone()).await
                }
                Begun::Answer(response) => response,
            }
        }
        _ => run(gate.clone()).await,
    };
    let limited_in_log = response.status() == StatusCode::TOO_MANY_REQUESTS;
    if !gate.keys().is_empty() && !gate.decided_in_log() && !limited_in_log {
        match access.leases.spend(&app.batcher, gate.keys()).await {
            Ok(quota) => gate.spent(quota),
            Err(LeaseError::Limited(limited)) => response = limited.into_response(),
            Err(LeaseError::Propose(e)) => response = ApiError::from(e).into_response(),
            Err(e @ LeaseError::Unexpected(_)) => {
                response = ApiError::internal(e.to_string()).into_response()
            }
        }
    }
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        app.metrics
            .rate_limited
            .with_label_values(&[route.path()])
            .inc();
    } else if let Some(quota) = gate.quota() {
        set_quota_headers(response.headers_mut(), &quota);
    }
    match key_claim {
        Some(claim) => store_answer(app, claim, response).await,
        None => response,
    }
}

/// Stores `response` under its idempotency key (or releases the key) and returns it.
async fn store_answer(app: &App, claim: idempotency::KeyClaim, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    // Facilitator answers are small JSON; one too large to store is answered and not stored.
    match axum::body::to_bytes(body, MAX_STORED_ANSWER_BYTES + 1).await {
        Ok(bytes) => {
            idempotency::finish(&app.batcher, claim, parts.status, &bytes).await;
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Err(e) => {
            idempotency::finish(&app.batcher, claim, StatusCode::INTERNAL_SERVER_ERROR, &[]).await;
            ApiError::internal(format!("answer could not be buffered: {e}")).into_response()
        }
    }
}

/// The body, or the error answer for one that could not be read (too large, broken stream).
fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, rejection.body_text())
    })
}

impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        match self {
            VerifyError::Claim(e) => ApiError::from(e).into_response(),
            VerifyError::Limited(limited) => limited.into_response(),
            e @ VerifyError::Unexpected(_) => ApiError::internal(e.to_string()).into_response(),
        }
    }
}

impl IntoResponse for SettleError {
    fn into_response(self) -> Response {
        match self {
            SettleError::Propose(e) => ApiError::from(e).into_response(),
            SettleError::Limited(limited) => limited.into_response(),
            e @ SettleError::Refused(_) => ApiError::internal(e.to_string()).into_response(),
        }
    }
}

/// What `/verify` and `/settle` share: read and decode the body (a malformed one is answered
/// 400 with `malformed`'s verdict), run the endpoint, and count the answer under its label
/// (`error` for an answer without a verdict) in `answers`, its time in `seconds`.
async fn answer<T, E, Fut>(
    body: Result<Bytes, ApiError>,
    malformed: fn(&DecodeError) -> T,
    run: impl FnOnce(FacilitatorRequest) -> Fut,
    label_of: fn(&T) -> String,
    answers: &IntCounterVec,
    seconds: &Histogram,
) -> Response
where
    T: Serialize,
    Fut: Future<Output = Result<T, E>>,
    E: IntoResponse,
{
    let started = Instant::now();
    let (label, response) = match body {
        Err(e) => ("error".to_owned(), e.into_response()),
        Ok(body) => match decode_request(&body) {
            Err(e) => (
                e.reason().as_str().to_owned(),
                (StatusCode::BAD_REQUEST, Json(malformed(&e))).into_response(),
            ),
            Ok(request) => match run(request).await {
                Ok(verdict) => (label_of(&verdict), Json(verdict).into_response()),
                Err(e) => {
                    let response = e.into_response();
                    let label = if response.status() == StatusCode::TOO_MANY_REQUESTS {
                        "rate_limited"
                    } else {
                        "error"
                    };
                    (label.to_owned(), response)
                }
            },
        },
    };
    answers.with_label_values(&[&label]).inc();
    seconds.observe(started.elapsed().as_secs_f64());
    response
}

async fn verify_handler(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let client = client.and_then(|Extension(ClientAddr(ip))| ip);
    let body = body_or_error(body);
    let metrics = &app.metrics;
    guarded(
        &app,
        Route::Verify,
        &headers,
        client,
        body.as_ref().ok(),
        |gate| {
            answer(
                body.clone(),
                |e| VerifyResponse::invalid(e.reason(), None).with_message(e.to_string()),
                |request| {
                    let app = &app;
                    async move { verify::verify(app, &request, &gate).await }
                },
                |verdict| match &verdict.invalid_reason {
                    None if verdict.is_valid => "valid".to_owned(),
                    Some(reason) => reason.as_str().to_owned(),
                    None => "invalid".to_owned(),
                },
                &metrics.verifications,
                &metrics.verify_seconds,
            )
        },
    )
    .await
}

async fn settle_handler(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let client = client.and_then(|Extension(ClientAddr(ip))| ip);
    let body = body_or_error(body);
    let metrics = &app.metrics;
    guarded(
        &app,
        Route::Settle,
        &headers,
        client,
        body.as_ref().ok(),
        |gate| {
            answer(
                body.clone(),
                |e| SettleResponse::failure(e.reason(), "", None).with_message(e.to_string()),
                |request| {
                    let app = &app;
                    async move { settle::settle(app, &request, &gate).await }
                },
                |verdict| match &verdict.error_reason {
                    None if verdict.success => "success".to_owned(),
                    Some(reason) => reason.as_str().to_owned(),
                    None => ReasonCode::UnexpectedSettleError.as_str().to_owned(),
                },
                &metrics.settlements,
                &metrics.settle_seconds,
            )
        },
    )
    .await
}
