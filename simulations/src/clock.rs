//! The wall-clock seam on turmoil: unix time derived from simulated time, so the time stamped into
//! commands (and every `validBefore` check) is a function of the seed, never of the machine.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use x402_node::seams::Clock;

/// Unix time (ms) at which every simulation starts: 2027-01-15T08:00:00Z.
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

/// Milliseconds of simulated time since the simulation started, or 0 outside a simulated host.
pub fn sim_elapsed_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// A node's wall clock: [`SIM_EPOCH_MS`] + simulated time + this node's skew.
///
/// Clones share the skew, so the harness keeps one clone per node outside the host and can move
/// that node's clock at any time (including across crashes).
#[derive(Clone, Debug, Default)]
pub struct SimClock {
    skew_ms: Arc<AtomicI64>,
}

impl SimClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how far this clock runs ahead (positive) or behind (negative) of simulated time.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::SeqCst);
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = SIM_EPOCH_MS as i64 + sim_elapsed_ms() as i64 + self.skew_ms();
        now.max(0) as u64
    }
}
