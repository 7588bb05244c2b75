//! Wrong and malformed `/verify` and `/settle` requests, sent to every node of a 3-node cluster:
//! each gets the reason code the reference facilitators give (HTTP 200, `isValid: false` /
//! `success: false`) or HTTP 400 with the closest code and a message naming the field; none
//! leaves state behind (applied index, claims and state hash unchanged on every node), and no
//! node dies. Then the untouched payment verifies, again (idempotent), and is refused for another
//! resource (a replay), on different nodes.
//!
//! The table is `x402_dev::bad_requests`, shared with the millisecond layer
//! (`dev/tests/payment_checks.rs`) that runs the same cases through the checks in process.

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use x402_dev::bad_requests::{cases, payer, Spec, FACILITATOR, RESOURCE};
use x402_tests::{ClusterOptions, LocalCluster};

#[tokio::test]
async fn wrong_requests_get_their_reason_and_change_nothing() {
    let cluster = LocalCluster::start_with(3, ClusterOptions::default().toml(FACILITATOR)).await;
    let before = cluster.wait_converged().await;
    let cases = cases();
    assert!(cases.len() >= 25, "the table has {} cases", cases.len());
    let mut wrong = Vec::new();
    for id in cluster.ids() {
        for case in &cases {
            let response = cluster
                .raw(
                    id,
                    Method::POST,
                    case.path,
                    &[("content-type", "application/json")],
                    case.body.clone(),
                )
                .await
                .unwrap_or_else(|e| panic!("{} on node {id}: {e}", case.name));
            let status = response.status();
            let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
            if status.as_u16() != case.status {
                wrong.push(format!(
                    "{} on node {id}: status {status}: {body}",
                    case.name
                ));
                continue;
            }
            if case.reason.is_empty() {
                continue;
            }
            let (reason, message, verdict) = if case.path == "/verify" {
                (
                    &body["invalidReason"],
                    &body["invalidMessage"],
                    &body["isValid"],
                )
            } else {
                if body["transaction"] != json!("") {
                    wrong.push(format!(
                        "{}: a transaction after a refusal: {body}",
                        case.name
                    ));
                }
                (
                    &body["errorReason"],
                    &body["errorMessage"],
                    &body["success"],
                )
            };
            let reason = reason.as_str().unwrap_or_default();
            let message = message.as_str().unwrap_or_default();
            if verdict != &json!(false) || !case.expects(reason, message) {
                wrong.push(format!(
                    "{} on node {id}: expected {} mentioning {:?}, got {body}",
                    case.name, case.reason, case.mentions
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Nothing was written, no node died.
    let after = cluster.wait_converged().await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (b.applied, b.claims, &b.state_hash),
            (a.applied, a.claims, &a.state_hash),
            "node {}",
            a.id
        );
    }

    // The untouched payment is valid through any node, again and again; for another resource
    // it is a replay.
    let good = serde_json::to_vec(&Spec::new(0x01).v2(RESOURCE)).expect("json");
    for id in [1, 2, 3, 1] {
        let response = cluster
            .raw(
                id,
                Method::POST,
                "/verify",
                &[("content-type", "application/json")],
                good.clone(),
            )
            .await
            .expect("verify");
        let body: Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["isValid"], json!(true), "node {id}: {body}");
        assert_eq!(body["payer"], json!(payer().address().to_checksum(None)));
    }
    let other =
        serde_json::to_vec(&Spec::new(0x01).v2("http://localhost:4021/other")).expect("json");
    let response = cluster
        .raw(
            2,
            Method::POST,
            "/verify",
            &[("content-type", "application/json")],
            other,
        )
        .await
        .expect("verify");
    let body: Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(body["isValid"], json!(false), "{body}");
    assert_eq!(
        body["invalidReason"],
        json!("invalid_exact_evm_nonce_already_used")
    );
    let after = cluster.wait_converged().await;
    assert!(
        after.iter().all(|s| s.claims == before[0].claims + 1),
        "exactly one claim was made"
    );
}

#[tokio::test]
async fn supported_lists_exactly_the_configured_kinds() {
    let cluster = LocalCluster::start_with(1, ClusterOptions::default().toml(FACILITATOR)).await;
    let response = cluster
        .raw(1, Method::GET, "/supported", &[], Vec::new())
        .await
        .expect("supported");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(response.body()).expect("json");
    assert_eq!(
        body["kinds"],
        json!([
            {"x402Version": 2, "scheme": "exact", "network": "eip155:31337"},
            {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"},
            {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
        ])
    );
    // No signer keys configured: no signers.
    assert_eq!(body["signers"]["eip155:31337"], json!([]));
}
