//! What the TLS tests share: clients trusting a given CA, the wait for agreement through them
//! (the harness's own client trusts the cluster's first CA only), and the plaintext probe of a
//! TLS port.

use std::path::Path;
use std::time::{Duration, Instant};

use x402_client::{AdminClient, HttpClient, HttpConfig};
use x402_tls::Roots;

/// Admin clients of `urls` trusting only `ca_file`, with `timeout` per request and a new
/// connection (so a new handshake) for each.
pub fn admins_trusting(
    ca_file: &Path,
    urls: &[String],
    token: &str,
    timeout: Duration,
) -> Vec<AdminClient> {
    urls.iter()
        .map(|url| {
            let http = HttpClient::new(&HttpConfig {
                roots: Roots::File(ca_file.to_path_buf()),
                timeout,
                pool_idle_timeout: Duration::from_millis(1),
                ..HttpConfig::default()
            })
            .expect("a client of the CA file");
            AdminClient::with_http(http, url, Some(token)).expect("admin client")
        })
        .collect()
}

/// Waits (at most 30 s) until every one of `admins` answers with one applied index and one
/// state hash.
pub async fn wait_agreement(admins: &[AdminClient], after: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for admin in admins {
            if let Ok(s) = admin.status().await {
                seen.push((s.applied, s.state_hash));
            }
        }
        if seen.len() == admins.len() && seen.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence {after}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a plaintext HTTP/1.1 peer request (with the cluster secret) to the TLS port at
/// `authority` and asserts no HTTP answer comes back.
pub async fn assert_plaintext_gets_no_answer(authority: &str, secret: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect");
    let head = format!(
        "POST /raft/vote HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "plaintext to {authority} got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
}
