//! The signing watch: every settlement transaction a node signs is logged
//! (`x402_node::facilitator::settle::SIGNING_TARGET`); this layer sees each such line the moment
//! it is written and looks at every node's applied state right then. A signature by the
//! reconciler for a settlement that some replica has already applied as finished is a violation:
//! the reconciler must act only as a confirmed leader, from a state at least as fresh as every
//! replica's (ARCHITECTURE.md, "Path of a settlement").
//!
//! turmoil runs every host on one thread, so a thread-local registry of the nodes' state views,
//! filled as nodes start, is the whole world's state at the instant of the signature.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};
use x402_node::facilitator::settle::{SignedBy, SIGNING_TARGET};
use x402_raft_store::state::SettlementPhase;
use x402_raft_store::storage::StateView;

use crate::clock::sim_elapsed_ms;

thread_local! {
    static VIEWS: RefCell<BTreeMap<u64, StateView>> = const { RefCell::new(BTreeMap::new()) };
    static SEEN: RefCell<Seen> = const { RefCell::new(Seen { signatures: 0, violations: Vec::new() }) };
}

struct Seen {
    signatures: u64,
    violations: Vec<String>,
}

/// What the watch saw in one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigningReport {
    /// Signatures seen, by anyone.
    pub signatures: u64,
    pub violations: Vec<String>,
}

/// Starts watching a run on this thread: forgets earlier runs, and until the guard drops routes
/// this thread's log lines through the watch (and, with `RUST_LOG` set, to the test output).
pub fn watch() -> tracing::subscriber::DefaultGuard {
    VIEWS.with(|v| v.borrow_mut().clear());
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        s.signatures = 0;
        s.violations.clear();
    });
    let printing = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(EnvFilter::from_default_env())
    });
    // Filtered to the one target, so every other callsite stays disabled: openraft's many
    // debug events and spans then cost nothing, as with no subscriber at all.
    let only_signatures = Targets::new().with_target(SIGNING_TARGET, Level::INFO);
    Registry::default()
        .with(SigningWatch.with_filter(only_signatures))
        .with(printing)
        .set_default()
}

/// Node `id` (re)started with this view of its applied state.
pub fn register(id: u64, view: StateView) {
    VIEWS.with(|v| v.borrow_mut().insert(id, view));
}

/// What the watch saw since [`watch`].
pub fn report() -> SigningReport {
    SEEN.with(|s| {
        let s = s.borrow();
        SigningReport {
            signatures: s.signatures,
            violations: s.violations.clone(),
        }
    })
}

struct SigningWatch;

impl<S: Subscriber> Layer<S> for SigningWatch {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != SIGNING_TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (Some(settlement), Some(by)) = (fields.settlement, fields.by) else {
            return;
        };
        SEEN.with(|s| s.borrow_mut().signatures += 1);
        if by != SignedBy::Reconciler.as_str() {
            return;
        }
        let Some(id) = parse_id(&settlement) else {
            return;
        };
        let finished_on: Vec<u64> = VIEWS.with(|views| {
            views
                .borrow()
                .iter()
                .filter(|(_, view)| {
                    view.read(|s| {
                        s.settlements()
                            .get(&id)
                            .is_some_and(|r| matches!(r.phase, SettlementPhase::Done { .. }))
                    })
                })
                .map(|(node, _)| *node)
                .collect()
        });
        if !finished_on.is_empty() {
            let mut line = format!(
                "at {} ms the reconciler signed {} for settlement {settlement}, which ",
                sim_elapsed_ms(),
                fields.tx.unwrap_or_default()
            );
            let _ = write!(
                line,
                "node(s) {finished_on:?} had already applied as finished"
            );
            SEEN.with(|s| s.borrow_mut().violations.push(line));
        }
    }
}

#[derive(Default)]
struct Fields {
    settlement: Option<String>,
    by: Option<String>,
    tx: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "by" {
            self.by = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "settlement" => self.settlement = Some(text),
            "tx" => self.tx = Some(text),
            "by" => self.by = Some(text),
            _ => {}
        }
    }
}

fn parse_id(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim_start_matches("0x")).ok()?;
    bytes.try_into().ok()
}
