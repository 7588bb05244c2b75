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
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Histogram, IntCounterVec};
use serde::Serialize;
use tokio::time::Instant;
use x402_client::x402::{
    decode_request, DecodeError, FacilitatorRequest, ReasonCode, SettleResponse, VerifyResponse,
};

use super::error::ApiError;
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

async fn supported(State(app): State<Arc<App>>) -> Json<x402_client::x402::SupportedResponse> {
    Json(app.facilitator.supported())
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

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Claim(e) => e.into(),
            e @ VerifyError::Unexpected(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<SettleError> for ApiError {
    fn from(e: SettleError) -> Self {
        match e {
            SettleError::Propose(e) => e.into(),
            e @ SettleError::Refused(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// What `/verify` and `/settle` share: read and decode the body (a malformed one is answered
/// 400 with `malformed`'s verdict), run the endpoint, and count the answer under its label
/// (`error` for an answer without a verdict) in `answers`, its time in `seconds`.
async fn answer<T, E, Fut>(
    body: Result<Bytes, BytesRejection>,
    malformed: fn(&DecodeError) -> T,
    run: impl FnOnce(FacilitatorRequest) -> Fut,
    label_of: fn(&T) -> String,
    answers: &IntCounterVec,
    seconds: &Histogram,
) -> Response
where
    T: Serialize,
    Fut: Future<Output = Result<T, E>>,
    ApiError: From<E>,
{
    let started = Instant::now();
    let (label, response) = match body_or_error(body) {
        Err(e) => ("error".to_owned(), e.into_response()),
        Ok(body) => match decode_request(&body) {
            Err(e) => (
                e.reason().as_str().to_owned(),
                (StatusCode::BAD_REQUEST, Json(malformed(&e))).into_response(),
            ),
            Ok(request) => match run(request).await {
                Ok(verdict) => (label_of(&verdict), Json(verdict).into_response()),
                Err(e) => ("error".to_owned(), ApiError::from(e).into_response()),
            },
        },
    };
    answers.with_label_values(&[&label]).inc();
    seconds.observe(started.elapsed().as_secs_f64());
    response
}

async fn verify_handler(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let metrics = &app.metrics;
    answer(
        body,
        |e| VerifyResponse::invalid(e.reason(), None).with_message(e.to_string()),
        |request| {
            let app = &app;
            async move { verify::verify(app, &request).await }
        },
        |verdict| match &verdict.invalid_reason {
            None if verdict.is_valid => "valid".to_owned(),
            Some(reason) => reason.as_str().to_owned(),
            None => "invalid".to_owned(),
        },
        &metrics.verifications,
        &metrics.verify_seconds,
    )
    .await
}

async fn settle_handler(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let metrics = &app.metrics;
    answer(
        body,
        |e| SettleResponse::failure(e.reason(), "", None).with_message(e.to_string()),
        |request| {
            let app = &app;
            async move { settle::settle(app, &request).await }
        },
        |verdict| match &verdict.error_reason {
            None if verdict.success => "success".to_owned(),
            Some(reason) => reason.as_str().to_owned(),
            None => ReasonCode::UnexpectedSettleError.as_str().to_owned(),
        },
        &metrics.settlements,
        &metrics.settle_seconds,
    )
    .await
}
