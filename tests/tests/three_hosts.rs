//! Three hosts: each node in a network namespace of its own with one address on a bridge, the
//! API over TLS and peers over mutual TLS, as on three machines. The test process plays the
//! operator and the resource server from the bridge's side.
//!
//! - the cluster forms over mutual TLS between the three addresses (https member URLs, one
//!   cluster id), and the official `@x402/express` + `@x402/fetch` pay through `https://` node
//!   URLs (trusting the cluster CA by `NODE_EXTRA_CA_CERTS`), settling on a chain reached
//!   through the bridge;
//! - refused, changing nothing: a node with certificates of another CA (its handshakes fail
//!   both ways), a plaintext peer (an `http://` member URL, and plaintext on a peer port), and a
//!   node of another cluster (another cluster id);
//! - every node's certificates rotated to a new CA under a load of claims through all three
//!   nodes: zero failed requests; then a node restarted, so every peer connection is made again
//!   with the new certificates, and writes through all three still commit.
//!
//! Needs root and iproute2; without them it fails and says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use x402_client::http::{HttpClient, HttpConfig};
use x402_client::AdminClient;
use x402_protocol::wire::InitRequest;
use x402_tests::devchain::{facilitator_toml, signer_keys_csv, DevChain, SIGNER_KEYS_ENV};
use x402_tests::metrics::sample;
use x402_tests::netns::Hosts;
use x402_tests::resource_server::{paid_tx, pay_with_demo};
use x402_tests::rpc_proxy::RpcProxy;
use x402_tests::{workload, ClusterOptions, LocalCluster};
use x402_tls::Roots;

/// Admin clients of `urls` trusting `ca_file`, a new connection (and handshake) per request.
fn admins_trusting(ca_file: &std::path::Path, urls: &[String], token: &str) -> Vec<AdminClient> {
    urls.iter()
        .map(|url| {
            let http = HttpClient::new(&HttpConfig {
                roots: Roots::File(ca_file.to_path_buf()),
                timeout: Duration::from_secs(10),
                pool_idle_timeout: Duration::from_millis(1),
                ..HttpConfig::default()
            })
            .expect("client");
            AdminClient::with_http(http, url, Some(token)).expect("admin client")
        })
        .collect()
}

fn peer_handshakes(metrics: &str, result: &str) -> f64 {
    let labels = [("listener", "peer"), ("result", result)];
    sample(metrics, "x402_tls_handshakes_total", &labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_over_mutual_tls_pay_refuse_strangers_and_rotate_under_load() {
    let hosts = Arc::new(Hosts::create(5));
    let chain = DevChain::start(31337).await;
    let rpc = RpcProxy::start_on(chain.anvil.url(), &hosts.gateway)
        .await
        .expect("the chain on the bridge");
    let toml = facilitator_toml(
        &[(&chain.network(), None, &rpc.url(), &chain.token)],
        SIGNER_KEYS_ENV,
    );
    let options = ClusterOptions::default()
        .toml(toml)
        .env(SIGNER_KEYS_ENV, signer_keys_csv())
        .tls()
        .on_hosts(hosts.clone());
    let mut cluster = LocalCluster::start_with(3, options).await;

    // Formed over mutual TLS between three addresses.
    let before = cluster.wait_converged().await;
    let cluster_id = before[0].cluster_id.clone().expect("a cluster id");
    for status in &before {
        assert_eq!(status.cluster_id.as_deref(), Some(cluster_id.as_str()));
        let ip = &hosts.host(status.id).ip;
        assert!(
            status.url.starts_with(&format!("https://{ip}:")),
            "{status:?}"
        );
        for member in &status.members {
            let ip = &hosts.host(member.id).ip;
            assert!(
                member.url.starts_with(&format!("https://{ip}:")),
                "{status:?}"
            );
        }
    }

    // The official SDK pays through https:// node URLs.
    let ca = cluster.root().join("tls").join("ca.pem");
    let nodes = cluster.urls_csv(&[1, 2, 3]);
    let transfers = chain.token.transfer_logs(0).await.len();
    // demo.sh blocks its thread; the RPC proxy runs on this runtime, on the other worker.
    let paid = tokio::task::block_in_place(|| pay_with_demo(&chain, &nodes, Some(&ca)));
    let tx = paid_tx(&paid);
    let logs = chain.token.transfer_logs(0).await;
    assert_eq!(logs.len(), transfers + 1, "{logs:?}");
    assert_eq!(logs.last().map(|t| t.tx_hash.to_string()), Some(tx));

    // A node whose certificates come from another CA, on host 4: adding it is refused, and its
    // handshakes with the leader fail both ways.
    let url4 = cluster.start_extra_node(4).await;
    let foreign = cluster.root().join("foreign-pki");
    let out = std::process::Command::new(cluster.bin("x402ctl"))
        .args(["tls", "init", "--nodes", "5", "--host", &hosts.host(4).ip])
        .arg(&foreign)
        .output()
        .expect("x402ctl tls init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.stop(4);
    let config4 = std::fs::read_to_string(cluster.config_path(4)).unwrap();
    let tls_dir = cluster.root().join("tls");
    let config4 = config4
        .replace(
            &format!("{}/node4.", tls_dir.display()),
            &format!("{}/node4.", foreign.display()),
        )
        .replace(
            &format!("{}/ca.pem", tls_dir.display()),
            &format!("{}/ca.pem", foreign.display()),
        );
    std::fs::write(cluster.config_path(4), config4).unwrap();
    cluster.restart(4);
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let leader_admin = cluster.admin(leader);
    let err = leader_admin
        .add_learner(4, &url4)
        .await
        .expect_err("a node of another CA cannot be added");
    assert!(err.to_string().contains("not_joined"), "{err}");

    // A plaintext peer: the cluster never dials an http:// member ...
    let plain = format!("http://{}:7002", hosts.host(5).ip);
    let err = leader_admin
        .add_learner(5, &plain)
        .await
        .expect_err("an http:// member");
    assert!(err.to_string().contains("speak https://"), "{err}");
    // ... and a plaintext client gets no HTTP answer from a peer port.
    let refused_before = peer_handshakes(&cluster.metrics_text(leader).await, "refused");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let authority = cluster
            .peer_url(leader)
            .trim_start_matches("https://")
            .to_owned();
        let mut tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        let head = format!(
            "POST /raft/vote HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 0\r\n\r\n",
            cluster.cluster_secret()
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(
            !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
            "plaintext answered"
        );
    }
    let refused_after = peer_handshakes(&cluster.metrics_text(leader).await, "refused");
    assert!(
        refused_after > refused_before,
        "refused peer handshakes counted: {refused_before} -> {refused_after}"
    );

    // A node of another cluster on host 5 (the cluster CA's certificate, its own cluster id).
    let url5 = cluster.start_extra_node(5).await;
    cluster
        .admin(5)
        .init(&InitRequest::default())
        .await
        .expect("node 5 forms a cluster of its own");
    cluster.wait_leader_among(&[5]).await;
    let theirs = cluster
        .status(5)
        .await
        .cluster_id
        .expect("node 5's cluster id");
    let err = leader_admin
        .add_learner(5, &url5)
        .await
        .expect_err("a node of another cluster cannot be added");
    assert!(err.to_string().contains(&theirs), "{err}");

    // Nothing of it changed the cluster.
    let after = cluster.wait_converged_among(&[1, 2, 3]).await;
    let key = |s: &x402_protocol::wire::NodeStatus| (s.id, s.members.len(), s.term);
    assert_eq!(
        after.iter().map(key).collect::<Vec<_>>(),
        before.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(cluster.status(5).await.members.len(), 1);

    // Rotation to a new CA on every node, under load through all three.
    cluster.stop(4);
    cluster.stop(5);
    let fresh = cluster.root().join("fresh-pki");
    let mut args = vec!["tls", "init", "--nodes", "3"];
    for i in 1..=3 {
        args.extend(["--host", hosts.host(i).ip.as_str()]);
    }
    let out = std::process::Command::new(cluster.bin("x402ctl"))
        .args(&args)
        .arg(&fresh)
        .output()
        .expect("x402ctl tls init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both = cluster.both_cas(&fresh);
    let urls: Vec<String> = (1..=3).map(|i| cluster.url(i).to_owned()).collect();
    let token = cluster.admin_token().to_owned();
    let load = {
        let admins = admins_trusting(&both, &urls, &token);
        tokio::spawn(async move {
            let salt = workload::new_salt();
            let (mut ok, mut failed) = (0u64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut n = 0;
            while Instant::now() < deadline {
                for admin in &admins {
                    match admin.claim(&workload::claim(salt, n)).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                    n += 1;
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.rotate_tls_to(&fresh, &both).await;
    let new_ca = fresh.join("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, admin) in admins_trusting(&new_ca, &urls, &token).iter().enumerate() {
        while admin.status().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "node {} never served the new certificate",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (ok, failed) = load.await.expect("load");
    assert!(
        failed.is_empty(),
        "{} of {} claims failed during the rotation: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 30, "the load ran: {ok} claims");

    // New peer connections with the new certificates: restart a follower, write through all.
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    cluster.kill9(follower);
    cluster.restart(follower);
    let admins = admins_trusting(&both, &urls, &token);
    let salt = workload::new_salt();
    workload::claim_many(&admins, salt, 0..30, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for admin in &admins {
            if let Ok(s) = admin.status().await {
                seen.push((s.applied, s.state_hash));
            }
        }
        if seen.len() == 3 && seen.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence after the rotation: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
