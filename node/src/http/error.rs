//! Error answers of the HTTP API: a status and an [`ErrorBody`] with a stable code, and how the
//! domain's errors (a write's, an API key's, a rate limit's) become them.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use x402_protocol::wire::ErrorBody;

use x402_raft_store::state::rate_limits::Quota;

use crate::access::api_keys::AuthError;
use crate::access::rate_limit::Limited;
use crate::cluster::handoff::HandOffError;
use crate::cluster::membership::MembershipError;
use crate::cluster::proposer::ProposeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        let (status, code) = match e {
            ProposeError::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ProposeError::Unknown => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
            ProposeError::Refused(_) => (StatusCode::CONFLICT, "refused"),
            ProposeError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<HandOffError> for ApiError {
    fn from(e: HandOffError) -> Self {
        let (status, code) = match &e {
            HandOffError::NotLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            HandOffError::NotAVoter(_) => (StatusCode::BAD_REQUEST, "not_a_voter"),
            HandOffError::NoOtherVoter => (StatusCode::CONFLICT, "no_other_voter"),
            HandOffError::NoWillingVoter => (StatusCode::SERVICE_UNAVAILABLE, "no_willing_voter"),
            HandOffError::NoCaughtUpVoter => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_caught_up_voter")
            }
            HandOffError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "handoff_timeout"),
            HandOffError::RaftStopped => (StatusCode::INTERNAL_SERVER_ERROR, "raft_stopped"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match &e {
            AuthError::Missing => (StatusCode::UNAUTHORIZED, "api_key_missing"),
            AuthError::Unknown | AuthError::Malformed => {
                (StatusCode::UNAUTHORIZED, "api_key_invalid")
            }
            AuthError::Revoked(_) => (StatusCode::FORBIDDEN, "api_key_revoked"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let seconds = ceil_seconds(self.retry_after_ms).max(1);
        let message = format!("{self}; retry after {seconds} s");
        let mut response =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
        let headers = response.headers_mut();
        set_quota_headers(headers, &self.quota);
        headers.insert("retry-after", HeaderValue::from(seconds));
        response
    }
}

fn ceil_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the count
/// next goes down).
pub fn set_quota_headers(headers: &mut HeaderMap, quota: &Quota) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(quota.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(quota.remaining));
    headers.insert(
        "x-ratelimit-reset",
        HeaderValue::from(ceil_seconds(quota.reset_after_ms)),
    );
}

impl From<MembershipError> for ApiError {
    fn from(e: MembershipError) -> Self {
        let (status, code) = match &e {
            MembershipError::WithoutThisNode(_)
            | MembershipError::BadUrl(_)
            | MembershipError::UnreadableStatus { .. }
            | MembershipError::NotAMember(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            MembershipError::AlreadyInitialized(_) => (StatusCode::CONFLICT, "already_initialized"),
            MembershipError::WrongNode { .. } => (StatusCode::CONFLICT, "wrong_node"),
            MembershipError::LearnerBehind { .. } => (StatusCode::CONFLICT, "learner_behind"),
            MembershipError::LeaderChanged => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            MembershipError::Refused(_) => (StatusCode::CONFLICT, "membership_refused"),
            MembershipError::RaftStopped(_) | MembershipError::Identity(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            MembershipError::NotJoined { .. } => (StatusCode::CONFLICT, "not_joined"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body whose rejections (bad JSON, wrong content type, too large) answer an [`ErrorBody`]
/// like every other error.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}
