//! Simulated x402 clients: they sign EIP-3009 payments and send them, over simulated HTTP, to
//! `/verify` and `/settle` of any node, the way resource servers do: verify on one node, settle on
//! another, retry on the next node after an error, replay a settled payment elsewhere, and try to
//! reuse an authorization for other requirements. A flooding client sends bursts of fresh
//! payments to hit the `/verify` rate limit. Every attempt lands in a [`PayLog`] with its
//! simulated call and return times.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use hyper::Method;
use x402_protocol::x402::eip3009::TransferWithAuthorization;
use x402_protocol::x402::payment::{encode, PaymentBuilder, PaymentTerms};
use x402_protocol::x402::{self, ChainId, FacilitatorRequest, SettleResponse, VerifyResponse};

use crate::api::{AdminClient, CallError};
use crate::clock::{sim_elapsed_ms, SIM_EPOCH_MS};
use crate::cluster::node_authority;
use crate::rng::SimRng;
use crate::world;

/// Who every payment pays.
pub const MERCHANT: [u8; 20] = [0x4d; 20];
/// What every payment pays, in token base units.
pub const AMOUNT: u64 = 1_000;
/// The resource a payment is made for; [`Requirements::Other`] is a second one.
const RESOURCE: &str = "https://api.sim/paid";
const OTHER_RESOURCE: &str = "https://api.sim/other";

/// Which requirements a request carries (their fingerprint is what a claim is bound to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirements {
    Main,
    Other,
}

/// Reason codes the clients and checkers tell apart.
pub const NONCE_USED: &str = "invalid_exact_evm_nonce_already_used";
/// The chain could not be read: refused before anything was claimed or begun.
pub const CHAIN_UNREADABLE: &str = "unexpected_verify_error";
pub const SETTLE_PENDING: &str = "settlement_pending";
pub const SETTLE_UNEXPECTED: &str = "unexpected_settle_error";

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Verify(Requirements),
    /// `keyed`: sent with the payment's one `Idempotency-Key` (every keyed settle of a payment
    /// carries the same key), so it may get an answer stored by an earlier keyed settle.
    Settle {
        keyed: bool,
    },
}

/// The `Idempotency-Key` of payment `key`'s keyed settles.
pub fn idempotency_key_of(key: u64) -> String {
    format!("settle-{key}")
}

/// What one request came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayAnswer {
    /// 200, `isValid: true`.
    Valid,
    /// 200, `isValid: false`, with this reason.
    Invalid(String),
    /// 200, `success: true`, with this transaction.
    Settled(String),
    /// 200, `success: false`, with this reason and transaction (empty if none).
    NotSettled { reason: String, tx: String },
    /// An error status with this code (429 rate limited, 503 no leader, 504 outcome unknown…).
    Status { status: u16, code: String },
    /// Never delivered: the node certainly did not see it.
    NotDelivered,
    /// No answer in time: it may have taken effect.
    Lost,
}

impl PayAnswer {
    fn label(&self) -> String {
        match self {
            PayAnswer::Valid => "valid".into(),
            PayAnswer::Invalid(r) => format!("invalid {r}"),
            PayAnswer::Settled(tx) => format!("settled {tx}"),
            PayAnswer::NotSettled { reason, tx } => format!("not_settled {reason} {tx}"),
            PayAnswer::Status { status, code } => format!("{status} {code}"),
            PayAnswer::NotDelivered => "not_delivered".into(),
            PayAnswer::Lost => "lost".into(),
        }
    }

    /// Whether the request passed the rate limiter for certain (any 200 answer).
    pub fn admitted(&self) -> bool {
        matches!(
            self,
            PayAnswer::Valid
                | PayAnswer::Invalid(_)
                | PayAnswer::Settled(_)
                | PayAnswer::NotSettled { .. }
        )
    }
}

/// One request of one payment to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayAttempt {
    /// The payment (one authorization).
    pub key: u64,
    pub step: Step,
    pub node: u64,
    pub call_ms: u64,
    pub return_ms: u64,
    pub answer: PayAnswer,
}

impl PayAttempt {
    pub fn line(&self) -> String {
        format!(
            "{} {:?} node-{} {}..{} {}",
            self.key,
            self.step,
            self.node,
            self.call_ms,
            self.return_ms,
            self.answer.label()
        )
    }
}

/// One payment: who signed it and its nonce.
#[derive(Clone, Debug)]
pub struct Payment {
    pub payer: usize,
    pub nonce: [u8; 32],
    /// Sent by the flooding client: verified once, never settled.
    pub flood: bool,
}

/// Everything the payment clients did.
#[derive(Clone, Debug, Default)]
pub struct PayLog {
    pub attempts: Vec<PayAttempt>,
    pub payments: BTreeMap<u64, Payment>,
}

/// How the payment clients behave.
#[derive(Clone, Debug)]
pub struct PaymentOptions {
    /// Clients paying one payment after another.
    pub clients: usize,
    /// Pause of a client between two payments.
    pub pause: Duration,
    /// Deadline of one request (longer than a node's propose timeout).
    pub deadline: Duration,
    /// Requests of one step before the client gives up on it.
    pub attempts: usize,
    /// Pause before the next attempt of a step.
    pub retry_pause: Duration,
    /// Fresh payments per burst of the flooding client (0: no flooding client).
    pub flood_burst: usize,
    /// Pause of the flooding client between bursts.
    pub flood_every: Duration,
}

impl Default for PaymentOptions {
    fn default() -> Self {
        Self {
            clients: 4,
            pause: Duration::from_millis(150),
            deadline: Duration::from_secs(4),
            attempts: 5,
            retry_pause: Duration::from_millis(150),
            flood_burst: 24,
            flood_every: Duration::from_millis(1_500),
        }
    }
}

/// Signs payments and builds their requests.
pub struct Signer {
    main: PaymentBuilder,
    other: PaymentBuilder,
    payers: Vec<PrivateKeySigner>,
}

impl Signer {
    pub fn new() -> Self {
        let terms = |resource: &str| {
            let mut t = PaymentTerms::v2(
                ChainId(world::CHAIN_ID),
                x402::Address::from_bytes(world::token_address().into_array()),
                x402::Address::from_bytes(MERCHANT),
                x402::U256::from_u64(AMOUNT),
            );
            t.token_name = world::TOKEN_NAME.into();
            t.token_version = world::TOKEN_VERSION.into();
            // Longer than any run: no payment expires during one, whatever the clock skew.
            t.max_timeout_seconds = 3 * 3600;
            t.resource = resource.into();
            t
        };
        Self {
            main: PaymentBuilder::new(terms(RESOURCE)).expect("valid terms"),
            other: PaymentBuilder::new(terms(OTHER_RESOURCE)).expect("valid terms"),
            payers: world::payers(),
        }
    }

    /// The signed authorization of `payment` (signed at the simulation's epoch).
    fn authorization(&self, payment: &Payment) -> (TransferWithAuthorization, Vec<u8>) {
        let payer = &self.payers[payment.payer];
        let now = SIM_EPOCH_MS / 1000;
        let authorization = self.main.authorization(payer.address(), now, payment.nonce);
        let signature = self
            .main
            .signature(payer, &authorization)
            .expect("a local key signs");
        (authorization, signature.to_vec())
    }

    /// The JSON body of `payment` for `requirements`: one authorization, one signature, whichever
    /// requirements it is presented with.
    pub fn body(&self, payment: &Payment, requirements: Requirements) -> Vec<u8> {
        let (authorization, signature) = self.authorization(payment);
        let builder = match requirements {
            Requirements::Main => &self.main,
            Requirements::Other => &self.other,
        };
        let request: FacilitatorRequest = builder.assemble(&authorization, &signature);
        encode(&request).expect("a request encodes")
    }
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

/// The nonce of payment `key`.
pub fn nonce_of(key: u64) -> [u8; 32] {
    let mut nonce = [0x3c; 32];
    nonce[24..].copy_from_slice(&key.to_be_bytes());
    nonce
}

/// Sends `step` of `payment` to `node` once; the answer as a client sees it.
pub async fn send(
    client: &AdminClient,
    signer: &Signer,
    key: u64,
    payment: &Payment,
    step: Step,
    node: u64,
    deadline: Duration,
) -> PayAnswer {
    let (path, requirements) = match step {
        Step::Verify(r) => ("/verify", r),
        Step::Settle { .. } => ("/settle", Requirements::Main),
    };
    let headers = match step {
        Step::Settle { keyed: true } => vec![("idempotency-key", idempotency_key_of(key))],
        _ => Vec::new(),
    };
    let body = signer.body(payment, requirements);
    let authority = node_authority(node);
    let answer: Result<serde_json::Value, CallError> = client
        .call_with(Method::POST, &authority, path, &headers, body, deadline)
        .await;
    let value = match answer {
        Ok(v) => v,
        Err(CallError::NotDelivered(_)) => return PayAnswer::NotDelivered,
        Err(CallError::Lost(_)) => return PayAnswer::Lost,
        Err(CallError::Status { status, code }) => return PayAnswer::Status { status, code },
    };
    match step {
        Step::Verify(_) => match serde_json::from_value::<VerifyResponse>(value) {
            Ok(v) if v.is_valid => PayAnswer::Valid,
            Ok(v) => PayAnswer::Invalid(
                v.invalid_reason
                    .map_or_else(|| "none".into(), |r| r.as_str().to_owned()),
            ),
            Err(_) => PayAnswer::Lost,
        },
        Step::Settle { .. } => match serde_json::from_value::<SettleResponse>(value) {
            Ok(s) if s.success => PayAnswer::Settled(s.transaction),
            Ok(s) => PayAnswer::NotSettled {
                reason: s
                    .error_reason
                    .map_or_else(|| "none".into(), |r| r.as_str().to_owned()),
                tx: s.transaction,
            },
            Err(_) => PayAnswer::Lost,
        },
    }
}

/// Sends `step` of payment `key` to `node` once, timing it in simulated time.
pub async fn attempt(
    client: &AdminClient,
    signer: &Signer,
    key: u64,
    payment: &Payment,
    step: Step,
    node: u64,
    deadline: Duration,
) -> PayAttempt {
    let call_ms = sim_elapsed_ms();
    let answer = send(client, signer, key, payment, step, node, deadline).await;
    PayAttempt {
        key,
        step,
        node,
        call_ms,
        return_ms: sim_elapsed_ms(),
        answer,
    }
}

/// Shared between the clients (inside the simulation) and the driver (outside it).
#[derive(Default)]
struct Shared {
    log: RefCell<PayLog>,
    stop: Cell<bool>,
    running: Cell<usize>,
    next_key: Cell<u64>,
}

impl Shared {
    fn new_payment(&self, flood: bool) -> (u64, Payment) {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        let payment = Payment {
            payer: (key % world::PAYERS as u64) as usize,
            nonce: nonce_of(key),
            flood,
        };
        self.log.borrow_mut().payments.insert(key, payment.clone());
        (key, payment)
    }

    fn record(&self, attempt: PayAttempt) {
        self.log.borrow_mut().attempts.push(attempt);
    }
}

/// The driver's handle on the running payment clients.
#[derive(Clone)]
pub struct PaymentClients {
    shared: Rc<Shared>,
}

impl PaymentClients {
    pub fn stop(&self) {
        self.shared.stop.set(true);
    }

    pub fn is_done(&self) -> bool {
        self.shared.stop.get() && self.shared.running.get() == 0
    }

    pub fn log(&self) -> PayLog {
        self.shared.log.borrow().clone()
    }

    /// Records an attempt made by the driver (the final checks), in the same log.
    pub fn record(&self, attempt: PayAttempt) {
        self.shared.record(attempt);
    }
}

/// The future of the simulated host running the payment clients against nodes `1..=nodes`.
pub(crate) fn clients_future(
    seed: u64,
    nodes: u64,
    options: PaymentOptions,
) -> (
    PaymentClients,
    impl std::future::Future<Output = turmoil::Result> + 'static,
) {
    let shared = Rc::new(Shared::default());
    shared.next_key.set(1);
    let handle = PaymentClients {
        shared: shared.clone(),
    };
    let future = async move {
        let client = Rc::new(AdminClient::new(""));
        let signer = Rc::new(Signer::new());
        let mut tasks = Vec::new();
        let flooding = options.flood_burst > 0;
        shared.running.set(options.clients + usize::from(flooding));
        for index in 0..options.clients {
            let ctx = Ctx {
                rng: RefCell::new(SimRng::new(seed, 100 + index as u64)),
                nodes,
                options: options.clone(),
                shared: shared.clone(),
                client: client.clone(),
                signer: signer.clone(),
            };
            tasks.push(tokio::task::spawn_local(run_payer(ctx)));
        }
        if flooding {
            let ctx = Ctx {
                rng: RefCell::new(SimRng::new(seed, 99)),
                nodes,
                options: options.clone(),
                shared: shared.clone(),
                client,
                signer,
            };
            tasks.push(tokio::task::spawn_local(run_flood(ctx)));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    };
    (handle, future)
}

struct Ctx {
    rng: RefCell<SimRng>,
    nodes: u64,
    options: PaymentOptions,
    shared: Rc<Shared>,
    client: Rc<AdminClient>,
    signer: Rc<Signer>,
}

impl Ctx {
    fn random_node(&self) -> u64 {
        self.rng.borrow_mut().below(self.nodes) + 1
    }

    async fn attempt(&self, key: u64, payment: &Payment, step: Step, node: u64) -> PayAnswer {
        let made = attempt(
            &self.client,
            &self.signer,
            key,
            payment,
            step,
            node,
            self.options.deadline,
        )
        .await;
        let answer = made.answer.clone();
        self.shared.record(made);
        answer
    }

    /// Sends `step` until `done` says its answer is final, each retry on the next node.
    async fn until(
        &self,
        key: u64,
        payment: &Payment,
        step: Step,
        first: u64,
        done: fn(&PayAnswer) -> bool,
    ) -> Option<PayAnswer> {
        let mut node = first;
        for _ in 0..self.options.attempts {
            let answer = self.attempt(key, payment, step, node).await;
            if done(&answer) {
                return Some(answer);
            }
            node = node % self.nodes + 1;
            tokio::time::sleep(self.options.retry_pause).await;
        }
        None
    }
}

/// Whether a verify answer decides the payment's validity.
fn verify_final(a: &PayAnswer) -> bool {
    matches!(a, PayAnswer::Valid | PayAnswer::Invalid(_))
        && a != &PayAnswer::Invalid(CHAIN_UNREADABLE.into())
}

/// Whether a settle answer is the settlement's outcome.
fn settle_final(a: &PayAnswer) -> bool {
    match a {
        PayAnswer::Settled(_) => true,
        PayAnswer::NotSettled { reason, .. } => {
            reason != SETTLE_PENDING && reason != SETTLE_UNEXPECTED && reason != CHAIN_UNREADABLE
        }
        _ => false,
    }
}

/// One resource server's traffic: verify on one node, sometimes try the authorization for other
/// requirements, settle on another node, sometimes replay the settlement on a third.
async fn run_payer(ctx: Ctx) {
    while !ctx.shared.stop.get() {
        let (key, payment) = ctx.shared.new_payment(false);
        let verified = ctx
            .until(
                key,
                &payment,
                Step::Verify(Requirements::Main),
                ctx.random_node(),
                verify_final,
            )
            .await;
        if verified == Some(PayAnswer::Valid) && ctx.rng.borrow_mut().chance(25) {
            let node = ctx.random_node();
            ctx.until(
                key,
                &payment,
                Step::Verify(Requirements::Other),
                node,
                verify_final,
            )
            .await;
        }
        // Some resource servers retry with an Idempotency-Key (the same for every retry of
        // the payment), the others without: a retry of a lost success is then refused.
        let settle = Step::Settle {
            keyed: ctx.rng.borrow_mut().chance(40),
        };
        let settled = ctx
            .until(key, &payment, settle, ctx.random_node(), settle_final)
            .await;
        if matches!(settled, Some(PayAnswer::Settled(_))) && ctx.rng.borrow_mut().chance(30) {
            // A replay: with the key, the stored success again; without, a refusal.
            let node = ctx.random_node();
            ctx.attempt(key, &payment, settle, node).await;
        }
        tokio::time::sleep(ctx.options.pause).await;
    }
    ctx.shared.running.set(ctx.shared.running.get() - 1);
}

/// Bursts of fresh payments verified once each, all at once, on random nodes.
async fn run_flood(ctx: Ctx) {
    let ctx = Rc::new(ctx);
    while !ctx.shared.stop.get() {
        let mut burst = Vec::new();
        for _ in 0..ctx.options.flood_burst {
            let (key, payment) = ctx.shared.new_payment(true);
            let node = ctx.random_node();
            let ctx = ctx.clone();
            burst.push(tokio::task::spawn_local(async move {
                ctx.attempt(key, &payment, Step::Verify(Requirements::Main), node)
                    .await;
            }));
        }
        for task in burst {
            let _ = task.await;
        }
        tokio::time::sleep(ctx.options.flood_every).await;
    }
    ctx.shared.running.set(ctx.shared.running.get() - 1);
}
