//! The checkers of a simulation run, over what the clients saw, what the chain holds and what the
//! nodes reported while the faults ran. Each returns the violations it found (empty: the
//! invariant held):
//! - [`linearizable_payments`] (I1, I2, I7): every authorization's verify and settle answers, in
//!   real time, are those of one object taking them one at a time ([`PaymentObject`]);
//! - [`chain_settled_once`] (I2): at most one `transferWithAuthorization` per authorization, and
//!   each acknowledged settlement is that one transaction;
//! - [`signer_nonces`] (I3): every signer's mined nonces are 0..n, unique, none reverted;
//! - [`rate_limit_windows`] (I4): admitted requests of one client in any window ≤ the limit;
//! - [`breaker_epochs`] (I5): no node's breaker epoch goes back within one incarnation;
//! - [`hashes_by_applied_index`] (I6): nodes that applied the same index hold the same state.

use std::collections::{BTreeMap, BTreeSet};

use x402_dev::memory_chain::MemoryChain;
use x402_node::chain::{Address, B256};

use crate::linearizability::{check, Model, Operation, Verdict};
use crate::payments::{
    PayAnswer, PayAttempt, PayLog, Requirements, Step, CHAIN_UNREADABLE, NONCE_USED,
    SETTLE_PENDING, SETTLE_UNEXPECTED,
};

/// Search steps the linearizability check may take per authorization before calling it
/// undecided (a failure).
pub const LINEARIZABILITY_BUDGET: u64 = 2_000_000;

/// One authorization as the cluster promises to behave: claimed by the first requirements that
/// verify or settle it; refused to any other; settled once, with one transaction every
/// successful settle names; and answered `success: true` once (I2: one payment buys one
/// resource), except to a keyed settle replaying the answer of the keyed settle that got it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct PaymentObject {
    owner: Option<Requirements>,
    settling: bool,
    tx: Option<String>,
    /// Who got the success: `Some(keyed)` of the settle that took it.
    success: Option<bool>,
}

/// What a verify or settle answered, as far as the object is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayOutput {
    Valid,
    /// `invalid_exact_evm_nonce_already_used`.
    Refused,
    Settled(String),
}

impl PaymentObject {
    fn may_claim(&self, r: Requirements) -> bool {
        self.owner.is_none_or(|o| o == r)
    }

    /// Whether a settle (keyed or not) may be answered with the success now.
    fn may_succeed(&self, keyed: bool) -> bool {
        match self.success {
            None => true,
            // Only a replay of the keyed answer that holds it.
            Some(holder_keyed) => holder_keyed && keyed,
        }
    }

    fn settled(&self, keyed: bool, tx: Option<String>) -> Self {
        PaymentObject {
            owner: Some(Requirements::Main),
            settling: true,
            tx,
            success: Some(self.success.unwrap_or(keyed)),
        }
    }
}

impl Model for PaymentObject {
    type Input = Step;
    type Output = PayOutput;

    fn step(&self, input: &Step, output: &PayOutput) -> Option<Self> {
        match (input, output) {
            (Step::Verify(r), PayOutput::Valid) if self.may_claim(*r) => Some(PaymentObject {
                owner: Some(*r),
                ..self.clone()
            }),
            // Refused to other requirements, or, once settling began, by the chain's own
            // record of the authorization as used.
            (Step::Verify(r), PayOutput::Refused)
                if self.owner.is_some_and(|o| o != *r) || self.settling =>
            {
                Some(self.clone())
            }
            (Step::Settle { keyed }, PayOutput::Settled(tx))
                if self.may_claim(Requirements::Main)
                    && self.tx.as_ref().is_none_or(|t| t == tx)
                    && self.may_succeed(*keyed) =>
            {
                Some(self.settled(*keyed, Some(tx.clone())))
            }
            // Refused: claimed for other requirements, or its success was given to another
            // request.
            (Step::Settle { .. }, PayOutput::Refused)
                if self.owner.is_some_and(|o| o != Requirements::Main)
                    || self.success.is_some() =>
            {
                Some(self.clone())
            }
            _ => None,
        }
    }

    fn step_unobserved(&self, input: &Step) -> Vec<Self> {
        let mut states = vec![self.clone()];
        match input {
            Step::Verify(r) if self.may_claim(*r) => states.push(PaymentObject {
                owner: Some(*r),
                ..self.clone()
            }),
            Step::Settle { keyed } if self.may_claim(Requirements::Main) => {
                // Began settling, or also took the success.
                states.push(PaymentObject {
                    owner: Some(Requirements::Main),
                    settling: true,
                    ..self.clone()
                });
                if self.success.is_none() {
                    states.push(self.settled(*keyed, self.tx.clone()));
                }
            }
            _ => {}
        }
        states.dedup();
        states
    }
}

/// At most one `success: true` per authorization, outside replays of one keyed answer: one
/// unkeyed success and nothing else, or successes of keyed settles only (the first and its
/// replays), all naming one transaction.
pub fn one_success_per_payment(log: &PayLog) -> Vec<String> {
    let mut successes: BTreeMap<u64, Vec<&PayAttempt>> = BTreeMap::new();
    for a in &log.attempts {
        if matches!(a.answer, PayAnswer::Settled(_)) {
            successes.entry(a.key).or_default().push(a);
        }
    }
    let mut violations = Vec::new();
    for (key, got) in successes {
        let unkeyed = got
            .iter()
            .filter(|a| a.step == Step::Settle { keyed: false })
            .count();
        if unkeyed > 1 || (unkeyed == 1 && got.len() > 1) {
            let lines: Vec<String> = got.iter().map(|a| a.line()).collect();
            violations.push(format!(
                "payment {key} was answered success {} times (one payment, one resource):\n    {}",
                got.len(),
                lines.join("\n    ")
            ));
        }
    }
    violations
}

/// How an answer enters the history: `None` if the request certainly had no effect, else the
/// operation's output (`Some(None)`: it may have taken effect, its output unknown).
fn classify(step: Step, answer: &PayAnswer) -> Result<Option<Option<PayOutput>>, String> {
    Ok(match (step, answer) {
        (Step::Verify(_), PayAnswer::Valid) => Some(Some(PayOutput::Valid)),
        (Step::Verify(_), PayAnswer::Invalid(r)) if r == NONCE_USED => {
            Some(Some(PayOutput::Refused))
        }
        // The chain could not be read: refused before any claim.
        (Step::Verify(_), PayAnswer::Invalid(r)) if r == CHAIN_UNREADABLE => None,
        // Settle runs verify's checks first; the chain could not be read, nothing was begun.
        (Step::Settle { .. }, PayAnswer::NotSettled { reason, .. })
            if reason == CHAIN_UNREADABLE =>
        {
            None
        }
        (Step::Settle { .. }, PayAnswer::Settled(tx)) => Some(Some(PayOutput::Settled(tx.clone()))),
        (Step::Settle { .. }, PayAnswer::NotSettled { reason, .. }) if reason == NONCE_USED => {
            Some(Some(PayOutput::Refused))
        }
        (Step::Settle { .. }, PayAnswer::NotSettled { reason, .. })
            if reason == SETTLE_PENDING || reason == SETTLE_UNEXPECTED =>
        {
            Some(None)
        }
        (_, PayAnswer::Invalid(_) | PayAnswer::NotSettled { .. }) => {
            return Err(format!("an answer no fault explains: {answer:?}"))
        }
        (_, PayAnswer::NotDelivered) => None,
        // Refused before anything was proposed: rate limited, no leader, overloaded, bad request.
        (_, PayAnswer::Status { status, code })
            if *status == 429
                || (400..500).contains(status)
                || (*status == 503 && (code == "no_leader" || code == "overloaded")) =>
        {
            None
        }
        (_, PayAnswer::Status { .. } | PayAnswer::Lost) => Some(None),
        (Step::Verify(_), PayAnswer::Settled(_)) | (Step::Settle { .. }, PayAnswer::Valid) => {
            return Err(format!("an answer of the wrong endpoint: {answer:?}"))
        }
    })
}

/// Checks every authorization's history against [`PaymentObject`]; an undecided check fails.
pub fn linearizable_payments(log: &PayLog) -> Vec<String> {
    let mut violations = Vec::new();
    let mut histories: BTreeMap<u64, Vec<Operation<Step, PayOutput>>> = BTreeMap::new();
    for (i, a) in log.attempts.iter().enumerate() {
        match classify(a.step, &a.answer) {
            Err(why) => violations.push(format!("payment {}: {why} ({})", a.key, a.line())),
            Ok(None) => {}
            Ok(Some(output)) => histories.entry(a.key).or_default().push(Operation {
                id: i as u64,
                call_ms: a.call_ms,
                return_ms: output.as_ref().map(|_| a.return_ms),
                input: a.step,
                output,
            }),
        }
    }
    for (key, history) in histories {
        match check(PaymentObject::default(), &history, LINEARIZABILITY_BUDGET) {
            Verdict::Linearizable => {}
            verdict => {
                let attempts: Vec<String> = log
                    .attempts
                    .iter()
                    .filter(|a| a.key == key)
                    .map(|a| a.line())
                    .collect();
                violations.push(format!(
                    "payment {key} is not linearizable ({verdict:?}):\n    {}",
                    attempts.join("\n    ")
                ));
            }
        }
    }
    violations
}

/// At most one transfer per authorization on the chain, and every acknowledged settlement is it.
pub fn chain_settled_once(
    log: &PayLog,
    chain: &MemoryChain,
    token: Address,
    payers: &[Address],
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut acked: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for a in &log.attempts {
        match &a.answer {
            PayAnswer::Settled(tx) => {
                acked.entry(a.key).or_default().insert(tx.clone());
            }
            // A refusal because another request got the success names the settlement: that
            // is an acknowledgement of the transfer too.
            PayAnswer::NotSettled { reason, tx } if reason == NONCE_USED && !tx.is_empty() => {
                acked.entry(a.key).or_default().insert(tx.clone());
            }
            _ => {}
        }
    }
    let transfers = chain.transfers();
    for (key, payment) in &log.payments {
        let payer = payers[payment.payer];
        let used = chain.authorization_used_count(token, payer, B256::from(payment.nonce));
        if used > 1 {
            violations.push(format!("payment {key} was transferred {used} times"));
        }
        if let Some(txs) = acked.get(key) {
            if txs.len() > 1 {
                violations.push(format!(
                    "payment {key} was acknowledged with {} transactions: {txs:?}",
                    txs.len()
                ));
            }
            for tx in txs {
                let mined = transfers
                    .iter()
                    .any(|t| t.tx_hash.to_string() == *tx && t.from == payer);
                if !mined || used != 1 {
                    violations.push(format!(
                        "payment {key}: acknowledged settlement {tx} is not its one transfer on the chain (used {used} times, mined: {mined})"
                    ));
                }
            }
        }
    }
    violations
}

/// Every signer's mined transactions use nonces 0..n exactly once, and none reverted (a
/// reverted `transferWithAuthorization` is a second broadcast of a used authorization).
pub fn signer_nonces(chain: &MemoryChain, signers: &[Address]) -> Vec<String> {
    let mut violations = Vec::new();
    for signer in signers {
        let sent = chain.sent_by(*signer);
        for (expected, (nonce, hash, ok)) in sent.iter().enumerate() {
            if *nonce != expected as u64 {
                violations.push(format!(
                    "signer {signer}: mined nonces {:?} are not 0..{}",
                    sent.iter().map(|s| s.0).collect::<Vec<_>>(),
                    sent.len()
                ));
                break;
            }
            if !ok {
                violations.push(format!(
                    "signer {signer}: transaction {hash} (nonce {nonce}) reverted"
                ));
            }
        }
    }
    if chain.pending_count() != 0 {
        violations.push(format!(
            "{} transactions are still pending after the run",
            chain.pending_count()
        ));
    }
    violations
}

/// No window of `window_ms` − `clock_spread_ms` (simulated time) holds more than `limit`
/// requests of `step` that were certainly admitted and whose call and return both lie in it.
/// (Windows are counted in the leader-stamped time of the log; shrinking them by the largest
/// clock spread the schedule can cause keeps the check sound.)
pub fn rate_limit_windows(
    log: &PayLog,
    step: fn(Step) -> bool,
    limit: u32,
    window_ms: u64,
    clock_spread_ms: u64,
    include: impl Fn(&PayAttempt) -> bool,
) -> Vec<String> {
    let window = window_ms.saturating_sub(clock_spread_ms);
    if window == 0 {
        return Vec::new();
    }
    let mut admitted: Vec<(u64, u64)> = log
        .attempts
        .iter()
        .filter(|a| step(a.step) && a.answer.admitted() && include(a))
        .map(|a| (a.call_ms, a.return_ms))
        .collect();
    admitted.sort();
    let mut worst = (0usize, 0u64);
    for (i, &(start, _)) in admitted.iter().enumerate() {
        let end = start + window;
        let count = admitted[i..]
            .iter()
            .take_while(|(call, _)| *call < end)
            .filter(|(_, ret)| *ret < end)
            .count();
        if count > worst.0 {
            worst = (count, start);
        }
    }
    if worst.0 > limit as usize {
        vec![format!(
            "{} requests admitted in the {window} ms from {} ms; the limit is {limit} per {window_ms} ms",
            worst.0, worst.1
        )]
    } else {
        Vec::new()
    }
}

/// What the status poller saw of one node at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    pub node: u64,
    pub applied: Option<u64>,
    pub state_hash: String,
    pub breaker_epoch: u64,
}

/// No node's breaker epoch goes back between two samples with no restart of that node between
/// them (`restarts`: node → restart times).
pub fn breaker_epochs(samples: &[Sample], restarts: &BTreeMap<u64, Vec<u64>>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut last: BTreeMap<u64, &Sample> = BTreeMap::new();
    for s in samples {
        if let Some(prev) = last.get(&s.node) {
            let restarted = restarts
                .get(&s.node)
                .is_some_and(|r| r.iter().any(|t| *t > prev.at_ms && *t <= s.at_ms));
            if !restarted && s.breaker_epoch < prev.breaker_epoch {
                violations.push(format!(
                    "node-{}: breaker epoch went from {} at {} ms back to {} at {} ms",
                    s.node, prev.breaker_epoch, prev.at_ms, s.breaker_epoch, s.at_ms
                ));
            }
        }
        last.insert(s.node, s);
    }
    violations
}

/// Nodes that reported the same applied index reported the same state hash.
pub fn hashes_by_applied_index(samples: &[Sample]) -> Vec<String> {
    let mut seen: BTreeMap<u64, &Sample> = BTreeMap::new();
    let mut violations = Vec::new();
    for s in samples {
        let Some(applied) = s.applied else { continue };
        match seen.get(&applied) {
            Some(first) if first.state_hash != s.state_hash => violations.push(format!(
                "applied index {applied}: node-{} had state {} at {} ms, node-{} had {} at {} ms",
                first.node, first.state_hash, first.at_ms, s.node, s.state_hash, s.at_ms
            )),
            Some(_) => {}
            None => {
                seen.insert(applied, s);
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        id: u64,
        call: u64,
        ret: Option<u64>,
        input: Step,
        out: Option<PayOutput>,
    ) -> Operation<Step, PayOutput> {
        Operation {
            id,
            call_ms: call,
            return_ms: ret,
            input,
            output: out,
        }
    }

    const MAIN: Step = Step::Verify(Requirements::Main);
    const OTHER: Step = Step::Verify(Requirements::Other);
    const SETTLE: Step = Step::Settle { keyed: false };
    const KEYED: Step = Step::Settle { keyed: true };

    fn settled(tx: &str) -> Option<PayOutput> {
        Some(PayOutput::Settled(tx.into()))
    }

    #[test]
    fn the_payment_object_accepts_what_the_cluster_promises() {
        let history = vec![
            op(1, 0, Some(10), MAIN, Some(PayOutput::Valid)),
            op(2, 20, Some(30), OTHER, Some(PayOutput::Refused)),
            op(3, 40, Some(50), SETTLE, settled("0xa")),
            op(4, 45, None, SETTLE, None),
            // Settled once: every other settle is refused (with the hash).
            op(5, 60, Some(70), SETTLE, Some(PayOutput::Refused)),
            op(6, 80, Some(90), MAIN, Some(PayOutput::Refused)),
        ];
        assert_eq!(
            check(PaymentObject::default(), &history, 10_000),
            Verdict::Linearizable
        );
        // A keyed settle's success is replayed to the same key; others are refused.
        let keyed = vec![
            op(1, 0, None, SETTLE, None),
            op(2, 10, Some(20), KEYED, settled("0xa")),
            op(3, 30, Some(40), KEYED, settled("0xa")),
            op(4, 50, Some(60), SETTLE, Some(PayOutput::Refused)),
        ];
        assert_eq!(
            check(PaymentObject::default(), &keyed, 10_000),
            Verdict::Linearizable
        );
        // A lost settle took the success: the retry (without a key) is refused.
        let lost = vec![
            op(1, 0, None, SETTLE, None),
            op(2, 100, Some(110), SETTLE, Some(PayOutput::Refused)),
        ];
        assert_eq!(
            check(PaymentObject::default(), &lost, 10_000),
            Verdict::Linearizable
        );
    }

    #[test]
    fn the_payment_object_refuses_double_claims_two_transactions_and_two_successes() {
        let both_valid = vec![
            op(1, 0, Some(10), MAIN, Some(PayOutput::Valid)),
            op(2, 20, Some(30), OTHER, Some(PayOutput::Valid)),
        ];
        assert_ne!(
            check(PaymentObject::default(), &both_valid, 10_000),
            Verdict::Linearizable
        );
        let two_txs = vec![
            op(1, 0, Some(10), KEYED, settled("0xa")),
            op(2, 5, Some(30), KEYED, settled("0xb")),
        ];
        assert_ne!(
            check(PaymentObject::default(), &two_txs, 10_000),
            Verdict::Linearizable
        );
        // One payment, two resources: two successes of one transaction.
        for (first, second) in [(SETTLE, SETTLE), (SETTLE, KEYED), (KEYED, SETTLE)] {
            let twice = vec![
                op(1, 0, Some(10), first, settled("0xa")),
                op(2, 5, Some(30), second, settled("0xa")),
            ];
            assert_ne!(
                check(PaymentObject::default(), &twice, 10_000),
                Verdict::Linearizable,
                "{first:?} then {second:?}"
            );
        }
        // Refused before anyone could have settled it.
        let early = vec![op(1, 0, Some(10), SETTLE, Some(PayOutput::Refused))];
        assert_ne!(
            check(PaymentObject::default(), &early, 10_000),
            Verdict::Linearizable
        );
        // A follower answering from stale state: refused before anyone claimed it.
        let stale = vec![
            op(1, 0, Some(10), OTHER, Some(PayOutput::Refused)),
            op(2, 20, Some(30), MAIN, Some(PayOutput::Valid)),
        ];
        assert_ne!(
            check(PaymentObject::default(), &stale, 10_000),
            Verdict::Linearizable
        );
    }

    #[test]
    fn two_successes_outside_one_keyed_answer_are_reported() {
        let attempt = |step, node| PayAttempt {
            key: 7,
            step,
            node,
            call_ms: node * 10,
            return_ms: node * 10 + 5,
            answer: PayAnswer::Settled("0xa".into()),
        };
        let log = |steps: &[Step]| PayLog {
            attempts: steps
                .iter()
                .enumerate()
                .map(|(i, s)| attempt(*s, i as u64 + 1))
                .collect(),
            ..PayLog::default()
        };
        assert!(one_success_per_payment(&log(&[SETTLE])).is_empty());
        assert!(one_success_per_payment(&log(&[KEYED, KEYED, KEYED])).is_empty());
        assert_eq!(one_success_per_payment(&log(&[SETTLE, SETTLE])).len(), 1);
        assert_eq!(one_success_per_payment(&log(&[KEYED, SETTLE])).len(), 1);
    }

    #[test]
    fn a_window_holding_more_than_the_limit_is_reported() {
        let mut log = PayLog::default();
        for i in 0..5u64 {
            log.attempts.push(crate::payments::PayAttempt {
                key: i,
                step: MAIN,
                node: 1,
                call_ms: i * 100,
                return_ms: i * 100 + 10,
                answer: PayAnswer::Valid,
            });
        }
        let verify = |s: Step| matches!(s, Step::Verify(_));
        assert!(rate_limit_windows(&log, verify, 5, 1_000, 0, |_: &PayAttempt| true).is_empty());
        assert_eq!(
            rate_limit_windows(&log, verify, 4, 1_000, 0, |_: &PayAttempt| true).len(),
            1
        );
        // Spread over more than the shrunken window: fine.
        assert!(rate_limit_windows(&log, verify, 4, 1_000, 600, |_: &PayAttempt| true).is_empty());
    }
}
