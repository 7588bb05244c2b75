//! Hostile input against 3 real `x402-node` processes, as an attacker on the network would send
//! it; each case changes nothing and no node dies:
//!
//! - forged Raft messages with the cluster secret (a vote term of `u64::MAX`, a non-member
//!   leader or candidate, a committed vote request, random bincode): refused before openraft
//!   sees them, the term and the applied state unchanged;
//! - a node that already holds an impossible vote (as before the guard): it cannot take the
//!   cluster down with it, and `x402-node reset-vote` brings it back;
//! - thousands of idle connections from one address: capped per address and closed after the
//!   idle timeout; a fresh client and the peers (their own port) are served all along;
//! - a declared 2^62-byte body and a body that trickles: 413 at once, 408 at the deadline;
//! - RPC URLs with keys in the path, query and user info, with the RPC failing: no key in any
//!   answer, log line, metric or status;
//! - malformed and forged payments with fresh `Idempotency-Key`s: no Raft entry at all.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::Method;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use rand::{Rng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use x402_protocol::wire::NodeStatus;
use x402_protocol::x402::payment::encode;
use x402_raft_store::codec;
use x402_raft_store::storage::{open_sled_stores, SledOptions};
use x402_raft_store::types::TypeConfig;
use x402_tests::devchain::{facilitator_toml, signer_keys_csv, DevChain, SIGNER_KEYS_ENV};
use x402_tests::http::{get, post, send};
use x402_tests::workload::{claim, new_salt};
use x402_tests::{ClusterOptions, LocalCluster};

/// Short timeouts, so the test sees them act.
fn hardened() -> ClusterOptions {
    ClusterOptions::default()
        .env("X402_LIMITS__IDLE_TIMEOUT_MS", 3_000)
        .env("X402_LIMITS__BODY_READ_TIMEOUT_MS", 2_000)
        .env("X402_LIMITS__HEADER_READ_TIMEOUT_MS", 2_000)
        .env("X402_LIMITS__MAX_CONNECTIONS_PER_IP", 200)
}

fn key(status: &NodeStatus) -> (u64, Option<u64>, String) {
    (status.term, status.applied, status.state_hash.clone())
}

/// POSTs `body` to node `id`'s peer API `path` with the cluster secret; the status.
/// POSTs `body` to node `id`'s peer API as a member of its cluster would (the secret and the
/// cluster id): what a node whose secret leaked could send.
async fn peer_post(cluster: &LocalCluster, id: u64, path: &str, body: Vec<u8>) -> u16 {
    let secret = format!("Bearer {}", cluster.cluster_secret());
    let cluster_id = cluster.status(id).await.cluster_id.expect("a cluster id");
    let reply = send(
        cluster.http(),
        cluster.peer_url(id),
        Method::POST,
        path,
        &[
            ("authorization", secret.as_str()),
            ("content-type", "application/octet-stream"),
            ("x402-cluster-id", cluster_id.as_str()),
        ],
        body,
    )
    .await
    .unwrap_or_else(|e| panic!("{path} on node {id}: {e}"));
    reply.status.as_u16()
}

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn append(vote: Vote<u64>, entries: Vec<Entry<TypeConfig>>) -> Vec<u8> {
    codec::encode(&AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        entries,
        leader_commit: None,
    })
    .expect("encode")
}

fn vote(vote: Vote<u64>) -> Vec<u8> {
    codec::encode(&VoteRequest {
        vote,
        last_log_id: None,
    })
    .expect("encode")
}

async fn refused_total(cluster: &LocalCluster, id: u64) -> f64 {
    let text = String::from_utf8_lossy(&get(cluster, id, "/metrics", &[]).await.bytes).into_owned();
    text.lines()
        .filter(|l| l.starts_with("x402_peer_refused_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn forged_peer_messages_change_nothing() {
    let mut cluster = LocalCluster::start_with(3, hardened()).await;
    let before: Vec<_> = cluster.wait_converged().await.iter().map(key).collect();
    let forged: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "append, term u64::MAX, non-member",
            "/raft/append",
            append(Vote::new_committed(u64::MAX, 99), vec![]),
        ),
        (
            "append, term u64::MAX, member",
            "/raft/append",
            append(Vote::new_committed(u64::MAX, 2), vec![]),
        ),
        (
            "append, huge-term entries",
            "/raft/append",
            append(
                Vote::new_committed(u64::MAX, 2),
                vec![Entry {
                    log_id: log_id(u64::MAX, 2, 1),
                    payload: EntryPayload::Blank,
                }],
            ),
        ),
        (
            "vote, term 2^32, non-member",
            "/raft/vote",
            vote(Vote::new(1 << 32, 99)),
        ),
        (
            "vote, term u64::MAX, member",
            "/raft/vote",
            vote(Vote::new(u64::MAX, 2)),
        ),
        (
            "vote, committed",
            "/raft/vote",
            vote(Vote::new_committed(before[0].0 + 1, 2)),
        ),
    ];
    let mut refused = 0;
    for (name, path, body) in &forged {
        for id in 1..=3 {
            let status = peer_post(&cluster, id, path, body.clone()).await;
            assert_eq!(status, 400, "{name} on node {id}");
            refused += 1;
        }
    }
    // Random bincode with the secret: never a panic, never a term move.
    let mut rng = rand::thread_rng();
    let mut garbage = 0;
    for i in 0..600 {
        let mut body = vec![0u8; rng.gen_range(0..512)];
        rng.fill_bytes(&mut body);
        let path = if i % 2 == 0 {
            "/raft/append"
        } else {
            "/raft/vote"
        };
        let status = peer_post(&cluster, 1 + i % 3, path, body).await;
        assert!(status == 400 || status == 200, "random body {i}: {status}");
        garbage += 1;
    }
    for id in 1..=3 {
        cluster.assert_running(id);
    }
    let after: Vec<_> = cluster.wait_converged().await.iter().map(key).collect();
    assert_eq!(after, before, "term, applied index and state unchanged");
    let counted: f64 = refused_total(&cluster, 1).await
        + refused_total(&cluster, 2).await
        + refused_total(&cluster, 3).await;
    assert!(
        counted >= refused as f64,
        "{counted} refusals counted, {refused} sent"
    );
    // And the cluster still writes.
    let admin = cluster.admin(3);
    admin
        .claim(&claim(new_salt(), 1))
        .await
        .expect("a write after the forgeries");
    println!(
        "{refused} forged messages refused, {garbage} random bodies survived, term {}",
        after[0].0
    );
}

#[tokio::test]
async fn a_node_holding_an_impossible_vote_is_contained_and_reset() {
    let mut cluster = LocalCluster::start_with(3, hardened()).await;
    let leader = cluster.wait_leader().await;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(victim);
    {
        // What a forged message persisted before the guard: a vote the node cannot survive.
        let (mut log, _) = open_sled_stores(cluster.data_dir(victim), SledOptions::default())
            .expect("open the stopped node's store");
        log.save_vote(&Vote::new(u64::MAX, 99))
            .await
            .expect("save the poisoned vote");
    }
    cluster.restart(victim);
    // It dies at its first election (term + 1 wraps); the others keep the cluster.
    let status = cluster.wait_exit(victim, Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "a node with a u64::MAX vote ran on: {status}"
    );
    let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    cluster.wait_leader_among(&others).await;
    cluster
        .admin(others[0])
        .claim(&claim(new_salt(), 1))
        .await
        .expect("the two others still write");
    for id in &others {
        cluster.assert_running(*id);
    }

    let reset = cluster
        .run_node_command(victim, &["reset-vote"], Duration::from_secs(30))
        .await;
    let said = String::from_utf8_lossy(&reset.stdout);
    assert!(
        reset.status.success(),
        "reset-vote failed: {said}{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(said.contains("reset"), "{said}");
    // A sane vote is never lowered: a second reset refuses.
    let again = cluster
        .run_node_command(victim, &["reset-vote"], Duration::from_secs(30))
        .await;
    assert!(
        !again.status.success(),
        "a second reset lowered a sane vote"
    );
    cluster.restart(victim);
    let statuses = cluster.wait_converged().await;
    assert!(statuses
        .iter()
        .all(|s| s.term < x402_raft_store::types::MAX_TERM));
    cluster.assert_running(victim);
    println!("{said}");
}

/// Opens a TCP connection to `to` from `from` (another loopback address than the test's own).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

fn socket_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("a loopback socket address")
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cannot_take_a_node_off_the_network() {
    const ATTACK: usize = 2_000;
    let mut cluster = LocalCluster::start_with(3, hardened()).await;
    let target = cluster.wait_leader().await;
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let api = socket_of(cluster.url(target));
    let peer = socket_of(cluster.peer_url(target));
    let mut held = Vec::new();
    for i in 0..ATTACK {
        let to = if i % 10 == 0 { peer } else { api };
        if let Ok(stream) = connect_from(attacker, to).await {
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut open = Vec::new();
    for mut s in held {
        if !closed(&mut s, Duration::from_millis(5)).await {
            open.push(s);
        }
    }
    let kept = open.len();
    assert!(
        kept <= 200 + 16,
        "{kept} idle connections from one address kept"
    );

    // Meanwhile: a fresh client is served at once, and writes through the node commit (the
    // peers have a listener of their own).
    let started = Instant::now();
    let ready = get(&cluster, target, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.json);
    assert!(started.elapsed() < Duration::from_secs(1));
    let salt = new_salt();
    for (n, id) in (1..=3).cycle().take(30).enumerate() {
        cluster
            .admin(id)
            .claim(&claim(salt, n as u64))
            .await
            .unwrap_or_else(|e| panic!("write {n} through node {id}: {e}"));
    }
    // The node closes them itself once idle.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut still = 0;
    for mut s in open {
        if !closed(&mut s, Duration::from_millis(50)).await {
            still += 1;
        }
    }
    assert_eq!(
        still, 0,
        "idle connections left open after the idle timeout"
    );
    // A header that never ends is cut after the header timeout.
    let mut slow = connect_from(attacker, api).await.expect("connect");
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        closed(&mut slow, Duration::from_secs(5)).await,
        "slow headers kept open"
    );
    cluster.assert_running(target);
    cluster.wait_converged().await;
    println!("{ATTACK} connections opened from one address, {kept} kept, all closed when idle");
}

#[tokio::test]
async fn huge_and_slow_bodies_are_refused() {
    let cluster = LocalCluster::start_with(3, hardened()).await;
    for base in [cluster.url(1), cluster.peer_url(1)] {
        let path = if base == cluster.url(1) {
            "/verify"
        } else {
            "/raft/append"
        };
        let to = socket_of(base);
        let secret = cluster.cluster_secret();
        // Declared at 2^62 bytes: refused at once.
        let mut huge = TcpStream::connect(to).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\
             Content-Type: application/json\r\nContent-Length: 4611686018427387904\r\n\r\n"
        );
        huge.write_all(head.as_bytes()).await.expect("write");
        let answer = read_head(&mut huge, Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{base}: {answer}");
        // Ten bytes of a hundred, then nothing: 408 at the deadline.
        let mut slow = TcpStream::connect(to).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"x402Ver"
        );
        slow.write_all(head.as_bytes()).await.expect("write");
        let started = Instant::now();
        let answer = read_head(&mut slow, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{base}: {answer}");
        assert!(started.elapsed() >= Duration::from_millis(1_500));
    }
}

/// The status line and headers the server sends on `stream` within `within`.
async fn read_head(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

const SECRETS: [&str; 4] = [
    "PATHKEYSECRET",
    "QUERYKEYSECRET",
    "USERSECRET",
    "PASSWORDSECRET",
];

#[tokio::test]
async fn rpc_keys_never_leak() {
    let chain = DevChain::start(31337).await;
    let dead = x402_tests::resource_server::free_port();
    let dead2 = x402_tests::resource_server::free_port();
    let first = format!(
        "http://127.0.0.1:{dead}/v2/{}?apikey={}",
        SECRETS[0], SECRETS[1]
    );
    let second = format!("http://{}:{}@127.0.0.1:{dead2}/rpc", SECRETS[2], SECRETS[3]);
    let toml = facilitator_toml(
        &[(&chain.network(), None, &first, &chain.token)],
        SIGNER_KEYS_ENV,
    )
    .replace(
        &format!("rpc_urls = [{first:?}]"),
        &format!("rpc_urls = [{first:?}, {second:?}]"),
    );
    assert!(toml.contains(&second), "{toml}");
    let cluster = LocalCluster::start_with(
        3,
        hardened()
            .toml(toml)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await;
    let mut seen = Vec::new();
    for id in 1..=3 {
        let body = encode(&chain.signed_payment(2, "http://shop.test/a")).expect("encode");
        for path in ["/verify", "/settle"] {
            let reply = post(&cluster, id, path, &[], &body).await;
            seen.push(format!("{path} on {id}: {} {}", reply.status, reply.json));
        }
    }
    // Let the failures reach the breakers, the reconciler and the logs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in 1..=3 {
        seen.push(
            String::from_utf8_lossy(&get(&cluster, id, "/metrics", &[]).await.bytes).into_owned(),
        );
        seen.push(
            String::from_utf8_lossy(
                &get(
                    &cluster,
                    id,
                    "/admin/status",
                    &[(
                        "authorization",
                        &format!("Bearer {}", cluster.admin_token()),
                    )],
                )
                .await
                .bytes,
            )
            .into_owned(),
        );
        seen.push(cluster.log_text(id));
    }
    let status = cluster.x402ctl(&[1, 2, 3], &["status"]).await;
    seen.push(String::from_utf8_lossy(&status.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&status.stderr).into_owned());
    let all = seen.join("\n");
    assert!(
        all.contains("unexpected_verify_error") || all.contains("unexpected_settle_error"),
        "the RPC failures were answered: {}",
        &seen[0]
    );
    for secret in SECRETS {
        assert!(
            !all.contains(secret),
            "{secret} leaked:\n{}",
            leak_context(&all, secret)
        );
    }
    assert!(all.contains("127.0.0.1"), "the host is shown");
}

fn leak_context(all: &str, secret: &str) -> String {
    all.lines()
        .filter(|l| l.contains(secret))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn garbage_with_fresh_idempotency_keys_writes_nothing() {
    const GARBAGE: usize = 2_000;
    let chain = DevChain::start(31337).await;
    let cluster = LocalCluster::start_with(
        3,
        hardened()
            .toml(chain.facilitator_toml())
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await;
    // The leader's reconciler registers the signer keys once at start: wait for that write.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before: BTreeMap<u64, Option<u64>> = loop {
        let statuses = cluster.wait_converged().await;
        if statuses.iter().all(|s| s.signers.len() == 2) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break cluster
                .wait_converged()
                .await
                .iter()
                .map(|s| (s.id, s.applied))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "the signers were never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A forged payment: decodes, but its signature is someone else's.
    let mut forged = chain.signed_payment(2, "http://shop.test/a");
    if let x402_protocol::x402::FacilitatorRequest::V2(r) = &mut forged {
        r.payment_payload.payload.authorization.value = x402_protocol::x402::U256::from_u64(1);
    }
    let forged = encode(&forged).expect("encode");
    let mut answered = BTreeMap::<u16, usize>::new();
    for i in 0..GARBAGE {
        let key = format!("garbage-{i}-{}", rand::random::<u64>());
        let (path, body): (&str, &[u8]) = match i % 4 {
            0 => ("/verify", b"{}"),
            1 => ("/settle", b"{\"x402Version\":2}"),
            2 => ("/verify", &forged),
            _ => ("/settle", &forged),
        };
        let reply = post(
            &cluster,
            1 + (i % 3) as u64,
            path,
            &[("idempotency-key", &key)],
            body,
        )
        .await;
        *answered.entry(reply.status.as_u16()).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: BTreeMap<u64, Option<u64>> = cluster
        .wait_converged()
        .await
        .iter()
        .map(|s| (s.id, s.applied))
        .collect();
    assert_eq!(
        after, before,
        "garbage committed Raft entries (answers {answered:?})"
    );
    println!("{GARBAGE} garbage requests with fresh keys ({answered:?}): 0 entries committed");
}
