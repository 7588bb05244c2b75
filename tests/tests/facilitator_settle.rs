//! Payments verified and settled on a real chain (anvil, our EIP-3009 token) through a 3-node
//! cluster of real `x402-node` processes:
//! - v2 on `eip155:31337` and v1 on a second anvil with chain id 84532 (`base-sepolia`): verify
//!   on one node, settle on another, tokens moved, the same payment refused by a third; the
//!   same authorization for another resource is refused;
//! - one payment settled concurrently through all three nodes: one `Transfer`, one tx hash in
//!   every answer, one `success: true` (the others refused with the hash);
//! - the leader `kill -9`ed between broadcast and receipt: the survivors finish the settlement
//!   (the reconciler, within 10 s of the receipt existing), one `Transfer`;
//! - an `https://` RPC URL with an API key in it (anvil behind a TLS front whose CA the nodes
//!   trust through `ca_file`): verified and settled through it, and the key in no log line,
//!   metric or status; the same cluster without `ca_file` refuses the certificate and says so.

use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use alloy::signers::local::PrivateKeySigner;
use hyper::Method;
use serde_json::Value;
use x402_dev::tls_front::TlsFront;
use x402_protocol::x402::payment::{encode, PaymentBuilder, PaymentTerms};
use x402_protocol::x402::FacilitatorRequest;
use x402_tests::devchain::{
    facilitator_toml_with, signer_keys_csv, wire_address, AnvilOptions, DevChain, Mining, MERCHANT,
    PAYMENT_AMOUNT, SIGNERS, SIGNER_KEYS_ENV,
};
use x402_tests::{ClusterOptions, LocalCluster};

/// A freshly signed payment (body), the same authorization for another resource (body), and
/// the authorization's nonce.
fn payment(chain: &DevChain, x402_version: u8) -> (Vec<u8>, Vec<u8>, B256) {
    let request = chain.signed_payment(x402_version, "http://shop.test/paid");
    let nonce = B256::from(*request.payload().authorization.nonce.as_bytes());
    // The same signed authorization, presented for another resource.
    let replay: FacilitatorRequest = match &request {
        FacilitatorRequest::V1(r) => {
            let mut r = r.clone();
            r.payment_requirements.resource = Some("http://shop.test/other".into());
            FacilitatorRequest::V1(r)
        }
        FacilitatorRequest::V2(r) => {
            let mut r = r.clone();
            if let Some(resource) = r.payment_payload.resource.as_mut() {
                resource.url = "http://shop.test/other".into();
            }
            FacilitatorRequest::V2(r)
        }
    };
    (
        encode(&request).expect("encode"),
        encode(&replay).expect("encode"),
        nonce,
    )
}

async fn post(cluster: &LocalCluster, id: u64, path: &str, body: &[u8]) -> Value {
    let response = cluster
        .raw(
            id,
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_vec(),
        )
        .await
        .unwrap_or_else(|e| panic!("{path} on node {id}: {e}"));
    let status = response.status();
    let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{path} on node {id}: {body}");
    body
}

async fn cluster_on(
    chains: &[&DevChain],
    facilitator_keys: &str,
    network_keys: &str,
) -> LocalCluster {
    let networks: Vec<(
        String,
        Option<String>,
        String,
        &x402_tests::devchain::DevToken,
    )> = chains
        .iter()
        .map(|c| (c.network(), c.v1_name(), c.anvil.url().to_owned(), &c.token))
        .collect();
    let refs: Vec<(&str, Option<&str>, &str, &x402_tests::devchain::DevToken)> = networks
        .iter()
        .map(|(n, v1, url, token)| (n.as_str(), v1.as_deref(), url.as_str(), *token))
        .collect();
    let toml = facilitator_toml_with(&refs, SIGNER_KEYS_ENV, facilitator_keys, network_keys);
    LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(toml)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await
}

#[tokio::test]
async fn v2_and_v1_payments_verify_and_settle_through_different_nodes() {
    let local = DevChain::start(31337).await;
    let sepolia = DevChain::start(84532).await;
    let cluster = cluster_on(&[&local, &sepolia], "", "").await;
    for (chain, version) in [(&local, 2u8), (&sepolia, 1u8)] {
        let token = &chain.token;
        let before = token.balance_of(MERCHANT).await;
        let (body, replay, nonce) = payment(chain, version);
        let verdict = post(&cluster, 1, "/verify", &body).await;
        assert_eq!(verdict["isValid"], true, "v{version}: {verdict}");
        assert_eq!(
            post(&cluster, 3, "/verify", &body).await,
            verdict,
            "same payment, same answer"
        );
        let refused = post(&cluster, 2, "/verify", &replay).await;
        assert_eq!(refused["isValid"], false);
        assert_eq!(
            refused["invalidReason"],
            "invalid_exact_evm_nonce_already_used"
        );

        let settled = post(&cluster, 2, "/settle", &body).await;
        assert_eq!(settled["success"], true, "v{version}: {settled}");
        let tx = settled["transaction"].as_str().expect("hash").to_owned();
        assert_eq!(
            token.balance_of(MERCHANT).await,
            before + U256::from(PAYMENT_AMOUNT)
        );
        let transfers = token
            .transfers_of_authorization(chain.payer().address(), nonce)
            .await;
        assert_eq!(transfers.len(), 1, "exactly one Transfer: {transfers:?}");
        assert_eq!(transfers[0].tx_hash.to_string(), tx);
        // Settled once, answered `success: true` once: the same payment again, through
        // another node, is refused with the hash of its settlement (one payment buys one
        // resource); the replay for other requirements is refused at settle too.
        let again = post(&cluster, 3, "/settle", &body).await;
        assert_eq!(again["success"], false, "v{version}: {again}");
        assert_eq!(
            again["errorReason"], "invalid_exact_evm_nonce_already_used",
            "{again}"
        );
        assert_eq!(again["transaction"], tx.as_str(), "{again}");
        let refused = post(&cluster, 1, "/settle", &replay).await;
        assert_eq!(refused["success"], false);
        assert_eq!(
            refused["errorReason"],
            "invalid_exact_evm_nonce_already_used"
        );
        assert_eq!(
            token
                .transfers_of_authorization(chain.payer().address(), nonce)
                .await
                .len(),
            1
        );
    }
}

/// With chain reads on, a payment the chain would refuse is diagnosed in the reference's terms.
#[tokio::test]
async fn failed_simulations_are_diagnosed() {
    let chain = DevChain::start(31337).await;
    let cluster = cluster_on(&[&chain], "", "").await;
    let diagnose = |terms: PaymentTerms, payer: PrivateKeySigner| {
        let body = PaymentBuilder::new(terms)
            .expect("terms")
            .sign_now(&payer, &mut rand::thread_rng())
            .expect("sign");
        encode(&body).expect("encode")
    };
    // A payer without tokens.
    let broke = PrivateKeySigner::random();
    let verdict = post(
        &cluster,
        1,
        "/verify",
        &diagnose(chain.payment_terms(2, "http://shop.test/a"), broke),
    )
    .await;
    assert_eq!(
        verdict["invalidReason"], "invalid_exact_evm_insufficient_balance",
        "{verdict}"
    );
    // Signed (and required) under a name the token does not have.
    let mut renamed = chain.payment_terms(2, "http://shop.test/b");
    renamed.token_name = "Not USD Coin".into();
    let verdict = post(&cluster, 2, "/verify", &diagnose(renamed, chain.payer())).await;
    assert_eq!(
        verdict["invalidReason"], "invalid_exact_evm_token_name_mismatch",
        "{verdict}"
    );
    // An asset without code.
    let mut no_code = chain.payment_terms(2, "http://shop.test/c");
    no_code.asset = wire_address(MERCHANT);
    let verdict = post(&cluster, 3, "/verify", &diagnose(no_code, chain.payer())).await;
    assert_eq!(
        verdict["invalidReason"], "invalid_payment_requirements",
        "{verdict}"
    );
    // A settled payment, verified again: the chain says the nonce is used.
    let (body, _, _) = payment(&chain, 2);
    assert_eq!(post(&cluster, 1, "/settle", &body).await["success"], true);
    let verdict = post(&cluster, 2, "/verify", &body).await;
    assert_eq!(
        verdict["invalidReason"], "invalid_exact_evm_nonce_already_used",
        "{verdict}"
    );
    // None of the refused ones left a claim or a settlement behind.
    let statuses = cluster.wait_converged().await;
    assert!(statuses.iter().all(|s| s.claims == 1), "{statuses:?}");
}

#[tokio::test]
async fn one_payment_settled_through_three_nodes_at_once_moves_tokens_once_and_succeeds_once() {
    let chain = DevChain::start(31337).await;
    let cluster = cluster_on(&[&chain], "", "").await;
    for round in 0..5 {
        let (body, _, nonce) = payment(&chain, 2);
        let answers = futures_join(&cluster, &body).await;
        let hashes: Vec<&Value> = answers.iter().map(|a| &a["transaction"]).collect();
        let successes = answers.iter().filter(|a| a["success"] == true).count();
        assert_eq!(successes, 1, "round {round}: one success: {answers:?}");
        for a in answers.iter().filter(|a| a["success"] != true) {
            assert_eq!(
                a["errorReason"], "invalid_exact_evm_nonce_already_used",
                "round {round}: {answers:?}"
            );
        }
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "one tx hash, in every answer: {hashes:?}"
        );
        let transfers = chain
            .token
            .transfers_of_authorization(chain.payer().address(), nonce)
            .await;
        assert_eq!(transfers.len(), 1, "round {round}: {transfers:?}");
    }
}

async fn futures_join(cluster: &LocalCluster, body: &[u8]) -> Vec<Value> {
    let (a, b, c) = tokio::join!(
        post(cluster, 1, "/settle", body),
        post(cluster, 2, "/settle", body),
        post(cluster, 3, "/settle", body),
    );
    vec![a, b, c]
}

/// `x402_settlements_unfinished` of node `id`.
async fn unfinished(cluster: &LocalCluster, id: u64) -> Option<i64> {
    let response = cluster
        .raw(id, Method::GET, "/metrics", &[], Vec::new())
        .await
        .ok()?;
    let text = String::from_utf8_lossy(response.body()).into_owned();
    text.lines()
        .find(|l| l.starts_with("x402_settlements_unfinished"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn leader_killed_between_broadcast_and_receipt_settles_once() {
    // Blocks only when asked: a broadcast transaction waits in the pool until the test mines.
    let chain = DevChain::start_with(AnvilOptions::new(31337).mining(Mining::Manual)).await;
    let mut cluster = cluster_on(
        &[&chain],
        "reconcile_after_ms = 1000\nsettle_wait_ms = 60000",
        "receipt_timeout_ms = 60000",
    )
    .await;
    let rpc = chain.token.rpc();
    let pending = || async {
        let mut n = 0;
        for s in SIGNERS {
            n += rpc.pending_nonce_of(s).await;
        }
        n
    };
    let before = pending().await;
    let leader = cluster.wait_leader().await;
    let (body, _, nonce) = payment(&chain, 2);
    let request = {
        let url = format!("{}/settle", cluster.url(leader));
        let body = body.clone();
        let http = cluster.http().clone();
        tokio::spawn(async move {
            let request = hyper::Request::builder()
                .method(Method::POST)
                .uri(url)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("request");
            http.send(request).await
        })
    };
    // Broadcast (so already committed to the log): the signer's pending count moved.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending().await == before {
        assert!(
            Instant::now() < deadline,
            "the settlement was never broadcast"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill9(leader);
    assert!(
        request.await.expect("task").is_err(),
        "the killed node cannot have answered"
    );
    rpc.mine(1).await;
    let mined = Instant::now();
    let survivors: Vec<u64> = cluster.running_ids();
    cluster.wait_leader_among(&survivors).await;
    // The reconciler of the new leader finishes it without anyone asking.
    loop {
        let mut done = true;
        for &id in &survivors {
            done &= unfinished(&cluster, id).await == Some(0);
        }
        if done {
            break;
        }
        assert!(
            mined.elapsed() < Duration::from_secs(10),
            "not reconciled within 10 s of the receipt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = post(&cluster, survivors[0], "/settle", &body).await;
    assert_eq!(settled["success"], true, "{settled}");
    let transfers = chain
        .token
        .transfers_of_authorization(chain.payer().address(), nonce)
        .await;
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(
        transfers[0].tx_hash.to_string(),
        settled["transaction"].as_str().expect("hash")
    );
}

const RPC_KEY: &str = "k3y-0f-the-rpc-provider";

/// A 3-node cluster whose one network is reached at `url`, with `network_keys` for it.
async fn cluster_at(chain: &DevChain, url: &str, network_keys: &str) -> LocalCluster {
    let toml = facilitator_toml_with(
        &[(&chain.network(), None, url, &chain.token)],
        SIGNER_KEYS_ENV,
        "",
        network_keys,
    );
    LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(toml)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await
}

/// Waits until node `id`'s log has a line with `text` (the start-up RPC report runs on its own).
async fn wait_log(cluster: &LocalCluster, id: u64, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log_text(id).contains(text) {
        assert!(
            Instant::now() < deadline,
            "node {id} logged no line with {text:?}:\n{}",
            cluster.log_text(id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a node shows about itself: its log, `/metrics`, its status.
async fn shown(cluster: &LocalCluster, id: u64) -> String {
    format!(
        "{}\n{}\n{:?}",
        cluster.log_text(id),
        cluster.metrics_text(id).await,
        cluster.status(id).await
    )
}

#[tokio::test]
async fn settles_through_an_https_rpc_with_its_key_in_the_url_and_never_shows_the_key() {
    let chain = DevChain::start(31337).await;
    let front = TlsFront::in_front_of(&chain.anvil).await;
    let url = front.keyed_url(RPC_KEY);
    let ca = format!("ca_file = {:?}", front.ca_file.display().to_string());
    let cluster = cluster_at(&chain, &url, &ca).await;

    let before = chain.token.balance_of(MERCHANT).await;
    let (body, _, nonce) = payment(&chain, 2);
    let verdict = post(&cluster, 1, "/verify", &body).await;
    assert_eq!(verdict["isValid"], true, "{verdict}");
    let settled = post(&cluster, 2, "/settle", &body).await;
    assert_eq!(settled["success"], true, "{settled}");
    assert_eq!(
        chain.token.balance_of(MERCHANT).await,
        before + U256::from(PAYMENT_AMOUNT)
    );
    let transfers = chain
        .token
        .transfers_of_authorization(chain.payer().address(), nonce)
        .await;
    assert_eq!(transfers.len(), 1, "one Transfer: {transfers:?}");
    assert!(
        front.handshakes() > 0,
        "the nodes reached the chain through TLS"
    );
    for id in cluster.ids() {
        wait_log(&cluster, id, "RPC URL answers").await;
    }
    for id in cluster.ids() {
        let shown = shown(&cluster, id).await;
        assert!(!shown.contains(RPC_KEY), "node {id} shows the RPC key");
    }
}

#[tokio::test]
async fn an_https_rpc_of_an_unknown_ca_is_refused_and_the_refusal_says_why() {
    let chain = DevChain::start(31337).await;
    let front = TlsFront::in_front_of(&chain.anvil).await;
    let url = front.keyed_url(RPC_KEY);
    // No ca_file: the system's roots, which do not know the front's CA.
    let cluster = cluster_at(&chain, &url, "").await;
    let (body, _, _) = payment(&chain, 2);
    let verdict = post(&cluster, 1, "/verify", &body).await;
    assert_eq!(verdict["isValid"], false, "{verdict}");
    let settled = post(&cluster, 2, "/settle", &body).await;
    assert_eq!(settled["success"], false, "{settled}");
    assert_eq!(front.handshakes(), 0, "no node trusted the certificate");
    assert!(
        settled["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("UnknownIssuer")),
        "the answer says why: {settled}"
    );
    for id in cluster.ids() {
        wait_log(&cluster, id, "UnknownIssuer").await;
    }
    for id in cluster.ids() {
        let shown = shown(&cluster, id).await;
        assert!(!shown.contains(RPC_KEY), "node {id} shows the RPC key");
    }
}
