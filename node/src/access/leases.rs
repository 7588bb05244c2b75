//! Leased quota slices: how requests that write nothing of their own are counted cluster-wide
//! without a consensus round each.
//!
//! For each counter it spends, a node holds at most one lease: `Op::TakeLease` asks the log for
//! a slice of the counter's quota (counted at once, as if spent at the lease's end), the node
//! spends it locally until the lease ends, then returns what is left (`Op::ReturnLease`, which
//! the state machine applies at most once). A node may under-use its slice; it can never spend
//! beyond it, so the cluster never admits more than the limit (I4).
//!
//! A lease's local end is measured from when the node *asked* for it, on its monotonic clock:
//! the leader stamps the lease later than that, so the node always stops spending before the
//! state machine's lease ends.

use std::collections::BTreeMap;

use rand::RngCore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use x402_raft_store::runtime::ThreadRng;

use tokio::time::Instant;
use x402_raft_store::state::rate_limits::SubjectId;
use x402_raft_store::state::rate_limits::{LeaseGrant, LeaseId, LeaseRequest, Quota, RateKey};

use super::rate_limit::{tighter, Limited};
use crate::cluster::proposer::ProposeError;
use crate::cluster::writer::Writer;
use crate::sync::lock;

/// Most counters one node holds leases for; beyond, a new counter is refused (fail closed: an
/// unbounded table would be the bigger risk) until the sweeper frees slots.
pub const MAX_LEASE_SLOTS: usize = 100_000;
/// Largest slice asked for at once.
pub const MAX_SLICE: u32 = 100_000;
/// A node asks for about this share of a limit per lease: small enough that several nodes can
/// hold slices at once, large enough that a busy counter needs few commands.
const SLICE_DIVISOR: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Limited(Limited),
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

struct Lease {
    id: LeaseId,
    remaining: u32,
    /// The node stops spending here (local monotonic time).
    ends: Instant,
    /// The cluster-wide quota when the lease was granted (its `remaining` excludes the slice).
    quota: Quota,
}

#[derive(Default)]
struct Slot {
    lease: Option<Lease>,
}

/// This node's leases, one slot per counter.
pub struct LeaseBook {
    node: u64,
    taken: prometheus::IntCounter,
    lease_ms: u64,
    /// Lease ids must never repeat, also across restarts (a repeated id would be answered with
    /// an old grant): a random start, then counting.
    next_seq: AtomicU64,
    slots: Mutex<BTreeMap<SubjectId, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl LeaseBook {
    pub fn new(node: u64, lease_ms: u64, taken: prometheus::IntCounter) -> Self {
        Self {
            node,
            taken,
            lease_ms,
            // Random, so ids never repeat across restarts; from Raft's thread generator, which a
            // simulation seeds (so a run's lease ids, and its state hash, follow its seed).
            next_seq: AtomicU64::new(ThreadRng.next_u64() >> 1),
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    fn slot(&self, subject: &SubjectId) -> Option<Arc<tokio::sync::Mutex<Slot>>> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(subject) {
            return Some(slot.clone());
        }
        if slots.len() >= MAX_LEASE_SLOTS {
            return None;
        }
        let slot = Arc::new(tokio::sync::Mutex::new(Slot::default()));
        slots.insert(*subject, slot.clone());
        Some(slot)
    }

    /// Spends one admission of every key, taking leases where needed. Returns the tightest
    /// quota, or the first refusal (admissions already spent on earlier keys stay spent:
    /// under-use, never overshoot).
    pub async fn spend(
        &self,
        writer: &Writer,
        keys: &[RateKey],
    ) -> Result<Option<Quota>, LeaseError> {
        let mut quota = None;
        for key in keys {
            let q = self.spend_one(writer, key).await?;
            quota = Some(tighter(quota, q));
        }
        Ok(quota)
    }

    async fn spend_one(&self, writer: &Writer, key: &RateKey) -> Result<Quota, LeaseError> {
        let Some(slot) = self.slot(&key.subject) else {
            return Err(LeaseError::Limited(Limited {
                quota: Quota {
                    limit: key.limit,
                    remaining: 0,
                    reset_after_ms: 1_000,
                },
                retry_after_ms: 1_000,
            }));
        };
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if let Some(lease) = slot.lease.as_mut() {
            if lease.remaining > 0 && now < lease.ends {
                lease.remaining -= 1;
                return Ok(Quota {
                    remaining: lease.quota.remaining.saturating_add(lease.remaining),
                    ..lease.quota
                });
            }
        }
        if let Some(old) = slot.lease.take() {
            self.give_back(writer, old);
        }
        let asked = Instant::now();
        let lease_ms = self.lease_ms.min(key.window_ms / 10).max(1);
        let id = LeaseId {
            node: self.node,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        let request = LeaseRequest {
            id,
            key: *key,
            want: (key.limit / SLICE_DIVISOR).clamp(1, MAX_SLICE),
            lease_ms,
        };
        self.taken.inc();
        let grant = writer.take_lease(request).await?;
        let LeaseGrant {
            granted,
            quota,
            retry_after_ms,
        } = grant;
        if granted == 0 {
            return Err(LeaseError::Limited(Limited {
                quota,
                retry_after_ms,
            }));
        }
        let lease = Lease {
            id,
            remaining: granted - 1,
            ends: asked + Duration::from_millis(lease_ms),
            quota,
        };
        let answer = Quota {
            remaining: quota.remaining.saturating_add(lease.remaining),
            ..quota
        };
        slot.lease = Some(lease);
        Ok(answer)
    }

    /// Returns a lease's unspent rest in the background (under-use if it is lost).
    fn give_back(&self, writer: &Writer, lease: Lease) {
        if lease.remaining == 0 {
            return;
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            if let Err(e) = writer.return_lease(lease.id, lease.remaining).await {
                tracing::debug!(error = %e, "could not return a lease's rest (it is under-used)");
            }
        });
    }

    /// Returns the rest of every ended lease and forgets idle counters: run periodically.
    pub async fn sweep(&self, writer: &Writer) {
        let slots: Vec<(SubjectId, Arc<tokio::sync::Mutex<Slot>>)> = {
            let slots = lock(&self.slots);
            slots.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let now = Instant::now();
        let mut idle = Vec::new();
        for (subject, slot) in slots {
            // A slot busy taking a lease is not idle.
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let ended = slot.lease.as_ref().is_none_or(|l| now >= l.ends);
            if ended {
                if let Some(lease) = slot.lease.take() {
                    self.give_back(writer, lease);
                }
                idle.push(subject);
            }
        }
        let mut slots = lock(&self.slots);
        for subject in idle {
            // Only if nobody picked it up since (then it holds a lease or is locked).
            let unused = slots
                .get(&subject)
                .is_some_and(|s| s.try_lock().is_ok_and(|s| s.lease.is_none()));
            if unused {
                slots.remove(&subject);
            }
        }
    }
}

/// Sweeps `book` every `interval` (the leases' rests go back to the cluster).
pub async fn run_sweeper(book: Arc<LeaseBook>, writer: Writer, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        book.sweep(&writer).await;
    }
}
