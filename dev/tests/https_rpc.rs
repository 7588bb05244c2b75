//! `https://` RPC endpoints: `AlloyChain` through a TLS front (a test CA's certificate) to a
//! real anvil. Trusted through `ca_file`, calls answer, a key in the URL's path and query
//! included; with the system's roots the same endpoint is refused at the handshake, and the
//! refusal names the host, never the key; so is an expired certificate of a trusted CA. An
//! https URL that fails fails over to the next URL, and its breaker counts it.

use std::time::Duration;

use x402_dev::devchain::Anvil;
use x402_dev::tls_front::{TlsFront, Validity};
use x402_node::chain::{AlloyChain, Chain, ChainError, ChainLimits};
use x402_node::tls::{rpc_http_client, Roots, TlsError};

const KEY: &str = "k3y-0f-the-rpc-provider";

fn chain(url: &str, roots: &Roots) -> AlloyChain {
    let client = rpc_http_client(roots).expect("client");
    AlloyChain::new(
        &[url],
        ChainLimits {
            call_timeout: Duration::from_secs(5),
        },
        &client,
    )
    .expect("chain")
}

#[tokio::test]
async fn an_https_rpc_behind_a_private_ca_answers_through_ca_file() {
    let anvil = Anvil::start(31337).await;
    let front = TlsFront::in_front_of(&anvil).await;
    let url = front.keyed_url(KEY);
    let chain = chain(&url, &Roots::File(front.ca_file.clone()));
    assert_eq!(chain.chain_id().await.expect("eth_chainId over TLS"), 31337);
    chain
        .block_number()
        .await
        .expect("eth_blockNumber over TLS");
    assert!(
        front.handshakes() >= 1,
        "the calls went through the TLS front"
    );
}

#[tokio::test]
async fn the_system_roots_refuse_a_private_ca_and_the_error_hides_the_key() {
    let anvil = Anvil::start(31337).await;
    let front = TlsFront::in_front_of(&anvil).await;
    let url = front.keyed_url(KEY);
    let roots = Roots::for_urls(&[&url], None);
    assert_eq!(
        roots,
        Roots::System,
        "an https:// URL without ca_file: the system's roots"
    );
    let err = match rpc_http_client(&roots) {
        // A machine without any CA store says so (and never gets to the handshake).
        Err(e @ TlsError::NoSystemRoots) => panic!("this machine has no CA store: {e}"),
        Err(e) => panic!("client: {e}"),
        Ok(client) => AlloyChain::new(&[&url], ChainLimits::default(), &client)
            .expect("chain")
            .chain_id()
            .await
            .expect_err("a certificate of an unknown CA is refused"),
    };
    let ChainError::Unavailable(text) = &err else {
        panic!("a refused handshake is unavailability (failover, breaker): {err:?}");
    };
    assert!(!text.contains(KEY), "the key leaked into the error: {text}");
    assert!(
        text.contains("127.0.0.1"),
        "the error names the host: {text}"
    );
    assert!(text.contains("UnknownIssuer"), "the error says why: {text}");
    assert_eq!(front.handshakes(), 0, "no handshake completed");
}

#[test]
fn a_ca_file_that_is_not_one_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    for (path, expected) in [
        (&missing, "cannot read the CA file"),
        (&empty, "holds no PEM certificate"),
        (&garbage, "is not a valid X.509 CA certificate"),
    ] {
        let err = rpc_http_client(&Roots::File(path.clone())).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(expected), "{}: {text}", path.display());
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

/// The error of `eth_chainId` on `url` alone, through a client with `roots`.
async fn refusal(url: &str, roots: &Roots) -> String {
    match chain(url, roots).chain_id().await {
        Err(ChainError::Unavailable(text)) => text,
        other => panic!("a refused handshake is unavailability: {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_certificate_of_a_trusted_ca_is_refused_and_says_so() {
    let anvil = Anvil::start(31337).await;
    let front = TlsFront::start_with(&anvil, Validity::Expired).await;
    let text = refusal(&front.keyed_url(KEY), &Roots::File(front.ca_file.clone())).await;
    assert!(
        text.contains("certificate expired"),
        "the error says why: {text}"
    );
    assert!(text.contains("127.0.0.1") && !text.contains(KEY), "{text}");
    assert_eq!(front.handshakes(), 0);
}

/// Counts what an endpoint's breaker is told.
#[derive(Default)]
struct Tally(std::sync::Mutex<Vec<(String, bool)>>);

impl x402_node::chain::breaker::EndpointGate for Tally {
    fn register(&self, _id: &x402_node::chain::breaker::EndpointId, _label: &str) {}
    fn admits(&self, _id: &x402_node::chain::breaker::EndpointId) -> bool {
        true
    }
    fn record(&self, id: &x402_node::chain::breaker::EndpointId, ok: bool) {
        self.0.lock().unwrap().push((format!("{id:?}"), ok));
    }
}

#[tokio::test]
async fn a_refused_https_url_fails_over_to_the_next_and_its_breaker_counts_it() {
    let anvil = Anvil::start(31337).await;
    let front = TlsFront::in_front_of(&anvil).await;
    // The https URL first, of a CA the system does not know; then anvil in the clear.
    let urls = [front.keyed_url(KEY), anvil.url().to_owned()];
    let client = rpc_http_client(&Roots::for_urls(&urls, None)).expect("client");
    let tally = std::sync::Arc::new(Tally::default());
    let chain = AlloyChain::new(&urls, ChainLimits::default(), &client)
        .expect("chain")
        .with_gate(tally.clone());
    assert_eq!(chain.chain_id().await.expect("the http URL answers"), 31337);
    let seen = tally.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one outcome per URL tried: {seen:?}");
    assert!(
        !seen[0].1 && seen[1].1,
        "the https URL failed, the http one answered: {seen:?}"
    );
    assert_ne!(seen[0].0, seen[1].0, "two breakers");
}
