//! Nonce claims for end-to-end tests: a generator of distinct claims, a retrying claim call that
//! fails over across nodes, a bulk writer and a background [`Writer`] that records every
//! acknowledged claim (guarantee I7 is checked against that record).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;
use x402_client::{AdminClient, ClientError};
use x402_protocol::wire::{to_hex, ClaimOutcome, ClaimRequest, ClaimResponse};

/// Chain id of every test claim.
pub const CHAIN_ID: u64 = 31337;
/// Token address of every test claim.
pub const ASSET: [u8; 20] = [0xa5; 20];
/// The fingerprint test claims are made with; [`with_fingerprint`] gives them another.
pub const FINGERPRINT: u8 = 0xf1;
/// How long a claim that keeps failing (leader changes, a dead node) is retried.
pub const CLAIM_DEADLINE: Duration = Duration::from_secs(30);
/// Pause after a failed attempt before trying the next node.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A random salt: claims of different test runs never collide.
pub fn new_salt() -> u64 {
    rand::random()
}

/// Claim number `n` of the run `salt`: its `(payer, nonce)` is distinct for every `(salt, n)`,
/// valid for an hour, with fingerprint [`FINGERPRINT`].
pub fn claim(salt: u64, n: u64) -> ClaimRequest {
    let mut payer = [0u8; 20];
    payer[..8].copy_from_slice(&salt.to_be_bytes());
    payer[12..].copy_from_slice(&(n % 7).to_be_bytes());
    let mut nonce = [0u8; 32];
    nonce[..8].copy_from_slice(&salt.to_be_bytes());
    nonce[24..].copy_from_slice(&n.to_be_bytes());
    ClaimRequest {
        chain_id: CHAIN_ID,
        asset: to_hex(&ASSET),
        payer: to_hex(&payer),
        nonce: to_hex(&nonce),
        fingerprint: to_hex(&[FINGERPRINT; 32]),
        valid_before: unix_now() + 3600,
    }
}

/// The same authorization bound to another requirements fingerprint.
pub fn with_fingerprint(claim: &ClaimRequest, fingerprint: u8) -> ClaimRequest {
    ClaimRequest {
        fingerprint: to_hex(&[fingerprint; 32]),
        ..claim.clone()
    }
}

/// A short label for an error, for counting: `http 504 outcome_unknown`, `connection`, ...
pub fn error_label(e: &ClientError) -> String {
    match e {
        ClientError::Status { status, body, .. } => {
            format!("http {} {}", status.as_u16(), body.code)
        }
        other => other.kind().to_owned(),
    }
}

/// Claims `req`, starting with node `clients[start % len]` and moving to the next node after any
/// error (every claim is idempotent by content, so a retry after an unknown outcome is safe),
/// until some node answers or [`CLAIM_DEADLINE`] passes. Returns the answer (if any) and every
/// failed attempt as `url: label`.
pub async fn claim_with_retry(
    clients: &[AdminClient],
    start: usize,
    req: &ClaimRequest,
) -> (Option<ClaimResponse>, Vec<String>) {
    let deadline = Instant::now() + CLAIM_DEADLINE;
    let mut errors = Vec::new();
    for attempt in 0.. {
        let client = &clients[(start + attempt) % clients.len()];
        match client.claim(req).await {
            Ok(answer) => return (Some(answer), errors),
            Err(e) => errors.push(format!("{}: {}", client.base_url(), error_label(&e))),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    (None, errors)
}

/// [`claim_with_retry`] that panics when no node answered.
pub async fn claim_answered(
    clients: &[AdminClient],
    start: usize,
    req: &ClaimRequest,
) -> ClaimResponse {
    match claim_with_retry(clients, start, req).await {
        (Some(answer), _) => answer,
        (None, errors) => panic!(
            "claim {} was never answered within {CLAIM_DEADLINE:?}: {errors:?}",
            req.nonce
        ),
    }
}

/// Claims numbers `range` of run `salt` with `concurrency` parallel callers spread over
/// `clients`, retrying as [`claim_with_retry`] does; panics unless every one is accepted.
/// Returns the claims.
pub async fn claim_many(
    clients: &[AdminClient],
    salt: u64,
    range: std::ops::Range<u64>,
    concurrency: usize,
) -> Vec<ClaimRequest> {
    let next = Arc::new(AtomicU64::new(range.start));
    let clients: Arc<[AdminClient]> = clients.into();
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let next = next.clone();
        let clients = clients.clone();
        let end = range.end;
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return done;
                }
                let req = claim(salt, n);
                let answer = claim_answered(&clients, worker + n as usize, &req).await;
                assert_eq!(
                    answer.outcome,
                    ClaimOutcome::Accepted,
                    "fresh claim {n} answered {answer:?}"
                );
                done.push(req);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(unwind(done));
    }
    all
}

/// A task's result, re-raising its panic in the caller.
fn unwind<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task cancelled: {e}"),
    }
}

/// A claim some node answered `accepted`.
#[derive(Clone, Debug)]
pub struct Acked {
    pub claim: ClaimRequest,
    pub log_index: u64,
    /// When the answer arrived.
    pub at: Instant,
}

/// What a [`Writer`] saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Every claim answered `accepted`.
    pub acked: Vec<Acked>,
    /// Failed attempts by kind (each was retried on another node).
    pub errors: BTreeMap<String, usize>,
    /// Fresh claims answered something other than `accepted`: always a bug.
    pub unexpected: Vec<(ClaimRequest, ClaimOutcome)>,
    /// Claims no node answered within [`CLAIM_DEADLINE`] (their outcome is unknown).
    pub abandoned: Vec<(ClaimRequest, Vec<String>)>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    next: AtomicU64,
    report: Mutex<WriterReport>,
}

/// Background workers claiming fresh nonces in a loop, each claim retried on the next node until
/// some node answers (see [`claim_with_retry`]).
pub struct Writer {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Writer {
    /// Starts `workers` workers claiming numbers from `first` on of run `salt`; worker `w`
    /// starts each claim on node `clients[(w + n) % len]`, so every node takes writes.
    pub fn start(clients: Vec<AdminClient>, salt: u64, first: u64, workers: usize) -> Self {
        let shared = Arc::new(Shared {
            next: AtomicU64::new(first),
            ..Shared::default()
        });
        let clients: Arc<[AdminClient]> = clients.into();
        let mut tasks = JoinSet::new();
        for worker in 0..workers {
            let shared = shared.clone();
            let clients = clients.clone();
            tasks.spawn(async move {
                while !shared.stop.load(Ordering::Relaxed) {
                    let n = shared.next.fetch_add(1, Ordering::Relaxed);
                    let req = claim(salt, n);
                    let (answer, errors) =
                        claim_with_retry(&clients, worker + n as usize, &req).await;
                    let at = Instant::now();
                    let mut report = shared.report.lock().expect("report lock");
                    for e in &errors {
                        let kind = e.split_once(": ").map_or(e.as_str(), |(_, k)| k);
                        *report.errors.entry(kind.to_owned()).or_default() += 1;
                    }
                    match answer {
                        Some(answer) if answer.outcome == ClaimOutcome::Accepted => {
                            report.acked.push(Acked {
                                claim: req,
                                log_index: answer.log_index,
                                at,
                            });
                        }
                        Some(answer) => report.unexpected.push((req, answer.outcome)),
                        None => report.abandoned.push((req, errors)),
                    }
                }
            });
        }
        Self { shared, tasks }
    }

    /// Claims acknowledged so far.
    pub fn acked(&self) -> usize {
        self.shared.report.lock().expect("report lock").acked.len()
    }

    /// Claims acknowledged after `t`.
    pub fn acked_since(&self, t: Instant) -> usize {
        let report = self.shared.report.lock().expect("report lock");
        report.acked.iter().filter(|a| a.at > t).count()
    }

    /// Waits until `count` claims were acknowledged in all; panics after `timeout`.
    pub async fn wait_acked(&self, count: usize, timeout: Duration) {
        self.wait_until_acked(count, timeout, || self.acked()).await
    }

    /// Waits until `count` claims were acknowledged after `since`; panics after `timeout`.
    pub async fn wait_acked_since(&self, since: Instant, count: usize, timeout: Duration) {
        self.wait_until_acked(count, timeout, || self.acked_since(since))
            .await
    }

    async fn wait_until_acked(&self, count: usize, timeout: Duration, acked: impl Fn() -> usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let acked = acked();
            if acked >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {acked} of {count} claims acknowledged within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the workers (each finishes its current claim) and returns what they saw.
    pub async fn stop(mut self) -> WriterReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        while let Some(joined) = self.tasks.join_next().await {
            unwind(joined);
        }
        std::mem::take(&mut *self.shared.report.lock().expect("report lock"))
    }
}

/// Proves the cluster holds every claim of `acked`, through `clients`: the same authorization
/// with another fingerprint must answer `replay` (a lost claim would answer `accepted` here),
/// then with its own fingerprint `accepted` (it is bound to the fingerprint it was made with).
/// The order matters: re-claiming with the own fingerprint first would silently re-create a lost
/// claim. Panics naming the first claim that is not held.
pub async fn assert_all_held(clients: &[AdminClient], acked: &[ClaimRequest], concurrency: usize) {
    let clients: Arc<[AdminClient]> = clients.into();
    let work: Arc<[ClaimRequest]> = acked.into();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let (clients, work, next) = (clients.clone(), work.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(req) = work.get(i) else { return };
                let other = with_fingerprint(req, !FINGERPRINT);
                let replay = claim_answered(&clients, worker + i, &other).await;
                assert_eq!(
                    replay.outcome,
                    ClaimOutcome::Replay,
                    "acknowledged claim {} with another fingerprint answered {:?}: \
                     the claim was lost (I7)",
                    req.nonce,
                    replay.outcome
                );
                let same = claim_answered(&clients, worker + i + 1, req).await;
                assert_eq!(
                    same.outcome,
                    ClaimOutcome::Accepted,
                    "acknowledged claim {} with its own fingerprint answered {:?}: \
                     it is no longer bound to its fingerprint",
                    req.nonce,
                    same.outcome
                );
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        unwind(joined);
    }
}
