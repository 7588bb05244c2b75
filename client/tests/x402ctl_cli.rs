//! Runs the real `x402ctl` binary against a tiny in-process imitation of a node (axum) that
//! serves `/admin/status` and `/admin/claims`, fails some claims with 500 and checks the bearer
//! token, plus a closed port standing for a dead node. No network beyond localhost.
//!
//! `pay` and `bench verify|settle` run against a second imitation serving `/verify` and
//! `/settle`. It checks the HTTP plumbing only, not verification: every body must decode with
//! `decode_request` and its signature must recover to `authorization.from` under the domain the
//! requirements name (or the fake answers 400 / `isValid: false` and records the problem).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use x402_client::wire::{
    parse_hex, ClaimOutcome, ClaimRequest, ClaimResponse, ClusterStatus, ErrorBody, NodeStatus,
    Role,
};
use x402_client::x402::eip3009;
use x402_client::x402::evm::eip712_domain;
use x402_client::x402::{
    decode_request, FacilitatorRequest, NetworkRegistry, ReasonCode, SettleResponse, VerifyResponse,
};

const TOKEN: &str = "test-admin-token-5f2a";
const BENCH_FIELDS: [&str; 9] = [
    "ops",
    "seconds",
    "ops_per_sec",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "failovers",
    "max_stall_ms",
];

#[derive(Default)]
struct Fake {
    requests: AtomicU64,
    accepted: AtomicU64,
    replays: AtomicU64,
    nonces: Mutex<HashSet<[u8; 32]>>,
    /// Every n-th claim answers 500 (0 = never).
    fail_every: u64,
}

type Answer<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn error(status: StatusCode, code: &str) -> (StatusCode, Json<ErrorBody>) {
    let body = ErrorBody {
        code: code.into(),
        error: format!("fake node says {code}"),
    };
    (status, Json(body))
}

fn authorized(headers: &HeaderMap) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    let expected = format!("Bearer {TOKEN}");
    match headers.get("authorization") {
        Some(v) if v.as_bytes() == expected.as_bytes() => Ok(()),
        _ => Err(error(StatusCode::UNAUTHORIZED, "unauthorized")),
    }
}

async fn status(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Answer<NodeStatus> {
    authorized(&headers)?;
    Ok(Json(NodeStatus {
        id: 1,
        url: "http://fake:1".into(),
        cluster_id: None,
        role: Role::Leader,
        term: 7,
        leader_id: Some(1),
        committed: Some(fake.accepted.load(Ordering::Relaxed)),
        applied: Some(fake.accepted.load(Ordering::Relaxed)),
        last_log: Some(fake.accepted.load(Ordering::Relaxed)),
        snapshot: None,
        purged: None,
        members: vec![],
        claims: fake.accepted.load(Ordering::Relaxed),
        state_hash: "00".into(),
        breakers: vec![],
        signers: vec![],
        version: Some("0.1.0 (commit fake)".into()),
    }))
}

async fn claims(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(req): Json<ClaimRequest>,
) -> Answer<ClaimResponse> {
    authorized(&headers)?;
    let n = fake.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if fake.fail_every > 0 && n % fake.fail_every == 0 {
        return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }
    let nonce: [u8; 32] =
        parse_hex(&req.nonce).map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request"))?;
    parse_hex::<20>(&req.payer).map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request"))?;
    let fresh = fake
        .nonces
        .lock()
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned"))?
        .insert(nonce);
    let outcome = if fresh {
        fake.accepted.fetch_add(1, Ordering::Relaxed);
        ClaimOutcome::Accepted
    } else {
        fake.replays.fetch_add(1, Ordering::Relaxed);
        ClaimOutcome::Replay
    };
    Ok(Json(ClaimResponse {
        outcome,
        log_index: n,
    }))
}

/// Starts a fake node on a free localhost port.
async fn start_fake(fail_every: u64) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        fail_every,
        ..Fake::default()
    });
    let app = Router::new()
        .route("/admin/status", get(status))
        .route("/admin/claims", post(claims))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

/// A localhost URL nothing listens on: bound, then released.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Runs x402ctl with a clean environment plus `env`.
async fn x402ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402ctl"));
    cmd.args(args)
        .env_remove("X402_NODES")
        .env_remove("X402_ADMIN_TOKEN")
        .env_remove("X402_PAYER_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Parses the bench JSON and checks it has exactly the report's fields, all numbers.
fn bench_json(out: &Output) -> serde_json::Map<String, Value> {
    let text = stdout(out);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    let Value::Object(map) = serde_json::from_str::<Value>(&text).unwrap() else {
        panic!("not an object: {text}")
    };
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = BENCH_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for (k, v) in &map {
        assert!(v.is_number(), "{k} is not a number: {v}");
    }
    map
}

fn num(map: &serde_json::Map<String, Value>, key: &str) -> f64 {
    map[key].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_claims_counts_ops_and_errors_through_failures() {
    let (live, fake) = start_fake(7).await;
    let dead = dead_url().await;
    let nodes = format!("{live},{dead}");
    // Nodes and token from the environment, as deploy scripts set them.
    let out = x402ctl(
        &[
            "bench",
            "claims",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--json",
        ],
        &[("X402_NODES", &nodes), ("X402_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let r = bench_json(&out);

    let ops = num(&r, "ops");
    let errors = num(&r, "errors");
    assert!(ops > 0.0, "{r:?}");
    // Every 7th claim on the live node fails with 500. Workers 1 and 3 start on the dead node:
    // refused connections are failovers (nothing sent), not errors.
    assert!(errors >= 2.0, "{r:?}");
    assert!(num(&r, "failovers") >= 2.0, "{r:?}");
    let accepted = fake.accepted.load(Ordering::Relaxed) as f64;
    // Claims in flight when time ran out were accepted by the node but not counted.
    assert!(
        ops <= accepted && accepted <= ops + 4.0,
        "{ops} vs {accepted}"
    );
    assert_eq!(fake.replays.load(Ordering::Relaxed), 0, "nonces repeated");
    let seconds = num(&r, "seconds");
    assert!((1.0..3.0).contains(&seconds), "{r:?}");
    assert!(
        (num(&r, "ops_per_sec") - ops / seconds).abs() < 1.0,
        "{r:?}"
    );
    assert!(num(&r, "p50_ms") <= num(&r, "p99_ms"));
    assert!(num(&r, "p99_ms") <= num(&r, "max_ms"));
    assert!(num(&r, "max_stall_ms") < 1000.0, "{r:?}");
    // Error kinds go to stderr, never the token.
    let err = stderr(&out);
    assert!(
        err.contains("http_5xx") && !err.contains("not_connected"),
        "{err}"
    );
    assert!(!err.contains(TOKEN) && !stdout(&out).contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_claims_with_a_wrong_token_fails_but_still_reports() {
    let (live, fake) = start_fake(0).await;
    let out = x402ctl(
        &[
            "bench",
            "claims",
            "--nodes",
            &live,
            "--token",
            "wrong",
            "--concurrency",
            "2",
            "--duration",
            "0.3",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let r = bench_json(&out);
    assert_eq!(num(&r, "ops"), 0.0);
    assert!(num(&r, "errors") >= 2.0);
    assert!(num(&r, "max_stall_ms") >= 300.0, "{r:?}");
    assert_eq!(fake.accepted.load(Ordering::Relaxed), 0);
    assert!(stderr(&out).contains("http_4xx"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_claims_text_summary() {
    let (live, _fake) = start_fake(0).await;
    let out = x402ctl(
        &[
            "bench",
            "claims",
            "--nodes",
            &live,
            "--concurrency",
            "2",
            "--duration",
            "0.3",
        ],
        &[("X402_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("bench claims: 1 node(s), 2 worker(s)"),
        "{text}"
    );
    assert!(text.contains("errors     0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_live_and_unreachable_nodes() {
    let (live, _fake) = start_fake(0).await;
    let dead = dead_url().await;
    let nodes = format!("{live},{dead}");
    let env = [("X402_ADMIN_TOKEN", TOKEN)];

    let out = x402ctl(&["status", "--json", "--nodes", &nodes], &env).await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let status: ClusterStatus = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].role, Role::Leader);
    assert_eq!(status.unreachable.len(), 1);
    assert_eq!(status.unreachable[0].url, dead);

    let out = x402ctl(&["status", "--nodes", &nodes], &env).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("ID  URL"), "{text}");
    assert!(
        text.contains(" leader ") && text.contains("unreachable: "),
        "{text}"
    );

    // Nobody answering is a failure, and still valid JSON.
    let out = x402ctl(&["status", "--json", "--nodes", &dead], &env).await;
    assert!(!out.status.success());
    let status: ClusterStatus = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(status.nodes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_nodes_is_a_clear_error() {
    let out = x402ctl(&["status"], &[]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("X402_NODES"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// pay, bench verify, bench settle

/// anvil's second dev key and its address.
const PAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const ASSET: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
/// Amounts the fake facilitator treats specially.
const AMOUNT_TOO_POOR: &str = "666";
const AMOUNT_PENDING: &str = "777";

#[derive(Default)]
struct FakeFacilitator {
    verified: AtomicU64,
    settled: AtomicU64,
    /// Bodies that did not decode or whose signature did not recover, with why.
    problems: Mutex<Vec<String>>,
    /// Nonces verified so far, and how many arrived a second time.
    nonces: Mutex<HashSet<[u8; 32]>>,
    repeated: AtomicU64,
    payers: Mutex<HashSet<String>>,
    versions: Mutex<HashSet<u8>>,
    /// Every body, by endpoint, in arrival order.
    bodies: Mutex<Vec<(&'static str, Vec<u8>)>>,
    /// Requests that carried an `Authorization` header (the admin token must not be sent).
    with_authorization: AtomicU64,
}

type Reply = (StatusCode, Json<Value>);

impl FakeFacilitator {
    /// Decodes the body and recovers its signer; records and answers any problem.
    fn check(
        &self,
        endpoint: &'static str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<FacilitatorRequest, Reply> {
        if headers.contains_key("authorization") {
            self.with_authorization.fetch_add(1, Ordering::Relaxed);
        }
        self.bodies.lock().unwrap().push((endpoint, body.to_vec()));
        let request = decode_request(body).map_err(|e| self.problem(400, e.to_string()))?;
        self.versions.lock().unwrap().insert(request.x402_version());
        let chain = request
            .chain_id(&NetworkRegistry::builtin())
            .map_err(|e| self.problem(400, e.to_string()))?;
        let Some(names) = eip712_domain(request.extra()) else {
            return Err(self.problem(400, "no EIP-712 domain in extra".into()));
        };
        let domain = eip3009::domain(
            names.name,
            names.version,
            chain.0,
            alloy::primitives::Address::from(*request.asset().as_bytes()),
        );
        let payload = request.payload();
        let typed = eip3009::typed_authorization(&payload.authorization);
        match eip3009::recover_signer(&typed, &domain, payload.signature.as_bytes()) {
            Ok(signer) if signer == typed.from => {}
            other => return Err(self.problem(200, format!("signature recovers to {other:?}"))),
        }
        if payload.authorization.to != *request.pay_to()
            || payload.authorization.value != request.required_amount()
            || request.payload_network() != request.network()
        {
            return Err(self.problem(200, "authorization does not match the requirements".into()));
        }
        self.payers
            .lock()
            .unwrap()
            .insert(payload.authorization.from.to_string());
        Ok(request)
    }

    /// Answers like the node: 400 for a body that is not a valid request, 200 for a payment
    /// that fails a check, both `{isValid: false, invalidReason, invalidMessage}`.
    fn problem(&self, status: u16, why: String) -> Reply {
        self.problems.lock().unwrap().push(why.clone());
        let (status, reason) = if status == 400 {
            (StatusCode::BAD_REQUEST, ReasonCode::InvalidPayload)
        } else {
            (StatusCode::OK, ReasonCode::InvalidExactEvmSignature)
        };
        let answer = VerifyResponse::invalid(reason, None).with_message(why);
        (status, Json(serde_json::to_value(answer).unwrap()))
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }
}

fn payer_of(request: &FacilitatorRequest) -> String {
    request.payload().authorization.from.to_string()
}

async fn fake_verify(
    State(fake): State<Arc<FakeFacilitator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    let request = match fake.check("verify", &headers, &body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let answer = if request.required_amount().to_string() == AMOUNT_TOO_POOR {
        VerifyResponse::invalid(
            ReasonCode::InvalidExactEvmInsufficientBalance,
            Some(payer_of(&request)),
        )
    } else {
        let fresh = fake
            .nonces
            .lock()
            .unwrap()
            .insert(*request.payload().authorization.nonce.as_bytes());
        if !fresh {
            fake.repeated.fetch_add(1, Ordering::Relaxed);
        }
        fake.verified.fetch_add(1, Ordering::Relaxed);
        VerifyResponse::valid(payer_of(&request))
    };
    (StatusCode::OK, Json(serde_json::to_value(answer).unwrap()))
}

/// "Settles" with the nonce as the transaction hash, so a test can tell which payment it was.
async fn fake_settle(
    State(fake): State<Arc<FakeFacilitator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    let request = match fake.check("settle", &headers, &body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let tx = request.payload().authorization.nonce.to_string();
    let answer = if request.required_amount().to_string() == AMOUNT_PENDING {
        SettleResponse::pending(tx, request.network(), payer_of(&request))
    } else {
        fake.settled.fetch_add(1, Ordering::Relaxed);
        SettleResponse::success(tx, request.network(), payer_of(&request))
            .with_amount(request.required_amount())
    };
    (StatusCode::OK, Json(serde_json::to_value(answer).unwrap()))
}

async fn start_facilitator() -> (String, Arc<FakeFacilitator>) {
    let fake = Arc::new(FakeFacilitator::default());
    let app = Router::new()
        .route("/verify", post(fake_verify))
        .route("/settle", post(fake_settle))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

/// `command` followed by the requirement flags (v2 on anvil's chain) for `amount`.
fn paying<'a>(command: &[&'a str], amount: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    paying_on(command, "eip155:31337", amount, extra)
}

/// `command` followed by the requirement flags on `network` for `amount`.
fn paying_on<'a>(
    command: &[&'a str],
    network: &'a str,
    amount: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let terms = [
        "--network",
        network,
        "--asset",
        ASSET,
        "--pay-to",
        PAY_TO,
        "--amount",
        amount,
    ];
    command
        .iter()
        .chain(terms.iter())
        .chain(extra.iter())
        .copied()
        .collect()
}

fn assert_key_not_shown(out: &Output) {
    let digits = PAYER_KEY.trim_start_matches("0x");
    assert!(!stdout(out).contains(digits) && !stderr(out).contains(digits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_verifies_then_settles_the_same_payment_on_a_live_node() {
    let (live, fake) = start_facilitator().await;
    let dead = dead_url().await;
    let nodes = format!("{dead},{live}");
    let out = x402ctl(
        &paying(&["pay", "--nodes", &nodes], "10000", &[]),
        &[("X402_PAYER_KEY", PAYER_KEY), ("X402_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(fake.problems(), Vec::<String>::new());
    let text = stdout(&out);
    let mut lines = text.lines();
    let valid = lines.next().unwrap();
    let nonce = valid
        .strip_prefix(&format!("valid: payer {PAYER}, nonce "))
        .unwrap_or_else(|| panic!("{text}"));
    // The fake settles with the nonce as the hash: this is the payment that was verified.
    assert_eq!(
        lines.next(),
        Some(format!("settled {nonce}").as_str()),
        "{text}"
    );
    assert_eq!(lines.next(), None);
    assert_eq!(
        (
            fake.verified.load(Ordering::Relaxed),
            fake.settled.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
    let bodies = fake.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!((bodies[0].0, bodies[1].0), ("verify", "settle"));
    assert_eq!(bodies[0].1, bodies[1].1, "settle sends the verified body");
    let request = decode_request(&bodies[0].1).unwrap();
    assert_eq!(request.x402_version(), 2);
    assert_eq!(request.max_timeout_seconds(), 60);
    let auth = &request.payload().authorization;
    assert_eq!(auth.valid_before_secs() - auth.valid_after_secs(), 660);
    assert_eq!(
        fake.with_authorization.load(Ordering::Relaxed),
        0,
        "no admin token"
    );
    assert_key_not_shown(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_v1_verify_only_with_a_key_file_prints_json() {
    let (live, fake) = start_facilitator().await;
    let dir = std::env::temp_dir().join(format!("x402ctl-pay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("payer.key");
    std::fs::write(&key_file, format!("{PAYER_KEY}\n")).unwrap();
    let key_path = key_file.to_str().unwrap();
    let out = x402ctl(
        &[
            "pay",
            "--nodes",
            &live,
            "--x402-version",
            "1",
            "--network",
            "base-sepolia",
            "--asset",
            ASSET,
            "--pay-to",
            PAY_TO,
            "--amount",
            "10000",
            "--token-name",
            "USDC",
            "--resource",
            "http://shop.example/item",
            "--payer-key-file",
            key_path,
            "--verify-only",
            "--json",
        ],
        // A wrong key in the environment: the file wins.
        &[(
            "X402_PAYER_KEY",
            "0x1111111111111111111111111111111111111111111111111111111111111111",
        )],
    )
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(fake.problems(), Vec::<String>::new());
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["payer"], PAYER);
    assert_eq!(json["verify"]["isValid"], true);
    assert_eq!(json["verify"]["payer"], PAYER);
    assert!(json.get("settle").is_none(), "{json}");
    assert_eq!(fake.settled.load(Ordering::Relaxed), 0);
    let bodies = fake.bodies.lock().unwrap().clone();
    let request = decode_request(&bodies[0].1).unwrap();
    assert_eq!(request.x402_version(), 1);
    assert_eq!(request.network(), "base-sepolia");
    assert_eq!(
        request.payload().authorization.nonce.to_string(),
        json["nonce"]
    );
    let FacilitatorRequest::V1(v1) = request else {
        panic!("not v1")
    };
    assert_eq!(
        v1.payment_requirements.resource.as_deref(),
        Some("http://shop.example/item")
    );
    assert_key_not_shown(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_fails_when_invalid_or_pending() {
    let (live, fake) = start_facilitator().await;
    let env = [("X402_PAYER_KEY", PAYER_KEY)];
    let out = x402ctl(
        &paying(&["pay", "--nodes", &live], AMOUNT_TOO_POOR, &[]),
        &env,
    )
    .await;
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.starts_with("invalid: invalid_exact_evm_insufficient_balance (payer "),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        1,
        "no settlement after an invalid verify"
    );

    let out = x402ctl(
        &paying(&["pay", "--nodes", &live], AMOUNT_PENDING, &["--json"]),
        &env,
    )
    .await;
    assert!(!out.status.success());
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["settle"]["success"], false);
    assert_eq!(json["settle"]["errorReason"], "settlement_pending");
    assert_eq!(json["settle"]["transaction"], json["nonce"]);

    let out = x402ctl(
        &paying(&["pay", "--nodes", &live], AMOUNT_PENDING, &[]),
        &env,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("settlement pending: transaction 0x"),
        "{}",
        stdout(&out)
    );
    assert_eq!(fake.problems(), Vec::<String>::new());
    assert_eq!(fake.settled.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_needs_a_key_and_a_reachable_node() {
    let (live, fake) = start_facilitator().await;
    let out = x402ctl(&paying(&["pay", "--nodes", &live], "10000", &[]), &[]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("X402_PAYER_KEY"), "{}", stderr(&out));
    assert!(fake.bodies.lock().unwrap().is_empty());

    let out = x402ctl(
        &paying(&["pay", "--nodes", &live], "10000", &[]),
        &[("X402_PAYER_KEY", "0xnot-a-key")],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a 32-byte hex private key"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("not-a-key"));

    let dead = dead_url().await;
    let out = x402ctl(
        &paying(&["pay", "--nodes", &dead], "10000", &[]),
        &[("X402_PAYER_KEY", PAYER_KEY)],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no node could be reached"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_verify_sends_distinct_signed_payments_and_reports_like_claims() {
    let (live, fake) = start_facilitator().await;
    let dead = dead_url().await;
    let nodes = format!("{live},{dead}");
    // No payer key: a random payer signs.
    let out = x402ctl(
        &paying(
            &["bench", "verify", "--nodes", &nodes],
            "10000",
            &[
                "--concurrency",
                "4",
                "--duration",
                "1",
                "--payments",
                "3000",
                "--json",
            ],
        ),
        &[],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let r = bench_json(&out);
    assert_eq!(fake.problems(), Vec::<String>::new());
    let ops = num(&r, "ops");
    let verified = fake.verified.load(Ordering::Relaxed) as f64;
    assert!(ops > 0.0, "{r:?}");
    // Payments in flight when time ran out were verified but not counted.
    assert!(
        ops <= verified && verified <= ops + 4.0,
        "{ops} vs {verified}"
    );
    // Workers 1 and 3 start on the dead node: they fail over to the live one, nothing sent.
    assert!(num(&r, "failovers") >= 2.0, "{r:?}");
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}");
    assert_eq!(
        fake.repeated.load(Ordering::Relaxed),
        0,
        "a payment was sent twice"
    );
    let payers = fake.payers.lock().unwrap().clone();
    assert_eq!(payers.len(), 1, "one payer signs the whole pool");
    assert!(!payers.contains(PAYER));
    let err = stderr(&out);
    assert!(
        err.contains("random payer") && err.contains("signed 3000 payments"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_settle_stops_when_the_payments_run_out() {
    let (live, fake) = start_facilitator().await;
    let out = x402ctl(
        &paying_on(
            &["bench", "settle", "--nodes", &live],
            "base-sepolia",
            "10000",
            &[
                "--x402-version",
                "1",
                "--concurrency",
                "2",
                "--duration",
                "30",
                "--payments",
                "40",
            ],
        ),
        &[("X402_PAYER_KEY", PAYER_KEY)],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("bench settle: 1 node(s), 2 worker(s)"),
        "{text}"
    );
    assert!(
        text.contains("ops        40 ") && text.contains("errors     0"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("all 40 pre-signed payments were used"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fake.problems(), Vec::<String>::new());
    assert_eq!(fake.settled.load(Ordering::Relaxed), 40);
    assert_eq!(*fake.versions.lock().unwrap(), HashSet::from([1]));
    assert_eq!(
        *fake.payers.lock().unwrap(),
        HashSet::from([PAYER.to_owned()])
    );
    assert_key_not_shown(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_refusals_by_reason_and_settle_needs_a_key() {
    let (live, fake) = start_facilitator().await;
    let out = x402ctl(
        &paying(
            &["bench", "verify", "--nodes", &live],
            AMOUNT_TOO_POOR,
            &[
                "--concurrency",
                "2",
                "--duration",
                "0.3",
                "--payments",
                "200",
                "--json",
            ],
        ),
        &[("X402_PAYER_KEY", PAYER_KEY)],
    )
    .await;
    assert!(
        !out.status.success(),
        "nothing valid: the run measured nothing"
    );
    let r = bench_json(&out);
    assert_eq!(num(&r, "ops"), 0.0);
    assert!(num(&r, "errors") >= 2.0, "{r:?}");
    assert!(
        stderr(&out).contains("invalid_exact_evm_insufficient_balance"),
        "{}",
        stderr(&out)
    );

    let out = x402ctl(
        &paying(
            &["bench", "settle", "--nodes", &live],
            "10000",
            &["--payments", "10"],
        ),
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("X402_PAYER_KEY"), "{}", stderr(&out));
    assert_eq!(fake.settled.load(Ordering::Relaxed), 0);
    assert_eq!(fake.problems(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_comes_back_as_the_nodes_verdict() {
    use x402_client::{FacilitatorClient, HttpConfig};
    let (live, fake) = start_facilitator().await;
    let client = FacilitatorClient::new(&live, &HttpConfig::default()).unwrap();
    // 400 {isValid: false}: the reason and message, not an HTTP error.
    let answer = client
        .verify_raw(axum::body::Bytes::from_static(b"{\"x402Version\": 2}"))
        .await
        .unwrap();
    assert!(!answer.is_valid);
    assert_eq!(answer.invalid_reason, Some(ReasonCode::InvalidPayload));
    assert!(
        answer.explain().contains("paymentPayload"),
        "{}",
        answer.explain()
    );
    assert_eq!(fake.problems().len(), 1, "the fake does check bodies");
    // A 404 (no such endpoint) stays an HTTP error.
    let err = client.supported().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
}
