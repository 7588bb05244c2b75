//! [`AlloyChain`]: the production [`Chain`] over one or more JSON-RPC HTTP endpoints.
//!
//! Every call has a deadline ([`ChainLimits::call_timeout`]). A call that finds its endpoint
//! unavailable (transport error, HTTP error status, timeout, rate limit) is tried on the next URL,
//! at most once per URL; the endpoint that last answered is tried first next time. Any other
//! outcome (a value, a revert, a refusal) is the chain's answer and is returned as is.
//!
//! An endpoint whose circuit breaker is open ([`super::breaker`]) is skipped without a call; with
//! every endpoint open the call fails at once as unavailable.
//!
//! The transport is reqwest over rustls ([`crate::tls`]): `http://` and `https://` URLs, the
//! latter verified against the roots the caller's client was built with. An API key in a URL's
//! path, query or user info never leaves this module: errors, breaker names and metrics carry
//! `scheme://host:port` only.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::{keccak256, Bytes};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{TransactionInput, TransactionRequest};
use alloy::sol_types::{ContractError, GenericRevertReason};
use alloy::transports::http::Http;
use alloy::transports::{RpcError, TransportErrorKind};

use super::breaker::{endpoint_id, EndpointGate, EndpointId, NoGate};
use super::{
    Address, CallRequest, Chain, ChainError, ChainFuture, Fees, Log, NonceTag, Receipt, B256,
};

/// Most RPC URLs one chain may be configured with.
pub const MAX_RPC_URLS: usize = 8;
/// Default deadline of one JSON-RPC call on one endpoint.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest revert reason kept (a contract controls it; it ends up in logs and answers).
pub const MAX_REVERT_REASON_BYTES: usize = 1024;
/// Longest error text kept from an RPC node.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Limits of an [`AlloyChain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLimits {
    /// Deadline of one call on one endpoint; with failover a call can take up to
    /// `call_timeout × number of URLs`.
    pub call_timeout: Duration,
}

impl Default for ChainLimits {
    fn default() -> Self {
        ChainLimits {
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// A configuration an [`AlloyChain`] cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainConfigError {
    #[error("no RPC URL configured")]
    NoUrls,
    #[error("{0} RPC URLs configured, at most {MAX_RPC_URLS} allowed")]
    TooManyUrls(usize),
    #[error("invalid RPC URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// The production [`Chain`]: alloy's HTTP provider over each URL, with failover.
pub struct AlloyChain {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last; calls start there.
    preferred: AtomicUsize,
    limits: ChainLimits,
    /// The circuit breaker consulted before each call.
    gate: Arc<dyn EndpointGate>,
}

struct Endpoint {
    id: EndpointId,
    /// The URL without any credentials in it, for error messages.
    label: String,
    /// The parts of the URL that may carry a key, as texts an error might quote: every error
    /// text of this endpoint has them replaced by `label` before it leaves (the transport's own
    /// messages quote the whole URL).
    secrets: Vec<String>,
    provider: RootProvider<Ethereum>,
}

impl Endpoint {
    /// `text` with every quoted secret part of the URL replaced by the label.
    fn scrub(&self, mut text: String) -> String {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), &self.label);
            }
        }
        text
    }

    /// `e` with its texts scrubbed.
    fn scrub_error(&self, e: ChainError) -> ChainError {
        match e {
            ChainError::Unavailable(t) => ChainError::Unavailable(self.scrub(t)),
            ChainError::Rejected { code, message } => ChainError::Rejected {
                code,
                message: self.scrub(message),
            },
            ChainError::BadResponse(t) => ChainError::BadResponse(self.scrub(t)),
            reverted @ ChainError::Reverted { .. } => reverted,
        }
    }
}

/// The texts of `raw` (and of its parsed form) an error message could quote and that may hold
/// a key: the whole URL, and its path, query and user info when they are more than a slash.
/// Longest first, so a whole URL is replaced before a part of it.
fn secret_parts(raw: &str, parsed: &alloy::transports::http::reqwest::Url) -> Vec<String> {
    let mut parts = vec![raw.to_owned(), parsed.as_str().to_owned()];
    // The URL as reqwest prints it: the user info moved into an Authorization header.
    let mut without_user = parsed.clone();
    if without_user.set_username("").is_ok() && without_user.set_password(None).is_ok() {
        parts.push(without_user.as_str().to_owned());
    }
    let path = parsed.path();
    if path.len() > 1 {
        parts.push(path.to_owned());
    }
    if let Some(q) = parsed.query().filter(|q| !q.is_empty()) {
        parts.push(q.to_owned());
    }
    if !parsed.username().is_empty() {
        parts.push(parsed.username().to_owned());
    }
    if let Some(p) = parsed.password() {
        parts.push(p.to_owned());
    }
    parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    parts.dedup();
    parts
}

impl AlloyChain {
    /// Connects (lazily: no request is made here) to `urls`, tried in order on failover, through
    /// `client` ([`crate::tls::rpc_http_client`]: it holds the roots `https://` URLs are
    /// verified against).
    pub fn new<S: AsRef<str>>(
        urls: &[S],
        limits: ChainLimits,
        client: &reqwest::Client,
    ) -> Result<Self, ChainConfigError> {
        if urls.is_empty() {
            return Err(ChainConfigError::NoUrls);
        }
        if urls.len() > MAX_RPC_URLS {
            return Err(ChainConfigError::TooManyUrls(urls.len()));
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let raw = url.as_ref();
            let bad = |reason: &str| ChainConfigError::BadUrl {
                // An RPC URL often carries an API key: never echo more than scheme and host.
                url: redact(raw),
                reason: reason.to_owned(),
            };
            let parsed = raw
                .parse::<alloy::transports::http::reqwest::Url>()
                .map_err(|e| bad(&e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad("only http:// and https:// are supported"));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad("the URL names no host"));
            }
            endpoints.push(Endpoint {
                id: endpoint_id(raw),
                label: redact(raw),
                secrets: secret_parts(raw, &parsed),
                provider: provider(client, parsed),
            });
        }
        Ok(AlloyChain {
            endpoints,
            preferred: AtomicUsize::new(0),
            limits,
            gate: Arc::new(NoGate),
        })
    }

    /// Consults `gate` (a circuit breaker) before every call, and reports every outcome to it.
    pub fn with_gate(mut self, gate: Arc<dyn EndpointGate>) -> Self {
        for e in &self.endpoints {
            gate.register(&e.id, &e.label);
        }
        self.gate = gate;
        self
    }

    /// Asks every endpoint for its chain id, each on its own (no failover, no breaker): what an
    /// operator needs to hear at start-up, one line per URL (its label, never its key).
    pub async fn probe(&self) -> Vec<(String, Result<u64, ChainError>)> {
        let mut answers = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let answer = match tokio::time::timeout(
                self.limits.call_timeout,
                endpoint.provider.get_chain_id(),
            )
            .await
            {
                Ok(answer) => answer.map_err(|e| endpoint.scrub_error(classify(e))),
                Err(_) => Err(ChainError::Unavailable(format!(
                    "timed out after {:?}",
                    self.limits.call_timeout
                ))),
            };
            answers.push((endpoint.label.clone(), answer));
        }
        answers
    }

    /// Runs `call` on the preferred endpoint, then on the others while they are unavailable.
    async fn with_failover<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, ChainError>
    where
        F: Fn(RootProvider<Ethereum>) -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            if !self.gate.admits(&endpoint.id) {
                failures.push(format!("{}: circuit breaker open", endpoint.label));
                continue;
            }
            let outcome = match tokio::time::timeout(
                self.limits.call_timeout,
                call(endpoint.provider.clone()),
            )
            .await
            {
                Ok(outcome) => outcome.map_err(|e| endpoint.scrub_error(e)),
                Err(_) => Err(ChainError::Unavailable(format!(
                    "timed out after {:?}",
                    self.limits.call_timeout
                ))),
            };
            match outcome {
                Err(ChainError::Unavailable(why)) => {
                    self.gate.record(&endpoint.id, false);
                    tracing::debug!(rpc = %endpoint.label, what, %why, "chain RPC unavailable");
                    failures.push(format!("{}: {why}", endpoint.label));
                }
                other => {
                    self.gate.record(&endpoint.id, true);
                    if idx != start {
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        Err(ChainError::Unavailable(format!(
            "{what}: {}",
            failures.join("; ")
        )))
    }
}

impl Chain for AlloyChain {
    fn chain_id(&self) -> ChainFuture<'_, u64> {
        Box::pin(self.with_failover("eth_chainId", |p| async move {
            p.get_chain_id().await.map_err(classify)
        }))
    }

    fn block_number(&self) -> ChainFuture<'_, u64> {
        Box::pin(self.with_failover("eth_blockNumber", |p| async move {
            p.get_block_number().await.map_err(classify)
        }))
    }

    fn code_at(&self, address: Address) -> ChainFuture<'_, Vec<u8>> {
        Box::pin(self.with_failover("eth_getCode", move |p| async move {
            p.get_code_at(address)
                .await
                .map(|b| b.to_vec())
                .map_err(classify)
        }))
    }

    fn eth_call(&self, call: CallRequest) -> ChainFuture<'_, Vec<u8>> {
        let request = to_request(call);
        Box::pin(self.with_failover("eth_call", move |p| {
            let request = request.clone();
            async move { p.call(request).await.map(|b| b.to_vec()).map_err(classify) }
        }))
    }

    fn estimate_gas(&self, call: CallRequest) -> ChainFuture<'_, u64> {
        let request = to_request(call);
        Box::pin(self.with_failover("eth_estimateGas", move |p| {
            let request = request.clone();
            async move { p.estimate_gas(request).await.map_err(classify) }
        }))
    }

    fn nonce(&self, address: Address, tag: NonceTag) -> ChainFuture<'_, u64> {
        Box::pin(
            self.with_failover("eth_getTransactionCount", move |p| async move {
                let count = p.get_transaction_count(address);
                let count = match tag {
                    NonceTag::Latest => count.latest(),
                    NonceTag::Pending => count.pending(),
                };
                count.await.map_err(classify)
            }),
        )
    }

    fn fees(&self) -> ChainFuture<'_, Fees> {
        Box::pin(async move {
            let history = self
                .with_failover("eth_feeHistory", |p| async move {
                    p.get_fee_history(1, BlockNumberOrTag::Latest, &[])
                        .await
                        .map_err(classify)
                })
                .await?;
            let base_fee_per_gas = history.next_block_base_fee().ok_or_else(|| {
                ChainError::BadResponse("eth_feeHistory without a next-block base fee".into())
            })?;
            let max_priority_fee_per_gas = self
                .with_failover("eth_maxPriorityFeePerGas", |p| async move {
                    p.get_max_priority_fee_per_gas().await.map_err(classify)
                })
                .await?;
            Ok(Fees {
                base_fee_per_gas,
                max_priority_fee_per_gas,
            })
        })
    }

    fn send_raw_transaction(&self, raw: Vec<u8>) -> ChainFuture<'_, B256> {
        // The hash of an EIP-2718 envelope (or a legacy RLP transaction) is keccak256 of its
        // bytes: known before sending, and checked against what the node says.
        let expected = keccak256(&raw);
        let raw = Bytes::from(raw);
        Box::pin(self.with_failover("eth_sendRawTransaction", move |p| {
            let raw = raw.clone();
            async move {
                match p.send_raw_transaction(&raw).await {
                    Ok(pending) if *pending.tx_hash() == expected => Ok(expected),
                    Ok(pending) => Err(ChainError::BadResponse(format!(
                        "node returned hash {} for transaction {expected}",
                        pending.tx_hash()
                    ))),
                    // A failover resend of a transaction the first node did forward.
                    // geth says "already known", anvil "transaction already imported".
                    Err(RpcError::ErrorResp(e))
                        if e.message.contains("already known")
                            || e.message.contains("already imported") =>
                    {
                        Ok(expected)
                    }
                    Err(e) => Err(classify(e)),
                }
            }
        }))
    }

    fn receipt(&self, tx_hash: B256) -> ChainFuture<'_, Option<Receipt>> {
        Box::pin(
            self.with_failover("eth_getTransactionReceipt", move |p| async move {
                let Some(r) = p.get_transaction_receipt(tx_hash).await.map_err(classify)? else {
                    return Ok(None);
                };
                let logs = r
                    .inner
                    .logs()
                    .iter()
                    .map(|l| Log {
                        address: l.address(),
                        topics: l.topics().to_vec(),
                        data: l.data().data.to_vec(),
                    })
                    .collect();
                Ok(Some(Receipt {
                    transaction_hash: r.transaction_hash,
                    status: r.status(),
                    block_number: r.block_number,
                    block_hash: r.block_hash,
                    gas_used: r.gas_used,
                    logs,
                }))
            }),
        )
    }
}

fn to_request(call: CallRequest) -> TransactionRequest {
    let mut request = TransactionRequest::default()
        .to(call.to)
        .input(TransactionInput::new(call.data.into()));
    if let Some(from) = call.from {
        request = request.from(from);
    }
    request
}

/// Sorts an alloy transport error into the [`ChainError`] a caller acts on.
fn classify(e: RpcError<TransportErrorKind>) -> ChainError {
    match e {
        RpcError::ErrorResp(payload) => {
            if let Some(data) = payload.as_revert_data() {
                return ChainError::Reverted {
                    reason: decode_revert(&data),
                    data: data.to_vec(),
                };
            }
            let message = truncate(&payload.message, MAX_ERROR_MESSAGE_BYTES);
            if payload.message.contains("revert") {
                // A node that reports a revert without data: keep its text as the reason.
                let reason = message
                    .strip_prefix("execution reverted: ")
                    .map(str::to_owned)
                    .filter(|r| !r.is_empty());
                return ChainError::Reverted {
                    reason,
                    data: Vec::new(),
                };
            }
            if payload.is_retry_err() {
                return ChainError::Unavailable(format!("({}) {message}", payload.code));
            }
            ChainError::Rejected {
                code: payload.code,
                message,
            }
        }
        RpcError::Transport(kind) => {
            ChainError::Unavailable(truncate(&with_causes(&kind), MAX_ERROR_MESSAGE_BYTES))
        }
        RpcError::NullResp => ChainError::BadResponse("null result".into()),
        RpcError::DeserError { err, .. } => ChainError::BadResponse(err.to_string()),
        other => ChainError::BadResponse(truncate(&other.to_string(), MAX_ERROR_MESSAGE_BYTES)),
    }
}

/// `Error(string)` → its string; `Panic(uint256)` → a description; a bare UTF-8 string → itself.
/// `e` and its causes, `: `-separated: reqwest's own text says only "error sending request";
/// why (a refused connection, an unknown certificate issuer) is in its sources.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    // A chain is a handful deep; the bound only guards against a cycle.
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn decode_revert(data: &[u8]) -> Option<String> {
    let reason = match GenericRevertReason::decode(data)? {
        GenericRevertReason::ContractError(ContractError::Revert(r)) => r.reason,
        other => other.to_string(),
    };
    // Empty revert data "decodes" as an empty string: that is no reason.
    (!reason.is_empty()).then(|| truncate(&reason, MAX_REVERT_REASON_BYTES))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// alloy's provider over one endpoint, through `client`. Never "local": alloy would poll a
/// local node faster, and the node polls receipts at its own pace.
pub fn provider(client: &reqwest::Client, url: reqwest::Url) -> RootProvider<Ethereum> {
    RootProvider::new(RpcClient::new(
        Http::with_client(client.clone(), url),
        false,
    ))
}

/// `scheme://host:port` of a URL, dropping user info, path and query (where API keys live).
fn redact(url: &str) -> String {
    match url.parse::<alloy::transports::http::reqwest::Url>() {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => format!("{}://?", u.scheme()),
        },
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{Revert, SolError};

    fn chain<S: AsRef<str>>(urls: &[S]) -> Result<AlloyChain, ChainConfigError> {
        let client = crate::tls::rpc_http_client(&crate::tls::Roots::None).unwrap();
        AlloyChain::new(urls, ChainLimits::default(), &client)
    }

    #[test]
    fn config_is_checked() {
        let none: [&str; 0] = [];
        assert_eq!(chain(&none).err(), Some(ChainConfigError::NoUrls));
        let many = vec!["http://127.0.0.1:8545"; MAX_RPC_URLS + 1];
        assert!(matches!(
            chain(&many),
            Err(ChainConfigError::TooManyUrls(_))
        ));
        let err = chain(&["wss://user:secret@rpc.example/v2/KEY"])
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("only http:// and https://"), "{text}");
        assert!(!text.contains("secret") && !text.contains("KEY"), "{text}");
        assert!(chain(&["not a url"]).is_err());
        assert!(chain(&["http://127.0.0.1:8545"]).is_ok());
        assert!(chain(&["https://user:secret@rpc.example/v2/KEY?k=1"]).is_ok());
        assert_eq!(
            redact("https://user:secret@rpc.example:8443/v2/KEY?k=1"),
            "https://rpc.example:8443"
        );
    }

    #[test]
    fn revert_reasons_are_decoded() {
        let data = Revert::from("FiatTokenV2: invalid signature").abi_encode();
        assert_eq!(
            decode_revert(&data).as_deref(),
            Some("FiatTokenV2: invalid signature")
        );
        assert_eq!(decode_revert(&[]), None);
        let long = Revert::from("x".repeat(5000)).abi_encode();
        assert!(decode_revert(&long).unwrap().len() <= MAX_REVERT_REASON_BYTES + '…'.len_utf8());
    }
}
