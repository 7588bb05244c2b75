//! The API over TLS, with real node processes: a 3-node cluster whose certificates come from
//! `x402ctl tls init`, served on `https://` URLs.
//!
//! - `x402ctl --cacert` and the Rust client speak https to every node; without the CA (the
//!   system's roots) the same command fails and says the issuer is unknown; plaintext to the
//!   TLS port gets no answer;
//! - certificates rotated on a node (new files from another CA, swapped atomically) serve from
//!   the next connection on, with SIGHUP and without it (the file watch), and requests sent all
//!   through the rotation, by a client trusting both CAs, all succeed;
//! - connections that never send a ClientHello are closed at the handshake deadline
//!   (`header_read_timeout_ms`) and counted, and other clients are served meanwhile;
//! - `x402ctl tls init` writes the files it says, keys owner-only, and refuses to overwrite;
//! - peers speak mutual TLS on their own port (`https://` member URLs): plaintext, a client
//!   without a certificate and one of another CA are refused at the handshake and counted; a
//!   cluster-CA node that is not a member gets through the handshake but may not speak Raft;
//!   and the cluster is unchanged by all of it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::Method;
use x402_client::http::{HttpClient, HttpConfig};
use x402_client::AdminClient;
use x402_tests::metrics::{sample, tls_handshakes};
use x402_tests::tls::{admins_trusting, assert_plaintext_gets_no_answer, wait_agreement};
use x402_tests::{ClusterOptions, LocalCluster};
use x402_tls::Roots;

/// `x402_tls_handshakes_total{listener="api",result}` of a `/metrics` text.
fn handshakes(metrics: &str, result: &str) -> f64 {
    tls_handshakes(metrics, "api", result)
}

fn client(ca_file: &Path) -> HttpClient {
    HttpClient::new(&HttpConfig {
        roots: Roots::File(ca_file.to_path_buf()),
        timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_millis(1),
        ..HttpConfig::default()
    })
    .expect("client")
}

/// `GET /admin/status` of `url` through a fresh connection of a client trusting `ca_file`.
async fn status_with(ca_file: &Path, url: &str, token: &str) -> Result<(), String> {
    let admin =
        AdminClient::with_http(client(ca_file), url, Some(token)).map_err(|e| e.to_string())?;
    admin.status().await.map(|_| ()).map_err(|e| e.to_string())
}

fn x402ctl_tls_init(cluster: &LocalCluster, dir: &Path) -> std::process::Output {
    Command::new(cluster.bin("x402ctl"))
        .args(["tls", "init", "--nodes", "3", "--host", "127.0.0.1"])
        .arg(dir)
        .output()
        .expect("run x402ctl")
}

#[tokio::test]
async fn the_api_speaks_https_to_x402ctl_and_the_client_and_refuses_strangers() {
    let cluster = LocalCluster::start_with(3, ClusterOptions::default().tls()).await;
    for id in cluster.ids() {
        assert!(
            cluster.url(id).starts_with("https://"),
            "{}",
            cluster.url(id)
        );
    }
    // x402ctl with X402_CACERT (the harness sets it): every node answers.
    let out = cluster.x402ctl(&cluster.ids(), &["status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text
        .lines()
        .filter(|l| l.contains(" leader ") || l.contains(" follower "))
        .count();
    assert_eq!(rows, 3, "every node answered: {text}");

    // Without the CA, the system's roots: refused, and the error says why.
    let mut plain = tokio::process::Command::new(cluster.bin("x402ctl"));
    plain
        .args(["status", "--nodes", cluster.url(1)])
        .env("X402_ADMIN_TOKEN", cluster.admin_token())
        .env_remove("X402_CACERT");
    let out = plain.output().await.expect("run x402ctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
    assert!(all.contains("UnknownIssuer"), "says why: {all}");

    // Plaintext to the TLS port: no HTTP answer.
    let port = cluster.url(1).rsplit(':').next().expect("port").to_owned();
    let plain_url = format!("http://127.0.0.1:{port}");
    let http = HttpClient::new(&HttpConfig::default()).expect("client");
    let admin = AdminClient::with_http(http, &plain_url, Some(cluster.admin_token())).expect("url");
    assert!(
        admin.status().await.is_err(),
        "plaintext got an answer on the TLS port"
    );

    // The facilitator API over https.
    let supported = cluster
        .raw(2, Method::GET, "/supported", &[], Vec::new())
        .await
        .expect("GET /supported over https");
    assert_eq!(supported.status(), 200);

    // Node 1 counted the refused handshakes (the client without the CA, the plaintext one).
    let text = cluster.metrics_text(1).await;
    let count = |result| handshakes(&text, result);
    assert!(count("ok") >= 1.0, "{text}");
    assert!(
        count("refused") >= 2.0,
        "two refused handshakes counted: {text}"
    );
}

#[tokio::test]
async fn connections_that_never_finish_a_handshake_hold_nothing_and_are_counted() {
    let cluster = LocalCluster::start_with(
        1,
        ClusterOptions::default()
            .tls()
            .toml("[limits]\nheader_read_timeout_ms = 3000\n"),
    )
    .await;
    let address = cluster.url(1).trim_start_matches("https://").to_owned();
    // Sockets that connect and never say a word (no ClientHello).
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    // Meanwhile a real client is served: before the silent ones time out (they are all still
    // open after its answer), so it did not wait behind them.
    cluster.status(1).await;
    let mut byte = [0u8; 1];
    let still_open = silent[0].try_read(&mut byte);
    assert!(
        matches!(&still_open, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the silent connections were still waiting: {still_open:?}"
    );
    // Each silent one is closed by the node at the handshake deadline, and counted.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut socket, &mut byte),
        )
        .await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the node closed it: {read:?}"
        );
    }
    let text = cluster.metrics_text(1).await;
    let timeouts = handshakes(&text, "timeout");
    assert!(timeouts >= 20.0, "20 handshake timeouts counted: {text}");
}

#[tokio::test]
async fn certificates_rotate_without_a_restart_and_without_a_failed_request() {
    let mut cluster = LocalCluster::start_with(3, ClusterOptions::default().tls()).await;
    let old_ca = cluster.root().join("old-ca.pem");
    std::fs::copy(cluster.root().join("tls").join("ca.pem"), &old_ca).unwrap();
    let fresh = cluster.root().join("fresh");
    let out = x402ctl_tls_init(&cluster, &fresh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_ca = fresh.join("ca.pem");
    // A client that trusts both: what an operator's clients hold during a CA rotation.
    let both = cluster.both_cas(&fresh);
    let token = cluster.admin_token().to_owned();
    for id in cluster.ids() {
        assert!(status_with(&old_ca, cluster.url(id), &token).await.is_ok());
        assert!(
            status_with(&new_ca, cluster.url(id), &token).await.is_err(),
            "node {id} already serves the new CA's certificate"
        );
    }

    // Load on every node through the rotation: every request must succeed.
    let urls: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.url(*id).to_owned())
        .collect();
    let load = {
        let (both, token, urls) = (both.clone(), token.clone(), urls.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline {
                for url in &urls {
                    // A fresh connection each time: every request makes a handshake.
                    match status_with(&both, url, &token).await {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
            }
            (ok, failed)
        })
    };
    // Peers trust both CAs before any presents the new one (peer_ca_file is watched too).
    cluster.rotate_tls_to(&fresh, &both).await;
    // Node 1 is told (SIGHUP); nodes 2 and 3 find the change themselves (the file watch).
    let pid = cluster.pid(1);
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in cluster.ids() {
        while status_with(&new_ca, cluster.url(id), &token).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "node {id} never served the new certificate"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            status_with(&old_ca, cluster.url(id), &token).await.is_err(),
            "node {id} still serves the old certificate"
        );
    }
    let (ok, failed) = load.await.expect("load");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 30, "the load ran: {ok} requests");
    assert!(cluster
        .log_text(1)
        .contains("TLS certificate reloaded (SIGHUP)"));
    assert!(cluster
        .log_text(2)
        .contains("TLS certificate reloaded (file changed)"));

    // Peers use the new certificates too: a restarted node makes new peer connections both
    // ways, and writes through every node still commit.
    // (The harness's own client trusts the old CA only: these go through one trusting both.)
    cluster.kill9(3);
    cluster.restart(3);
    let admins = admins_trusting(&both, &urls, &token, Duration::from_secs(5));
    let salt = x402_tests::workload::new_salt();
    x402_tests::workload::claim_many(&admins, salt, 0..30, 3).await;
    wait_agreement(&admins, "after the rotation").await;
}

#[tokio::test]
async fn tls_init_writes_owner_only_keys_and_never_overwrites() {
    let cluster = LocalCluster::start(1).await;
    let dir = cluster.root().join("pki");
    let out = x402ctl_tls_init(&cluster, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    for name in [
        "ca.pem",
        "ca.key",
        "node1.pem",
        "node1.key",
        "node3.pem",
        "node3.key",
    ] {
        let path = dir.join(name);
        assert!(path.is_file(), "{name} missing");
        if name.ends_with(".key") {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is readable by others");
        }
    }
    assert!(said.contains("node3.pem"), "{said}");
    let before = std::fs::read(dir.join("ca.pem")).unwrap();
    let again = x402ctl_tls_init(&cluster, &dir);
    assert!(
        !again.status.success(),
        "a second init into the same directory is refused"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).unwrap(),
        before,
        "nothing was overwritten"
    );
}

/// Connects to `peer_url`'s port with `config` and POSTs an empty `/raft/append` over HTTP/2;
/// the status, or why there was none.
async fn raft_call_with(
    config: std::sync::Arc<rustls::ClientConfig>,
    peer_url: &str,
    secret: &str,
    cluster_id: &str,
) -> Result<u16, String> {
    use http_body_util::{BodyExt, Full};
    let authority = peer_url.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("https://{authority}/raft/append"))
        .header("authorization", format!("Bearer {secret}"))
        .header("x402-cluster-id", cluster_id)
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// A client configuration trusting `ca_file`, offering `identity` (certificate and key files)
/// when given, speaking HTTP/2.
fn peer_client(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> std::sync::Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(x402_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(Roots::File(ca_file.to_path_buf()).store().expect("CA"));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = x402_tls::read_certificates(cert, "the certificate file").expect("chain");
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
            builder.with_client_auth_cert(chain, key).expect("identity")
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

#[tokio::test]
async fn peers_speak_mutual_tls_and_refuse_strangers() {
    let cluster = LocalCluster::start_with(3, ClusterOptions::default().tls()).await;
    let before = cluster.wait_converged().await;
    for status in &before {
        for member in &status.members {
            assert!(
                member.url.starts_with("https://"),
                "member URLs are https: {status:?}"
            );
        }
    }
    let cluster_id = before[0].cluster_id.clone().expect("cluster id");
    let tls = cluster.root().join("tls");
    let ca = tls.join("ca.pem");
    let target = 1;
    let peer_url = cluster.peer_url(target).to_owned();
    let secret = cluster.cluster_secret().to_owned();
    let refused_before = tls_handshakes(&cluster.metrics_text(target).await, "peer", "refused");

    // Plaintext to the peer port: no HTTP answer at all.
    assert_plaintext_gets_no_answer(peer_url.trim_start_matches("https://"), &secret).await;
    // TLS without a client certificate, and with a certificate of another CA naming a node.
    let no_certificate =
        raft_call_with(peer_client(&ca, None), &peer_url, &secret, &cluster_id).await;
    assert!(
        no_certificate.is_err(),
        "no client certificate: {no_certificate:?}"
    );
    let other_ca = x402_dev::tls_front::TestCa::new("another CA");
    let stranger = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) =
        other_ca.certificate_files(&["node-2.x402-cluster", "127.0.0.1"], stranger.path(), "n2");
    let foreign = raft_call_with(
        peer_client(&ca, Some((&cert_file, &key_file))),
        &peer_url,
        &secret,
        &cluster_id,
    )
    .await;
    assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
    let refused_after = tls_handshakes(&cluster.metrics_text(target).await, "peer", "refused");
    assert!(
        refused_after >= refused_before + 3.0,
        "plaintext, no certificate and another CA are counted as refused handshakes: \
         {refused_before} -> {refused_after}"
    );

    // A certificate of the cluster CA for node 5, which is not a member: through the
    // handshake, but Raft is refused.
    let spare = raft_call_with(
        peer_client(&ca, Some((&tls.join("node5.pem"), &tls.join("node5.key")))),
        &peer_url,
        &secret,
        &cluster_id,
    )
    .await;
    assert_eq!(spare, Ok(403), "a non-member's Raft call");
    let text = cluster.metrics_text(target).await;
    assert!(
        sample(
            &text,
            "x402_peer_refused_total",
            &[("reason", "not_a_member")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // A member's certificate gets to the Raft checks (an empty body does not decode).
    let member = raft_call_with(
        peer_client(&ca, Some((&tls.join("node2.pem"), &tls.join("node2.key")))),
        &peer_url,
        &secret,
        &cluster_id,
    )
    .await;
    assert_eq!(member, Ok(400), "a member's undecodable append");

    let after = cluster.wait_converged().await;
    let key = |s: &x402_protocol::wire::NodeStatus| (s.id, s.term, s.applied, s.state_hash.clone());
    assert_eq!(
        after.iter().map(key).collect::<Vec<_>>(),
        before.iter().map(key).collect::<Vec<_>>(),
        "nothing changed"
    );
}
