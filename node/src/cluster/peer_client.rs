//! HTTP/2 client for calls between nodes (Raft RPC, forwarded writes, read-index requests).
//!
//! One multiplexed HTTP/2 connection per peer carries every concurrent call to it, so forwarding
//! thousands of writes a second costs no connection set-up and no head-of-line blocking between
//! Raft heartbeats and bulk traffic. Every call has a deadline: a partition can swallow a
//! response while the connection still looks open, and a call without one would hang forever.
//!
//! Every call carries the cluster secret and this node's cluster id ([`identity`]); an answer
//! from a node of another cluster is an error. `https://` members are dialled over mutual TLS
//! with the node's own certificate ([`ServerTls::client_config`], current at each new
//! connection, so rotated files are used without a restart).
//!
//! [`identity`]: super::identity

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use x402_tls::server::ServerTls;

use super::identity::{self, ClusterIdentity};
use crate::seams::{BoxedStream, SharedConnector};
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
    #[error("peer URL {0:?} is not http://host:port or https://host:port")]
    BadUrl(String),
    #[error("{0} is an https:// member but this node has no peer TLS (tls.peer_ca_file)")]
    NoTls(String),
    #[error("{0} is an http:// member but this node speaks only mutual TLS to its peers")]
    Plaintext(String),
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
    #[error("{authority} belongs to cluster {theirs}, this node to cluster {ours}")]
    OtherCluster {
        authority: String,
        theirs: String,
        ours: String,
    },
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
    /// Whether the peer refused this node for who it is (a 403: another cluster id, none, or
    /// not a member), or answered as a node of another cluster.
    pub fn refused_identity(&self) -> bool {
        matches!(self, PeerError::OtherCluster { .. })
            || matches!(self, PeerError::Status { status, .. } if *status == StatusCode::FORBIDDEN)
    }

    /// Whether the request certainly did not reach the peer (safe to send elsewhere).
    pub fn not_delivered(&self) -> bool {
        matches!(
            self,
            PeerError::BadUrl(_)
                | PeerError::NoTls(_)
                | PeerError::Plaintext(_)
                | PeerError::Connect { .. }
                | PeerError::Tls { .. }
        )
    }
}

/// Calls other nodes. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    connector: SharedConnector,
    /// The node's peer TLS, for `https://` members.
    tls: Option<Arc<ServerTls>>,
    identity: ClusterIdentity,
    secret: Secret,
    max_response_bytes: usize,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

type Slot = Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>;

impl PeerClient {
    pub fn new(
        connector: SharedConnector,
        tls: Option<Arc<ServerTls>>,
        identity: ClusterIdentity,
        secret: Secret,
        max_response_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                tls,
                identity,
                secret,
                max_response_bytes,
                slots: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cluster id this client carries (this node's).
    pub fn identity(&self) -> &ClusterIdentity {
        &self.inner.identity
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
        let (scheme, authority) = scheme_and_authority(base_url)?;
        // With peer TLS configured, nothing leaves in clear text (the secret would).
        if scheme == Scheme::Http && self.inner.tls.is_some() {
            return Err(PeerError::Plaintext(authority.to_string()));
        }
        let transport = |e: &dyn std::fmt::Display| PeerError::Transport {
            authority: authority.to_string(),
            message: e.to_string(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{scheme}://{authority}{path}"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.inner.secret.expose()),
            )
            .header(header::CONTENT_TYPE, content_type);
        if let Some(id) = self.inner.identity.current() {
            request = request.header(identity::HEADER, id.to_string());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(&e))?;
        let slot = self.slot(base_url);
        let call = async {
            let mut sender = self.connection(&slot, scheme, authority).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport(&e))?;
            let status = response.status();
            if let Some(theirs) = response.headers().get(identity::HEADER) {
                if let Err(why) = self.inner.identity.check(Some(theirs.as_bytes())) {
                    if !matches!(why, identity::Refusal::NotJoined { .. }) {
                        return Err(PeerError::OtherCluster {
                            authority: authority.to_string(),
                            theirs: String::from_utf8_lossy(theirs.as_bytes()).into_owned(),
                            ours: self
                                .inner
                                .identity
                                .current()
                                .map_or_else(|| "none".into(), |id| id.to_string()),
                        });
                    }
                }
            }
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

    /// The connection slot of one peer URL; its own lock, so a slow connect to a dead peer
    /// never delays calls to the others.
    fn slot(&self, base_url: &str) -> Slot {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = base_url.trim_end_matches('/');
        slots.entry(key.to_string()).or_default().clone()
    }

    async fn connection(
        &self,
        slot: &Slot,
        scheme: Scheme,
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
        let stream = match scheme {
            Scheme::Http => stream,
            Scheme::Https => self.tls_handshake(stream, authority).await?,
        };
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

    /// Mutual TLS over `stream`, the server verified against the cluster CA by the URL's host.
    async fn tls_handshake(
        &self,
        stream: BoxedStream,
        authority: &str,
    ) -> Result<BoxedStream, PeerError> {
        let config = self
            .inner
            .tls
            .as_ref()
            .and_then(|tls| tls.client_config())
            .ok_or_else(|| PeerError::NoTls(authority.to_string()))?;
        let failed = |source| PeerError::Tls {
            authority: authority.to_string(),
            source,
        };
        let host = host_of(authority);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let stream = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(failed)?;
        Ok(Box::new(stream))
    }
}

/// How a member is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// `http://host:port[/]` or `https://host:port[/]` → the scheme and `host:port`.
pub fn scheme_and_authority(url: &str) -> Result<(Scheme, &str), PeerError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(PeerError::BadUrl(url.to_string()));
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        return Err(PeerError::BadUrl(url.to_string()));
    }
    Ok((scheme, authority))
}

/// `host:port` → the host (`[::1]:7002` → `::1`).
fn host_of(authority: &str) -> &str {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_parsing() {
        let parsed = |url| scheme_and_authority(url).unwrap();
        assert_eq!(
            parsed("http://127.0.0.1:7001"),
            (Scheme::Http, "127.0.0.1:7001")
        );
        assert_eq!(parsed("http://node-1:7001/"), (Scheme::Http, "node-1:7001"));
        assert_eq!(parsed("https://a:1"), (Scheme::Https, "a:1"));
        assert!(scheme_and_authority("ftp://a:1").is_err());
        assert!(scheme_and_authority("http://a").is_err());
        assert!(scheme_and_authority("http://a:1/x").is_err());
        assert_eq!(host_of("[::1]:7002"), "::1");
        assert_eq!(host_of("10.0.0.1:7002"), "10.0.0.1");
    }
}
