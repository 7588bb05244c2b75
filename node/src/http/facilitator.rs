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
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tokio::time::Instant;
use x402_protocol::x402::{
    decode_request, DecodeError, FacilitatorRequest, ReasonCode, SettleResponse, VerifyResponse,
};
use x402_raft_store::runtime::ThreadRng;
use x402_raft_store::state::idempotency::{StoredAnswer, MAX_STORED_ANSWER_BYTES};

use super::error::set_quota_headers;
use super::error::ApiError;
use crate::access::idempotency::{self, BeginError, Begun, KeyClaim, KeyError, KeyKind, Scope};
use crate::access::leases::LeaseError;
use crate::access::rate_limit::{refused, Gate};
use crate::access::{ClientAddr, Route};
use crate::facilitator::payment::Rejection;
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
        |_gate, _scope| async { Ran::plain(Json(app.facilitator.supported()).into_response()) },
    )
    .await
}

/// What an endpoint hands back to [`guarded`]: its answer, and the idempotency key it holds, to
/// store the answer under when it is final (or release).
struct Ran {
    response: Response,
    key: Option<(KeyClaim, bool)>,
}

impl Ran {
    fn plain(response: Response) -> Self {
        Self {
            response,
            key: None,
        }
    }
}

/// What every facilitator request goes through around its endpoint, in order: the API key
/// (401/403), the rate-limit pre-check on this replica's state (429 without any work), the
/// endpoint itself (for `/verify` and `/settle`: decoding, the signature and terms, then the
/// idempotency key, then the work: [`paid`]), then the count of a request that wrote nothing (a
/// leased slice; 429 if none is left), the `X-RateLimit-*` headers, and the answer stored under
/// its idempotency key.
async fn guarded<F, Fut>(
    app: &Arc<App>,
    route: Route,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    run: F,
) -> Response
where
    F: FnOnce(Arc<Gate>, Scope) -> Fut,
    Fut: Future<Output = Ran>,
{
    let access = &app.access;
    let caller = match access.api_keys.authenticate(headers, route) {
        Ok(caller) => caller,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ip = access.rate_limits.client_ip(headers, client);
    let gate = Arc::new(if access.rate_limits.is_empty() {
        Gate::open()
    } else {
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
    let scope = Scope {
        api_key: caller,
        client_ip: ip,
    };
    let Ran { mut response, key } = run(gate.clone(), scope).await;
    let limited_in_log = response.status() == StatusCode::TOO_MANY_REQUESTS;
    if !gate.keys().is_empty() && !gate.decided_in_log() && !limited_in_log {
        match access.leases.spend(&app.writer, gate.keys()).await {
            Ok(quota) => gate.spent(quota),
            Err(LeaseError::Limited(limited)) => response = limited.into_response(),
            Err(LeaseError::Propose(e)) => response = ApiError::from(e).into_response(),
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
    match key {
        Some((claim, final_answer)) => store_answer(app, claim, response, final_answer).await,
        None => response,
    }
}

/// Stores `response` under its idempotency key when it is final (or releases the key) and
/// returns it.
async fn store_answer(
    app: &App,
    claim: KeyClaim,
    response: Response,
    final_answer: bool,
) -> Response {
    let (parts, body) = response.into_parts();
    // Facilitator answers are small JSON; one too large to store is answered and not stored.
    match axum::body::to_bytes(body, MAX_STORED_ANSWER_BYTES + 1).await {
        Ok(bytes) => {
            idempotency::finish(
                &app.writer,
                claim,
                parts.status.as_u16(),
                &bytes,
                final_answer,
            )
            .await;
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Err(e) => {
            idempotency::finish(&app.writer, claim, 500, &[], false).await;
            ApiError::internal(format!("answer could not be buffered: {e}")).into_response()
        }
    }
}

/// A stored answer, as it was first sent, marked as replayed.
fn replay(stored: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        idempotency::REPLAYED_HEADER,
        HeaderValue::from_static("true"),
    );
    response
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

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        let code = match e {
            KeyError::BadIdempotencyKey { .. } => "idempotency_key_invalid",
            KeyError::BadPaymentIdentifier => "payment_identifier_invalid",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<BeginError> for ApiError {
    fn from(e: BeginError) -> Self {
        match e {
            BeginError::InFlight => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                e.to_string(),
            ),
            BeginError::Mismatch(KeyKind::IdempotencyKey) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            ),
            BeginError::Mismatch(KeyKind::PaymentIdentifier) => ApiError::new(
                StatusCode::CONFLICT,
                "payment_identifier_reused",
                "this payment-identifier id was used for a different payment",
            ),
            BeginError::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "idempotency_store_full",
                e.to_string(),
            ),
            BeginError::Propose(e) => ApiError::from(e),
        }
    }
}

impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        match self {
            VerifyError::Claim(e) => ApiError::from(e).into_response(),
            VerifyError::Limited(limited) => limited.into_response(),
        }
    }
}

impl IntoResponse for SettleError {
    fn into_response(self) -> Response {
        match self {
            SettleError::Propose(e) => ApiError::from(e).into_response(),
            SettleError::Limited(limited) => limited.into_response(),
            e @ (SettleError::Rejected(_)
            | SettleError::MissingSigner(_)
            | SettleError::Signing(_)
            | SettleError::Fees(_)
            | SettleError::UndecodableRecord) => ApiError::internal(e.to_string()).into_response(),
        }
    }
}

/// The verdict of `/verify` or `/settle`.
enum Verdict {
    Verify(VerifyResponse),
    Settle(SettleResponse),
}

impl Verdict {
    /// A body that did not decode (answered 400, in the verdict's shape so the TS client still
    /// surfaces the reason).
    fn malformed(route: Route, e: &DecodeError) -> Self {
        match route {
            Route::Settle => Verdict::Settle(
                SettleResponse::failure(e.reason(), "", None).with_message(e.to_string()),
            ),
            _ => Verdict::Verify(
                VerifyResponse::invalid(e.reason(), None).with_message(e.to_string()),
            ),
        }
    }

    /// A payment refused by its own checks.
    fn rejected(route: Route, rejection: Rejection, request: &FacilitatorRequest) -> Self {
        match route {
            Route::Settle => Verdict::Settle(settle::failure(rejection, request.network())),
            _ => Verdict::Verify(verify::invalid(rejection)),
        }
    }

    /// The label it is counted under.
    fn label(&self) -> String {
        match self {
            Verdict::Verify(v) => match &v.invalid_reason {
                None if v.is_valid => "valid".to_owned(),
                Some(reason) => reason.as_str().to_owned(),
                None => "invalid".to_owned(),
            },
            Verdict::Settle(v) => match &v.error_reason {
                None if v.success => "success".to_owned(),
                Some(reason) => reason.as_str().to_owned(),
                None => ReasonCode::UnexpectedSettleError.as_str().to_owned(),
            },
        }
    }

    /// Whether a retry must get this answer again: everything but `settlement_pending`, whose
    /// retry must reach the settlement (and may get its success).
    fn is_final(&self) -> bool {
        match self {
            Verdict::Verify(_) => true,
            Verdict::Settle(v) => v.error_reason != Some(ReasonCode::SettlementPending),
        }
    }

    fn into_response(self, status: StatusCode) -> Response {
        match self {
            Verdict::Verify(v) => (status, Json(v)).into_response(),
            Verdict::Settle(v) => (status, Json(v)).into_response(),
        }
    }
}

/// `/verify` and `/settle`: read and decode the body (400 if malformed), check the payment's
/// signature and terms (a refusal answers at once), then its idempotency key (a stored answer,
/// 409 or 422 instead of running), then the endpoint. Counts the answer under its label
/// (`error` for an answer without a verdict) and its time. Nothing before the idempotency key
/// writes to the log, so malformed and forged requests change nothing.
async fn paid(
    app: &App,
    route: Route,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    gate: &Gate,
    scope: Scope,
) -> Ran {
    let started = Instant::now();
    let (answers, seconds) = match route {
        Route::Settle => (&app.metrics.settlements, &app.metrics.settle_seconds),
        _ => (&app.metrics.verifications, &app.metrics.verify_seconds),
    };
    let (label, ran) = paid_answer(app, route, headers, body, gate, &scope).await;
    if let Some(label) = label {
        answers.with_label_values(&[&label]).inc();
        seconds.observe(started.elapsed().as_secs_f64());
    }
    ran
}

/// [`paid`] without the counting: the label (none for a replayed answer) and the answer.
async fn paid_answer(
    app: &App,
    route: Route,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    gate: &Gate,
    scope: &Scope,
) -> (Option<String>, Ran) {
    let error = |e: ApiError| (Some("error".to_owned()), Ran::plain(e.into_response()));
    let body = match body_or_error(body) {
        Ok(body) => body,
        Err(e) => return error(e),
    };
    let request = match decode_request(&body) {
        Ok(request) => request,
        Err(e) => {
            let verdict = Verdict::malformed(route, &e);
            return (
                Some(e.reason().as_str().to_owned()),
                Ran::plain(verdict.into_response(StatusCode::BAD_REQUEST)),
            );
        }
    };
    let payment = match verify::authenticate(&app.payments, &request).await {
        Ok(payment) => payment,
        Err(rejection) => {
            let verdict = Verdict::rejected(route, rejection, &request);
            return (
                Some(verdict.label()),
                Ran::plain(verdict.into_response(StatusCode::OK)),
            );
        }
    };
    let header = headers.get(idempotency::HEADER).map(|v| v.as_bytes());
    let settings = &app.access.idempotency;
    // An Idempotency-Key takes precedence; a settlement's payment-identifier otherwise.
    let key = match idempotency::idempotency_key(header, settings, scope, route, &body) {
        Ok(None) if route == Route::Settle => idempotency::payment_identifier(
            request.extensions(),
            scope,
            route,
            payment.content_digest(&request),
        ),
        other => other,
    };
    let claim = match key {
        Err(e) => return error(e.into()),
        Ok(None) => None,
        Ok(Some(key)) => match idempotency::begin(&app.writer, settings, &key).await {
            Ok(Begun::Run(claim)) => Some(claim),
            Ok(Begun::Replay(stored)) => return (None, Ran::plain(replay(stored))),
            Err(e) => return error(e.into()),
        },
    };
    let result = match route {
        Route::Settle => {
            // This request's claim on the settlement's one success (I2).
            let taker = rand::Rng::gen(&mut ThreadRng);
            settle::settle(&app.payments, &payment, request.network(), gate, taker)
                .await
                .map(Verdict::Settle)
                .map_err(IntoResponse::into_response)
        }
        _ => verify::verify(&app.payments, &payment, gate)
            .await
            .map(Verdict::Verify)
            .map_err(IntoResponse::into_response),
    };
    match result {
        Ok(verdict) => {
            let final_answer = verdict.is_final();
            (
                Some(verdict.label()),
                Ran {
                    response: verdict.into_response(StatusCode::OK),
                    key: claim.map(|c| (c, final_answer)),
                },
            )
        }
        Err(response) => {
            let label = if response.status() == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else {
                "error"
            };
            (
                Some(label.to_owned()),
                Ran {
                    response,
                    key: claim.map(|c| (c, false)),
                },
            )
        }
    }
}

async fn verify_handler(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let client = client.and_then(|Extension(ClientAddr(ip))| ip);
    let (app, headers) = (&app, &headers);
    guarded(
        app,
        Route::Verify,
        headers,
        client,
        |gate, scope| async move { paid(app, Route::Verify, headers, body, &gate, scope).await },
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
    let (app, headers) = (&app, &headers);
    guarded(
        app,
        Route::Settle,
        headers,
        client,
        |gate, scope| async move { paid(app, Route::Settle, headers, body, &gate, scope).await },
    )
    .await
}
