//! The one error type of every client call, so callers can tell "the node is not there" (try
//! another one) from "the node answered no" (do not) without parsing messages.

use std::time::Duration;

use hyper::StatusCode;

use crate::wire::ErrorBody;

/// Why a request to a node did not produce the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node URL cannot be used (`http://` or `https://host:port[/prefix]` is).
    #[error("invalid node URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The admin token holds characters an HTTP header cannot carry. The token itself is not
    /// part of the message on purpose.
    #[error("the admin token is not a valid HTTP header value")]
    InvalidToken,
    /// The TLS roots (`--cacert`) could not be read.
    #[error("TLS: {0}")]
    Tls(String),
    /// The request body could not be encoded as JSON.
    #[error("cannot encode the request body: {0}")]
    Encode(#[source] serde_json::Error),
    /// No connection could be made (refused, no route, connect timeout): the request was
    /// certainly not sent, so another node may take it as if this one had never been asked.
    #[error("no connection to {url}: {detail} (nothing was sent)")]
    NotConnected { url: String, detail: String },
    /// The connection broke after the request may have been sent, before the whole answer
    /// arrived.
    #[error("connection to {url} failed: {detail}")]
    Connection { url: String, detail: String },
    /// The whole exchange (connect, send, read the answer) did not finish within the deadline.
    #[error("{url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The node answered a non-2xx status. `body` is its [`ErrorBody`]; when the answer was not
    /// one, `body.code` is `"unknown"` and `body.error` holds the start of the raw text.
    #[error("{url}: HTTP {status}: {} ({})", body.error, body.code)]
    Status {
        url: String,
        status: StatusCode,
        body: ErrorBody,
    },
    /// The answer was larger than the client accepts (guards memory against a broken peer).
    #[error("{url}: answer larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    /// A 2xx answer whose body is not the expected JSON.
    #[error("{url}: unexpected answer body: {source}")]
    BadJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// True when the node could not be reached at all or did not answer in time: the request may
    /// be sent to another node. (Every admin command is idempotent by content, so even a timed-out
    /// request that did commit is safe to repeat elsewhere.)
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::NotConnected { .. } | Self::Connection { .. } | Self::Timeout { .. }
        )
    }

    /// True when the request certainly never left this process: trying it elsewhere is not
    /// a retry of anything.
    pub fn is_not_sent(&self) -> bool {
        matches!(self, Self::NotConnected { .. })
    }

    /// A short stable label for counting errors by kind (the load generator's summary).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "invalid_url",
            Self::InvalidToken => "invalid_token",
            Self::Tls(_) => "tls",
            Self::Encode(_) => "encode",
            Self::NotConnected { .. } => "not_connected",
            Self::Connection { .. } => "connection",
            Self::Timeout { .. } => "timeout",
            Self::Status { status, .. } if status.is_server_error() => "http_5xx",
            Self::Status { .. } => "http_4xx",
            Self::TooLarge { .. } => "too_large",
            Self::BadJson { .. } => "bad_json",
        }
    }

    /// The HTTP status when the node answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Joins an error and its sources into one line: hyper's top-level messages ("client error
/// (Connect)") hide the useful part ("Connection refused") in the chain.
pub(crate) fn chain_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some layers repeat their source's text; skip the duplicates.
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_reachability() {
        let conn = ClientError::Connection {
            url: "http://a".into(),
            detail: "refused".into(),
        };
        assert!(conn.is_unreachable());
        assert!(!conn.is_not_sent());
        assert_eq!(conn.kind(), "connection");
        let refused = ClientError::NotConnected {
            url: "http://a".into(),
            detail: "refused".into(),
        };
        assert!(refused.is_unreachable() && refused.is_not_sent());
        assert_eq!(refused.kind(), "not_connected");
        let status = |code: u16| ClientError::Status {
            url: "http://a".into(),
            status: StatusCode::from_u16(code).unwrap(),
            body: ErrorBody {
                code: "x".into(),
                error: "y".into(),
            },
        };
        assert_eq!(status(503).kind(), "http_5xx");
        assert_eq!(status(401).kind(), "http_4xx");
        assert!(!status(503).is_unreachable());
        assert_eq!(status(409).status(), Some(StatusCode::CONFLICT));
        assert_eq!(
            status(401).to_string(),
            "http://a: HTTP 401 Unauthorized: y (x)"
        );
    }

    #[test]
    fn chain_message_walks_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain_message(&e), "outer: inner");
    }
}
