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

use x402_protocol::wire::InitRequest;
use x402_tests::devchain::{facilitator_toml, signer_keys_csv, DevChain, SIGNER_KEYS_ENV};
use x402_tests::metrics::tls_handshakes;
use x402_tests::netns::Hosts;
use x402_tests::resource_server::{paid_tx, pay_with_demo};
use x402_tests::rpc_proxy::RpcProxy;
use x402_tests::tls::{admins_trusting, assert_plaintext_gets_no_answer, wait_agreement};
use x402_tests::{workload, ClusterOptions, LocalCluster};

/// `x402ctl tls init DIR --nodes N --host ...`: a new CA and node certificates naming `hosts`.
fn tls_init(cluster: &LocalCluster, dir: &std::path::Path, nodes: u64, hosts: &[&str]) {
    let mut command = std::process::Command::new(cluster.bin("x402ctl"));
    command.args(["tls", "init", "--nodes", &nodes.to_string()]);
    for host in hosts {
        command.args(["--host", host]);
    }
    let out = command.arg(dir).output().expect("x402ctl tls init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    tls_init(&cluster, &foreign, 5, &[&hosts.host(4).ip]);
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
    let refused_before = tls_handshakes(&cluster.metrics_text(leader).await, "peer", "refused");
    let authority = cluster
        .peer_url(leader)
        .trim_start_matches("https://")
        .to_owned();
    assert_plaintext_gets_no_answer(&authority, cluster.cluster_secret()).await;
    let refused_after = tls_handshakes(&cluster.metrics_text(leader).await, "peer", "refused");
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
    let ips: Vec<&str> = (1..=3).map(|i| hosts.host(i).ip.as_str()).collect();
    tls_init(&cluster, &fresh, 3, &ips);
    let both = cluster.both_cas(&fresh);
    let urls: Vec<String> = (1..=3).map(|i| cluster.url(i).to_owned()).collect();
    let token = cluster.admin_token().to_owned();
    let load = {
        let admins = admins_trusting(&both, &urls, &token, Duration::from_secs(10));
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
    for (i, admin) in admins_trusting(&new_ca, &urls, &token, Duration::from_secs(10))
        .iter()
        .enumerate()
    {
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
    let admins = admins_trusting(&both, &urls, &token, Duration::from_secs(10));
    let salt = workload::new_salt();
    workload::claim_many(&admins, salt, 0..30, 3).await;
    wait_agreement(&admins, "after the rotation").await;
}
