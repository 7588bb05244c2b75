//! `bench claims`: load on `POST /admin/claims`, the cluster's cheapest replicated write. Every
//! operation claims a fresh random nonce for a random payer and fingerprint, so each one is a new
//! log entry (no idempotent short-cut on the node), and only an `accepted` answer counts.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::RngCore;
use serde::{Serialize, Serializer};

use super::{BenchConfig, BenchError, BenchOutcome, Failure};
use crate::admin::AdminClient;
use crate::error::ClientError;
use crate::wire::ClaimOutcome;

/// The fixed token address claims are made for unless told otherwise.
pub const DEFAULT_ASSET: &str = "0x5fbdb2315678afecb367f032d93f642f64180aa3";

/// What every generated claim has in common.
#[derive(Clone, Debug)]
pub struct ClaimTemplate {
    pub chain_id: u64,
    /// 20-byte token address, `0x` hex.
    pub asset: String,
    /// `valid_before` is set this far after the moment each claim is sent.
    pub valid_for: Duration,
}

impl Default for ClaimTemplate {
    fn default() -> Self {
        Self {
            chain_id: 31337,
            asset: DEFAULT_ASSET.to_owned(),
            valid_for: Duration::from_secs(3600),
        }
    }
}

impl ClaimTemplate {
    /// A JSON [`crate::wire::ClaimRequest`] with a random payer, nonce and fingerprint. 32 random
    /// bytes make the nonce distinct from every other one ever sent, across workers and runs.
    pub fn random_body(&self, rng: &mut impl RngCore) -> Result<Bytes, ClientError> {
        let mut random = [0u8; 20 + 32 + 32];
        rng.fill_bytes(&mut random);
        let (payer, rest) = random.split_at(20);
        let (nonce, fingerprint) = rest.split_at(32);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let body = ClaimBody {
            chain_id: self.chain_id,
            asset: &self.asset,
            payer: Hex(payer),
            nonce: Hex(nonce),
            fingerprint: Hex(fingerprint),
            valid_before: (now + self.valid_for).as_secs(),
        };
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(ClientError::Encode)
    }
}

/// Same fields and JSON as [`crate::wire::ClaimRequest`] (a test checks it), but borrowing and
/// writing hex straight into the output: one allocation per body instead of five.
#[derive(Serialize)]
struct ClaimBody<'a> {
    chain_id: u64,
    asset: &'a str,
    payer: Hex<'a>,
    nonce: Hex<'a>,
    fingerprint: Hex<'a>,
    valid_before: u64,
}

/// Bytes serialized as a `0x`-prefixed lowercase hex string.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        f.write_str("0x")?;
        // Encode in stack chunks: no heap, and far fewer `write_str` calls than per byte.
        let mut buf = [0u8; 64];
        for chunk in self.0.chunks(buf.len() / 2) {
            for (i, b) in chunk.iter().enumerate() {
                buf[2 * i] = DIGITS[usize::from(b >> 4)];
                buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
            }
            let text = std::str::from_utf8(&buf[..2 * chunk.len()]).map_err(|_| fmt::Error)?;
            f.write_str(text)?;
        }
        Ok(())
    }
}

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json writes `collect_str` output straight into its buffer, with no `String`.
        serializer.collect_str(self)
    }
}

/// Why one claim did not count as an operation.
#[derive(Debug, thiserror::Error)]
pub enum ClaimFailure {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The node answered 200 but did not accept the claim (a random nonce should never be a
    /// replay, so this points at a bug or a clock problem).
    #[error("claim answered {0:?} instead of accepted")]
    NotAccepted(ClaimOutcome),
}

impl Failure for ClaimFailure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Client(e) => e.kind(),
            Self::NotAccepted(_) => "not_accepted",
        }
    }

    fn not_sent(&self) -> bool {
        matches!(self, Self::Client(e) if e.is_not_sent())
    }
}

/// Sends one claim; `Ok` only for a 200 with outcome `accepted`.
pub async fn claim_once(node: &AdminClient, body: Bytes) -> Result<(), ClaimFailure> {
    let answer = node.claim_raw(body).await?;
    match answer.outcome {
        ClaimOutcome::Accepted => Ok(()),
        other => Err(ClaimFailure::NotAccepted(other)),
    }
}

/// Runs `bench claims` against `nodes` (which should share one [`crate::http::HttpClient`] so
/// connections are pooled across workers).
pub async fn run(
    nodes: Vec<AdminClient>,
    config: &BenchConfig,
    template: ClaimTemplate,
) -> Result<BenchOutcome, BenchError> {
    let nodes: Vec<Arc<AdminClient>> = nodes.into_iter().map(Arc::new).collect();
    super::run(nodes, config, move |node: &Arc<AdminClient>| {
        let body = template.random_body(&mut rand::thread_rng());
        let node = Arc::clone(node);
        Some(async move { claim_once(&node, body?).await })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_hex, ClaimRequest};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn body_is_a_valid_claim_request() {
        let template = ClaimTemplate::default();
        let body = template.random_body(&mut StdRng::seed_from_u64(7)).unwrap();
        let req: ClaimRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.chain_id, 31337);
        assert_eq!(req.asset, DEFAULT_ASSET);
        parse_hex::<20>(&req.payer).unwrap();
        parse_hex::<32>(&req.nonce).unwrap();
        parse_hex::<32>(&req.fingerprint).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ahead = req.valid_before.abs_diff(now.as_secs() + 3600);
        assert!(
            ahead <= 2,
            "valid_before {} vs now {:?}",
            req.valid_before,
            now
        );
        // Byte-identical to what the wire type itself would send.
        assert_eq!(serde_json::to_vec(&req).unwrap(), body.to_vec());
    }

    #[test]
    fn bodies_are_distinct() {
        let template = ClaimTemplate::default();
        let mut rng = rand::thread_rng();
        let nonces: std::collections::HashSet<String> = (0..1000)
            .map(|_| {
                let body = template.random_body(&mut rng).unwrap();
                serde_json::from_slice::<ClaimRequest>(&body).unwrap().nonce
            })
            .collect();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn hex_matches_the_wire_helper() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(Hex(&bytes).to_string(), crate::wire::to_hex(&bytes));
        assert_eq!(Hex(&[]).to_string(), "0x");
    }

    #[test]
    fn failure_kinds() {
        let replay = ClaimFailure::NotAccepted(ClaimOutcome::Replay);
        assert_eq!(replay.kind(), "not_accepted");
        assert_eq!(
            replay.to_string(),
            "claim answered Replay instead of accepted"
        );
        let e = ClaimFailure::from(ClientError::Timeout {
            url: "u".into(),
            after: Duration::from_secs(2),
        });
        assert_eq!(e.kind(), "timeout");
        assert_eq!(e.to_string(), "u: no answer within 2s");
    }
}
