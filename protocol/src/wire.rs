//! JSON bodies of the operator and admin API, shared by `x402-node` (which serves them) and
//! `x402ctl` (which sends them). Byte strings travel as `0x`-prefixed hex.
//!
//! Admin endpoints need `Authorization: Bearer <admin token>`:
//!
//! | method and path              | body                  | answer               |
//! |------------------------------|-----------------------|----------------------|
//! | `GET  /admin/status`         |                       | [`NodeStatus`]       |
//! | `POST /admin/init`           | [`InitRequest`]       | [`MembershipResponse`] |
//! | `POST /admin/members/add`    | [`AddLearnerRequest`] | [`MembershipResponse`] |
//! | `POST /admin/members/promote`| [`MemberIdRequest`]   | [`MembershipResponse`] |
//! | `POST /admin/members/remove` | [`MemberIdRequest`]   | [`MembershipResponse`] |
//! | `POST /admin/claims`         | [`ClaimRequest`]      | [`ClaimResponse`]    |
//! | `POST /admin/snapshot`       |                       | [`SnapshotResponse`] |
//! | `GET  /admin/snapshot`       |                       | the latest snapshot, bytes |
//!
//! Unauthenticated: `GET /livez` (200 `ok`), `GET /readyz` ([`Readiness`], 200 or 503),
//! `GET /metrics` (Prometheus text). Errors answer a 4xx/5xx status with an [`ErrorBody`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Environment variable naming the node URLs, comma separated (written by `deploy/local/up.sh`).
pub const ENV_NODES: &str = "X402_NODES";
/// The PEM file of the CA that `https://` node URLs are verified against (`--cacert`).
pub const ENV_CACERT: &str = "X402_CACERT";
/// Environment variable holding the admin bearer token.
pub const ENV_ADMIN_TOKEN: &str = "X402_ADMIN_TOKEN";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub url: String,
    /// `false` for a learner.
    pub voter: bool,
}

/// One node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub url: String,
    /// The cluster this node belongs to (32 hex digits); none before it forms or joins one.
    #[serde(default)]
    pub cluster_id: Option<String>,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<u64>,
    /// Highest log index known committed (on the leader: by quorum; elsewhere: as last heard).
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub last_log: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    pub members: Vec<Member>,
    /// Live nonce claims held in this node's state.
    pub claims: u64,
    /// Hex SHA-256 of this node's applied state; equal on replicas at the same `applied`.
    pub state_hash: String,
    /// The circuit breaker of each chain RPC endpoint, as this node has applied it.
    #[serde(default)]
    pub breakers: Vec<BreakerStatus>,
    /// Every facilitator signer's nonce counter, as this node has applied it.
    #[serde(default)]
    pub signers: Vec<SignerStatus>,
    /// The node's release and the commit it was built from, e.g. `0.1.0 (commit 61f8102)`;
    /// none from a node older than this field.
    #[serde(default)]
    pub version: Option<String>,
}

/// One facilitator signer key's nonce counter (replicated, I3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerStatus {
    pub chain_id: u64,
    /// EIP-55 address.
    pub address: String,
    /// The nonce the next settlement gets.
    pub next_nonce: u64,
    /// Settlements holding a nonce of this signer that are not done yet.
    pub in_flight: u32,
}

/// One chain RPC endpoint's circuit breaker (shared by the cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// Scheme, host and port of the endpoint (never its path or credentials).
    pub endpoint: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Grows with every transition; equal on nodes that applied the same log.
    pub epoch: u64,
    /// While open: when a probe will be let through (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until_ms: Option<u64>,
}

/// `POST /admin/init`: forms the cluster. An empty `members` means "the members named in the
/// node's configuration" (or the node alone when there are none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    pub id: u64,
    pub url: String,
    /// The cluster id the new member already holds, when it cannot be asked to take it
    /// (`x402-node rebuild` wrote it into the store of a node not running yet). Without it the
    /// leader gives the member the cluster's id first, and a member it cannot reach is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds_cluster_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdRequest {
    pub id: u64,
}

/// `POST /admin/leader/move`: hand leadership to `to`, or (none) to any caught-up voter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderMoveRequest {
    #[serde(default)]
    pub to: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderMoveResponse {
    /// The leader once the move is done.
    pub leader: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResponse {
    pub members: Vec<Member>,
    /// Log index of the membership entry that took effect, when there was one.
    pub log_index: Option<u64>,
}

/// `POST /admin/claims`: claim one EIP-3009 authorization nonce for a requirements fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub chain_id: u64,
    /// 20-byte token address, `0x` hex.
    pub asset: String,
    /// 20-byte payer address, `0x` hex.
    pub payer: String,
    /// 32-byte authorization nonce, `0x` hex.
    pub nonce: String,
    /// 32-byte requirements fingerprint, `0x` hex.
    pub fingerprint: String,
    /// The authorization's `validBefore`, unix seconds.
    pub valid_before: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimOutcome {
    /// Claimed now, or already claimed for the same fingerprint.
    Accepted,
    /// Already claimed for another fingerprint.
    Replay,
    /// `valid_before` has passed.
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub outcome: ClaimOutcome,
    /// Log index of the entry that carried the claim.
    pub log_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// Index of the last log entry the snapshot covers.
    pub last_log_index: Option<u64>,
}

/// `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why the node is not ready; empty when it is.
    pub reasons: Vec<String>,
}

/// Body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `unauthorized`, `bad_request`, `no_leader`.
    pub code: String,
    /// Human-readable explanation.
    pub error: String,
}

/// `x402ctl status --json`: every node that answered, and every one that did not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    pub unreachable: Vec<UnreachableNode>,
}

/// `x402ctl health --json`: whether every node is ready and the cluster can lose one more voter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub healthy: bool,
    /// Voters in the membership the nodes report.
    pub voters: usize,
    /// Voters needed for a majority.
    pub quorum: usize,
    /// Voters that answered ready.
    pub ready_voters: usize,
    /// How many more voters may fail before writes stop (`ready_voters - quorum`; negative:
    /// there is no quorum of ready voters now).
    pub failure_tolerance: i64,
    pub nodes: Vec<NodeHealth>,
    pub unreachable: Vec<UnreachableNode>,
    /// What makes the cluster unhealthy, one line each; empty when healthy.
    pub problems: Vec<String>,
}

/// One node in [`ClusterHealth`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub id: u64,
    pub url: String,
    pub ready: bool,
    pub reasons: Vec<String>,
}

/// A node `x402ctl` could not get an answer from, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableNode {
    pub url: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    #[error("expected 0x-prefixed hex")]
    MissingPrefix,
    #[error("expected {expected} bytes, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("invalid hex: {0}")]
    Invalid(String),
}

/// Parses `0x`-prefixed hex of exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or(HexError::MissingPrefix)?;
    let bytes = hex::decode(digits).map_err(|e| HexError::Invalid(e.to_string()))?;
    let got = bytes.len();
    bytes
        .try_into()
        .map_err(|_| HexError::WrongLength { expected: N, got })
}

/// Formats bytes as `0x`-prefixed lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let b: [u8; 4] = parse_hex("0xdeadbeef").unwrap();
        assert_eq!(to_hex(&b), "0xdeadbeef");
        assert_eq!(parse_hex::<4>("deadbeef"), Err(HexError::MissingPrefix));
        assert_eq!(
            parse_hex::<2>("0xdeadbeef"),
            Err(HexError::WrongLength {
                expected: 2,
                got: 4
            })
        );
        assert!(matches!(parse_hex::<1>("0xzz"), Err(HexError::Invalid(_))));
    }
}
