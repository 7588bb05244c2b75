//! Prometheus metrics of one node, in a registry of its own (several nodes share one process in
//! simulations, so nothing here is global).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use x402_raft_store::types::RaftMetrics;

/// This build's version (the crate's) and the commit it was built from (see `build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("X402_BUILD_COMMIT");

/// Latency buckets in seconds, from 50 µs (an fsync on a fast disk) to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub term: IntGauge,
    pub is_leader: IntGauge,
    /// 1 while this node knows a leader (itself or another): 0 on every node means no quorum.
    pub has_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub committed_index: IntGauge,
    pub applied_index: IntGauge,
    pub last_log_index: IntGauge,
    pub snapshot_index: IntGauge,
    pub live_claims: IntGauge,
    pub proposal_seconds: Histogram,
    pub fsync_seconds: Histogram,
    /// Writes by outcome: `ok`, `forwarded_ok`, `no_leader`, `unknown`, `refused`.
    pub proposals: IntCounterVec,
    /// `/verify` answers by result: `valid` or the reason code; `error` when none was given.
    pub verifications: IntCounterVec,
    /// `/settle` answers by result: `success`, the reason code, or `error`.
    pub settlements: IntCounterVec,
    /// Settlements allocated or signed and not yet finished, in this node's state.
    pub unfinished_settlements: IntGauge,
    pub verify_seconds: Histogram,
    pub settle_seconds: Histogram,
    /// Requests refused by a rate limit (429), by route.
    pub rate_limited: IntCounterVec,
    /// Leased quota slices taken by this node (one command each).
    pub leases_taken: IntCounter,
    /// Circuit breaker of each chain RPC endpoint: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// Epoch of each endpoint's circuit breaker (grows with every transition).
    pub breaker_epoch: IntGaugeVec,
    /// Raft messages from peers refused before openraft saw them, by reason.
    pub peer_refused: IntCounterVec,
    /// TLS handshakes by listener (`api`, `peer`) and result: `ok`, `refused` (the client gave
    /// up or refused our certificate, spoke no TLS, or had no certificate the peer listener
    /// accepts), `timeout`.
    pub tls_handshakes: IntCounterVec,
}

impl Metrics {
    pub fn new(node_id: u64) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(
            Some("x402".into()),
            Some([("node".to_string(), node_id.to_string())].into()),
        )?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let leader_changes = IntCounter::new(
            "raft_leader_changes_total",
            "Times this node saw the leader change",
        )?;
        registry.register(Box::new(leader_changes.clone()))?;
        let proposals = IntCounterVec::new(
            Opts::new(
                "proposals_total",
                "Writes proposed through this node, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(proposals.clone()))?;
        let by_result = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &["result"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let verifications = by_result("verify_total", "POST /verify answers, by result")?;
        let settlements = by_result("settle_total", "POST /settle answers, by result")?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused by a rate limit, by route",
            ),
            &["route"],
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        let leases_taken = IntCounter::new(
            "rate_leases_taken_total",
            "Quota slices leased by this node for requests without a write of their own",
        )?;
        registry.register(Box::new(leases_taken.clone()))?;
        let peer_refused = IntCounterVec::new(
            Opts::new(
                "peer_refused_total",
                "Peer requests refused before Raft or a handler saw them, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(peer_refused.clone()))?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "tls_handshakes_total",
                "TLS handshakes by listener (api, peer) and result (ok, refused, timeout)",
            ),
            &["listener", "result"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        // Always 1; its labels say what runs (joined to other series by `node`).
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "The version and commit of this node's build (always 1)",
            ),
            &["version", "commit"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        let by_endpoint = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["endpoint"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let breaker_state = by_endpoint(
            "breaker_state",
            "Circuit breaker of a chain RPC endpoint: 0 closed, 1 half-open, 2 open",
        )?;
        let breaker_epoch = by_endpoint(
            "breaker_epoch",
            "Epoch of a chain RPC endpoint's circuit breaker",
        )?;
        Ok(Self {
            term: gauge("raft_term", "Current Raft term")?,
            is_leader: gauge("raft_is_leader", "1 when this node is the leader")?,
            has_leader: gauge("has_leader", "1 while this node knows a leader")?,
            leader_changes,
            committed_index: gauge("raft_committed_index", "Highest log index known committed")?,
            applied_index: gauge("raft_applied_index", "Highest log index applied")?,
            last_log_index: gauge("raft_last_log_index", "Highest log index stored")?,
            snapshot_index: gauge("raft_snapshot_index", "Last log index in the snapshot")?,
            live_claims: gauge("live_claims", "Nonce claims held in the state")?,
            proposal_seconds: histogram(
                "proposal_seconds",
                "Time from receiving a write to its commit and apply",
            )?,
            fsync_seconds: histogram(
                "fsync_seconds",
                "Duration of one durable flush of the Raft log (sled flush + fdatasync)",
            )?,
            proposals,
            verifications,
            settlements,
            unfinished_settlements: gauge(
                "settlements_unfinished",
                "Settlements allocated or signed and not yet finished",
            )?,
            verify_seconds: histogram("verify_seconds", "Time to answer POST /verify")?,
            settle_seconds: histogram("settle_seconds", "Time to answer POST /settle")?,
            rate_limited,
            leases_taken,
            peer_refused,
            tls_handshakes,
            breaker_state,
            breaker_epoch,
            registry,
        })
    }

    /// Updates the Raft gauges from openraft's metrics; counts leader changes.
    pub fn observe_raft(&self, m: &RaftMetrics, previous_leader: Option<u64>) {
        self.term.set(m.current_term as i64);
        self.is_leader
            .set(i64::from(m.current_leader == Some(m.id)));
        self.has_leader.set(i64::from(m.current_leader.is_some()));
        if m.current_leader != previous_leader && m.current_leader.is_some() {
            self.leader_changes.inc();
        }
        let index = |id: Option<u64>| id.map_or(-1, |i| i as i64);
        self.applied_index
            .set(index(m.last_applied.map(|l| l.index)));
        self.last_log_index.set(index(m.last_log_index));
        self.snapshot_index.set(index(m.snapshot.map(|l| l.index)));
    }

    /// Counts a peer request refused before Raft or a handler saw it (`reason` label).
    pub fn refused_peer(&self, reason: &str) {
        self.peer_refused.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
