//! A pooled HTTP/1.1 transport on hyper-util's legacy `Client`: keep-alive connections are reused
//! across requests and across clones, and every exchange (connect, send, read the whole answer)
//! runs under one deadline. `http://` and `https://` (rustls, verified against
//! [`HttpConfig::roots`]). It knows nothing about JSON or the admin API; [`crate::admin`] does.
//!
//! One [`HttpClient`] is meant to be shared (it is a cheap `Clone`): the load generator runs all
//! its workers on one, so connections are opened once and then reused.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use x402_tls::Roots;

use crate::error::{chain_message, ClientError};

/// How an [`HttpClient`] behaves.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Deadline for one whole exchange: connect, send, and read the complete answer.
    pub timeout: Duration,
    /// Deadline for the TCP connect alone, so a dead host fails fast even under a long `timeout`.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per node; set it to at least the number of concurrent
    /// callers, or connections get closed and reopened under load.
    pub max_idle_per_host: usize,
    /// Largest answer body accepted, in bytes.
    pub max_body: usize,
    /// How long an idle kept-alive connection is kept for reuse. Below the server's own
    /// keep-alive (a node closes an idle HTTP/1 connection after `header_read_timeout_ms`, 30 s
    /// by default), so a request is never sent on a connection the server is closing.
    pub pool_idle_timeout: Duration,
    /// What `https://` servers are verified against (`--cacert`); `Roots::None` refuses every
    /// server certificate, so a client of `http://` nodes reads no CA store.
    pub roots: Roots,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_idle_per_host: 32,
            max_body: 8 * 1024 * 1024,
            pool_idle_timeout: Duration::from_secs(20),
            roots: Roots::None,
        }
    }
}

/// A pooled HTTP/1.1 client with a per-request deadline. Clones share one connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client of `config`; fails only when its roots cannot be read (a bad `--cacert`).
    pub fn new(config: &HttpConfig) -> Result<Self, ClientError> {
        let mut connector = HttpConnector::new();
        // Small JSON requests on a kept-alive connection: Nagle would add delay for nothing.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(false);
        let tls =
            x402_tls::client_config(&config.roots).map_err(|e| ClientError::Tls(e.to_string()))?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector);
        Ok(Self {
            inner,
            timeout: config.timeout,
            max_body: config.max_body,
        })
    }

    /// The deadline applied to each exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `req` and reads the complete answer, all within the deadline. Any status is returned
    /// as is; interpreting it is the caller's business.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, ClientError> {
        // Kept for error messages only; cloning a `Uri` bumps reference counts, no copy.
        let uri = req.uri().clone();
        let exchange = async {
            let response = self.inner.request(req).await.map_err(|e| {
                let url = uri.to_string();
                let detail = chain_message(&e);
                if e.is_connect() {
                    ClientError::NotConnected { url, detail }
                } else {
                    ClientError::Connection { url, detail }
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        ClientError::TooLarge {
                            url: uri.to_string(),
                            limit: self.max_body,
                        }
                    } else {
                        ClientError::Connection {
                            url: uri.to_string(),
                            detail: chain_message(e.as_ref()),
                        }
                    }
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url: uri.to_string(),
                after: self.timeout,
            }),
        }
    }
}
