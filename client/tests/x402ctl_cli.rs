//! Runs the real `x402ctl` binary against a tiny in-process imitation of a node (axum) that
//! serves `/admin/status` and `/admin/claims`, fails some claims with 500 and checks the bearer
//! token, plus a closed port standing for a dead node. No network beyond localhost.

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

const TOKEN: &str = "test-admin-token-5f2a";
const BENCH_FIELDS: [&str; 8] = [
    "ops",
    "seconds",
    "ops_per_sec",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "errors",
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
        .env_remove("X402_ADMIN_TOKEN");
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
    // Workers 1 and 3 start on the dead node; every 7th claim on the live one fails with 500.
    assert!(errors >= 2.0, "{r:?}");
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
        err.contains("connection") && err.contains("http_5xx"),
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
