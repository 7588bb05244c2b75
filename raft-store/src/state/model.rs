//! A plain reference model of the whole state machine, for property tests: maps keyed by the
//! readable key, counters recomputed by scanning, expiry by sorting everything due. Nothing in it
//! is incremental or indexed, so a disagreement with [`ClusterState`] points at the clever code.

use std::collections::BTreeMap;

use super::settlements::{
    Rejection, MAX_CALL_BYTES, MAX_MESSAGE_BYTES, MAX_RAW_TX_BYTES, MAX_REASON_BYTES,
    MAX_REPLACEMENTS, MAX_SIGNERS, MAX_SIGNERS_PER_START,
};
use super::*;

#[derive(Default)]
pub(super) struct Model {
    pub(super) now_ms: u64,
    /// key → (fingerprint, validBefore)
    pub(super) claims: BTreeMap<NonceKey, ([u8; 32], u64)>,
    pub(super) settlements: BTreeMap<NonceKey, SettlementRecord>,
    /// (chain, signer) → next nonce
    pub(super) next_nonce: BTreeMap<(u64, [u8; 20]), u64>,
}

fn rejected(r: Rejection) -> Response {
    Response::Settlement(SettlementAnswer::Rejected(r))
}

fn answer(a: SettlementAnswer) -> Response {
    Response::Settlement(a)
}

fn expired(valid_before: u64, now_ms: u64) -> bool {
    valid_before.saturating_mul(1000) <= now_ms
}

fn retention_end(valid_before: u64) -> u64 {
    valid_before
        .saturating_mul(1000)
        .saturating_add(nonces::RETENTION_MARGIN_MS)
}

impl Model {
    pub(super) fn apply(&mut self, cmd: &Command) -> Vec<Response> {
        self.now_ms = self.now_ms.max(cmd.at_ms);
        cmd.ops.iter().map(|op| self.apply_op(op)).collect()
    }

    /// Unfinished settlements holding a nonce of `(chain, signer)`.
    pub(super) fn in_flight(&self, chain_id: u64, signer: [u8; 20]) -> u32 {
        self.settlements
            .values()
            .filter(|r| {
                r.key.chain_id == chain_id
                    && r.phase.is_unfinished()
                    && r.phase.signer_nonce().0 == signer
            })
            .count() as u32
    }

    fn apply_op(&mut self, op: &Op) -> Response {
        let now = self.now_ms;
        match op {
            Op::ClaimNonce(c) => Response::Claim(match self.claims.get(&c.key) {
                Some((fp, _)) if *fp == c.fingerprint => ClaimOutcome::Accepted,
                Some(_) => ClaimOutcome::Replay,
                None if expired(c.valid_before, now) => ClaimOutcome::Expired,
                None => {
                    self.claims.insert(c.key, (c.fingerprint, c.valid_before));
                    ClaimOutcome::Accepted
                }
            }),
            Op::ExpireClaims { limit } => {
                let limit = (*limit).min(MAX_EXPIRED_PER_COMMAND) as usize;
                // (retention end, 0 = claim / 1 = settlement, id, key): oldest first, claims
                // before settlements due at the same time, then by id.
                let mut due: Vec<(u64, u8, ClaimId, NonceKey)> = self
                    .claims
                    .iter()
                    .map(|(k, (_, vb))| (retention_end(*vb), 0, k.digest(), *k))
                    .chain(
                        self.settlements
                            .iter()
                            .filter(|(_, r)| !r.phase.is_unfinished())
                            .map(|(k, r)| (retention_end(r.valid_before), 1, k.digest(), *k)),
                    )
                    .filter(|(end, ..)| *end <= now)
                    .collect();
                due.sort();
                due.truncate(limit);
                for (_, kind, _, k) in &due {
                    if *kind == 0 {
                        self.claims.remove(k);
                    } else {
                        self.settlements.remove(k);
                    }
                }
                Response::Expired {
                    removed: due.len() as u32,
                }
            }
            Op::SyncSigner {
                chain_id,
                signer,
                chain_nonce,
            } => {
                let idle = self.in_flight(*chain_id, *signer) == 0;
                let known = self.next_nonce.len();
                match self.next_nonce.get_mut(&(*chain_id, *signer)) {
                    Some(next) => {
                        if idle && *chain_nonce > *next {
                            *next = *chain_nonce;
                        }
                        Response::SignerSynced { next_nonce: *next }
                    }
                    None if known >= MAX_SIGNERS => rejected(Rejection::TooManySigners),
                    None => {
                        self.next_nonce.insert((*chain_id, *signer), *chain_nonce);
                        Response::SignerSynced {
                            next_nonce: *chain_nonce,
                        }
                    }
                }
            }
            Op::BeginSettlement(start) => self.begin(start),
            Op::RecordSigned(signed) => self.record_signed(signed),
            Op::FinishSettlement(finish) => self.finish(finish),
            Op::TakeSuccess { id, taker } => match self.find(id) {
                None => rejected(Rejection::UnknownSettlement),
                Some(r) => {
                    let settled = matches!(
                        r.phase,
                        SettlementPhase::Done {
                            outcome: SettlementOutcome::Settled { .. },
                            ..
                        }
                    );
                    if settled && r.success_taker.is_none() {
                        r.success_taker = Some(*taker);
                        r.updated_at_ms = now;
                    }
                    answer(SettlementAnswer::Current(Box::new(r.clone())))
                }
            },
            Op::ReplaceSettlement(replace) => self.replace(replace),
            // The rate limits, breakers and idempotency records have tests of their own.
            other => panic!("the test model does not cover {other:?}"),
        }
    }

    fn begin(&mut self, start: &SettlementStart) -> Response {
        let now = self.now_ms;
        let c = &start.claim;
        if start.signers.len() > MAX_SIGNERS_PER_START {
            return rejected(Rejection::TooManySignersOffered {
                count: start.signers.len(),
            });
        }
        if start.call.len() > MAX_CALL_BYTES {
            return rejected(Rejection::CallTooLong {
                len: start.call.len(),
            });
        }
        if let Some(r) = self.settlements.get(&c.key) {
            return answer(if r.fingerprint == c.fingerprint {
                SettlementAnswer::Current(Box::new(r.clone()))
            } else {
                SettlementAnswer::Replay
            });
        }
        let chain = c.key.chain_id;
        let mut candidates: Vec<(u32, [u8; 20])> = start
            .signers
            .iter()
            .filter(|a| {
                self.next_nonce
                    .get(&(chain, **a))
                    .is_some_and(|n| *n < u64::MAX)
            })
            .map(|a| (self.in_flight(chain, *a), *a))
            .collect();
        candidates.sort();
        let Some(&(_, signer)) = candidates.first() else {
            return answer(SettlementAnswer::NoSigner);
        };
        match self.claims.get(&c.key) {
            Some((fp, _)) if *fp != c.fingerprint => return answer(SettlementAnswer::Replay),
            _ if expired(c.valid_before, now) => return answer(SettlementAnswer::Expired),
            Some(_) => {}
            None => {
                self.claims.insert(c.key, (c.fingerprint, c.valid_before));
            }
        }
        let next = self.next_nonce.get_mut(&(chain, signer)).unwrap();
        let nonce = *next;
        *next += 1;
        self.settlements.insert(
            c.key,
            SettlementRecord {
                key: c.key,
                fingerprint: c.fingerprint,
                valid_before: c.valid_before,
                owner: start.owner,
                updated_at_ms: now,
                phase: SettlementPhase::Allocated {
                    signer,
                    nonce,
                    call: start.call.clone(),
                },
                success_taker: None,
                replaced: Vec::new(),
            },
        );
        answer(SettlementAnswer::Allocated { signer, nonce })
    }

    fn find(&mut self, id: &ClaimId) -> Option<&mut SettlementRecord> {
        self.settlements
            .values_mut()
            .find(|r| r.key.digest() == *id)
    }

    fn record_signed(&mut self, s: &SignedSettlement) -> Response {
        let now = self.now_ms;
        if s.raw_tx.len() > MAX_RAW_TX_BYTES {
            return rejected(Rejection::RawTxTooLong {
                len: s.raw_tx.len(),
            });
        }
        if s.raw_tx.is_empty() {
            return rejected(Rejection::EmptyRawTx);
        }
        let Some(r) = self.find(&s.id) else {
            return rejected(Rejection::UnknownSettlement);
        };
        match r.phase.clone() {
            SettlementPhase::Allocated { signer, nonce, .. } => {
                if signer != s.signer || nonce != s.nonce {
                    return rejected(Rejection::OtherAllocation { signer, nonce });
                }
                r.phase = SettlementPhase::Signed {
                    signer,
                    nonce,
                    tx_hash: s.tx_hash,
                    raw_tx: s.raw_tx.clone(),
                };
                r.updated_at_ms = now;
                answer(SettlementAnswer::Current(Box::new(r.clone())))
            }
            _ => answer(SettlementAnswer::Current(Box::new(r.clone()))),
        }
    }

    fn finish(&mut self, f: &SettlementFinish) -> Response {
        let now = self.now_ms;
        if let SettlementOutcome::Failed {
            reason, message, ..
        } = &f.outcome
        {
            if reason.len() > MAX_REASON_BYTES {
                return rejected(Rejection::ReasonTooLong { len: reason.len() });
            }
            if let Some(m) = message {
                if m.len() > MAX_MESSAGE_BYTES {
                    return rejected(Rejection::MessageTooLong { len: m.len() });
                }
            }
        }
        let Some(r) = self.find(&f.id) else {
            return rejected(Rejection::UnknownSettlement);
        };
        match r.phase.clone() {
            SettlementPhase::Done { outcome, .. } => {
                if matches!(outcome, SettlementOutcome::Settled { .. }) && r.success_taker.is_none()
                {
                    if let Some(taker) = f.taker {
                        r.success_taker = Some(taker);
                        r.updated_at_ms = now;
                    }
                }
                answer(SettlementAnswer::Current(Box::new(r.clone())))
            }
            SettlementPhase::Allocated { .. } => rejected(Rejection::NotSigned),
            SettlementPhase::Signed { tx_hash, .. } if tx_hash != f.tx_hash => {
                rejected(Rejection::OtherTransaction { signed: tx_hash })
            }
            SettlementPhase::Signed { signer, nonce, .. } => {
                if matches!(f.outcome.tx_hash(), Some(h) if h != f.tx_hash && !r.replaced.contains(&h))
                {
                    return rejected(Rejection::OutcomeOfOtherTransaction);
                }
                r.phase = SettlementPhase::Done {
                    signer,
                    nonce,
                    outcome: f.outcome.clone(),
                };
                if matches!(f.outcome, SettlementOutcome::Settled { .. }) {
                    r.success_taker = f.taker;
                }
                r.updated_at_ms = now;
                answer(SettlementAnswer::Current(Box::new(r.clone())))
            }
        }
    }

    fn replace(&mut self, x: &SettlementReplace) -> Response {
        let now = self.now_ms;
        if x.call.len() > MAX_CALL_BYTES {
            return rejected(Rejection::CallTooLong { len: x.call.len() });
        }
        let Some(r) = self.find(&x.id) else {
            return rejected(Rejection::UnknownSettlement);
        };
        let (signer, nonce) = match &r.phase {
            SettlementPhase::Signed {
                signer,
                nonce,
                tx_hash,
                ..
            } if *tx_hash == x.tx_hash => (*signer, *nonce),
            _ => return answer(SettlementAnswer::Current(Box::new(r.clone()))),
        };
        if x.chain_nonce <= nonce {
            return rejected(Rejection::NonceNotConsumed {
                nonce,
                chain_nonce: x.chain_nonce,
            });
        }
        if r.replaced.len() >= MAX_REPLACEMENTS {
            return rejected(Rejection::TooManyReplacements);
        }
        let chain = r.key.chain_id;
        let key = r.key;
        let next = self.next_nonce.get(&(chain, signer)).copied().unwrap();
        let fresh = next.max(x.chain_nonce);
        if fresh == u64::MAX {
            return rejected(Rejection::SignerExhausted);
        }
        self.next_nonce.insert((chain, signer), fresh + 1);
        let r = self.settlements.get_mut(&key).unwrap();
        r.phase = SettlementPhase::Allocated {
            signer,
            nonce: fresh,
            call: x.call.clone(),
        };
        r.replaced.push(x.tx_hash);
        r.updated_at_ms = now;
        answer(SettlementAnswer::Allocated {
            signer,
            nonce: fresh,
        })
    }
}
