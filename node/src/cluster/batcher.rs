//! Group commit: many concurrent writes ride in one Raft entry.
//!
//! openraft 0.9 appends and fsyncs each `client_write` on the leader on its own, so one entry per
//! request caps the cluster at one fsync per write (a few hundred writes a second). Every write
//! therefore goes through a batcher: it queues operations and, whenever one of its
//! `max_entries_in_flight` slots is free, takes everything queued (up to `max_ops_per_entry`).
//! On the leader that batch becomes one entry. On a follower it is forwarded to the leader in one
//! call, where it joins the leader's own queue: the whole cluster's writes merge into a few
//! large entries. The busier the cluster, the bigger the batches; an idle one adds no delay.
//!
//! Operations a follower forwarded are *leader-only*: if this node is no longer the leader they
//! are answered `NotLeader` (the follower retries), never forwarded a second time. A local write
//! that meets no leader waits for an election and is retried until its deadline.
//!
//! The queue is bounded: when it is full a write is refused at once as overloaded.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use x402_raft_store::Op;

use super::proposer::{
    Committed, ForwardFailure, LeaderWrite, OpAnswer, ProposeError, Proposer, Refusal,
};

/// Limits of the batcher.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Operations waiting for a slot, at most.
    pub max_queued_ops: usize,
    /// Operations in one Raft entry (or one forward), at most.
    pub max_ops_per_entry: usize,
    /// Batches this node has proposed or forwarded and not yet seen answered, at most.
    pub max_entries_in_flight: usize,
}

struct Queued {
    op: Op,
    deadline: Instant,
    /// Forwarded to us by a follower: never forward again.
    leader_only: bool,
    /// Sent to some leader at least once: if it now fails, the outcome is unknown.
    sent: bool,
    reply: oneshot::Sender<OpAnswer>,
}

/// Submits operations for group commit. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Queued>,
    proposer: Proposer,
}

impl Batcher {
    /// Starts the batching task on the current runtime.
    pub fn start(proposer: Proposer, limits: BatchLimits) -> Self {
        assert!(limits.max_queued_ops > 0 && limits.max_ops_per_entry > 0);
        assert!(limits.max_entries_in_flight > 0);
        let (queue, rx) = mpsc::channel(limits.max_queued_ops);
        let batcher = Self { queue, proposer };
        tokio::spawn(run(rx, batcher.clone(), limits));
        batcher
    }

    /// Commits `op`, through the leader wherever it is, and returns its own response.
    pub async fn propose(&self, op: Op) -> Result<Committed, ProposeError> {
        match self.submit(op, false).await {
            OpAnswer::Committed {
                log_index,
                response,
            } => Ok(Committed {
                log_index,
                response,
            }),
            OpAnswer::NotLeader => Err(ProposeError::NoLeader),
            OpAnswer::Refused(reason) => Err(ProposeError::Refused(reason)),
            OpAnswer::Overloaded => Err(ProposeError::Overloaded),
            OpAnswer::Unknown => Err(ProposeError::Unknown),
        }
    }

    /// Commits operations a follower forwarded, on this node only; one answer per operation.
    pub async fn propose_forwarded(&self, ops: Vec<Op>) -> Vec<OpAnswer> {
        let pending: Vec<_> = ops.into_iter().map(|op| self.enqueue(op, true)).collect();
        let mut answers = Vec::with_capacity(pending.len());
        for answer in pending {
            answers.push(match answer {
                Ok(rx) => rx.await.unwrap_or(OpAnswer::Unknown),
                Err(refusal) => refusal,
            });
        }
        answers
    }

    async fn submit(&self, op: Op, leader_only: bool) -> OpAnswer {
        match self.enqueue(op, leader_only) {
            // The batcher only drops a reply if its task died mid-proposal.
            Ok(rx) => rx.await.unwrap_or(OpAnswer::Unknown),
            Err(refusal) => refusal,
        }
    }

    fn enqueue(&self, op: Op, leader_only: bool) -> Result<oneshot::Receiver<OpAnswer>, OpAnswer> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            op,
            deadline: Instant::now() + self.proposer.timeout(),
            leader_only,
            sent: false,
            reply,
        };
        self.queue.try_send(queued).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => OpAnswer::Overloaded,
            mpsc::error::TrySendError::Closed(_) => OpAnswer::Refused(Refusal::ShuttingDown),
        })?;
        Ok(answer)
    }
}

async fn run(mut queue: mpsc::Receiver<Queued>, batcher: Batcher, limits: BatchLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_entries_in_flight));
    loop {
        // Take the slot first: while all slots are busy, the queue fills and the next batch grows.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(limits.max_ops_per_entry.min(1024));
        batch.push(first);
        while batch.len() < limits.max_ops_per_entry {
            match queue.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let batcher = batcher.clone();
        tokio::spawn(async move {
            batcher.commit(batch).await;
            drop(slot);
        });
    }
}

impl Batcher {
    /// Commits one batch: here if this node leads, otherwise through the leader.
    async fn commit(&self, batch: Vec<Queued>) {
        let now = Instant::now();
        let (live, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|q| q.deadline > now);
        for q in expired {
            let answer = if q.sent {
                OpAnswer::Unknown
            } else {
                OpAnswer::NotLeader
            };
            let _ = q.reply.send(answer);
        }
        if live.is_empty() {
            return;
        }
        let deadline = live.iter().map(|q| q.deadline).min().unwrap_or(now);
        let (leader, leader_url) = self.proposer.leader();
        if leader == Some(self.proposer.id()) {
            self.commit_here(live, deadline).await;
            return;
        }
        // Not the leader: forwarded operations go back to their follower.
        let (mine, bounced): (Vec<_>, Vec<_>) = live.into_iter().partition(|q| !q.leader_only);
        for q in bounced {
            let _ = q.reply.send(OpAnswer::NotLeader);
        }
        if mine.is_empty() {
            return;
        }
        let Some(url) = leader_url else {
            self.retry_later(mine, leader);
            return;
        };
        let mut mine = mine;
        for q in &mut mine {
            q.sent = true;
        }
        let ops = mine.iter().map(|q| q.op.clone()).collect();
        let leader_id = leader.unwrap_or_default();
        match self.proposer.forward(leader_id, &url, ops, deadline).await {
            Ok(answers) => {
                let mut again = Vec::new();
                for (q, answer) in mine.into_iter().zip(answers) {
                    match answer {
                        OpAnswer::NotLeader => again.push(q),
                        other => {
                            let _ = q.reply.send(other);
                        }
                    }
                }
                self.retry_later(again, leader);
            }
            Err(ForwardFailure::NotDelivered) => {
                for q in &mut mine {
                    // This attempt certainly did not reach a leader; an earlier one may have.
                    q.sent = false;
                }
                self.retry_later(mine, leader);
            }
            // Maybe committed, maybe not: send again (idempotent by content) until the deadline;
            // `sent` stays set, so running out of time answers `Unknown`.
            Err(ForwardFailure::Lost) => self.retry_later(mine, leader),
        }
    }

    async fn commit_here(&self, batch: Vec<Queued>, deadline: Instant) {
        let ops = batch.iter().map(|q| q.op.clone()).collect();
        match self.proposer.propose_as_leader(ops, deadline).await {
            LeaderWrite::Committed {
                log_index,
                responses,
            } => {
                debug_assert_eq!(responses.len(), batch.len(), "one response per operation");
                if responses.len() != batch.len() {
                    tracing::error!("state machine answered a batch with the wrong count");
                    return answer_all(batch, OpAnswer::Unknown);
                }
                for (q, response) in batch.into_iter().zip(responses) {
                    let _ = q.reply.send(OpAnswer::Committed {
                        log_index,
                        response,
                    });
                }
            }
            LeaderWrite::NotLeader => {
                // Leadership moved before the entry was appended: nothing was written.
                let (bounced, mine): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|q| q.leader_only);
                answer_all(bounced, OpAnswer::NotLeader);
                self.retry_later(mine, Some(self.proposer.id()));
            }
            LeaderWrite::Refused(reason) => answer_all(batch, OpAnswer::Refused(reason)),
            LeaderWrite::TimedOut => answer_all(batch, OpAnswer::Unknown),
        }
    }

    /// Puts operations back in the queue once a new leader is known (or a poll interval passed).
    fn retry_later(&self, ops: Vec<Queued>, previous_leader: Option<u64>) {
        if ops.is_empty() {
            return;
        }
        let batcher = self.clone();
        tokio::spawn(async move {
            batcher
                .proposer
                .wait_for_leader_change(previous_leader)
                .await;
            let now = Instant::now();
            for q in ops {
                if q.deadline <= now {
                    let answer = if q.sent {
                        OpAnswer::Unknown
                    } else {
                        OpAnswer::NotLeader
                    };
                    let _ = q.reply.send(answer);
                } else if let Err(e) = batcher.queue.send(q).await {
                    let _ = e.0.reply.send(OpAnswer::Refused(Refusal::ShuttingDown));
                }
            }
        });
    }
}

fn answer_all(batch: Vec<Queued>, answer: OpAnswer) {
    for q in batch {
        let _ = q.reply.send(answer.clone());
    }
}
