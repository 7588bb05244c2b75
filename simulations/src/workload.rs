//! The load: simulated clients that claim fresh nonces continuously, each write sent to one node
//! and, on any error, retried on the next node, every attempt recorded in a [`History`].
//!
//! Write number `op` claims nonce `op` with fingerprint [`Fingerprint::Main`]; its first attempt
//! goes to node `op % n + 1`, so every node (an isolated old leader too) keeps receiving writes,
//! except that, as in a client library, a node whose last attempt failed is avoided for a while
//! and then tried by one write at a time until one succeeds, so that a dead or isolated node
//! does not stall every writer.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use x402_protocol::wire::{self, ClaimRequest};

use crate::api::AdminClient;
use crate::clock::{sim_elapsed_ms, SIM_EPOCH_MS};
use crate::cluster::node_authority;
use crate::history::{Answer, Attempt, History};

/// Chain of every simulated claim (base-sepolia).
pub const CHAIN_ID: u64 = 84532;
/// How long simulated authorizations stay valid after the simulation epoch: far longer than any
/// run, so no claim expires during one.
pub const VALIDITY_S: u64 = 24 * 3600;

/// Which requirements a claim is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fingerprint {
    /// What the workload claims with.
    Main,
    /// Other requirements: claiming an already claimed nonce with it must answer `replay`.
    Other,
}

/// The claim of write `op`: nonce `op`, one fixed payer and asset.
pub fn claim_request(op: u64, fingerprint: Fingerprint) -> ClaimRequest {
    let mut nonce = [0u8; 32];
    nonce[24..].copy_from_slice(&op.to_be_bytes());
    let mut fp = [match fingerprint {
        Fingerprint::Main => 0xaa,
        Fingerprint::Other => 0xbb,
    }; 32];
    fp[24..].copy_from_slice(&op.to_be_bytes());
    ClaimRequest {
        chain_id: CHAIN_ID,
        asset: wire::to_hex(&[0x11; 20]),
        payer: wire::to_hex(&[0x22; 20]),
        nonce: wire::to_hex(&nonce),
        fingerprint: wire::to_hex(&fp),
        valid_before: SIM_EPOCH_MS / 1000 + VALIDITY_S,
    }
}

#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Writers running at once, each with one write in flight.
    pub workers: usize,
    /// Pause of a worker between two writes.
    pub pause: Duration,
    /// Pause before retrying a failed attempt on the next node.
    pub retry_pause: Duration,
    /// Deadline of one attempt; longer than the node's propose timeout, so the node's own
    /// `504 outcome_unknown` normally arrives first.
    pub request_deadline: Duration,
    /// Attempts of one write before giving up on it.
    pub max_attempts: usize,
    /// The first write's number.
    pub first_op: u64,
    /// After an attempt on a node fails, how long writes avoid that node before one write tries
    /// it again, as a client library would (unless every node is avoided).
    pub avoid_for: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            workers: 6,
            pause: Duration::from_millis(10),
            retry_pause: Duration::from_millis(20),
            request_deadline: Duration::from_secs(3),
            max_attempts: 6,
            first_op: 1,
            avoid_for: Duration::from_secs(1),
        }
    }
}

/// State shared between the workers (inside the simulation) and the test driver (outside it).
/// Everything runs on the test's one thread.
#[derive(Default)]
struct Shared {
    history: RefCell<History>,
    stop: Cell<bool>,
    running: Cell<usize>,
    next_op: Cell<u64>,
    /// Nodes whose last attempt failed -> simulated ms until which writes avoid them.
    avoided: RefCell<BTreeMap<u64, u64>>,
}

impl Shared {
    /// Where to send an attempt: the first node, from `preferred` on in id order, that is
    /// healthy, or failed but due for one trial (then avoided by the others for `trial` while
    /// that attempt runs); if every node is avoided, the one whose avoidance ends first.
    fn pick(&self, preferred: u64, nodes: u64, trial: Duration) -> u64 {
        let now = sim_elapsed_ms();
        let mut avoided = self.avoided.borrow_mut();
        let order = (0..nodes).map(|i| (preferred - 1 + i) % nodes + 1);
        let mut best: Option<(u64, u64)> = None;
        for id in order {
            match avoided.get(&id) {
                None => return id,
                Some(&until) if until <= now => {
                    avoided.insert(id, now + trial.as_millis() as u64);
                    return id;
                }
                Some(&until) if best.is_none_or(|(_, b)| until < b) => best = Some((id, until)),
                Some(_) => {}
            }
        }
        let (id, until) = best.expect("at least one node");
        avoided.insert(id, until + trial.as_millis() as u64);
        id
    }

    fn succeeded(&self, node: u64) {
        self.avoided.borrow_mut().remove(&node);
    }

    fn failed(&self, node: u64, avoid_for: Duration) {
        let until = sim_elapsed_ms() + avoid_for.as_millis() as u64;
        self.avoided.borrow_mut().insert(node, until);
    }
}

/// The driver's handle on a running workload.
#[derive(Clone)]
pub struct Workload {
    shared: Rc<Shared>,
}

impl Workload {
    /// Asks the workers to finish their current write and stop.
    pub fn stop(&self) {
        self.shared.stop.set(true);
    }

    /// Whether every worker has stopped.
    pub fn is_done(&self) -> bool {
        self.shared.stop.get() && self.shared.running.get() == 0
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.shared.history.borrow().clone()
    }

    /// Attempts answered `accepted` that were sent to `node` and both started and ended inside
    /// `[from_ms, to_ms)`.
    pub fn accepted_by(&self, node: u64, from_ms: u64, to_ms: u64) -> usize {
        self.shared
            .history
            .borrow()
            .attempts
            .iter()
            .filter(|a| {
                a.node == node
                    && a.start_ms >= from_ms
                    && a.end_ms < to_ms
                    && a.result.is_accepted()
            })
            .count()
    }
}

/// The future of the simulated client host running the workload against nodes `1..=nodes`.
pub(crate) fn client_future(
    nodes: u64,
    options: WorkloadOptions,
    token: String,
) -> (
    Workload,
    impl std::future::Future<Output = turmoil::Result> + 'static,
) {
    let shared = Rc::new(Shared::default());
    shared.next_op.set(options.first_op);
    let workload = Workload {
        shared: shared.clone(),
    };
    let future = async move {
        let client = Rc::new(AdminClient::new(token));
        let mut workers = Vec::new();
        shared.running.set(options.workers);
        for worker in 0..options.workers {
            workers.push(tokio::task::spawn_local(run_worker(
                worker,
                nodes,
                options.clone(),
                shared.clone(),
                client.clone(),
            )));
        }
        for w in workers {
            w.await?;
        }
        Ok(())
    };
    (workload, future)
}

async fn run_worker(
    worker: usize,
    nodes: u64,
    options: WorkloadOptions,
    shared: Rc<Shared>,
    client: Rc<AdminClient>,
) {
    while !shared.stop.get() {
        let op = shared.next_op.get();
        shared.next_op.set(op + 1);
        let request = claim_request(op, Fingerprint::Main);
        let mut next = op % nodes + 1;
        for _ in 0..options.max_attempts {
            let node = shared.pick(next, nodes, options.request_deadline);
            let start_ms = sim_elapsed_ms();
            let answer = client
                .claim(&node_authority(node), &request, options.request_deadline)
                .await
                .map(|r| (r.outcome, r.log_index));
            let result = Answer::of(&answer);
            let answered = matches!(result, Answer::Ok { .. });
            shared.history.borrow_mut().record(Attempt {
                op,
                worker,
                node,
                start_ms,
                end_ms: sim_elapsed_ms(),
                result,
            });
            if answered {
                shared.succeeded(node);
                break;
            }
            shared.failed(node, options.avoid_for);
            next = node % nodes + 1;
            tokio::time::sleep(options.retry_pause).await;
        }
        tokio::time::sleep(options.pause).await;
    }
    shared.running.set(shared.running.get() - 1);
}
