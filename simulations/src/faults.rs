//! The fault schedule of one run, drawn from its seed before the run starts and printed: network
//! faults one after another (partitions of every shape, held or slow or lossy links, crashes,
//! long outages, whole-cluster restarts, membership changes during a partition, leader
//! transfers), and, overlapping them, faults of the world around the cluster (wall-clock skew
//! and jumps, the chain's RPC failing, a node cut off from the chain).
//!
//! [`FaultMode`] names what a run set must cover; [`FaultPlan::modes`] says what one run drew.

use std::collections::BTreeSet;
use std::fmt;

use crate::rng::SimRng;

/// Every kind of fault the schedule draws; the run set must exercise each at least once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultMode {
    IsolateNode,
    RandomHalves,
    LeaderInMinority,
    OneWayPartition,
    HoldAndRelease,
    LinkLatency,
    LinkLoss,
    CrashRestart,
    LongOutageSnapshotInstall,
    WholeClusterRestart,
    MembershipChangeInPartition,
    LeaderTransfer,
    ClockSkew,
    ClockJump,
    ChainRpcFailure,
    NodeCutOffFromChain,
}

impl FaultMode {
    pub const ALL: [FaultMode; 16] = [
        FaultMode::IsolateNode,
        FaultMode::RandomHalves,
        FaultMode::LeaderInMinority,
        FaultMode::OneWayPartition,
        FaultMode::HoldAndRelease,
        FaultMode::LinkLatency,
        FaultMode::LinkLoss,
        FaultMode::CrashRestart,
        FaultMode::LongOutageSnapshotInstall,
        FaultMode::WholeClusterRestart,
        FaultMode::MembershipChangeInPartition,
        FaultMode::LeaderTransfer,
        FaultMode::ClockSkew,
        FaultMode::ClockJump,
        FaultMode::ChainRpcFailure,
        FaultMode::NodeCutOffFromChain,
    ];

    /// The modes drawn for the network and node timeline (one at a time).
    const NETWORK: [FaultMode; 12] = [
        FaultMode::IsolateNode,
        FaultMode::RandomHalves,
        FaultMode::LeaderInMinority,
        FaultMode::OneWayPartition,
        FaultMode::HoldAndRelease,
        FaultMode::LinkLatency,
        FaultMode::LinkLoss,
        FaultMode::CrashRestart,
        FaultMode::LongOutageSnapshotInstall,
        FaultMode::WholeClusterRestart,
        FaultMode::MembershipChangeInPartition,
        FaultMode::LeaderTransfer,
    ];

    /// The modes of the world around the cluster (overlapping the network timeline).
    const WORLD: [FaultMode; 4] = [
        FaultMode::ClockSkew,
        FaultMode::ClockJump,
        FaultMode::ChainRpcFailure,
        FaultMode::NodeCutOffFromChain,
    ];
}

/// One fault, with the nodes it touches (ids of the initial voters, `1..=n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut every link between the node and the other nodes (clients still reach it).
    Isolate(u64),
    /// Cut every link between the two sides.
    Halves(Vec<u64>, Vec<u64>),
    /// Cut the leader of the moment (and, in a 5-node cluster, one more node) off from the rest.
    LeaderMinority,
    /// Drop everything `from` sends to `to` (the other direction still works).
    OneWay { from: u64, to: u64 },
    /// Queue everything between two nodes, delivered all at once when the fault ends.
    Hold(u64, u64),
    /// Slow every link of one node down to at most `ms`.
    Latency { node: u64, ms: u64 },
    /// Make every link of one node flap: each tick it may go down (`per_million` / 10^6).
    Loss { node: u64, per_million: u64 },
    /// Crash a node; it restarts on its kept stores when the fault ends.
    Crash(u64),
    /// Crash a node long enough for the leader to purge the log it lacks: it can only catch up
    /// through a snapshot install.
    LongOutage(u64),
    /// Crash every node at once; all restart when the fault ends.
    ClusterRestart,
    /// Isolate a follower, replace it by the spare node (add, promote, remove) while it is cut
    /// off, heal.
    MembershipChange,
    /// Move leadership to another node: the leader stops its heartbeats, the target campaigns.
    LeaderTransfer,
    /// Set a node's wall clock `ms` ahead (or behind) for the fault's length.
    ClockSkew { node: u64, ms: i64 },
    /// Jump a node's wall clock by `ms` and leave it there.
    ClockJump { node: u64, ms: i64 },
    /// Every node's chain RPC fails.
    ChainOutage,
    /// One node cannot reach the chain.
    ChainCut(u64),
}

impl Fault {
    pub fn mode(&self) -> FaultMode {
        match self {
            Fault::Isolate(_) => FaultMode::IsolateNode,
            Fault::Halves(..) => FaultMode::RandomHalves,
            Fault::LeaderMinority => FaultMode::LeaderInMinority,
            Fault::OneWay { .. } => FaultMode::OneWayPartition,
            Fault::Hold(..) => FaultMode::HoldAndRelease,
            Fault::Latency { .. } => FaultMode::LinkLatency,
            Fault::Loss { .. } => FaultMode::LinkLoss,
            Fault::Crash(_) => FaultMode::CrashRestart,
            Fault::LongOutage(_) => FaultMode::LongOutageSnapshotInstall,
            Fault::ClusterRestart => FaultMode::WholeClusterRestart,
            Fault::MembershipChange => FaultMode::MembershipChangeInPartition,
            Fault::LeaderTransfer => FaultMode::LeaderTransfer,
            Fault::ClockSkew { .. } => FaultMode::ClockSkew,
            Fault::ClockJump { .. } => FaultMode::ClockJump,
            Fault::ChainOutage => FaultMode::ChainRpcFailure,
            Fault::ChainCut(_) => FaultMode::NodeCutOffFromChain,
        }
    }
}

/// A fault and when it starts and ends (simulated ms since the start of the run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6}..{:>6} ms  {:?}",
            self.start_ms, self.end_ms, self.fault
        )
    }
}

/// Bounds of the schedule.
#[derive(Clone, Copy, Debug)]
pub struct PlanLimits {
    /// Faults start after this (the cluster forms first).
    pub first_ms: u64,
    /// Every fault has ended by this.
    pub last_ms: u64,
    /// A long outage lasts this long (enough for the leader to purge what the node lacks).
    pub long_outage_ms: u64,
    /// Largest clock skew or jump, either way.
    pub max_clock_ms: u64,
}

/// The schedule of one run.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub nodes: u64,
    pub network: Vec<Episode>,
    pub world: Vec<Episode>,
}

impl FaultPlan {
    /// Draws the schedule of a cluster of `nodes` from `seed`.
    pub fn draw(seed: u64, nodes: u64, limits: PlanLimits) -> Self {
        let mut rng = SimRng::new(seed, 1);
        let mut network = Vec::new();
        let mut t = limits.first_ms + rng.below(1_000);
        loop {
            let mode = *rng.pick(&FaultMode::NETWORK);
            let length = match mode {
                FaultMode::LongOutageSnapshotInstall => limits.long_outage_ms,
                FaultMode::WholeClusterRestart => rng.between(300, 2_000),
                FaultMode::LeaderTransfer => 1_500,
                _ => rng.between(800, 4_000),
            };
            if t + length > limits.last_ms {
                break;
            }
            let fault = network_fault(&mut rng, mode, nodes);
            network.push(Episode {
                start_ms: t,
                end_ms: t + length,
                fault,
            });
            t += length + rng.between(300, 2_500);
        }
        let mut world = Vec::new();
        let mut t = limits.first_ms + rng.below(3_000);
        loop {
            let length = rng.between(1_000, 5_000);
            if t + length > limits.last_ms {
                break;
            }
            let node = rng.between(1, nodes);
            let clock_ms = rng.between(100, limits.max_clock_ms) as i64;
            let sign = if rng.chance(50) { 1 } else { -1 };
            let fault = match *rng.pick(&FaultMode::WORLD) {
                FaultMode::ClockSkew => Fault::ClockSkew {
                    node,
                    ms: sign * clock_ms,
                },
                FaultMode::ClockJump => Fault::ClockJump {
                    node,
                    ms: sign * clock_ms,
                },
                FaultMode::ChainRpcFailure => Fault::ChainOutage,
                _ => Fault::ChainCut(node),
            };
            world.push(Episode {
                start_ms: t,
                end_ms: t + length,
                fault,
            });
            t += length + rng.between(500, 4_000);
        }
        Self {
            nodes,
            network,
            world,
        }
    }

    /// The fault modes this schedule exercises.
    pub fn modes(&self) -> BTreeSet<FaultMode> {
        self.network
            .iter()
            .chain(&self.world)
            .map(|e| e.fault.mode())
            .collect()
    }

    /// The largest spread between two nodes' clocks the schedule can cause (jumps accumulate).
    pub fn clock_spread_ms(&self) -> u64 {
        let mut spread = 0;
        for e in &self.world {
            match e.fault {
                Fault::ClockSkew { ms, .. } | Fault::ClockJump { ms, .. } => {
                    spread += ms.unsigned_abs()
                }
                _ => {}
            }
        }
        spread
    }

    /// The schedule, one episode per line.
    pub fn describe(&self) -> String {
        let mut out = format!("fault schedule ({} nodes):\n", self.nodes);
        for e in &self.network {
            out.push_str(&format!("  net   {e}\n"));
        }
        for e in &self.world {
            out.push_str(&format!("  world {e}\n"));
        }
        out
    }
}

fn network_fault(rng: &mut SimRng, mode: FaultMode, nodes: u64) -> Fault {
    let node = rng.between(1, nodes);
    let other = (node + rng.between(1, nodes - 1) - 1) % nodes + 1;
    match mode {
        FaultMode::IsolateNode => Fault::Isolate(node),
        FaultMode::RandomHalves => {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for id in 1..=nodes {
                if rng.chance(50) {
                    a.push(id)
                } else {
                    b.push(id)
                }
            }
            if a.is_empty() {
                a.push(b.remove(0));
            }
            if b.is_empty() {
                b.push(a.remove(0));
            }
            Fault::Halves(a, b)
        }
        FaultMode::LeaderInMinority => Fault::LeaderMinority,
        FaultMode::OneWayPartition => Fault::OneWay {
            from: node,
            to: other,
        },
        FaultMode::HoldAndRelease => Fault::Hold(node, other),
        FaultMode::LinkLatency => Fault::Latency {
            node,
            ms: rng.between(20, 120),
        },
        FaultMode::LinkLoss => Fault::Loss {
            node,
            per_million: rng.between(2_000, 20_000),
        },
        FaultMode::CrashRestart => Fault::Crash(node),
        FaultMode::LongOutageSnapshotInstall => Fault::LongOutage(node),
        FaultMode::WholeClusterRestart => Fault::ClusterRestart,
        FaultMode::MembershipChangeInPartition => Fault::MembershipChange,
        FaultMode::LeaderTransfer => Fault::LeaderTransfer,
        other => unreachable!("{other:?} is not a network fault"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits {
            first_ms: 2_000,
            last_ms: 30_000,
            long_outage_ms: 8_000,
            max_clock_ms: 1_500,
        }
    }

    #[test]
    fn one_seed_draws_one_plan_and_plans_stay_in_bounds() {
        for seed in 0..200 {
            let a = FaultPlan::draw(seed, 3 + 2 * (seed % 2), limits());
            let b = FaultPlan::draw(seed, 3 + 2 * (seed % 2), limits());
            assert_eq!(a.describe(), b.describe());
            let mut last_end = 0;
            for e in &a.network {
                assert!(e.start_ms >= 2_000 && e.end_ms <= 30_000 && e.start_ms < e.end_ms);
                assert!(e.start_ms > last_end, "network faults do not overlap");
                last_end = e.end_ms;
            }
        }
    }

    #[test]
    fn two_hundred_seeds_cover_every_mode() {
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            seen.extend(FaultPlan::draw(seed, 3, limits()).modes());
        }
        let missing: Vec<_> = FaultMode::ALL
            .iter()
            .filter(|m| !seen.contains(m))
            .collect();
        assert!(missing.is_empty(), "never drawn: {missing:?}");
    }
}
