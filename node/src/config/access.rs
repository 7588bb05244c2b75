//! Who may call the facilitator API, how often, and how repeated requests are answered:
//! `[auth]` (API keys, stored as SHA-256 digests), `[[rate_limits]]` (cluster-wide limits per
//! API key, client IP, payer or route), `[idempotency]` (the `Idempotency-Key` store) and
//! `[breaker]` (the shared circuit breaker of chain RPC endpoints).

use serde::{Deserialize, Serialize};
use x402_raft_store::state::breakers::MAX_OPEN_MS;
use x402_raft_store::state::idempotency::MAX_IDEMPOTENCY_TTL_MS;
use x402_raft_store::state::rate_limits::MAX_WINDOW_MS;

use super::ConfigError;

/// Most API keys one config may list.
pub const MAX_API_KEYS: usize = 10_000;
/// Most rate-limit rules one config may list (each request is checked against every rule that
/// applies to it, and one log entry carries at most this many keys per request).
pub const MAX_RATE_RULES: usize = x402_raft_store::state::rate_limits::MAX_RATE_KEYS_PER_OP;

/// `[auth]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Refuse `/verify`, `/settle` (and `/supported` when `protect_supported`) without a valid
    /// API key. Keys are accepted (and identify the caller for `per = "api_key"` limits) even
    /// when not required.
    pub required: bool,
    /// Require the key on `GET /supported` too.
    pub protect_supported: bool,
    pub api_keys: Vec<ApiKeySettings>,
}

/// One `[[auth.api_keys]]`: the key itself is never in the config, only its SHA-256
/// (`x402ctl api-key new` prints both).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// A name for logs, metrics and `per = "api_key"` limits; never secret.
    pub id: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// A revoked key is refused with 403 (kept listed so the caller learns why).
    #[serde(default)]
    pub revoked: bool,
}

/// What a rate limit counts per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Per API key (requests without a key share the subject `anonymous`).
    ApiKey,
    /// Per client IP address (the socket's peer, or the first `X-Forwarded-For` address when
    /// `trust_forwarded_for`).
    ClientIp,
    /// Per payer address: counts payments that reach the claim (verify or settle).
    Payer,
    /// One counter for the route as a whole.
    Route,
}

/// One `[[rate_limits]]` rule: at most `limit` requests in any `window_ms` window, counted for
/// the cluster as a whole.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Unique name; part of every counter's identity (renaming a rule restarts its counts).
    pub name: String,
    pub per: LimitScope,
    pub limit: u32,
    pub window_ms: u64,
    /// Routes the rule applies to: any of `/verify`, `/settle`, `/supported`.
    #[serde(default = "default_routes")]
    pub routes: Vec<String>,
}

fn default_routes() -> Vec<String> {
    RATE_LIMITED_ROUTES.iter().map(|r| r.to_string()).collect()
}

/// The routes a rule may name.
pub const RATE_LIMITED_ROUTES: [&str; 3] = ["/verify", "/settle", "/supported"];

/// `[rate_limit]`: settings of the limiter itself.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Use the first address of `X-Forwarded-For` as the client IP (only behind a proxy that
    /// sets it: otherwise any caller picks its own IP).
    pub trust_forwarded_for: bool,
    /// Longest a leased quota slice (for requests without a write of their own) is spent
    /// locally before its rest is returned.
    pub lease_ms: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            trust_forwarded_for: false,
            lease_ms: 2_000,
        }
    }
}

/// `[idempotency]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long a key's answer is kept and replayed.
    pub ttl_ms: u64,
    /// A request still in flight after this long is presumed dead (its node crashed) and a retry
    /// with the same key takes it over instead of getting 409.
    pub in_flight_timeout_ms: u64,
    /// Longest key accepted (the draft leaves it to the server).
    pub max_key_bytes: usize,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl_ms: 24 * 3600 * 1000,
            in_flight_timeout_ms: 60_000,
            max_key_bytes: 255,
        }
    }
}

/// `[breaker]`: the circuit breaker each chain RPC endpoint has, shared by the cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures of one endpoint seen by one node within `failure_window_ms` that open its
    /// breaker (for every node).
    pub failures_to_open: u32,
    pub failure_window_ms: u64,
    /// How long an open breaker stays open before a probe is let through (half-open).
    pub open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            failure_window_ms: 10_000,
            open_ms: 5_000,
        }
    }
}

/// Checks the access settings together.
pub fn validate(
    auth: &AuthSettings,
    rules: &[RateRule],
    rate: &RateLimitSettings,
    idempotency: &IdempotencySettings,
    breaker: &BreakerSettings,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if auth.api_keys.len() > MAX_API_KEYS {
        return invalid(format!("at most {MAX_API_KEYS} auth.api_keys"));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut digests = std::collections::BTreeSet::new();
    for key in &auth.api_keys {
        if key.id.is_empty() || !ids.insert(key.id.as_str()) {
            return invalid(format!("auth.api_keys: id {:?} empty or repeated", key.id));
        }
        let digest = key.sha256.to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return invalid(format!(
                "auth.api_keys {:?}: sha256 must be 64 hex digits (x402ctl api-key new)",
                key.id
            ));
        }
        if !digests.insert(digest) {
            return invalid(format!("auth.api_keys {:?}: sha256 repeated", key.id));
        }
    }
    if auth.required && auth.api_keys.iter().all(|k| k.revoked) {
        return invalid("auth.required is set but no usable auth.api_keys are listed".into());
    }
    if rules.len() > MAX_RATE_RULES {
        return invalid(format!("at most {MAX_RATE_RULES} rate_limits"));
    }
    let mut names = std::collections::BTreeSet::new();
    for rule in rules {
        if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
            return invalid(format!(
                "rate_limits: name {:?} empty or repeated",
                rule.name
            ));
        }
        if rule.limit == 0 || rule.window_ms < 1_000 || rule.window_ms > MAX_WINDOW_MS {
            return invalid(format!(
                "rate_limits {:?}: limit must be ≥ 1 and window_ms 1000..={MAX_WINDOW_MS}",
                rule.name
            ));
        }
        if rule.routes.is_empty() {
            return invalid(format!("rate_limits {:?}: no routes", rule.name));
        }
        for route in &rule.routes {
            if !RATE_LIMITED_ROUTES.contains(&route.as_str()) {
                return invalid(format!(
                    "rate_limits {:?}: route {route:?} is not one of {RATE_LIMITED_ROUTES:?}",
                    rule.name
                ));
            }
        }
        if rule.per == LimitScope::Payer && rule.routes.iter().any(|r| r == "/supported") {
            return invalid(format!(
                "rate_limits {:?}: per = \"payer\" cannot apply to /supported (no payer)",
                rule.name
            ));
        }
    }
    if rate.lease_ms == 0 || rate.lease_ms > 60_000 {
        return invalid("rate_limit.lease_ms must be 1..=60000".into());
    }
    if idempotency.ttl_ms == 0 || idempotency.ttl_ms > MAX_IDEMPOTENCY_TTL_MS {
        return invalid(format!(
            "idempotency.ttl_ms must be 1..={MAX_IDEMPOTENCY_TTL_MS}"
        ));
    }
    if idempotency.in_flight_timeout_ms == 0 || idempotency.max_key_bytes == 0 {
        return invalid("idempotency.in_flight_timeout_ms and max_key_bytes must be ≥ 1".into());
    }
    if breaker.failures_to_open == 0
        || breaker.failure_window_ms == 0
        || breaker.open_ms == 0
        || breaker.open_ms > MAX_OPEN_MS
    {
        return invalid(format!(
            "breaker: failures_to_open and failure_window_ms must be ≥ 1, open_ms 1..={MAX_OPEN_MS}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn rules_and_keys_are_validated() {
        let rule = |extra: &str| {
            format!("[[rate_limits]]\nname = \"r\"\nper = \"route\"\nlimit = 10\nwindow_ms = 60000\n{extra}")
        };
        assert!(parse(&rule("")).is_ok());
        assert!(parse(&rule("routes = [\"/admin/status\"]")).is_err());
        let zero = "[[rate_limits]]\nname = \"r\"\nper = \"route\"\nlimit = 0\nwindow_ms = 60000\n";
        assert!(parse(zero).is_err());
        let payer_on_supported = "[[rate_limits]]\nname = \"r\"\nper = \"payer\"\nlimit = 5\n\
                                  window_ms = 60000\nroutes = [\"/supported\"]\n";
        assert!(parse(payer_on_supported).is_err());
        let bad_digest =
            "[auth]\nrequired = true\n[[auth.api_keys]]\nid = \"a\"\nsha256 = \"xyz\"\n";
        assert!(parse(bad_digest).is_err());
        let no_usable_key = format!(
            "[auth]\nrequired = true\n[[auth.api_keys]]\nid = \"a\"\nsha256 = \"{}\"\nrevoked = true\n",
            "ab".repeat(32)
        );
        assert!(parse(&no_usable_key).is_err());
    }
}
