//! Which rate-limit counters a request spends, and the [`Gate`] that carries them through it.
//!
//! Every request to a limited route is counted exactly once, in one of two ways:
//! - a payment that reaches its claim (`/verify`) or settlement (`/settle`) is admitted *inside
//!   that write's log entry* (`Op::Guarded`): the entry commits the claim and the admission
//!   together or neither, and costs no extra consensus round;
//! - a request that writes nothing (a refused payment, a malformed body, `/supported`, a replayed
//!   idempotent answer) spends from a leased quota slice ([`super::leases`]).
//!
//! Before any work, a node checks its own applied state (no consensus): a counter that is full
//! there is full for the cluster (a replica may lag, which only makes it more lenient), so an
//! exhausted client is turned away without chain reads. The log entry is the authority.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use x402_raft_store::state::rate_limits::{Admission, AdmissionVerdict, Quota, RateKey, SubjectId};
use x402_raft_store::state::{ClaimOutcome, NonceClaim, SettlementAnswer, SettlementStart};

use super::api_keys::KeyId;
use super::Route;
use crate::cluster::proposer::ProposeError;
use crate::cluster::writer::{Guarded, Writer, Written};
use crate::config::{LimitScope, RateLimitSettings, RateRule};
use crate::sync::lock;

/// A request refused by a rate limit: answered 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit of {} requests reached for the cluster", .quota.limit)]
pub struct Limited {
    pub quota: Quota,
    pub retry_after_ms: u64,
}

/// One rule as requests use it: its limits, the routes it applies to, and the digest state of
/// its name and scope, so that naming a counter costs one hash of the subject's value.
#[derive(Debug)]
struct CompiledRule {
    per: LimitScope,
    limit: u32,
    window_ms: u64,
    routes: Vec<Route>,
    /// SHA-256 after the rule's own fields (see [`CompiledRule::key`]).
    prefix: Sha256,
}

impl CompiledRule {
    fn new(rule: &RateRule) -> Self {
        let mut prefix = Sha256::new();
        prefix.update(b"x402-cluster rate subject v1");
        prefix.update((rule.name.len() as u64).to_be_bytes());
        prefix.update(rule.name.as_bytes());
        prefix.update([rule.per as u8]);
        Self {
            per: rule.per,
            limit: rule.limit,
            window_ms: rule.window_ms,
            routes: Route::ALL
                .into_iter()
                .filter(|r| rule.routes.iter().any(|p| p == r.path()))
                .collect(),
            prefix,
        }
    }

    /// The counter of this rule for `value`: named by SHA-256 of the rule (name, scope) and the
    /// value, cut to the 16 bytes a counter's name takes in the log.
    fn key(&self, value: &[u8]) -> RateKey {
        let mut h = self.prefix.clone();
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
        let digest = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        RateKey {
            subject: SubjectId::from_le_bytes(first),
            limit: self.limit,
            window_ms: self.window_ms,
        }
    }
}

/// The configured rules.
pub struct RateLimits {
    rules: Vec<Arc<CompiledRule>>,
    pub settings: RateLimitSettings,
}

impl RateLimits {
    pub fn new(rules: &[RateRule], settings: &RateLimitSettings) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|r| Arc::new(CompiledRule::new(r)))
                .collect(),
            settings: settings.clone(),
        }
    }

    /// Whether any rule exists (without rules, requests carry no gate and cost nothing).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The gate of one request: the counters known before its body is read.
    pub fn gate(&self, route: Route, caller: Option<&KeyId>, ip: Option<IpAddr>) -> Gate {
        let mut keys = Vec::new();
        let mut payer_rules = Vec::new();
        for rule in self.rules.iter().filter(|r| r.routes.contains(&route)) {
            match rule.per {
                LimitScope::ApiKey => {
                    let id = caller.map(|k| k.as_bytes()).unwrap_or(b"anonymous");
                    keys.push(rule.key(id));
                }
                LimitScope::ClientIp => {
                    let ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
                    keys.push(rule.key(ip.as_bytes()));
                }
                LimitScope::Route => keys.push(rule.key(route.path().as_bytes())),
                LimitScope::Payer => payer_rules.push(rule.clone()),
            }
        }
        Gate {
            admission: Admission { keys },
            payer_rules,
            state: Mutex::new(GateState::default()),
        }
    }

    /// The client IP: the socket's, or the first `X-Forwarded-For` entry when trusted.
    pub fn client_ip(&self, headers: &HeaderMap, socket: Option<IpAddr>) -> Option<IpAddr> {
        if self.settings.trust_forwarded_for {
            let forwarded = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        socket
    }
}

#[derive(Debug, Default)]
struct GateState {
    /// The request was admitted (or refused) by a log entry: it must not spend a lease too.
    decided_in_log: bool,
    /// The quota to report in the answer's headers.
    quota: Option<Quota>,
}

/// One request's counters, and what became of them.
#[derive(Debug)]
pub struct Gate {
    /// Counters known from the request's metadata (API key, IP, route).
    admission: Admission,
    /// Rules counted per payer, once the payment is decoded.
    payer_rules: Vec<Arc<CompiledRule>>,
    state: Mutex<GateState>,
}

impl Gate {
    /// A gate with no counters (no rule applies).
    pub fn open() -> Self {
        Self {
            admission: Admission::default(),
            payer_rules: Vec::new(),
            state: Mutex::new(GateState::default()),
        }
    }

    /// The counters known before the body is read, as one admission (the pre-check's).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The counters known before the body is read.
    pub fn keys(&self) -> &[RateKey] {
        &self.admission.keys
    }

    /// The admission a write for a payment by `payer` carries, or `None` when no rule applies.
    pub fn admission_for(&self, payer: &[u8; 20]) -> Option<Admission> {
        let mut keys = self.admission.keys.clone();
        keys.extend(self.payer_rules.iter().map(|r| r.key(payer)));
        (!keys.is_empty()).then_some(Admission { keys })
    }

    /// Records the log's verdict on this request's admission.
    pub fn decided(&self, verdict: &AdmissionVerdict) -> Result<(), Limited> {
        let mut state = lock(&self.state);
        state.decided_in_log = true;
        match *verdict {
            AdmissionVerdict::Admitted { quota } => {
                state.quota = quota;
                Ok(())
            }
            AdmissionVerdict::Limited {
                quota,
                retry_after_ms,
            } => {
                state.quota = Some(quota);
                Err(Limited {
                    quota,
                    retry_after_ms,
                })
            }
        }
    }

    /// Whether a log entry already counted this request.
    pub fn decided_in_log(&self) -> bool {
        lock(&self.state).decided_in_log
    }

    /// Records the quota a lease spend reported.
    pub fn spent(&self, quota: Option<Quota>) {
        lock(&self.state).quota = quota;
    }

    /// The quota for the answer's headers, if any counter was spent.
    pub fn quota(&self) -> Option<Quota> {
        lock(&self.state).quota
    }
}

/// The tighter of two quotas (fewer remaining; later reset on a tie).
pub fn tighter(a: Option<Quota>, b: Quota) -> Quota {
    match a {
        Some(a)
            if (a.remaining, std::cmp::Reverse(a.reset_after_ms))
                < (b.remaining, std::cmp::Reverse(b.reset_after_ms)) =>
        {
            a
        }
        _ => b,
    }
}

/// The local pre-check's verdict as a refusal, if any.
pub fn refused(verdict: AdmissionVerdict) -> Option<Limited> {
    match verdict {
        AdmissionVerdict::Admitted { .. } => None,
        AdmissionVerdict::Limited {
            quota,
            retry_after_ms,
        } => Some(Limited {
            quota,
            retry_after_ms,
        }),
    }
}

/// Why a guarded write did not commit its operation.
#[derive(Debug, thiserror::Error)]
pub enum GuardedError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    Limited(Limited),
}

/// Claims a payment's authorization (by `payer`), carrying the gate's admission in the same log
/// entry the first time (a request is counted once, however many writes it makes). Answers the
/// claim's outcome with the index of its entry, or [`GuardedError::Limited`] when the admission
/// was refused (then nothing was claimed).
pub async fn guarded_claim(
    writer: &Writer,
    gate: &Gate,
    payer: &[u8; 20],
    claim: NonceClaim,
) -> Result<Written<ClaimOutcome>, GuardedError> {
    let Some(admission) = admission(gate, payer) else {
        return Ok(writer.claim(claim).await?);
    };
    let written = writer.guarded_claim(admission, claim).await?;
    Ok(Written {
        log_index: written.log_index,
        answer: admitted(gate, written.answer)?,
    })
}

/// Begins a payment's settlement, with the gate's admission as in [`guarded_claim`].
pub async fn guarded_begin_settlement(
    writer: &Writer,
    gate: &Gate,
    payer: &[u8; 20],
    start: SettlementStart,
) -> Result<SettlementAnswer, GuardedError> {
    let Some(admission) = admission(gate, payer) else {
        return Ok(writer.begin_settlement(start).await?);
    };
    let guarded = writer.guarded_begin_settlement(admission, start).await?;
    admitted(gate, guarded)
}

/// The admission a payment's next write carries: none once a log entry counted the request.
fn admission(gate: &Gate, payer: &[u8; 20]) -> Option<Admission> {
    if gate.decided_in_log() {
        None
    } else {
        gate.admission_for(payer)
    }
}

/// The guarded operation's own answer, once the gate has recorded the verdict.
fn admitted<T>(gate: &Gate, guarded: Guarded<T>) -> Result<T, GuardedError> {
    gate.decided(&guarded.verdict)
        .map_err(GuardedError::Limited)?;
    // The answer contract (Op::answered_by): an admitted operation is answered.
    Ok(guarded
        .answer
        .unwrap_or_else(|| unreachable!("an admitted operation without its answer")))
}
