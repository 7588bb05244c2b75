//! A linearizability checker for one object's history: Wing & Gong's search with Lowe's
//! memoization (the algorithm of Porcupine and Knossos's "wgl"). It looks for one order of the
//! operations that respects real time (an operation that returned before another was called
//! comes first) and that the sequential [`Model`] accepts answer by answer.
//!
//! Operations whose answer never arrived are pending: they may have taken effect at any moment
//! after their call, with any result the model allows, or not at all. The search is bounded; an
//! undecided check is reported as such, and callers count it as a failure.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification of one object.
pub trait Model: Clone + Eq + Hash + std::fmt::Debug {
    type Input: Clone + std::fmt::Debug;
    type Output: Clone + std::fmt::Debug;
    /// The state after `input` answered `output`, or `None` if this state cannot answer that.
    fn step(&self, input: &Self::Input, output: &Self::Output) -> Option<Self>;
    /// Every state `input` may leave behind when its answer was never seen.
    fn step_unobserved(&self, input: &Self::Input) -> Vec<Self>;
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// Caller-chosen id, reported back in verdicts.
    pub id: u64,
    pub call_ms: u64,
    /// `None`: the answer never arrived (then `output` is `None` too).
    pub return_ms: Option<u64>,
    pub input: I,
    pub output: Option<O>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists; the ids of the longest order the search found.
    NotLinearizable {
        longest_prefix: Vec<u64>,
    },
    /// The search ran out of budget: a failure for the caller.
    Undecided {
        explored: u64,
    },
}

/// Checks one object's history within `budget` search steps.
pub fn check<M: Model>(
    initial: M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict {
    for op in history {
        assert_eq!(
            op.return_ms.is_none(),
            op.output.is_none(),
            "operation {} has an output iff it returned",
            op.id
        );
        assert!(
            op.return_ms.is_none_or(|r| r >= op.call_ms),
            "operation {} returned before it was called",
            op.id
        );
    }
    let n = history.len();
    let ret = |i: usize| history[i].return_ms.unwrap_or(u64::MAX);
    let completed: Vec<usize> = (0..n).filter(|&i| history[i].return_ms.is_some()).collect();
    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;
    // One frame per linearized operation: the candidates for the next one, and which is next.
    struct Frame<M> {
        choices: Vec<(usize, M)>,
        next: usize,
    }
    let mut cache: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut order: Vec<usize> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut explored = 0u64;

    let candidates = |state: &M, d: &[u64]| -> Vec<(usize, M)> {
        // The earliest return among operations not yet linearized bounds who may go next.
        let horizon = (0..n)
            .filter(|&i| !is_done(d, i))
            .map(ret)
            .min()
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (i, op) in history.iter().enumerate() {
            if is_done(d, i) || op.call_ms > horizon {
                continue;
            }
            match &op.output {
                Some(output) => {
                    if let Some(next) = state.step(&op.input, output) {
                        out.push((i, next));
                    }
                }
                None => {
                    for next in state.step_unobserved(&op.input) {
                        out.push((i, next));
                    }
                }
            }
        }
        out
    };

    let all_completed_done = |d: &[u64]| completed.iter().all(|&i| is_done(d, i));
    if all_completed_done(&done) {
        return Verdict::Linearizable;
    }
    let first = Frame {
        choices: candidates(&initial, &done),
        next: 0,
    };
    let mut stack = vec![first];
    while let Some(frame) = stack.last_mut() {
        if frame.next >= frame.choices.len() {
            stack.pop();
            if let Some(i) = order.pop() {
                done[i / 64] &= !(1 << (i % 64));
            }
            continue;
        }
        let (i, next_state) = frame.choices[frame.next].clone();
        frame.next += 1;
        explored += 1;
        if explored > budget {
            return Verdict::Undecided { explored };
        }
        done[i / 64] |= 1 << (i % 64);
        if !cache.insert((done.clone(), next_state.clone())) {
            done[i / 64] &= !(1 << (i % 64));
            continue;
        }
        order.push(i);
        if order.len() > longest.len() {
            longest = order.clone();
        }
        if all_completed_done(&done) {
            return Verdict::Linearizable;
        }
        let choices = candidates(&next_state, &done);
        stack.push(Frame { choices, next: 0 });
    }
    Verdict::NotLinearizable {
        longest_prefix: longest.iter().map(|&i| history[i].id).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: `Some(v)` writes v (answer: none), `None` reads (answer: the value).
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Register(u8);

    impl Model for Register {
        type Input = Option<u8>;
        type Output = Option<u8>;
        fn step(&self, input: &Option<u8>, output: &Option<u8>) -> Option<Self> {
            match (input, output) {
                (Some(v), None) => Some(Register(*v)),
                (None, Some(v)) if *v == self.0 => Some(self.clone()),
                _ => None,
            }
        }
        fn step_unobserved(&self, input: &Option<u8>) -> Vec<Self> {
            match input {
                Some(v) => vec![Register(*v)],
                None => vec![self.clone()],
            }
        }
    }

    fn op(
        id: u64,
        call: u64,
        ret: Option<u64>,
        input: Option<u8>,
        out: Option<u8>,
    ) -> Operation<Option<u8>, Option<u8>> {
        // A completed write answers `Some(None)`; a pending one has no output at all.
        Operation {
            id,
            call_ms: call,
            return_ms: ret,
            input,
            output: ret.map(|_| out),
        }
    }

    #[test]
    fn sequential_and_overlapping_histories() {
        let ok = [
            op(1, 0, Some(10), Some(1), None),
            op(2, 20, Some(30), None, Some(1)),
        ];
        assert_eq!(check(Register(0), &ok, 1_000), Verdict::Linearizable);
        // A read overlapping a write may see either value.
        let overlap = [
            op(1, 0, Some(10), Some(1), None),
            op(2, 5, Some(30), Some(2), None),
            op(3, 6, Some(8), None, Some(2)),
            op(4, 40, Some(50), None, Some(2)),
        ];
        assert_eq!(check(Register(0), &overlap, 1_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_two_writes_is_not_linearizable() {
        let stale = [
            op(1, 0, Some(10), Some(1), None),
            op(2, 20, Some(30), Some(2), None),
            op(3, 40, Some(50), None, Some(1)),
        ];
        assert!(matches!(
            check(Register(0), &stale, 1_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_pending_write_may_explain_a_read_or_be_left_out() {
        let explained = [
            op(1, 0, None, Some(2), None),
            op(2, 40, Some(50), None, Some(2)),
        ];
        assert_eq!(check(Register(0), &explained, 1_000), Verdict::Linearizable);
        let omitted = [
            op(1, 0, None, Some(2), None),
            op(2, 40, Some(50), None, Some(0)),
        ];
        assert_eq!(check(Register(0), &omitted, 1_000), Verdict::Linearizable);
        let unexplained = [op(2, 40, Some(50), None, Some(2))];
        assert!(matches!(
            check(Register(0), &unexplained, 1_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_search_over_budget_is_undecided() {
        // Forty concurrent writes and a read of a value none wrote: every order fails.
        let mut history: Vec<_> = (0..40)
            .map(|i| op(i, 0, Some(100), Some(i as u8 + 1), None))
            .collect();
        history.push(op(99, 0, Some(100), None, Some(200)));
        assert!(matches!(
            check(Register(0), &history, 100),
            Verdict::Undecided { .. }
        ));
    }
}
