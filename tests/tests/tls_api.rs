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
//! - `x402ctl tls init` writes the files it says, keys owner-only, and refuses to overwrite.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::Method;
use x402_client::http::{HttpClient, HttpConfig};
use x402_client::AdminClient;
use x402_tests::metrics::sample;
use x402_tests::{ClusterOptions, LocalCluster};
use x402_tls::Roots;

/// `x402_tls_handshakes_total{result}` of a `/metrics` text (0 before the first one).
fn handshakes(metrics: &str, result: &str) -> f64 {
    sample(metrics, "x402_tls_handshakes_total", &[("result", result)]).unwrap_or(0.0)
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

/// Replaces `dst` with `src`'s bytes atomically (write beside, rename), as secret managers do.
fn swap_in(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).expect("copy");
    std::fs::rename(&tmp, dst).expect("rename");
}

#[tokio::test]
async fn certificates_rotate_without_a_restart_and_without_a_failed_request() {
    let cluster = LocalCluster::start_with(3, ClusterOptions::default().tls()).await;
    let old_ca = cluster.root().join("tls").join("ca.pem");
    let fresh = cluster.root().join("fresh");
    let out = x402ctl_tls_init(&cluster, &fresh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_ca = fresh.join("ca.pem");
    // A client that trusts both: what an operator's clients hold during a CA rotation.
    let both = cluster.root().join("both.pem");
    std::fs::write(
        &both,
        format!(
            "{}{}",
            std::fs::read_to_string(&old_ca).unwrap(),
            std::fs::read_to_string(&new_ca).unwrap()
        ),
    )
    .unwrap();
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tls = cluster.root().join("tls");
    for id in cluster.ids() {
        swap_in(
            &fresh.join(format!("node{id}.key")),
            &tls.join(format!("node{id}.key")),
        );
        swap_in(
            &fresh.join(format!("node{id}.pem")),
            &tls.join(format!("node{id}.pem")),
        );
    }
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
