//! What the simulated clients saw: every attempt of every write, with the node it went to, its
//! result and its simulated start and end times. Checkers read it after the run; its hash is the
//! run's trace, equal for two runs of one seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use x402_protocol::wire::ClaimOutcome;

use crate::api::CallError;

/// What one attempt came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A 200 answer.
    Ok {
        outcome: ClaimOutcome,
        log_index: u64,
    },
    /// Certainly not written by this attempt: never delivered, or refused before being proposed
    /// (`503 no_leader`, `503 overloaded`, `409 refused`, `4xx`).
    Failed(String),
    /// May or may not have been written: lost answer, `504 outcome_unknown`, other `5xx`.
    Unknown(String),
}

impl Answer {
    /// Sorts a call's result by what it says about the write.
    pub fn of(answer: &Result<(ClaimOutcome, u64), CallError>) -> Self {
        match answer {
            Ok((outcome, log_index)) => Answer::Ok {
                outcome: *outcome,
                log_index: *log_index,
            },
            Err(e @ CallError::NotDelivered(_)) => Answer::Failed(e.label()),
            Err(e @ CallError::Lost(_)) => Answer::Unknown(e.label()),
            Err(e @ CallError::Status { status, code }) => {
                let definite = *status == 503 && (code == "no_leader" || code == "overloaded")
                    || *status == 409
                    || (400..500).contains(status);
                if definite {
                    Answer::Failed(e.label())
                } else {
                    Answer::Unknown(e.label())
                }
            }
        }
    }

    pub fn is_accepted(&self) -> bool {
        matches!(
            self,
            Answer::Ok {
                outcome: ClaimOutcome::Accepted,
                ..
            }
        )
    }

    fn label(&self) -> String {
        match self {
            Answer::Ok { outcome, log_index } => format!("ok {outcome:?} @{log_index}"),
            Answer::Failed(why) => format!("failed {why}"),
            Answer::Unknown(why) => format!("unknown {why}"),
        }
    }
}

/// One request of one write to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The write (operation) this attempt belongs to; also the claim's nonce.
    pub op: u64,
    /// Which worker sent it.
    pub worker: usize,
    /// The node it was sent to.
    pub node: u64,
    /// Simulated milliseconds since the start of the run.
    pub start_ms: u64,
    pub end_ms: u64,
    pub result: Answer,
}

/// Every attempt of a run, in completion order.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub attempts: Vec<Attempt>,
}

/// How one write ended, over all its attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Some attempt was answered `accepted`.
    Acked,
    /// Every attempt certainly failed: the claim must not be in the state.
    Failed,
    /// No attempt was acknowledged and some may have been written.
    Unknown,
}

impl History {
    pub fn record(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
    }

    /// The fate of every write that was attempted.
    pub fn fates(&self) -> BTreeMap<u64, Fate> {
        let mut fates = BTreeMap::new();
        for a in &self.attempts {
            let fate = fates.entry(a.op).or_insert(Fate::Failed);
            match (&a.result, *fate) {
                (_, Fate::Acked) => {}
                (r, _) if r.is_accepted() => *fate = Fate::Acked,
                (Answer::Failed(_), _) => {}
                (_, _) => *fate = Fate::Unknown,
            }
        }
        fates
    }

    /// Writes answered `accepted` at least once.
    pub fn acked(&self) -> BTreeSet<u64> {
        self.ops_with(Fate::Acked)
    }

    pub fn ops_with(&self, wanted: Fate) -> BTreeSet<u64> {
        self.fates()
            .into_iter()
            .filter(|(_, f)| *f == wanted)
            .map(|(op, _)| op)
            .collect()
    }

    /// Attempts answered 200 with an outcome other than `accepted` (every write claims a fresh
    /// nonce with one fingerprint, so `replay` or `expired` is a bug).
    pub fn anomalies(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| matches!(a.result, Answer::Ok { .. }) && !a.result.is_accepted())
            .collect()
    }

    /// Counts of acked, failed and unknown writes, and of attempts.
    pub fn summary(&self) -> String {
        let fates = self.fates();
        let count = |f: Fate| fates.values().filter(|x| **x == f).count();
        format!(
            "{} writes ({} acked, {} failed, {} unknown) in {} attempts",
            fates.len(),
            count(Fate::Acked),
            count(Fate::Failed),
            count(Fate::Unknown),
            self.attempts.len()
        )
    }

    /// Hex SHA-256 over every attempt (op, worker, node, times, result) in order: two runs of
    /// one seed must produce the same value.
    pub fn trace_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut line = String::new();
        for a in &self.attempts {
            line.clear();
            let _ = writeln!(
                line,
                "{} {} {} {} {} {}",
                a.op,
                a.worker,
                a.node,
                a.start_ms,
                a.end_ms,
                a.result.label()
            );
            h.update(line.as_bytes());
        }
        hex::encode(h.finalize())
    }
}
