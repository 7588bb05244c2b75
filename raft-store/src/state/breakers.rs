//! Shared circuit breakers, one per chain RPC endpoint (guarantee I5).
//!
//! Each node counts an endpoint's failures locally; only the *transitions* are replicated, as
//! `MoveBreaker` commands that name the epoch they move from. A transition applies only to the
//! epoch it names and raises it by one, so two nodes that both saw the endpoint fail open it
//! once (the second gets `Stale` with the state the first set), and since epochs only grow no
//! node acts on a state older than one it has applied.
//!
//! ```text
//! Closed ──Open{open_ms}──► Open{until} ──HalfOpen (now ≥ until)──► HalfOpen ──Close──► Closed
//!                               ▲                                      │
//!                               └───────────── Open{open_ms} ──────────┘
//! ```
//!
//! Breakers are never forgotten; [`MAX_BREAKERS`] bounds them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies an endpoint: a digest of its URL chosen by the node.
pub type EndpointId = [u8; 16];

/// Most endpoints with a breaker. A transition of a new endpoint beyond it answers `Full`.
pub const MAX_BREAKERS: usize = 1024;
/// Longest an opening lasts; longer requests are clamped to it.
pub const MAX_OPEN_MS: u64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerPhase {
    /// Calls go through.
    Closed,
    /// Calls are refused until `until_ms`; then one node may try (HalfOpen).
    Open { until_ms: u64 },
    /// A trial call is under way: it closes the breaker, or opens it again.
    HalfOpen,
}

/// An endpoint's breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerState {
    pub phase: BreakerPhase,
    /// Transitions applied so far; only grows.
    pub epoch: u64,
    /// The command time of the last transition.
    pub since_ms: u64,
}

impl Default for BreakerState {
    fn default() -> Self {
        Self {
            phase: BreakerPhase::Closed,
            epoch: 0,
            since_ms: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerTransition {
    /// Refuse calls for `open_ms` (at most [`MAX_OPEN_MS`]). From Closed or HalfOpen.
    Open { open_ms: u64 },
    /// Let a trial call through. From Open, once its time is up.
    HalfOpen,
    /// Let calls through again. From HalfOpen.
    Close,
}

/// A request to move `endpoint`'s breaker from epoch `from_epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerMove {
    pub endpoint: EndpointId,
    pub from_epoch: u64,
    pub to: BreakerTransition,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerAnswer {
    /// Applied: the new state (epoch = from_epoch + 1, since_ms = now).
    Moved(BreakerState),
    /// from_epoch is not the current epoch (someone moved it first): the current state, unchanged.
    Stale(BreakerState),
    /// Not a valid transition from the current phase (or HalfOpen before until_ms): current
    /// state, unchanged.
    Refused(BreakerState),
    /// MAX_BREAKERS endpoints known already and this one is new: nothing changed.
    Full,
}

/// Every endpoint's breaker (endpoints never moved are Closed at epoch 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakerBoard {
    breakers: BTreeMap<EndpointId, BreakerState>,
}

/// Serialised form of the board, written from the live map and read back into one.
#[derive(Serialize)]
pub(crate) struct BoardImageRef<'a>(&'a BTreeMap<EndpointId, BreakerState>);

#[derive(Deserialize)]
pub(crate) struct BoardImage(BTreeMap<EndpointId, BreakerState>);

impl BreakerBoard {
    /// Applies `m` at `now_ms` if it names the current epoch and is a valid transition.
    pub fn apply(&mut self, m: &BreakerMove, now_ms: u64) -> BreakerAnswer {
        let known = self.breakers.get(&m.endpoint).copied();
        if known.is_none() && self.breakers.len() >= MAX_BREAKERS {
            return BreakerAnswer::Full;
        }
        let current = known.unwrap_or_default();
        if m.from_epoch != current.epoch {
            return BreakerAnswer::Stale(current);
        }
        let phase = match (current.phase, m.to) {
            (
                BreakerPhase::Closed | BreakerPhase::HalfOpen,
                BreakerTransition::Open { open_ms },
            ) => BreakerPhase::Open {
                until_ms: now_ms.saturating_add(open_ms.min(MAX_OPEN_MS)),
            },
            (BreakerPhase::Open { until_ms }, BreakerTransition::HalfOpen)
                if now_ms >= until_ms =>
            {
                BreakerPhase::HalfOpen
            }
            (BreakerPhase::HalfOpen, BreakerTransition::Close) => BreakerPhase::Closed,
            _ => return BreakerAnswer::Refused(current),
        };
        // Epochs only grow: at the (unreachable) last epoch the breaker stays as it is.
        let Some(epoch) = current.epoch.checked_add(1) else {
            return BreakerAnswer::Refused(current);
        };
        let next = BreakerState {
            phase,
            epoch,
            since_ms: now_ms,
        };
        self.breakers.insert(m.endpoint, next);
        debug_assert!(self.breakers.len() <= MAX_BREAKERS);
        BreakerAnswer::Moved(next)
    }

    /// `endpoint`'s breaker (Closed at epoch 0 when it never moved).
    pub fn get(&self, endpoint: &EndpointId) -> BreakerState {
        self.breakers.get(endpoint).copied().unwrap_or_default()
    }

    /// The breakers that ever moved, in endpoint order.
    pub fn iter(&self) -> impl Iterator<Item = (&EndpointId, &BreakerState)> {
        self.breakers.iter()
    }

    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }

    pub(crate) fn image(&self) -> BoardImageRef<'_> {
        BoardImageRef(&self.breakers)
    }

    pub(crate) fn from_image(image: BoardImage) -> Self {
        Self { breakers: image.0 }
    }

    /// Bytes [`BreakerBoard::image`] takes when encoded, at most.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        // Endpoint, phase tag, varint until, varint epoch, varint since.
        9 + self.breakers.len() * (16 + 1 + 9 + 9 + 9)
    }

    /// Feeds every breaker into the state hash (few: [`MAX_BREAKERS`] bounds them).
    pub(crate) fn hash_into(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        h.update((self.breakers.len() as u64).to_be_bytes());
        for (endpoint, state) in &self.breakers {
            h.update(endpoint);
            match state.phase {
                BreakerPhase::Closed => h.update([0]),
                BreakerPhase::Open { until_ms } => {
                    h.update([1]);
                    h.update(until_ms.to_be_bytes());
                }
                BreakerPhase::HalfOpen => h.update([2]),
            }
            h.update(state.epoch.to_be_bytes());
            h.update(state.since_ms.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_epoch_is_final() {
        let endpoint = [1; 16];
        let last = BreakerState {
            phase: BreakerPhase::Closed,
            epoch: u64::MAX,
            since_ms: 0,
        };
        let mut board = BreakerBoard::default();
        board.breakers.insert(endpoint, last);
        let m = BreakerMove {
            endpoint,
            from_epoch: u64::MAX,
            to: BreakerTransition::Open { open_ms: 1 },
        };
        assert_eq!(board.apply(&m, 5), BreakerAnswer::Refused(last));
        assert_eq!(board.get(&endpoint), last);
    }
}
