//! Who may call the facilitator, how often, and how repeated requests are answered, end to end:
//! 3 real `x402-node` processes and a real anvil (our EIP-3009 token), each test on a fresh
//! cluster.
//!
//! - A cluster-wide rate limit per route holds while the leader is `kill -9`ed in the middle of
//!   a concurrent run: never more admissions (nor claims) than the limit, and the limit is
//!   reachable; 429 answers carry `Retry-After` and `X-RateLimit-*`.
//! - A limit per API key on `GET /supported` (leased quota slices): at most the limit for one
//!   key, another key is unaffected.
//! - API keys: missing (401), wrong (401), revoked (403), not Bearer (401), good in either
//!   header (200); refused requests leave no claim on any node.
//! - `Idempotency-Key`: replayed on another node, 422 for another request (or another path),
//!   400 for a malformed key, 409 while the first request is in flight, and a replayed settlement
//!   moves tokens once.
//! - Shared circuit breakers: an RPC endpoint that fails opens the breaker for every node in one
//!   epoch, calls fail fast while it is open, and it closes again for everyone once the endpoint
//!   heals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use hyper::Method;
use sha2::{Digest, Sha256};
use x402_client::{HttpClient, HttpConfig};
use x402_protocol::wire::NodeStatus;
use x402_protocol::x402::payment::encode;
use x402_tests::devchain::{
    facilitator_toml_with, signer_keys_csv, AnvilOptions, DevChain, Mining, SIGNERS,
    SIGNER_KEYS_ENV,
};
use x402_tests::http::{get, post, send};
use x402_tests::rpc_proxy::{ProxyMode, RpcProxy};
use x402_tests::{ClusterOptions, LocalCluster};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A freshly signed v2 payment from the dev payer (body) and its nonce.
fn payment(chain: &DevChain) -> (Vec<u8>, B256) {
    let request = chain.signed_payment(2, "http://shop.test/paid");
    let nonce = B256::from(*request.payload().authorization.nonce.as_bytes());
    (encode(&request).expect("encode"), nonce)
}

/// A 3-node cluster serving `chain` through `rpc_url`, with `facilitator_keys` in
/// `[facilitator]`, `network_keys` in its network and `extra` TOML (access settings).
async fn cluster_on(
    chain: &DevChain,
    rpc_url: &str,
    facilitator_keys: &str,
    network_keys: &str,
    extra: &str,
) -> LocalCluster {
    let network = chain.network();
    let v1_name = chain.v1_name();
    let facilitator = facilitator_toml_with(
        &[(&network, v1_name.as_deref(), rpc_url, &chain.token)],
        SIGNER_KEYS_ENV,
        facilitator_keys,
        network_keys,
    );
    LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(facilitator)
            .toml(extra)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await
}

/// A client for many concurrent requests, with a deadline longer than a failover.
fn load_client(timeout: Duration) -> HttpClient {
    HttpClient::new(&HttpConfig {
        timeout,
        connect_timeout: Duration::from_secs(2),
        max_idle_per_host: 32,
        ..HttpConfig::default()
    })
    .expect("an http:// client reads no roots")
}

/// Node `id`'s `/metrics` lines that start with `prefix`.
async fn metric_lines(cluster: &LocalCluster, id: u64, prefix: &str) -> Vec<String> {
    let reply = get(cluster, id, "/metrics", &[]).await;
    String::from_utf8_lossy(&reply.bytes)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The value of a metric line (`name{labels} value`).
fn metric_value(line: &str) -> f64 {
    line.split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in metric line {line:?}"))
}

/// A random API key and the SHA-256 the config lists for it.
fn api_key() -> (String, String) {
    let key = format!("sk_test_{}", hex::encode(rand::random::<[u8; 24]>()));
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    (key, digest)
}

/// Every node's claims count (after they converged).
async fn claims_everywhere(cluster: &LocalCluster) -> Vec<u64> {
    cluster
        .wait_converged()
        .await
        .iter()
        .map(|s| s.claims)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. A cluster-wide limit with the leader killed mid-run.

#[derive(Debug, Default)]
struct Tally {
    /// 200 with `isValid: true`.
    admitted: u64,
    /// 429.
    limited: u64,
    /// 200 with `isValid: false` (none expected: every payment is distinct and valid).
    invalid: Vec<String>,
    /// 5xx or no answer (the outcome is unknown: maybe claimed, maybe not).
    unknown: u64,
    /// Any other status.
    other: Vec<String>,
    /// Answers whose headers break the contract.
    bad_headers: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_holds_for_the_cluster_with_a_node_killed() {
    const LIMIT: u64 = 40;
    const REQUESTS: usize = 200;
    const WORKERS: usize = 12;
    let chain = DevChain::start(31337).await;
    // One window longer than the test: the whole run may admit at most LIMIT.
    let limits = format!(
        "[[rate_limits]]\nname = \"per-route\"\nper = \"route\"\nlimit = {LIMIT}\n\
         window_ms = 600000\nroutes = [\"/verify\"]\n"
    );
    let mut cluster = cluster_on(
        &chain,
        chain.anvil.url(),
        "onchain_checks = false",
        "",
        &limits,
    )
    .await;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..REQUESTS).map(|_| payment(&chain).0).collect());
    let leader = cluster.leader_id().await;

    // Workers take the next payment and send it to the next live node, round-robin.
    let live: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        cluster
            .ids()
            .iter()
            .map(|id| cluster.url(*id).to_owned())
            .collect(),
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let http = load_client(Duration::from_secs(15));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (bodies, live, next, admitted, tally, http) = (
            bodies.clone(),
            live.clone(),
            next.clone(),
            admitted.clone(),
            tally.clone(),
            http.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= bodies.len() {
                    return;
                }
                let url = {
                    let live = live.lock().unwrap();
                    live[i % live.len()].clone()
                };
                let reply = send(
                    &http,
                    &url,
                    Method::POST,
                    "/verify",
                    &[("content-type", "application/json")],
                    bodies[i].clone(),
                )
                .await;
                let mut t = tally.lock().unwrap();
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(_) => {
                        t.unknown += 1;
                        continue;
                    }
                };
                match reply.status.as_u16() {
                    200 if reply.json["isValid"] == true => {
                        t.admitted += 1;
                        admitted.fetch_add(1, Ordering::SeqCst);
                        if reply.header("x-ratelimit-limit") != Some("40") {
                            t.bad_headers.push(format!("admitted: {:?}", reply.headers));
                        }
                    }
                    200 => t.invalid.push(reply.json.to_string()),
                    429 => {
                        t.limited += 1;
                        let retry_after = reply
                            .header("retry-after")
                            .and_then(|v| v.parse::<u64>().ok());
                        let ok = retry_after.is_some_and(|s| s >= 1)
                            && reply.header("x-ratelimit-limit") == Some("40")
                            && reply.header("x-ratelimit-remaining") == Some("0")
                            && reply.header("x-ratelimit-reset").is_some()
                            && reply.code() == "rate_limited";
                        if !ok {
                            t.bad_headers
                                .push(format!("429: {:?} {}", reply.headers, reply.json));
                        }
                    }
                    s if s >= 500 => t.unknown += 1,
                    s => t.other.push(format!("{s}: {}", reply.json)),
                }
            }
        }));
    }

    // About a third of the way (of the run or of the limit, whichever comes first), kill the
    // leader; the workers go on with the survivors.
    let started = Instant::now();
    while next.load(Ordering::SeqCst) < REQUESTS / 3
        && (admitted.load(Ordering::SeqCst) as u64) < LIMIT / 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run does not progress"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let leader_url = cluster.url(leader).to_owned();
    live.lock().unwrap().retain(|u| *u != leader_url);
    let at = (next.load(Ordering::SeqCst), admitted.load(Ordering::SeqCst));
    cluster.kill9(leader);
    eprintln!(
        "killed the leader (node {leader}) after {} requests sent, {} admitted",
        at.0, at.1
    );
    for w in workers {
        w.await.expect("worker");
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "answers: {} admitted, {} limited, {} unknown, {} invalid, {} other ({:?})",
        t.admitted,
        t.limited,
        t.unknown,
        t.invalid.len(),
        t.other.len(),
        started.elapsed()
    );
    eprintln!(
        "largest overshoot seen: {}",
        t.admitted.saturating_sub(LIMIT)
    );
    assert!(
        t.admitted <= LIMIT,
        "the cluster admitted {} > {LIMIT}",
        t.admitted
    );
    assert!(
        t.admitted >= 30,
        "the limit should be reachable: only {} admitted ({} unknown)",
        t.admitted,
        t.unknown
    );
    assert!(t.limited > 0, "nothing was limited: {t:?}");
    assert!(
        t.invalid.is_empty(),
        "valid payments refused: {:?}",
        t.invalid
    );
    assert!(t.other.is_empty(), "unexpected answers: {:?}", t.other);
    assert!(t.bad_headers.is_empty(), "headers: {:?}", t.bad_headers);
    assert_eq!(
        t.admitted + t.limited + t.unknown,
        REQUESTS as u64,
        "every request is counted once"
    );

    if (at.1 as u64) < LIMIT - 10 {
        assert!(
            t.admitted > at.1 as u64,
            "nothing was admitted after the leader was killed"
        );
    }

    // The replicated state agrees: a refused request claimed nothing.
    let survivors = cluster.running_ids();
    let statuses = cluster.wait_converged_among(&survivors).await;
    for s in &statuses {
        eprintln!("node {}: {} claims", s.id, s.claims);
        assert!(
            s.claims <= t.admitted + t.unknown,
            "node {} holds {} claims, more than the {} admitted and {} unknown answers: \
             a request answered 429 claimed",
            s.id,
            s.claims,
            t.admitted,
            t.unknown
        );
        assert!(
            s.claims <= LIMIT,
            "node {} holds {} claims > {LIMIT}: a limited request claimed",
            s.id,
            s.claims
        );
        assert!(
            s.claims >= t.admitted,
            "node {} holds {} claims < {} admitted",
            s.id,
            s.claims,
            t.admitted
        );
    }
    eprintln!(
        "largest overshoot in claims: {}",
        statuses
            .iter()
            .map(|s| s.claims.saturating_sub(LIMIT))
            .max()
            .unwrap_or(0)
    );
    // Still limited after the run, on every survivor (the pre-check sees the full window).
    for &id in &survivors {
        let (body, _) = payment(&chain);
        let reply = post(&cluster, id, "/verify", &[], &body).await;
        assert_eq!(reply.status, 429, "node {id}: {}", reply.json);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A limit per API key on GET /supported (leased slices).

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_per_api_key_with_leases_on_supported() {
    const LIMIT: usize = 25;
    const REQUESTS: usize = 60;
    let chain = DevChain::start(31337).await;
    let (key_a, digest_a) = api_key();
    let (key_b, digest_b) = api_key();
    let access = format!(
        "[auth]\nrequired = true\nprotect_supported = true\n\n\
         [[auth.api_keys]]\nid = \"a\"\nsha256 = \"{digest_a}\"\n\n\
         [[auth.api_keys]]\nid = \"b\"\nsha256 = \"{digest_b}\"\n\n\
         [[rate_limits]]\nname = \"per-key\"\nper = \"api_key\"\nlimit = {LIMIT}\n\
         window_ms = 600000\nroutes = [\"/supported\"]\n"
    );
    let cluster = cluster_on(&chain, chain.anvil.url(), "", "", &access).await;
    let ids = cluster.ids();

    let http = load_client(Duration::from_secs(15));
    let bearer_a = format!("Bearer {key_a}");
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let http = http.clone();
        let url = cluster.url(ids[i % ids.len()]).to_owned();
        let auth = bearer_a.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &http,
                &url,
                Method::GET,
                "/supported",
                &[("authorization", &auth)],
                Vec::new(),
            )
            .await
        }));
    }
    let (mut ok, mut limited, mut other) = (0usize, 0usize, Vec::new());
    for task in tasks {
        match task.await.expect("task") {
            Ok(r) if r.status == 200 => {
                ok += 1;
                assert_eq!(r.header("x-ratelimit-limit"), Some("25"), "{:?}", r.headers);
                assert!(r.json["kinds"].is_array(), "{}", r.json);
            }
            Ok(r) if r.status == 429 => {
                limited += 1;
                assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
                assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
            }
            Ok(r) => other.push(format!("{}: {}", r.status, r.json)),
            Err(e) => other.push(e.to_string()),
        }
    }
    eprintln!(
        "key A: {ok} answered 200, {limited} limited, {} other",
        other.len()
    );
    eprintln!("largest overshoot seen: {}", ok.saturating_sub(LIMIT));
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(ok <= LIMIT, "{ok} > {LIMIT} answered for key A");
    assert!(
        ok >= 20,
        "the limit should be reachable: only {ok} answered"
    );
    assert_eq!(ok + limited, REQUESTS);

    // Key A stays limited everywhere; key B has its own counter; no key is refused.
    for &id in &ids {
        let a = get(&cluster, id, "/supported", &[("authorization", &bearer_a)]).await;
        assert_eq!(a.status, 429, "node {id}: key A: {}", a.json);
        let b = get(&cluster, id, "/supported", &[("x-api-key", &key_b)]).await;
        assert_eq!(b.status, 200, "node {id}: key B: {}", b.json);
        assert_eq!(b.header("x-ratelimit-limit"), Some("25"));
        let none = get(&cluster, id, "/supported", &[]).await;
        assert_eq!(none.status, 401, "node {id}: no key: {}", none.json);
        assert_eq!(none.code(), "api_key_missing");
    }

    let mut leases = 0.0;
    for &id in &ids {
        for line in metric_lines(&cluster, id, "x402_rate_leases_taken_total").await {
            leases += metric_value(&line);
        }
    }
    eprintln!("leases taken by the cluster: {leases}");
    assert!(leases >= 1.0, "GET /supported is counted with leases");
}

// ---------------------------------------------------------------------------------------------
// 3. API keys.

/// What is sent, its headers, and the status and code expected.
type AuthCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_missing_wrong_revoked() {
    let chain = DevChain::start(31337).await;
    let (good, good_digest) = api_key();
    let (revoked, revoked_digest) = api_key();
    let (wrong, _) = api_key();
    let access = format!(
        "[auth]\nrequired = true\n\n\
         [[auth.api_keys]]\nid = \"shop\"\nsha256 = \"{good_digest}\"\n\n\
         [[auth.api_keys]]\nid = \"old\"\nsha256 = \"{revoked_digest}\"\nrevoked = true\n"
    );
    let cluster = cluster_on(&chain, chain.anvil.url(), "", "", &access).await;
    let ids = cluster.ids();

    let (body, _) = payment(&chain);
    let bearer = |k: &str| format!("Bearer {k}");
    let (bearer_wrong, bearer_revoked, bearer_good) =
        (bearer(&wrong), bearer(&revoked), bearer(&good));
    let cases: Vec<AuthCase> = vec![
        ("no key", vec![], 401, "api_key_missing"),
        (
            "wrong key",
            vec![("authorization", &bearer_wrong)],
            401,
            "api_key_invalid",
        ),
        (
            "wrong key in X-API-Key",
            vec![("x-api-key", &wrong)],
            401,
            "api_key_invalid",
        ),
        (
            "revoked key",
            vec![("authorization", &bearer_revoked)],
            403,
            "api_key_revoked",
        ),
        (
            "revoked key in X-API-Key",
            vec![("x-api-key", &revoked)],
            403,
            "api_key_revoked",
        ),
        (
            "Basic",
            vec![("authorization", "Basic Zm9vOmJhcg==")],
            401,
            "api_key_invalid",
        ),
        (
            "Bearer without a key",
            vec![("authorization", "Bearer ")],
            401,
            "api_key_invalid",
        ),
    ];
    for &id in &ids {
        for path in ["/verify", "/settle"] {
            for (what, headers, status, code) in &cases {
                let reply = post(&cluster, id, path, headers, &body).await;
                assert_eq!(
                    (reply.status.as_u16(), reply.code()),
                    (*status, *code),
                    "{what} on {path} at node {id}: {}",
                    reply.json
                );
            }
        }
        // /supported is not protected by default.
        let supported = get(&cluster, id, "/supported", &[]).await;
        assert_eq!(supported.status, 200, "node {id}: {}", supported.json);
    }
    // Nothing refused left a claim, on any node.
    assert_eq!(claims_everywhere(&cluster).await, vec![0, 0, 0]);

    // The good key, in either header, on different nodes.
    let reply = post(
        &cluster,
        1,
        "/verify",
        &[("authorization", &bearer_good)],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["isValid"], true, "{}", reply.json);
    let (other, _) = payment(&chain);
    let reply = post(&cluster, 2, "/verify", &[("x-api-key", &good)], &other).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["isValid"], true, "{}", reply.json);
    // The same payment again with the key (idempotent), and refused without it.
    let reply = post(&cluster, 3, "/verify", &[("x-api-key", &good)], &body).await;
    assert_eq!(reply.json["isValid"], true, "{}", reply.json);
    let reply = post(&cluster, 3, "/verify", &[], &body).await;
    assert_eq!(reply.status, 401);
    assert_eq!(claims_everywhere(&cluster).await, vec![2, 2, 2]);
}

// ---------------------------------------------------------------------------------------------
// 4. Idempotency-Key.

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_matrix() {
    // Blocks only when asked: a settlement stays in flight until the test mines.
    let chain = DevChain::start_with(AnvilOptions::new(31337).mining(Mining::Manual)).await;
    let cluster = cluster_on(
        &chain,
        chain.anvil.url(),
        "settle_wait_ms = 60000",
        "receipt_timeout_ms = 60000",
        "",
    )
    .await;
    let (p, _) = payment(&chain);
    let (q, _) = payment(&chain);
    let k1 = [("idempotency-key", "\"k1\"")];

    // First use: runs.
    let first = post(&cluster, 1, "/verify", &k1, &p).await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["isValid"], true, "{}", first.json);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same key, same request, another node: the stored answer.
    let again = post(&cluster, 2, "/verify", &k1, &p).await;
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.bytes, first.bytes, "the same answer, byte for byte");
    // Same key, another request: 422, on another node; and for another path.
    let reused = post(&cluster, 3, "/verify", &k1, &q).await;
    assert_eq!(
        (reused.status.as_u16(), reused.code()),
        (422, "idempotency_key_reused"),
        "{}",
        reused.json
    );
    let other_path = post(&cluster, 1, "/settle", &k1, &p).await;
    assert_eq!(
        (other_path.status.as_u16(), other_path.code()),
        (422, "idempotency_key_reused"),
        "{}",
        other_path.json
    );
    // Malformed keys: too long, not ASCII, empty.
    let long = "x".repeat(300);
    let longest = "y".repeat(255);
    for (id, key) in [(1u64, long.as_str()), (2, "schlüssel-ключ"), (3, "\"\"")] {
        let reply = post(&cluster, id, "/verify", &[("idempotency-key", key)], &q).await;
        assert_eq!(
            (reply.status.as_u16(), reply.code()),
            (400, "idempotency_key_invalid"),
            "key {key:?} on node {id}: {}",
            reply.json
        );
    }
    // The longest key allowed is fine (and the refused ones did not touch Q).
    let reply = post(&cluster, 2, "/verify", &[("idempotency-key", &longest)], &q).await;
    assert_eq!(reply.json["isValid"], true, "{}", reply.json);

    // In flight: a settlement waiting for its block holds its key.
    let rpc = chain.token.rpc();
    let pending = || async {
        let mut n = 0;
        for s in SIGNERS {
            n += rpc.pending_nonce_of(s).await;
        }
        n
    };
    let before = pending().await;
    let (r, r_nonce) = payment(&chain);
    let first_settle = {
        let http = load_client(Duration::from_secs(90));
        let url = cluster.url(1).to_owned();
        let r = r.clone();
        tokio::spawn(async move {
            send(
                &http,
                &url,
                Method::POST,
                "/settle",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "k2"),
                ],
                r,
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending().await == before {
        assert!(
            Instant::now() < deadline,
            "the settlement was never broadcast"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let k2 = [("idempotency-key", "k2")];
    let busy = post(&cluster, 2, "/settle", &k2, &r).await;
    assert_eq!(
        (busy.status.as_u16(), busy.code()),
        (409, "idempotency_key_in_flight"),
        "{}",
        busy.json
    );
    assert!(
        !first_settle.is_finished(),
        "the first settlement cannot have finished without a block"
    );
    rpc.mine(1).await;
    let settled = first_settle
        .await
        .expect("task")
        .expect("the first /settle answers");
    assert_eq!(settled.status, 200, "{}", settled.json);
    assert_eq!(settled.json["success"], true, "{}", settled.json);
    let tx = settled.json["transaction"]
        .as_str()
        .expect("a transaction hash")
        .to_owned();
    // Afterwards, on a third node: the stored success, same transaction.
    let replayed = post(&cluster, 3, "/settle", &k2, &r).await;
    assert_eq!(replayed.status, 200, "{}", replayed.json);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.bytes, settled.bytes);
    assert_eq!(replayed.json["transaction"], tx.as_str());
    // Nothing was sent again: mine whatever might be pending, one Transfer.
    rpc.mine(1).await;
    let transfers = chain
        .token
        .transfers_of_authorization(chain.payer().address(), r_nonce)
        .await;
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(transfers[0].tx_hash.to_string(), tx);
    assert_eq!(pending().await, before + 1, "one transaction in all");
}

// ---------------------------------------------------------------------------------------------
// 5. Circuit breakers.

/// The one endpoint's breaker as node `status` shows it.
fn breaker_of(status: &NodeStatus) -> (String, u64, Option<u64>) {
    assert_eq!(
        status.breakers.len(),
        1,
        "node {}: one RPC endpoint: {:?}",
        status.id,
        status.breakers
    );
    let b = &status.breakers[0];
    (b.state.clone(), b.epoch, b.open_until_ms)
}

/// Every observation of (epoch → state, open until): nodes at the same epoch must agree.
#[derive(Default)]
struct Epochs(BTreeMap<u64, (String, Option<u64>)>);

impl Epochs {
    fn see(&mut self, id: u64, (state, epoch, until): &(String, u64, Option<u64>)) {
        let seen = self
            .0
            .entry(*epoch)
            .or_insert_with(|| (state.clone(), *until));
        assert_eq!(
            seen,
            &(state.clone(), *until),
            "node {id} shows epoch {epoch} as {state} {until:?}, another node as {seen:?}"
        );
        let expected_parity = match state.as_str() {
            "open" => epoch % 2 == 1,
            "half_open" => epoch % 2 == 0 && *epoch > 0,
            "closed" => *epoch == 0 || epoch % 2 == 1,
            other => panic!("unknown breaker state {other:?}"),
        };
        assert!(expected_parity, "node {id}: {state} at epoch {epoch}");
    }
}

/// Every node's breaker, once they all show `state` at the same epoch (within `timeout`),
/// sending a verify to each node between polls when `nudge`.
async fn wait_breakers(
    cluster: &LocalCluster,
    chain: &DevChain,
    epochs: &mut Epochs,
    state: &str,
    nudge: bool,
    timeout: Duration,
) -> (u64, Option<u64>) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut views = Vec::new();
        for id in cluster.ids() {
            let view = breaker_of(&cluster.status(id).await);
            epochs.see(id, &view);
            views.push(view);
        }
        let (_, epoch, until) = &views[0];
        if views.iter().all(|v| v.0 == state && v.1 == *epoch) {
            return (*epoch, *until);
        }
        assert!(
            Instant::now() < deadline,
            "the breakers did not all become {state} within {timeout:?}: {views:?}"
        );
        if nudge {
            for id in cluster.ids() {
                let (body, _) = payment(chain);
                post(cluster, id, "/verify", &[], &body).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_opens_and_closes_together() {
    let chain = DevChain::start(31337).await;
    let proxy = RpcProxy::start(chain.anvil.url()).await.expect("proxy");
    let breaker = "[breaker]\nfailures_to_open = 3\nfailure_window_ms = 10000\nopen_ms = 2000\n";
    let cluster = cluster_on(&chain, &proxy.url(), "", "", breaker).await;
    let ids = cluster.ids();
    let mut epochs = Epochs::default();

    // Healthy: payments verify; every node knows the endpoint, closed at epoch 0.
    for &id in &ids {
        let (body, _) = payment(&chain);
        let reply = post(&cluster, id, "/verify", &[], &body).await;
        assert_eq!(reply.json["isValid"], true, "node {id}: {}", reply.json);
        let status = cluster.status(id).await;
        let view = breaker_of(&status);
        assert_eq!((view.0.as_str(), view.1), ("closed", 0), "node {id}");
        let endpoint = &status.breakers[0].endpoint;
        assert_eq!(*endpoint, proxy.url(), "the label is scheme, host and port");
        epochs.see(id, &view);
    }

    // The endpoint fails: verifies on every node until all show it open, at the same epoch.
    proxy.set_mode(ProxyMode::FailHttp503);
    let (body, _) = payment(&chain);
    let reply = post(&cluster, 1, "/verify", &[], &body).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["isValid"], false, "{}", reply.json);
    assert_eq!(
        reply.json["invalidReason"], "unexpected_verify_error",
        "{}",
        reply.json
    );
    let (open_epoch, until) = wait_breakers(
        &cluster,
        &chain,
        &mut epochs,
        "open",
        true,
        Duration::from_secs(15),
    )
    .await;
    let until = until.expect("an open breaker says until when");
    eprintln!("open at epoch {open_epoch} on every node, until {until}");

    // While open: calls fail fast, without reaching the endpoint.
    let requests = proxy.requests();
    for &id in &ids {
        let (body, _) = payment(&chain);
        let reply = post(&cluster, id, "/verify", &[], &body).await;
        assert_eq!(reply.json["isValid"], false, "node {id}: {}", reply.json);
        assert_eq!(
            reply.json["invalidReason"], "unexpected_verify_error",
            "{}",
            reply.json
        );
        let message = reply.json["invalidMessage"].as_str().unwrap_or("");
        assert!(
            message.contains("cannot read the chain"),
            "node {id}: {}",
            reply.json
        );
        if now_ms() < until {
            assert!(
                message.contains("circuit breaker open"),
                "node {id}: {}",
                reply.json
            );
        }
    }
    let reached = proxy.requests() - requests;
    let still_open = now_ms() < until;
    eprintln!("while open: {reached} calls reached the endpoint (still open: {still_open})");
    if still_open {
        assert_eq!(reached, 0, "an open breaker lets nothing through");
    } else {
        // The opening ended meanwhile: a half-open probe per node at most.
        assert!(reached <= 3, "{reached} calls reached an open endpoint");
    }

    // Healed: after open_ms, a probe closes the breaker for everyone.
    proxy.set_mode(ProxyMode::Forward);
    let wait = until.saturating_sub(now_ms()) + 200;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let (closed_epoch, _) = wait_breakers(
        &cluster,
        &chain,
        &mut epochs,
        "closed",
        true,
        Duration::from_secs(15),
    )
    .await;
    eprintln!("closed at epoch {closed_epoch} on every node");
    assert!(
        closed_epoch > open_epoch,
        "closed at {closed_epoch} after open at {open_epoch}"
    );
    for &id in &ids {
        let (body, _) = payment(&chain);
        let reply = post(&cluster, id, "/verify", &[], &body).await;
        assert_eq!(reply.json["isValid"], true, "node {id}: {}", reply.json);
    }

    // The metrics say the same (refreshed every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = metric_lines(&cluster, 2, "x402_breaker_state").await;
        let epoch = metric_lines(&cluster, 2, "x402_breaker_epoch").await;
        let done = state.len() == 1
            && epoch.len() == 1
            && metric_value(&state[0]) == 0.0
            && metric_value(&epoch[0]) == closed_epoch as f64;
        if done {
            assert!(state[0].contains(&proxy.url()), "{state:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics do not show the breaker closed at {closed_epoch}: {state:?} {epoch:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
