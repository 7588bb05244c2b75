//! HTTP/2 client for calls between nodes (Raft RPC, forwarded writes, read-index requests).
//!
//! One multiplexed HTTP/2 connection per peer carries every concurrent call to it, so forwarding
//! thousands of writes a second costs no connection set-up and no head-of-line blocking between
//! Raft heartbeats and bulk traffic. Every call has a deadline: a partition can swallow a
//! response while the connection still looks open, and a call without one would hang forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

use crate::seams::SharedConnector;
use crate::secret::Secret;

/// Content type of peer RPC bodies (bincode).
pub const BINARY: &str = "application/octet-stream";
/// Content type of admin API bodies.
pub const JSON: &str = "application/json";

/// HTTP/2 flow-control windows: large enough that a multi-MiB snapshot chunk or append batch
/// is not throttled by the 64 KiB protocol default.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer URL {0:?} is not http://host:port")]
    BadUrl(String),
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("call to {0} timed out")]
    Timeout(String),
    #[error("call to {authority} failed: {message}")]
    Transport { authority: String, message: String },
    #[error("{authority} answered {status}: {body}")]
    Status {
        authority: String,
        status: StatusCode,
        body: String,
    },
}

impl PeerError {
    /// Whether the request certainly did not reach the peer (safe to send elsewhere).
    pub fn not_delivered(&self) -> bool {
        matches!(self, PeerError::BadUrl(_) | PeerError::Connect { .. })
    }
}

/// Calls other nodes. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    connector: SharedConnector,
    secret: Secret,
    max_response_bytes: usize,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

type Slot = Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>;

impl PeerClient {
    pub fn new(connector: SharedConnector, secret: Secret, max_response_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                secret,
                max_response_bytes,
                slots: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// POSTs `body` to `base_url` + `path` with the cluster secret and returns the response body
    /// of a 200 answer.
    pub async fn post(
        &self,
        base_url: &str,
        path: &str,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Bytes, PeerError> {
        self.call(Method::POST, base_url, path, BINARY, body, deadline)
            .await
    }

    /// POSTs a JSON body (the admin API, when a request is passed on to the leader).
    pub async fn post_json(
        &self,
        base_url: &str,
        path: &str,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Bytes, PeerError> {
        self.call(Method::POST, base_url, path, JSON, body, deadline)
            .await
    }

    /// Like [`PeerClient::post`] with any method and content type.
    pub async fn call(
        &self,
        method: Method,
        base_url: &str,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Bytes, PeerError> {
        let authority = authority_of(base_url)?;
        let transport = |e: &dyn std::fmt::Display| PeerError::Transport {
            authority: authority.to_string(),
            message: e.to_string(),
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.inner.secret.expose()),
            )
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(&e))?;
        let slot = self.slot(authority);
        let call = async {
            let mut sender = self.connection(&slot, authority).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.inner.max_response_bytes)
                .collect()
                .await
                .map_err(|e| transport(&e))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(PeerError::Status {
                    authority: authority.to_string(),
                    status,
                    body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                });
            }
            Ok(body)
        };
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout(authority.to_string())),
        };
        if matches!(
            result,
            Err(PeerError::Timeout(_) | PeerError::Transport { .. })
        ) {
            // The connection may be wedged (a partition swallows frames without closing it):
            // start the next call on a fresh one.
            if let Ok(mut guard) = slot.try_lock() {
                guard.take();
            }
        }
        result
    }

    /// The connection slot of one peer; its own lock, so a slow connect to a dead peer never
    /// delays calls to the others.
    fn slot(&self, authority: &str) -> Slot {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(authority.to_string()).or_default().clone()
    }

    async fn connection(
        &self,
        slot: &Slot,
        authority: &str,
    ) -> Result<SendRequest<Full<Bytes>>, PeerError> {
        let mut guard = slot.lock().await;
        if let Some(sender) = guard.as_ref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        guard.take();
        // Connecting under the slot's lock gives one connection per peer, not a burst of them
        // after a restart.
        let stream = self
            .inner
            .connector
            .connect(authority)
            .await
            .map_err(|source| PeerError::Connect {
                authority: authority.to_string(),
                source,
            })?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PeerError::Transport {
                authority: authority.to_string(),
                message: e.to_string(),
            })?;
        let name = authority.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %name, error = %e, "peer connection closed");
            }
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }
}

/// `http://host:port[/]` → `host:port`.
pub fn authority_of(url: &str) -> Result<&str, PeerError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PeerError::BadUrl(url.to_string()))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        return Err(PeerError::BadUrl(url.to_string()));
    }
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_parsing() {
        assert_eq!(
            authority_of("http://127.0.0.1:7001").unwrap(),
            "127.0.0.1:7001"
        );
        assert_eq!(authority_of("http://node-1:7001/").unwrap(), "node-1:7001");
        assert!(authority_of("https://a:1").is_err());
        assert!(authority_of("http://a").is_err());
        assert!(authority_of("http://a:1/x").is_err());
    }
}
