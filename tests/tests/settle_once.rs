//! One payment buys one resource, and legitimate retries still get their answer, end to end: 3
//! real `x402-node` processes and a real anvil with our EIP-3009 token.
//!
//! - The retry matrix: a `settlement_pending` answer has not used up the success (the retry
//!   the official SDK makes gets `success: true`, with the same hash); the same
//!   `Idempotency-Key` after a lost answer gets the answer again; the same `payment-identifier`
//!   id gets it again, another payment under that id gets 409; a plain replay is refused with
//!   the settlement's hash. One transfer per authorization.
//! - Another sender on a signer key (a manual transaction, another facilitator with the same
//!   key) between two settlements: the next settlement still succeeds within seconds, signed
//!   again at a fresh nonce, and the cluster's counter equals the chain's (no gap).

use std::time::{Duration, Instant};

use alloy::primitives::B256;
use serde_json::{json, Value};
use x402_protocol::x402::payment::encode;
use x402_protocol::x402::FacilitatorRequest;
use x402_tests::devchain::{
    facilitator_toml_with, key_signer, AnvilOptions, DevChain, Mining, SIGNER1, SIGNER1_KEY,
    SIGNER_KEYS_ENV,
};
use x402_tests::http::{post, Reply};
use x402_tests::{ClusterOptions, LocalCluster};

const NONCE_USED: &str = "invalid_exact_evm_nonce_already_used";

/// A 3-node cluster on `chain` with one signer key, and `network_keys` in its network.
async fn cluster_on(chain: &DevChain, facilitator_keys: &str, network_keys: &str) -> LocalCluster {
    let network = chain.network();
    let toml = facilitator_toml_with(
        &[(&network, None, chain.anvil.url(), &chain.token)],
        SIGNER_KEYS_ENV,
        facilitator_keys,
        network_keys,
    );
    LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(toml)
            .env(SIGNER_KEYS_ENV, SIGNER1_KEY),
    )
    .await
}

/// A freshly signed v2 payment from the dev payer, with a `payment-identifier` id if given.
fn payment(chain: &DevChain, id: Option<&str>) -> (Vec<u8>, B256) {
    let mut request = chain.signed_payment(2, "http://shop.test/paid");
    let nonce = B256::from(*request.payload().authorization.nonce.as_bytes());
    if let (Some(id), FacilitatorRequest::V2(r)) = (id, &mut request) {
        // Extensions are not signed: the resource server passes the client's through.
        r.payment_payload.extensions =
            Some(json!({"payment-identifier": {"info": {"required": false, "id": id}}}));
    }
    (encode(&request).expect("encode"), nonce)
}

fn settle_json(reply: &Reply) -> &Value {
    assert_eq!(reply.status, 200, "{}", reply.json);
    &reply.json
}

async fn transfers(chain: &DevChain, nonce: B256) -> Vec<String> {
    chain
        .token
        .transfers_of_authorization(chain.payer().address(), nonce)
        .await
        .iter()
        .map(|t| t.tx_hash.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_get_their_answer_and_a_payment_succeeds_once() {
    // Blocks only when asked, so a settlement can be left pending.
    let chain = DevChain::start_with(AnvilOptions::new(31337).mining(Mining::Manual)).await;
    let cluster = cluster_on(&chain, "", "receipt_timeout_ms = 1500").await;
    let rpc = chain.token.rpc();

    // settlement_pending (its receipt not in), then the SDK's one retry of the identical
    // payload once the block is in: the success, with the same hash; then a plain replay is
    // refused with that hash.
    let (d, d_nonce) = payment(&chain, None);
    let pending = post(&cluster, 1, "/settle", &[], &d).await;
    let pending = settle_json(&pending);
    assert_eq!(pending["success"], false, "{pending}");
    assert_eq!(pending["errorReason"], "settlement_pending", "{pending}");
    let hash = pending["transaction"].as_str().expect("a hash").to_owned();
    assert!(hash.starts_with("0x") && hash.len() == 66, "{pending}");
    rpc.mine(1).await;
    let retried = post(&cluster, 2, "/settle", &[], &d).await;
    let retried = settle_json(&retried);
    assert_eq!(retried["success"], true, "{retried}");
    assert_eq!(retried["transaction"], hash.as_str());
    let replayed = post(&cluster, 3, "/settle", &[], &d).await;
    let replayed = settle_json(&replayed);
    assert_eq!(replayed["success"], false, "{replayed}");
    assert_eq!(replayed["errorReason"], NONCE_USED, "{replayed}");
    assert_eq!(replayed["transaction"], hash.as_str(), "{replayed}");
    // Verify of it now: the nonce is used.
    let verified = post(&cluster, 1, "/verify", &[], &d).await;
    assert_eq!(
        verified.json["invalidReason"], NONCE_USED,
        "{}",
        verified.json
    );
    assert_eq!(transfers(&chain, d_nonce).await, vec![hash]);

    // The same Idempotency-Key after a lost answer: the answer again (also across a pending
    // first answer, which is not stored), on any node.
    let (a, a_nonce) = payment(&chain, None);
    let key = [("idempotency-key", "retry-a")];
    let first = post(&cluster, 1, "/settle", &key, &a).await;
    assert_eq!(
        first.json["errorReason"], "settlement_pending",
        "{}",
        first.json
    );
    rpc.mine(1).await;
    let lost = post(&cluster, 2, "/settle", &key, &a).await;
    assert_eq!(lost.json["success"], true, "{}", lost.json);
    assert_eq!(lost.header("idempotent-replayed"), None);
    let again = post(&cluster, 3, "/settle", &key, &a).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.bytes, lost.bytes, "the stored answer, byte for byte");
    let unkeyed = post(&cluster, 1, "/settle", &[], &a).await;
    assert_eq!(unkeyed.json["errorReason"], NONCE_USED, "{}", unkeyed.json);
    let a_tx = lost.json["transaction"].as_str().expect("hash").to_owned();
    assert_eq!(unkeyed.json["transaction"], a_tx.as_str());
    assert_eq!(transfers(&chain, a_nonce).await, vec![a_tx]);

    // payment-identifier: the same id and payload get the answer again; another payment
    // under the same id is 409 and changes nothing.
    let id = "pay_0123456789abcdef0123";
    let (b, b_nonce) = payment(&chain, Some(id));
    let first = post(&cluster, 2, "/settle", &[], &b).await;
    assert_eq!(
        first.json["errorReason"], "settlement_pending",
        "{}",
        first.json
    );
    rpc.mine(1).await;
    let settled = post(&cluster, 3, "/settle", &[], &b).await;
    assert_eq!(settled.json["success"], true, "{}", settled.json);
    let same = post(&cluster, 1, "/settle", &[], &b).await;
    assert_eq!(same.header("idempotent-replayed"), Some("true"));
    assert_eq!(same.bytes, settled.bytes);
    let (c, c_nonce) = payment(&chain, Some(id));
    let conflict = post(&cluster, 2, "/settle", &[], &c).await;
    assert_eq!(
        (conflict.status.as_u16(), conflict.code()),
        (409, "payment_identifier_reused"),
        "{}",
        conflict.json
    );
    assert!(transfers(&chain, c_nonce).await.is_empty());
    let b_tx = settled.json["transaction"]
        .as_str()
        .expect("hash")
        .to_owned();
    assert_eq!(transfers(&chain, b_nonce).await, vec![b_tx]);
    // A malformed id is refused before anything is written.
    let (bad, _) = payment(&chain, Some("too-short"));
    let refused = post(&cluster, 3, "/settle", &[], &bad).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (400, "payment_identifier_invalid"),
        "{}",
        refused.json
    );
    // /supported says so.
    let supported = x402_tests::http::get(&cluster, 1, "/supported", &[]).await;
    assert!(
        supported.json["extensions"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("payment-identifier"))),
        "{}",
        supported.json
    );
}

#[tokio::test]
async fn another_sender_on_the_signer_key_does_not_cost_a_payment() {
    let chain = DevChain::start(31337).await;
    let cluster = cluster_on(&chain, "", "").await;
    let rpc = chain.token.rpc();
    let (p, p_nonce) = payment(&chain, None);
    let first = post(&cluster, 1, "/settle", &[], &p).await;
    assert_eq!(first.json["success"], true, "{}", first.json);
    assert_eq!(transfers(&chain, p_nonce).await.len(), 1);

    // Someone else uses the key: the cluster's next nonce is taken.
    let signer = key_signer(SIGNER1_KEY);
    let outside = rpc
        .try_send(&signer, Some(SIGNER1), Vec::new(), 21_000)
        .await
        .expect("a transaction outside the cluster");
    assert!(outside.status);

    let (q, q_nonce) = payment(&chain, None);
    let started = Instant::now();
    let second = post(&cluster, 2, "/settle", &[], &q).await;
    let took = started.elapsed();
    assert_eq!(second.json["success"], true, "{}", second.json);
    assert!(
        took < Duration::from_secs(5),
        "the payment waited {took:?} for the taken nonce"
    );
    let tx = second.json["transaction"]
        .as_str()
        .expect("hash")
        .to_owned();
    assert_eq!(transfers(&chain, q_nonce).await, vec![tx]);
    println!("settled in {took:?} after another sender used the key");

    // No gap: the cluster's counter for the key is the chain's count (every nonce it handed
    // out is used on chain, by its own transactions or by the other sender).
    let mined = rpc.nonce_of(SIGNER1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = cluster.wait_converged().await;
        let counters: Vec<(u64, u32)> = statuses
            .iter()
            .flat_map(|s| &s.signers)
            .filter(|s| s.address == SIGNER1.to_checksum(None))
            .map(|s| (s.next_nonce, s.in_flight))
            .collect();
        if counters.iter().all(|c| *c == (mined, 0)) && counters.len() == statuses.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters {counters:?}, chain count {mined}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rpc.pending_nonce_of(SIGNER1).await,
        mined,
        "nothing left pending"
    );
}
