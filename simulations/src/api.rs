//! A JSON client of the node's admin API (`/admin/status`, `/admin/claims`), used by the
//! simulated clients: HTTP/2 over [`TurmoilConnector`], one cached connection per node, a deadline
//! on every call, and errors sorted by what they say about the request's fate.
//!
//! (The node's `PeerClient` cannot be reused for this: it always sends
//! `Content-Type: application/octet-stream`, and the admin API's JSON extractor refuses that.)

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use x402_node::seams::Connector;
use x402_protocol::wire::{ClaimRequest, ClaimResponse, ErrorBody, NodeStatus};

use crate::net::TurmoilConnector;

/// How long a connection may take to open. A host that is down never answers a SYN; like a
/// real client, give up on it quickly (the request was certainly not delivered).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Largest answer body read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why a call did not return a 200 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No connection could be made: the node certainly did not see the request.
    NotDelivered(String),
    /// Sent, but no answer came back in time (or the connection broke): it may have executed.
    Lost(String),
    /// The node answered with an error status and this [`ErrorBody::code`].
    Status { status: u16, code: String },
}

impl CallError {
    /// A short stable label (for histories and trace hashes): `not_delivered`, `lost`, or
    /// `<status> <code>`.
    pub fn label(&self) -> String {
        match self {
            CallError::NotDelivered(_) => "not_delivered".into(),
            CallError::Lost(_) => "lost".into(),
            CallError::Status { status, code } => format!("{status} {code}"),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotDelivered(e) => write!(f, "not delivered: {e}"),
            CallError::Lost(e) => write!(f, "lost: {e}"),
            CallError::Status { status, code } => write!(f, "status {status}: {code}"),
        }
    }
}

/// Calls the admin API of simulated nodes with a bearer token (none if it is empty: how the
/// x402 clients call `/verify` and `/settle`).
pub struct AdminClient {
    token: String,
    connections: Mutex<BTreeMap<String, SendRequest<Full<Bytes>>>>,
}

impl AdminClient {
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            connections: Mutex::new(BTreeMap::new()),
        }
    }

    /// `GET /admin/status` of the node at `authority` (`node-1:7001`).
    pub async fn status(
        &self,
        authority: &str,
        deadline: Duration,
    ) -> Result<NodeStatus, CallError> {
        self.call(
            Method::GET,
            authority,
            "/admin/status",
            Vec::new(),
            deadline,
        )
        .await
    }

    /// `POST /admin/claims` on the node at `authority`.
    pub async fn claim(
        &self,
        authority: &str,
        request: &ClaimRequest,
        deadline: Duration,
    ) -> Result<ClaimResponse, CallError> {
        let body = serde_json::to_vec(request).expect("a claim request serialises");
        self.call(Method::POST, authority, "/admin/claims", body, deadline)
            .await
    }

    /// One JSON call; a 200 answer is decoded as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        authority: &str,
        path: &str,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<T, CallError> {
        self.call_with(method, authority, path, &[], body, deadline)
            .await
    }

    /// [`AdminClient::call`] with extra request headers.
    pub async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        authority: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<T, CallError> {
        let started = tokio::time::Instant::now();
        let deadline = started + deadline;
        let connect_deadline = deadline.min(started + CONNECT_TIMEOUT);
        let mut sender =
            match tokio::time::timeout_at(connect_deadline, self.connection(authority)).await {
                Ok(Ok(sender)) => sender,
                Ok(Err(e)) => return Err(CallError::NotDelivered(e)),
                Err(_) => return Err(CallError::NotDelivered("connect timed out".into())),
            };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        if !self.token.is_empty() {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed request");
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.forget(authority);
                return Err(CallError::Lost(e));
            }
            Err(_) => {
                // A partition may have swallowed the answer on a connection that looks open.
                self.forget(authority);
                return Err(CallError::Lost("timed out".into()));
            }
        };
        if status != StatusCode::OK {
            let code = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.code)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(CallError::Status {
                status: status.as_u16(),
                code,
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Lost(format!("undecodable answer: {e}")))
    }

    fn forget(&self, authority: &str) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(authority);
    }

    async fn connection(&self, authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
        {
            let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(sender) = connections.get(authority) {
                if !sender.is_closed() {
                    return Ok(sender.clone());
                }
            }
        }
        let stream = TurmoilConnector
            .connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(authority.to_string(), sender.clone());
        Ok(sender)
    }
}
