//! The order of the request pipeline (`http/facilitator.rs`, `guarded` and `paid`) in
//! milliseconds: the node's own router called in process (no socket) on one in-process node.
//! The order is the contract: the API key first (401 before anything else), then the rate
//! limit's early refusal (429 before the body is read), then decoding (400) and the payment's
//! own checks, and only then the idempotency key, so that a refused request neither takes a key
//! nor writes anything; a request that wrote nothing is still counted against the limit.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use x402_dev::bad_requests::RESOURCE;
use x402_dev::in_process::InProcessNode;
use x402_node::http::Routers;

const KEY: &str = "sk_test_in_process_pipeline";
const LIMIT: u64 = 3;

struct Answer {
    status: StatusCode,
    json: Value,
    replayed: bool,
}

impl Answer {
    fn reason(&self) -> &str {
        ["invalidReason", "errorReason", "code", "error"]
            .iter()
            .find_map(|k| self.json[k].as_str())
            .unwrap_or("")
    }
}

async fn post(
    router: &Router,
    key: Option<&str>,
    idempotency: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut request = Request::post("/verify").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(idempotency) = idempotency {
        request = request.header("idempotency-key", idempotency);
    }
    let request = request.body(Body::from(body.to_vec())).expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        json,
        replayed,
    }
}

async fn node() -> InProcessNode {
    let digest = hex::encode(Sha256::digest(KEY.as_bytes()));
    InProcessNode::start(
        "",
        &format!(
            "[auth]\nrequired = true\n\n[[auth.api_keys]]\nid = \"shop\"\nsha256 = \"{digest}\"\n\n\
             [[rate_limits]]\nname = \"verify\"\nper = \"route\"\nlimit = {LIMIT}\n\
             window_ms = 600000\nroutes = [\"/verify\"]\n\n\
             [rate_limit]\nlease_ms = 60000\n"
        ),
    )
    .await
}

/// The index of the last log entry the node applied. Nothing else writes during these tests: no
/// claim expires and no lease runs out (`lease_ms` is a minute) while they run.
fn applied(node: &InProcessNode) -> u64 {
    node.app.state.last_applied().map_or(0, |l| l.index)
}

/// Claimed authorizations and idempotency records in the node's state.
fn written(node: &InProcessNode) -> (usize, usize) {
    node.app
        .state
        .read(|s| (s.nonces().len(), s.idempotency().len()))
}

#[tokio::test]
async fn the_pipeline_checks_key_then_limit_then_body_then_payment_then_idempotency() {
    let node = node().await;
    let router = Routers::new(node.app.clone()).single();
    let good = serde_json::to_vec(&node.spec(1).v2(RESOURCE)).expect("body");
    let forged = {
        let mut spec = node.spec(2);
        spec.sign_name = "Not The Token";
        serde_json::to_vec(&spec.v2(RESOURCE)).expect("body")
    };

    let no_key = post(&router, None, None, &good).await;
    assert_eq!(
        (no_key.status, no_key.reason()),
        (StatusCode::UNAUTHORIZED, "api_key_missing")
    );

    // Counted though it wrote nothing: 1 of 3.
    let malformed = post(&router, Some(KEY), None, b"{}").await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.json
    );

    // Refused by its own checks before its idempotency key is looked at: the key stays free.
    // 2 of 3.
    let refused = post(&router, Some(KEY), Some("k1"), &forged).await;
    assert_eq!(refused.status, StatusCode::OK, "{}", refused.json);
    assert_eq!(refused.json["isValid"], false, "{}", refused.json);
    assert_eq!(
        refused.reason(),
        "invalid_exact_evm_signature",
        "{}",
        refused.json
    );
    assert_eq!(written(&node), (0, 0), "a refused payment writes nothing");

    // The same key on another request runs (the refused one did not take it): 3 of 3.
    let valid = post(&router, Some(KEY), Some("k1"), &good).await;
    assert_eq!(valid.status, StatusCode::OK, "{}", valid.json);
    assert_eq!(valid.json["isValid"], true, "{}", valid.json);
    assert!(!valid.replayed);
    assert_eq!(written(&node), (1, 1), "one claim, one stored answer");

    // The limit is spent. The key is still checked first; then the early refusal answers
    // before the body is decoded and before a stored answer is replayed.
    let before = applied(&node);
    let no_key = post(&router, None, None, b"{}").await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED, "{}", no_key.json);
    for (what, idempotency, body) in [
        ("a malformed body", None, b"{}".to_vec()),
        (
            "a new payment",
            None,
            serde_json::to_vec(&node.spec(3).v2(RESOURCE)).expect("body"),
        ),
        (
            "a new payment with its own key",
            Some("k2"),
            serde_json::to_vec(&node.spec(4).v2(RESOURCE)).expect("body"),
        ),
        ("a replay", Some("k1"), good.clone()),
    ] {
        let limited = post(&router, Some(KEY), idempotency, &body).await;
        assert_eq!(
            limited.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{what}: {}",
            limited.json
        );
        assert!(!limited.replayed, "{what}");
    }
    assert_eq!(
        written(&node),
        (1, 1),
        "nothing limited wrote a claim or a key"
    );
    assert_eq!(
        applied(&node),
        before,
        "the early refusals wrote nothing to the log"
    );
}
