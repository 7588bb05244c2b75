//! [`AdminClient`]: typed calls to one node's admin API (the table in [`crate::wire`]).
//!
//! It talks to exactly one node; choosing or failing over between nodes is the caller's job
//! (x402ctl tries nodes in order, the load generator rotates). Followers forward writes to the
//! leader themselves, so any node will do for every call.

use std::fmt;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ClientError;
use crate::http::{HttpClient, HttpConfig};
use crate::wire::{
    AddLearnerRequest, ClaimRequest, ClaimResponse, ErrorBody, InitRequest, LeaderMoveRequest,
    LeaderMoveResponse, MemberIdRequest, MembershipResponse, NodeStatus, Readiness,
    SnapshotResponse,
};

/// Raw text kept from a non-JSON error answer, so a proxy's HTML page stays readable.
const MAX_RAW_ERROR: usize = 512;

/// A client for one node's admin API. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct AdminClient {
    base_url: String,
    scheme: Scheme,
    authority: Authority,
    /// Path the node's routes live under (behind a reverse proxy), without a trailing `/`.
    prefix: String,
    /// `Bearer <token>`, marked sensitive so `Debug` never shows it.
    auth: Option<HeaderValue>,
    http: HttpClient,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("base_url", &self.base_url)
            .field("token", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client with its own connection pool.
    pub fn new(
        base_url: &str,
        token: Option<&str>,
        config: &HttpConfig,
    ) -> Result<Self, ClientError> {
        Self::with_http(HttpClient::new(config)?, base_url, token)
    }

    /// A client sharing `http`'s connection pool (one pool for many nodes and workers).
    pub fn with_http(
        http: HttpClient,
        base_url: &str,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = base_url.trim().trim_end_matches('/');
        let uri: Uri = trimmed.parse().map_err(|e| invalid(&format!("{e}")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| invalid("missing http://"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid("only http:// and https:// are supported"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("missing host"))?;
        if uri.query().is_some() {
            return Err(invalid("a query string is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let auth = token
            .map(|t| {
                let mut value = HeaderValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| ClientError::InvalidToken)?;
                value.set_sensitive(true);
                Ok::<_, ClientError>(value)
            })
            .transpose()?;
        Ok(Self {
            base_url: trimmed.to_owned(),
            scheme,
            authority,
            prefix,
            auth,
            http,
        })
    }

    /// The node's URL as given (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.call(Method::GET, "/admin/status", None).await
    }

    /// `POST /admin/init`: forms the cluster (empty `members` = the node's configured members).
    pub async fn init(&self, req: &InitRequest) -> Result<MembershipResponse, ClientError> {
        self.call(Method::POST, "/admin/init", Some(encode(req)?))
            .await
    }

    /// `POST /admin/members/add`: adds a non-voting learner.
    pub async fn add_learner(&self, id: u64, url: &str) -> Result<MembershipResponse, ClientError> {
        let req = AddLearnerRequest {
            id,
            url: url.to_owned(),
            holds_cluster_id: None,
        };
        self.call(Method::POST, "/admin/members/add", Some(encode(&req)?))
            .await
    }

    /// `POST /admin/members/promote`: makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<MembershipResponse, ClientError> {
        let body = encode(&MemberIdRequest { id })?;
        self.call(Method::POST, "/admin/members/promote", Some(body))
            .await
    }

    /// `POST /admin/members/remove`.
    pub async fn remove(&self, id: u64) -> Result<MembershipResponse, ClientError> {
        let body = encode(&MemberIdRequest { id })?;
        self.call(Method::POST, "/admin/members/remove", Some(body))
            .await
    }

    /// `POST /admin/leader/move`: hands leadership to `to` (or any caught-up voter).
    pub async fn move_leader(&self, to: Option<u64>) -> Result<LeaderMoveResponse, ClientError> {
        let body = encode(&LeaderMoveRequest { to })?;
        self.call(Method::POST, "/admin/leader/move", Some(body))
            .await
    }

    /// `POST /admin/claims`.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, ClientError> {
        self.claim_raw(encode(req)?).await
    }

    /// `POST /admin/claims` with a body already encoded as a [`ClaimRequest`]; lets the load
    /// generator build bodies without intermediate `String`s.
    pub async fn claim_raw(&self, body: Bytes) -> Result<ClaimResponse, ClientError> {
        self.call(Method::POST, "/admin/claims", Some(body)).await
    }

    /// `POST /admin/snapshot`.
    pub async fn trigger_snapshot(&self) -> Result<SnapshotResponse, ClientError> {
        self.call(Method::POST, "/admin/snapshot", None).await
    }

    /// `GET /readyz`. A node that is up but not ready answers 503 with a [`Readiness`]; that is
    /// returned as `Ok` with `ready: false`, not as an error.
    pub async fn readyz(&self) -> Result<Readiness, ClientError> {
        let response = self.send(Method::GET, "/readyz", None).await?;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(readiness) = serde_json::from_slice::<Readiness>(response.body()) {
                return Ok(readiness);
            }
        }
        self.decode("/readyz", response)
    }

    /// One exchange with `path`: a 2xx answer decoded as `T`, anything else a [`ClientError`].
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Bytes>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        self.decode(path, response)
    }

    /// Like [`AdminClient::call`], except that a non-2xx answer whose body is a `T` that
    /// `is_answer` accepts is returned as `Ok` (an x402 facilitator's `400 {isValid: false}`).
    pub(crate) async fn call_accepting<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Bytes>,
        is_answer: fn(&T) -> bool,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        if !response.status().is_success() {
            if let Ok(answer) = serde_json::from_slice::<T>(response.body()) {
                if is_answer(&answer) {
                    return Ok(answer);
                }
            }
        }
        self.decode(path, response)
    }

    async fn send(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let mut builder = Request::builder().method(method).uri(self.uri(path)?);
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::InvalidUrl {
                url: self.url(path),
                reason: e.to_string(),
            })?;
        self.http.send(request).await
    }

    fn uri(&self, path: &'static str) -> Result<Uri, ClientError> {
        // Without a prefix the path is static: no allocation on the load generator's hot path.
        let path_and_query = if self.prefix.is_empty() {
            PathAndQuery::from_static(path)
        } else {
            PathAndQuery::try_from(self.url_path(path)).map_err(|e| ClientError::InvalidUrl {
                url: self.url(path),
                reason: e.to_string(),
            })?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ClientError::InvalidUrl {
                url: self.url(path),
                reason: e.to_string(),
            })
    }

    fn url_path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        response: Response<Bytes>,
    ) -> Result<T, ClientError> {
        let status = response.status();
        let body = response.body();
        if status.is_success() {
            return serde_json::from_slice(body).map_err(|source| ClientError::BadJson {
                url: self.url(path),
                source,
            });
        }
        Err(ClientError::Status {
            url: self.url(path),
            status,
            body: error_body(body),
        })
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, ClientError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(ClientError::Encode)
}

/// The node's [`ErrorBody`], or one made from the raw text when the answer is not one (a proxy,
/// an older node).
fn error_body(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_RAW_ERROR)]);
        ErrorBody {
            code: "unknown".to_owned(),
            error: text.trim().to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Result<AdminClient, ClientError> {
        AdminClient::new(url, Some("secret-token"), &HttpConfig::default())
    }

    #[tokio::test]
    async fn urls_are_validated_and_prefixes_kept() {
        let c = client("http://127.0.0.1:7001/").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:7001");
        assert_eq!(
            c.uri("/admin/status").unwrap().to_string(),
            "http://127.0.0.1:7001/admin/status"
        );
        let c = client("http://lb.example:80/node1/").unwrap();
        assert_eq!(
            c.uri("/admin/claims").unwrap().to_string(),
            "http://lb.example:80/node1/admin/claims"
        );
        let c = client("https://node1.example:7001").unwrap();
        assert_eq!(
            c.uri("/admin/status").unwrap().to_string(),
            "https://node1.example:7001/admin/status"
        );
        for bad in [
            "ftp://a:1",
            "127.0.0.1:7001",
            "http://a:1/?x=1",
            "not a url",
        ] {
            assert!(
                matches!(client(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn token_is_never_shown() {
        let c = client("http://127.0.0.1:7001").unwrap();
        assert!(!format!("{c:?}").contains("secret-token"));
        let bad = AdminClient::new("http://a:1", Some("bad\ntoken"), &HttpConfig::default());
        assert!(matches!(bad, Err(ClientError::InvalidToken)));
    }

    #[test]
    fn error_bodies_fall_back_to_raw_text() {
        let body = error_body(br#"{"code":"no_leader","error":"no leader yet"}"#);
        assert_eq!(body.code, "no_leader");
        let body = error_body(b"<html>bad gateway</html>\n");
        assert_eq!(body.code, "unknown");
        assert_eq!(body.error, "<html>bad gateway</html>");
    }
}
