//! [`FacilitatorClient`]: the x402 facilitator endpoints of one node, as a resource server calls
//! them: `POST /verify`, `POST /settle` (body [`FacilitatorRequest`]) and `GET /supported`.
//!
//! It shares [`AdminClient`]'s transport, URL handling (`http://host:port[/prefix]`) and error
//! decoding, but never sends the admin token: these endpoints are public.
//!
//! A request that fails verification or settlement comes back as `Ok` with `isValid: false` /
//! `success: false`, whatever the status: our nodes answer 200 for a well-formed request and 400
//! with the same shape for a malformed one (x402-rs answers 400 / 500 for failures too); the
//! reason and message say which, as in the TS client's `VerifyError` / `SettleError`. Any other
//! non-2xx answer (503 `no_leader`, a proxy's page) is a [`ClientError::Status`].

use bytes::Bytes;
use hyper::Method;

use crate::admin::{encode, AdminClient};
use crate::error::ClientError;
use crate::http::{HttpClient, HttpConfig};
use crate::x402::{FacilitatorRequest, SettleResponse, SupportedResponse, VerifyResponse};

/// A client for one node's facilitator endpoints. Cheap to clone; clones share the connection
/// pool.
#[derive(Clone, Debug)]
pub struct FacilitatorClient {
    node: AdminClient,
}

impl FacilitatorClient {
    /// A client with its own connection pool.
    pub fn new(base_url: &str, config: &HttpConfig) -> Result<Self, ClientError> {
        Self::with_http(HttpClient::new(config)?, base_url)
    }

    /// A client sharing `http`'s connection pool.
    pub fn with_http(http: HttpClient, base_url: &str) -> Result<Self, ClientError> {
        Ok(Self {
            node: AdminClient::with_http(http, base_url, None)?,
        })
    }

    /// The node's URL as given (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        self.node.base_url()
    }

    /// `POST /verify`.
    pub async fn verify(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<VerifyResponse, ClientError> {
        self.verify_raw(encode(request)?).await
    }

    /// `POST /verify` with a body already encoded (the load generator's pre-built payments).
    pub async fn verify_raw(&self, body: Bytes) -> Result<VerifyResponse, ClientError> {
        self.node
            .call_accepting(Method::POST, "/verify", Some(body), |a: &VerifyResponse| {
                !a.is_valid
            })
            .await
    }

    /// `POST /settle`.
    pub async fn settle(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<SettleResponse, ClientError> {
        self.settle_raw(encode(request)?).await
    }

    /// `POST /settle` with a body already encoded.
    pub async fn settle_raw(&self, body: Bytes) -> Result<SettleResponse, ClientError> {
        self.node
            .call_accepting(Method::POST, "/settle", Some(body), |a: &SettleResponse| {
                !a.success
            })
            .await
    }

    /// `GET /supported`.
    pub async fn supported(&self) -> Result<SupportedResponse, ClientError> {
        self.node.call(Method::GET, "/supported", None).await
    }
}
