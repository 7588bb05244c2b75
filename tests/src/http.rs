//! Plain HTTP requests to node processes, answered as a [`Reply`] (status, headers, bytes and
//! JSON): what the end-to-end tests of the facilitator API send.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use x402_client::{ClientError, HttpClient};

use crate::LocalCluster;

/// An answer: status, headers, body (as bytes and as JSON, `Null` when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Bytes,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error body's `code`.
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }
}

/// Sends one request to `base` (a node's URL) with its own client (usable in spawned tasks).
pub async fn send(
    http: &HttpClient,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Reply, ClientError> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
        );
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = http.send(request).await?;
    let (parts, bytes) = response.into_parts();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        bytes,
        json,
    })
}

/// POSTs JSON `body` to node `id`; panics when there is no answer.
pub async fn post(
    cluster: &LocalCluster,
    id: u64,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(
        cluster.http(),
        cluster.url(id),
        Method::POST,
        path,
        &all,
        body.to_vec(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path} on node {id}: {e}"))
}

pub async fn get(cluster: &LocalCluster, id: u64, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(
        cluster.http(),
        cluster.url(id),
        Method::GET,
        path,
        headers,
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path} on node {id}: {e}"))
}
