//! The payment checks in milliseconds: every case of the end-to-end bad-input table
//! (`x402_dev::bad_requests`) through the node's own decoding and checks, in process, with no
//! node, no network and no chain. A case the end-to-end test answers 400 must fail to decode
//! with its reason; a case answered 200 must decode and be refused by the checks with its
//! reason (and its message must name what it says). Only the oversized body is decided by the
//! HTTP layer's body limit; it is named below, not skipped silently.

use std::collections::BTreeMap;
use std::sync::Arc;

use x402_dev::bad_requests::{cases, payer, unix_now, Spec, FACILITATOR, RESOURCE};
use x402_dev::memory_chain::MemoryChain;
use x402_node::chain::SharedChain;
use x402_node::config::Config;
use x402_node::facilitator::verify::authenticate_at;
use x402_node::facilitator::Facilitator;
use x402_node::seams::{SharedClock, SystemClock};
use x402_protocol::x402::decode_request;

/// Cases whose answer the HTTP layer gives before the body reaches the checks.
const DECIDED_BY_HTTP: &[&str] = &["oversized"];

/// The facilitator of the end-to-end test's configuration, on in-memory chains.
fn facilitator() -> Facilitator {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, FACILITATOR).expect("write config");
    let config = Config::load(Some(&path)).expect("the table's configuration loads");
    let clock: SharedClock = Arc::new(SystemClock);
    let chains: BTreeMap<u64, SharedChain> = config
        .facilitator
        .networks
        .iter()
        .map(|n| {
            let id = n.chain_id().expect("chain id");
            (id, MemoryChain::new(id, clock.clone()) as SharedChain)
        })
        .collect();
    Facilitator::with_chains(&config.facilitator, chains).expect("facilitator")
}

#[tokio::test]
async fn every_bad_request_gets_its_reason_from_the_checks() {
    let facilitator = facilitator();
    let now = unix_now();
    let cases = cases();
    let mut wrong = Vec::new();
    let mut decided = 0;
    for case in &cases {
        if DECIDED_BY_HTTP.contains(&case.name) {
            assert_eq!(case.status, 413, "{}: the HTTP layer's case", case.name);
            continue;
        }
        let (reason, message) = match decode_request(&case.body) {
            Err(e) => {
                if case.status != 400 {
                    wrong.push(format!(
                        "{}: expected {} {}, did not decode: {e}",
                        case.name, case.status, case.reason
                    ));
                    continue;
                }
                (e.reason().as_str().to_owned(), e.to_string())
            }
            Ok(request) => {
                if case.status != 200 {
                    wrong.push(format!(
                        "{}: expected {} {}, decoded",
                        case.name, case.status, case.reason
                    ));
                    continue;
                }
                match authenticate_at(&facilitator, &request, now).await {
                    Ok(_) => {
                        wrong.push(format!("{}: expected {}, passed", case.name, case.reason));
                        continue;
                    }
                    Err(rejection) => (
                        rejection.reason.as_str().to_owned(),
                        rejection.message.unwrap_or_default(),
                    ),
                }
            }
        };
        decided += 1;
        if !case.expects(&reason, &message) {
            wrong.push(format!(
                "{}: expected {} mentioning {:?}, got {reason}: {message}",
                case.name, case.reason, case.mentions
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(decided + DECIDED_BY_HTTP.len(), cases.len());
    assert!(decided >= 25, "the checks decided only {decided} cases");
}

#[tokio::test]
async fn the_untouched_payment_passes_the_checks() {
    let facilitator = facilitator();
    let mut on_base_sepolia = Spec::new(0x02);
    on_base_sepolia.chain_id = 84532;
    for body in [
        Spec::new(0x01).v2(RESOURCE),
        on_base_sepolia.v1("base-sepolia"),
    ] {
        let bytes = serde_json::to_vec(&body).expect("json");
        let request = decode_request(&bytes).expect("decodes");
        let result = authenticate_at(&facilitator, &request, unix_now()).await;
        let payment = result.unwrap_or_else(|r| panic!("refused: {r:?}: {body}"));
        assert_eq!(payment.payer, payer().address());
    }
}

#[tokio::test]
async fn the_time_window_is_judged_on_the_given_clock() {
    // The same signed payment, judged at three moments: the checks read no clock of their own.
    let facilitator = facilitator();
    let spec = Spec::new(0x03);
    let bytes = serde_json::to_vec(&spec.v2(RESOURCE)).expect("json");
    let request = decode_request(&bytes).expect("decodes");
    let at = |now| authenticate_at(&facilitator, &request, now);
    assert!(at(spec.valid_after).await.is_ok());
    let early = at(spec.valid_after - 1)
        .await
        .expect_err("before validAfter");
    assert_eq!(
        early.reason.as_str(),
        "invalid_exact_evm_payload_authorization_valid_after"
    );
    let late = at(spec.valid_before - 5)
        .await
        .expect_err("inside the buffer");
    assert_eq!(
        late.reason.as_str(),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
}
