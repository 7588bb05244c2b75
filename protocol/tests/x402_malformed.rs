//! Malformed `/verify` and `/settle` bodies: each gives its typed [`DecodeError`] naming the
//! field in wire terms, and no input makes the decoder panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use proptest::prelude::*;
use serde_json::{json, Value};
use x402_protocol::x402::{
    decode_request, DecodeError, FacilitatorRequest, NetworkError, NetworkRegistry, ReasonCode,
};

const V1: &str = include_str!("samples/v1/verify-request.json");
const V2: &str = include_str!("samples/v2/verify-request.json");

const AUTH: &str = "/paymentPayload/payload/authorization";

/// `body` with the JSON pointer `at` set to `value` (`None`: removed).
fn edit(body: &[u8], at: &str, value: Option<Value>) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(body).unwrap();
    let (parent, key) = at.rsplit_once('/').unwrap();
    let object = body
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent}"));
    match value {
        Some(v) => object.insert(key.to_owned(), v),
        None => object.remove(key),
    };
    serde_json::to_vec(&body).unwrap()
}

fn decode_err(body: &[u8]) -> DecodeError {
    match decode_request(body) {
        Ok(request) => panic!("decoded: {request:?}"),
        Err(err) => err,
    }
}

fn with(sample: &str, at: &str, value: Value) -> Vec<u8> {
    edit(sample.as_bytes(), at, Some(value))
}

fn without(sample: &str, at: &str) -> Vec<u8> {
    edit(sample.as_bytes(), at, None)
}

#[track_caller]
fn assert_invalid_field(err: DecodeError, path: &str, needle: &str) {
    match &err {
        DecodeError::InvalidField { path: p, message } => {
            assert_eq!(p, path, "{err}");
            assert!(message.contains(needle), "{needle:?} not in: {err}");
        }
        other => panic!("expected InvalidField at {path}, got {other:?}"),
    }
}

#[test]
fn unsupported_versions() {
    let err = decode_err(&with(V2, "/x402Version", json!(3)));
    assert_eq!(err, DecodeError::UnsupportedVersion(3));
    assert!(
        err.to_string().starts_with("unsupported x402Version 3"),
        "{err}"
    );
    assert_eq!(err.reason(), ReasonCode::InvalidX402Version);

    let both = edit(
        &with(V2, "/x402Version", json!(3)),
        "/paymentPayload/x402Version",
        Some(json!(3)),
    );
    assert_eq!(decode_err(&both), DecodeError::UnsupportedVersion(3));
    let only_payload = without(
        std::str::from_utf8(&with(V2, "/paymentPayload/x402Version", json!(0))).unwrap(),
        "/x402Version",
    );
    assert_eq!(
        decode_err(&only_payload),
        DecodeError::UnsupportedVersion(0)
    );
}

#[test]
fn version_fields_disagree_or_are_not_integers() {
    assert_eq!(
        decode_err(&with(V2, "/x402Version", json!(1))),
        DecodeError::VersionMismatch {
            top_level: 1,
            payload: 2
        }
    );
    assert_eq!(
        decode_err(&with(V1, "/paymentPayload/x402Version", json!(2))),
        DecodeError::VersionMismatch {
            top_level: 1,
            payload: 2
        }
    );
    for bad in [json!("2"), json!(2.5), json!(-1), json!([2]), json!(true)] {
        let err = decode_err(&with(V2, "/x402Version", bad.clone()));
        assert!(
            matches!(
                err,
                DecodeError::InvalidVersion {
                    field: "x402Version",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
        let err = decode_err(&with(V2, "/paymentPayload/x402Version", bad.clone()));
        assert!(
            matches!(
                err,
                DecodeError::InvalidVersion {
                    field: "paymentPayload.x402Version",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn version_lives_in_the_payload_and_the_top_level_one_is_optional() {
    let request = decode_request(&without(V2, "/x402Version")).unwrap();
    assert!(matches!(request, FacilitatorRequest::V2(_)));
    // Written back with the top-level field.
    assert_eq!(serde_json::to_value(&request).unwrap()["x402Version"], 2);
    let request = decode_request(&with(V1, "/x402Version", Value::Null)).unwrap();
    assert!(matches!(request, FacilitatorRequest::V1(_)));

    let err = decode_err(&without(V2, "/paymentPayload/x402Version"));
    assert_eq!(
        err,
        DecodeError::MissingField("paymentPayload.x402Version".into())
    );
}

#[test]
fn missing_parts() {
    let err = decode_err(&without(V2, "/paymentRequirements"));
    assert_eq!(err, DecodeError::MissingField("paymentRequirements".into()));
    assert_eq!(err.to_string(), "missing field paymentRequirements");
    assert_eq!(err.reason(), ReasonCode::InvalidPaymentRequirements);
    let err = decode_err(&without(V1, "/paymentPayload"));
    assert_eq!(err, DecodeError::MissingField("paymentPayload".into()));
    assert_eq!(err.reason(), ReasonCode::InvalidPayload);
    assert_eq!(
        decode_err(&with(V2, "/paymentPayload", Value::Null)),
        DecodeError::MissingField("paymentPayload".into())
    );
    assert_eq!(
        decode_err(b"{}"),
        DecodeError::MissingField("paymentPayload".into())
    );
}

#[test]
fn missing_fields_are_named_by_their_path() {
    let cases = [
        (
            V2,
            "/paymentRequirements/payTo",
            "paymentRequirements.payTo",
        ),
        (
            V2,
            "/paymentRequirements/amount",
            "paymentRequirements.amount",
        ),
        (
            V2,
            "/paymentRequirements/scheme",
            "paymentRequirements.scheme",
        ),
        (V2, "/paymentPayload/accepted", "paymentPayload.accepted"),
        (V2, "/paymentPayload/payload", "paymentPayload.payload"),
        (
            V2,
            "/paymentPayload/payload/signature",
            "paymentPayload.payload.signature",
        ),
        (
            V2,
            "/paymentPayload/payload/authorization/nonce",
            "paymentPayload.payload.authorization.nonce",
        ),
        (
            V1,
            "/paymentRequirements/maxAmountRequired",
            "paymentRequirements.maxAmountRequired",
        ),
        (
            V1,
            "/paymentRequirements/asset",
            "paymentRequirements.asset",
        ),
        (V1, "/paymentPayload/network", "paymentPayload.network"),
    ];
    for (sample, at, path) in cases {
        let err = decode_err(&without(sample, at));
        assert_eq!(err, DecodeError::MissingField(path.into()), "{at}");
    }
    // Fields a facilitator does not need may be absent (v1 resource/description, v2 resource).
    decode_request(&without(V1, "/paymentRequirements/description")).unwrap();
    decode_request(&without(V1, "/paymentRequirements/resource")).unwrap();
    decode_request(&without(V2, "/paymentPayload/resource")).unwrap();
    decode_request(&without(V2, "/paymentRequirements/extra")).unwrap();
}

#[test]
fn bad_addresses() {
    let err = decode_err(&with(V2, "/paymentRequirements/payTo", json!("0x1234")));
    assert_eq!(err.reason(), ReasonCode::InvalidPaymentRequirements);
    assert_invalid_field(err, "paymentRequirements.payTo", "40 hex digits, got 4");
    assert_invalid_field(
        decode_err(&with(
            V2,
            &format!("{AUTH}/from"),
            json!("0x70997970C51812dc3A010C7d01b50e0d17dc79CG"),
        )),
        "paymentPayload.payload.authorization.from",
        "'G'",
    );
    assert_invalid_field(
        decode_err(&with(
            V1,
            "/paymentRequirements/asset",
            json!("5FbDB2315678afecb367f032d93F642f64180aa3"),
        )),
        "paymentRequirements.asset",
        "must start with 0x",
    );
    assert_invalid_field(
        decode_err(&with(V2, "/paymentPayload/accepted/payTo", json!(12))),
        "paymentPayload.accepted.payTo",
        "invalid type",
    );
}

#[test]
fn bad_amounts_and_times() {
    for bad in ["-1", "1.5", "1e4", "", " 10000", "0x2710", "10,000"] {
        let err = decode_err(&with(V2, "/paymentRequirements/amount", json!(bad)));
        let needle = if bad.is_empty() {
            "empty amount"
        } else {
            "not a non-negative decimal integer"
        };
        assert_invalid_field(err, "paymentRequirements.amount", needle);
        let err = decode_err(&with(V2, &format!("{AUTH}/value"), json!(bad)));
        assert_invalid_field(err, "paymentPayload.payload.authorization.value", needle);
    }
    assert_invalid_field(
        decode_err(&with(V2, "/paymentRequirements/amount", json!(10000))),
        "paymentRequirements.amount",
        "decimal integer string",
    );
    let too_big = format!("1{}", "0".repeat(78));
    assert_invalid_field(
        decode_err(&with(
            V1,
            "/paymentRequirements/maxAmountRequired",
            json!(too_big),
        )),
        "paymentRequirements.maxAmountRequired",
        "larger than 2^256 - 1",
    );
    assert_invalid_field(
        decode_err(&with(V1, &format!("{AUTH}/validBefore"), json!("-5"))),
        "paymentPayload.payload.authorization.validBefore",
        "not a non-negative decimal integer",
    );
    for bad in [json!(-1), json!(1.5), json!("120")] {
        let err = decode_err(&with(V2, "/paymentRequirements/maxTimeoutSeconds", bad));
        assert_invalid_field(err, "paymentRequirements.maxTimeoutSeconds", "");
    }
    // A huge validBefore is legal (uint256) and reads as "never expires".
    let far = decode_request(&with(
        V2,
        &format!("{AUTH}/validBefore"),
        json!("9".repeat(70)),
    ))
    .unwrap();
    assert_eq!(far.payload().authorization.valid_before_secs(), u64::MAX);
}

#[test]
fn bad_nonce_and_signature() {
    assert_invalid_field(
        decode_err(&with(V2, &format!("{AUTH}/nonce"), json!("0x1234"))),
        "paymentPayload.payload.authorization.nonce",
        "64 hex digits",
    );
    assert_invalid_field(
        decode_err(&with(
            V2,
            "/paymentPayload/payload/signature",
            json!("0x123"),
        )),
        "paymentPayload.payload.signature",
        "even number of hex digits",
    );
    assert_invalid_field(
        decode_err(&with(
            V2,
            "/paymentPayload/payload/signature",
            json!("deadbeef"),
        )),
        "paymentPayload.payload.signature",
        "must start with 0x",
    );
}

#[test]
fn networks() {
    let err = decode_err(&with(
        V2,
        "/paymentRequirements/network",
        json!("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
    ));
    assert!(
        matches!(
            err,
            DecodeError::UnsupportedNetwork(NetworkError::UnsupportedNamespace { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.reason(), ReasonCode::InvalidNetwork);
    let err = decode_err(&with(
        V2,
        "/paymentRequirements/network",
        json!("base-sepolia"),
    ));
    assert!(
        matches!(
            err,
            DecodeError::UnsupportedNetwork(NetworkError::NotCaip2 { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("x402Version 1"), "{err}");

    // v1 names are resolved after decoding, against the node's registry.
    let request =
        decode_request(&with(V1, "/paymentRequirements/network", json!("anvil"))).unwrap();
    let mut networks = NetworkRegistry::builtin();
    assert!(matches!(
        request.chain_id(&networks),
        Err(NetworkError::UnknownName { .. })
    ));
    networks
        .add("anvil", x402_protocol::x402::ChainId(31337))
        .unwrap();
    assert_eq!(
        request.chain_id(&networks),
        Ok(x402_protocol::x402::ChainId(31337))
    );
    // A client's accepted.network that differs is the verifier's business, not a decode error.
    let request = decode_request(&with(
        V2,
        "/paymentPayload/accepted/network",
        json!("eip155:1"),
    ))
    .unwrap();
    assert_ne!(request.payload_network(), request.network());
}

#[test]
fn schemes_and_transfer_methods() {
    let err = decode_err(&with(V2, "/paymentRequirements/scheme", json!("upto")));
    assert_eq!(err, DecodeError::UnsupportedScheme("upto".into()));
    assert_eq!(err.reason(), ReasonCode::UnsupportedScheme);
    let err = decode_err(&with(
        V2,
        "/paymentRequirements/extra/assetTransferMethod",
        json!("permit2"),
    ));
    assert_eq!(
        err,
        DecodeError::UnsupportedTransferMethod("\"permit2\"".into())
    );
    assert_eq!(err.reason(), ReasonCode::UnsupportedPayloadType);
    decode_request(&with(
        V2,
        "/paymentRequirements/extra/assetTransferMethod",
        json!("eip3009"),
    ))
    .unwrap();
}

#[test]
fn not_json_or_not_an_object() {
    for body in [
        &b""[..],
        b"{",
        b"nope",
        b"{\"x402Version\": 2,}",
        b"\xff\xfe",
    ] {
        assert!(
            matches!(decode_err(body), DecodeError::NotJson(_)),
            "{body:?}"
        );
    }
    let mut trailing = V2.as_bytes().to_vec();
    trailing.extend_from_slice(b" {}");
    assert!(matches!(decode_err(&trailing), DecodeError::NotJson(_)));
    for body in [&b"[]"[..], b"2", b"\"x\"", b"null"] {
        assert_eq!(decode_err(body), DecodeError::NotAnObject, "{body:?}");
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(decode_request(deep.as_bytes()).is_err());
    let deep = format!(
        "{{\"paymentPayload\": {}{}}}",
        "{\"a\":".repeat(100_000),
        "}".repeat(100_001)
    );
    assert!(decode_request(deep.as_bytes()).is_err());
    let duplicate = V2.replacen(
        "\"x402Version\": 2,",
        "\"x402Version\": 2, \"x402Version\": 2,",
        1,
    );
    assert_invalid_field(
        decode_err(duplicate.as_bytes()),
        "request body",
        "duplicate field `x402Version`",
    );
    let duplicate = V2.replacen(
        "\"amount\": \"10000\",",
        "\"amount\": \"1\", \"amount\": \"2\",",
        2,
    );
    assert_invalid_field(
        decode_err(duplicate.as_bytes()),
        "paymentPayload.accepted",
        "duplicate field `amount`",
    );
    assert_invalid_field(
        decode_err(&with(V2, "/paymentPayload", json!("base64?"))),
        "paymentPayload",
        "expected a JSON object",
    );
}

#[test]
fn unknown_fields_are_tolerated() {
    let mut body = with(V2, "/futureField", json!({"a": 1}));
    for at in [
        "/paymentPayload/futureField",
        "/paymentPayload/accepted/futureField",
        "/paymentPayload/payload/futureField",
        "/paymentPayload/payload/authorization/futureField",
        "/paymentRequirements/futureField",
        "/paymentRequirements/extra/futureField",
    ] {
        body = edit(&body, at, Some(json!([1, 2])));
    }
    let request = decode_request(&body).unwrap();
    // `extra` is passed through whole; the others are dropped.
    assert_eq!(request.extra().unwrap()["futureField"], json!([1, 2]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&body);
    }

    #[test]
    fn corrupted_samples_never_panic(
        v2 in any::<bool>(),
        at in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = if v2 { V2 } else { V1 }.as_bytes().to_vec();
        let i = at.index(body.len());
        body[i] = replacement;
        let _ = decode_request(&body);
        body.truncate(cut.index(body.len()));
        let _ = decode_request(&body);
    }
}
