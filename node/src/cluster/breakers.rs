//! The cluster's circuit breakers over chain RPC endpoints (guarantee I5).
//!
//! Each node counts the failures *it* sees of an endpoint; when `failures_to_open` of them fall
//! within `failure_window_ms`, it proposes `MoveBreaker{Open}` from the epoch it has applied.
//! The move is a compare-and-set on the epoch, so of several nodes proposing at once exactly one
//! move applies, and every node then acts on the same replicated state: an open breaker is
//! skipped by every node's chain client (failing fast, or failing over to the next URL). When
//! `open_ms` has passed, the first node that wants the endpoint proposes `HalfOpen`; in half-open
//! calls go through as probes, and the first outcome closes the breaker (success) or opens it
//! again (failure), for everyone. Epochs only grow, and a node decides only from its applied
//! state, so no node acts on an epoch older than one it has applied.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::IntGaugeVec;
use tokio::time::Instant;
use x402_raft_store::state::breakers::{
    BreakerMove, BreakerPhase, BreakerState, BreakerTransition, EndpointId,
};
use x402_raft_store::storage::StateView;

use crate::chain::breaker::EndpointGate;
use crate::cluster::writer::Writer;
use crate::config::BreakerSettings;
use crate::seams::SharedClock;
use crate::sync::lock;

/// What the breakers need from a started node.
struct Wiring {
    state: StateView,
    writer: Writer,
    clock: SharedClock,
    /// `x402_breaker_state{endpoint}` (0 closed, 1 half-open, 2 open) and
    /// `x402_breaker_epoch{endpoint}`.
    state_gauge: IntGaugeVec,
    epoch_gauge: IntGaugeVec,
}

/// One endpoint's failures seen by this node, within the current epoch.
#[derive(Default)]
struct LocalCount {
    epoch: u64,
    failures: VecDeque<Instant>,
}

/// The breakers of every endpoint this node's chain clients use.
pub struct ClusterBreakers {
    settings: BreakerSettings,
    wiring: OnceLock<Wiring>,
    labels: Mutex<BTreeMap<EndpointId, String>>,
    counts: Mutex<HashMap<EndpointId, LocalCount>>,
    /// Endpoints with a move being proposed by this node (one at a time each).
    proposing: Arc<Mutex<HashSet<EndpointId>>>,
}

/// One endpoint's breaker as status and metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerView {
    pub endpoint: String,
    pub state: BreakerState,
}

impl ClusterBreakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            wiring: OnceLock::new(),
            labels: Mutex::new(BTreeMap::new()),
            counts: Mutex::new(HashMap::new()),
            proposing: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Connects the breakers to the started node; until then every call is admitted.
    pub fn attach(
        &self,
        state: StateView,
        writer: Writer,
        clock: SharedClock,
        state_gauge: IntGaugeVec,
        epoch_gauge: IntGaugeVec,
    ) {
        let _ = self.wiring.set(Wiring {
            state,
            writer,
            clock,
            state_gauge,
            epoch_gauge,
        });
    }

    fn current(&self, endpoint: &EndpointId) -> Option<(&Wiring, BreakerState)> {
        let wiring = self.wiring.get()?;
        let state = wiring.state.read(|s| s.breakers().get(endpoint));
        Some((wiring, state))
    }

    /// Every known endpoint's breaker, by label.
    pub fn views(&self) -> Vec<BreakerView> {
        let labels = lock(&self.labels).clone();
        labels
            .into_iter()
            .map(|(id, endpoint)| BreakerView {
                endpoint,
                state: self.current(&id).map(|(_, s)| s).unwrap_or_default(),
            })
            .collect()
    }

    /// Sets the breaker gauges from the applied state.
    pub fn refresh_metrics(&self) {
        let Some(wiring) = self.wiring.get() else {
            return;
        };
        for view in self.views() {
            let phase = match view.state.phase {
                BreakerPhase::Closed => 0,
                BreakerPhase::HalfOpen => 1,
                BreakerPhase::Open { .. } => 2,
            };
            let labels = [view.endpoint.as_str()];
            wiring.state_gauge.with_label_values(&labels).set(phase);
            wiring
                .epoch_gauge
                .with_label_values(&labels)
                .set(i64::try_from(view.state.epoch).unwrap_or(i64::MAX));
        }
    }

    /// Proposes `to` from `from_epoch`, unless this node is already proposing a move of it.
    fn propose(
        &self,
        wiring: &Wiring,
        endpoint: EndpointId,
        from_epoch: u64,
        to: BreakerTransition,
    ) {
        if !lock(&self.proposing).insert(endpoint) {
            return;
        }
        let writer = wiring.writer.clone();
        let proposing = self.proposing.clone();
        let label = self.label(&endpoint);
        tokio::spawn(async move {
            let change = BreakerMove {
                endpoint,
                from_epoch,
                to,
            };
            match writer.move_breaker(change).await {
                Ok(answer) => tracing::info!(
                    rpc = %label, ?to, from_epoch, ?answer, "circuit breaker move"
                ),
                Err(e) => tracing::warn!(
                    rpc = %label, ?to, error = %e, "circuit breaker move not committed"
                ),
            }
            lock(&proposing).remove(&endpoint);
        });
    }

    fn label(&self, endpoint: &EndpointId) -> String {
        lock(&self.labels)
            .get(endpoint)
            .cloned()
            .unwrap_or_else(|| hex::encode(endpoint))
    }
}

impl EndpointGate for ClusterBreakers {
    fn admits(&self, endpoint: &EndpointId) -> bool {
        let Some((wiring, state)) = self.current(endpoint) else {
            return true;
        };
        match state.phase {
            BreakerPhase::Closed | BreakerPhase::HalfOpen => true,
            BreakerPhase::Open { until_ms } => {
                if wiring.clock.now_ms() >= until_ms {
                    self.propose(wiring, *endpoint, state.epoch, BreakerTransition::HalfOpen);
                }
                false
            }
        }
    }

    fn record(&self, endpoint: &EndpointId, ok: bool) {
        let Some((wiring, state)) = self.current(endpoint) else {
            return;
        };
        let open = BreakerTransition::Open {
            open_ms: self.settings.open_ms,
        };
        match (state.phase, ok) {
            (BreakerPhase::HalfOpen, true) => {
                self.propose(wiring, *endpoint, state.epoch, BreakerTransition::Close)
            }
            (BreakerPhase::HalfOpen, false) => self.propose(wiring, *endpoint, state.epoch, open),
            (BreakerPhase::Closed, false) => {
                let trip = {
                    let mut counts = lock(&self.counts);
                    let count = counts.entry(*endpoint).or_default();
                    if count.epoch != state.epoch {
                        *count = LocalCount {
                            epoch: state.epoch,
                            failures: VecDeque::new(),
                        };
                    }
                    let now = Instant::now();
                    let window = Duration::from_millis(self.settings.failure_window_ms);
                    while count
                        .failures
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > window)
                    {
                        count.failures.pop_front();
                    }
                    count.failures.push_back(now);
                    // Bounded: only the last `failures_to_open` matter.
                    while count.failures.len() > self.settings.failures_to_open as usize {
                        count.failures.pop_front();
                    }
                    count.failures.len() >= self.settings.failures_to_open as usize
                };
                if trip {
                    self.propose(wiring, *endpoint, state.epoch, open);
                }
            }
            (BreakerPhase::Closed, true) | (BreakerPhase::Open { .. }, _) => {}
        }
    }

    fn register(&self, endpoint: &EndpointId, label: &str) {
        lock(&self.labels).insert(*endpoint, label.to_owned());
    }
}
