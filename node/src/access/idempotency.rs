//! `Idempotency-Key` on `POST /verify` and `/settle`, with the IETF draft's semantics
//! (draft-ietf-httpapi-idempotency-key-header) for the cluster as a whole:
//!
//! - the first request with a key runs and its answer is stored (replicated) for `ttl_ms`;
//! - a later request with the same key and the same fingerprint (method, path, body digest) gets
//!   the stored answer again, on any node, marked `Idempotent-Replayed: true`;
//! - the same key while the first is still running: 409; with another request: 422;
//! - an answer the cluster could not decide (503/504, 429) is not stored: the key is released so
//!   a retry runs again (verify and settle are themselves idempotent by payment, so running
//!   again is safe). A node that died mid-request leaves the key in flight; after
//!   `in_flight_timeout_ms` a retry takes it over.
//!
//! Keys are scoped by caller (API key id; anonymous callers share one scope) and stored as a
//! digest, so a key's text never reaches the log.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use x402_raft_store::runtime::ThreadRng;
use x402_raft_store::state::idempotency::{
    IdempotencyAnswer, IdempotentFinish, IdempotentStart, StoredAnswer, MAX_STORED_ANSWER_BYTES,
};
use x402_raft_store::{Op, Response as OpResponse};

use super::api_keys::KeyId;
use super::Route;
use crate::cluster::batcher::Batcher;
use crate::config::IdempotencySettings;
use crate::http::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Marks an answer that was stored earlier rather than computed now.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// One request's claim on an idempotency key.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    key: [u8; 32],
    attempt: [u8; 16],
}

/// What to do with a request that carries a key.
pub enum Begun {
    /// Run the request, then [`finish`] with its answer.
    Run(KeyClaim),
    /// Answer this at once (a replay, 409, 422, or an error).
    Answer(Response),
}

/// The request's key, if it sent one; a malformed one is a 400 answer.
pub fn key_of(
    headers: &HeaderMap,
    settings: &IdempotencySettings,
) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    // The draft's key is a Structured Field string: "…"; bare tokens are accepted too.
    let key = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if key.is_empty()
        || key.len() > settings.max_key_bytes
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_invalid",
            format!(
                "Idempotency-Key must be 1..={} visible ASCII characters",
                settings.max_key_bytes
            ),
        ));
    }
    Ok(Some(key.to_owned()))
}

fn digest_key(caller: Option<&KeyId>, key: &str) -> [u8; 32] {
    let scope = caller.map(|k| k.as_bytes()).unwrap_or(b"");
    let mut h = Sha256::new();
    h.update(b"x402-cluster idempotency key v1");
    h.update((scope.len() as u64).to_be_bytes());
    h.update(scope);
    h.update(key.as_bytes());
    h.finalize().into()
}

/// The request's fingerprint: method, path and body digest.
fn fingerprint(route: Route, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"POST ");
    h.update(route.path().as_bytes());
    h.update(Sha256::digest(body));
    h.finalize().into()
}

async fn propose(batcher: &Batcher, op: Op) -> Result<IdempotencyAnswer, Response> {
    match batcher.propose(op).await {
        Ok(c) => match c.response {
            OpResponse::Idempotency(answer) => Ok(answer),
            other => {
                Err(ApiError::internal(format!("unexpected answer {other:?}")).into_response())
            }
        },
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// Claims `key` for this request, or answers it from the store.
pub async fn begin(
    batcher: &Batcher,
    settings: &IdempotencySettings,
    caller: Option<&KeyId>,
    key: &str,
    route: Route,
    body: &Bytes,
) -> Begun {
    let claim = KeyClaim {
        key: digest_key(caller, key),
        // Raft's thread generator: OS-seeded in production, seeded by a simulation.
        attempt: rand::Rng::gen(&mut ThreadRng),
    };
    let start = IdempotentStart {
        key: claim.key,
        fingerprint: fingerprint(route, body),
        attempt: claim.attempt,
        ttl_ms: settings.ttl_ms,
        stale_after_ms: settings.in_flight_timeout_ms,
    };
    let answer = match propose(batcher, Op::BeginIdempotent(start)).await {
        Ok(answer) => answer,
        Err(response) => return Begun::Answer(response),
    };
    Begun::Answer(match answer {
        IdempotencyAnswer::Started => return Begun::Run(claim),
        IdempotencyAnswer::Replay(stored) => replay(stored),
        IdempotencyAnswer::InFlight => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed; retry later",
        )
        .into_response(),
        IdempotencyAnswer::Mismatch => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )
        .into_response(),
        IdempotencyAnswer::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "idempotency_store_full",
            "too many idempotency keys are stored; retry later or without the header",
        )
        .into_response(),
        other => {
            ApiError::internal(format!("unexpected idempotency answer {other:?}")).into_response()
        }
    })
}

fn replay(stored: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Stores `status` and `body` as the key's answer, or releases the key when the answer is not
/// final (5xx, 429) or too large to store. Failing to store is logged, not answered: the caller
/// already has its answer, and a retry simply runs again.
pub async fn finish(batcher: &Batcher, claim: KeyClaim, status: StatusCode, body: &[u8]) {
    let keep = !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
        && body.len() <= MAX_STORED_ANSWER_BYTES;
    let op = if keep {
        Op::FinishIdempotent(IdempotentFinish {
            key: claim.key,
            attempt: claim.attempt,
            answer: StoredAnswer {
                status: status.as_u16(),
                body: body.to_vec(),
            },
        })
    } else {
        Op::ReleaseIdempotent {
            key: claim.key,
            attempt: claim.attempt,
        }
    };
    match propose(batcher, op).await {
        Ok(IdempotencyAnswer::Finished | IdempotencyAnswer::Released) => {}
        Ok(other) => tracing::warn!(?other, "idempotency key not stored"),
        Err(_) => tracing::warn!("idempotency key not stored: the write failed"),
    }
}
