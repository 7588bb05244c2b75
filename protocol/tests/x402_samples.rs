//! The recorded x402 messages of `tests/samples/` (copies of the shared reference samples:
//! request bodies the official middleware sent to a facilitator, and answers it accepted)
//! decode into the right types, and re-encode to the same JSON.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::path::Path;

use serde_json::Value;
use x402_protocol::x402::{
    decode_request, Address, ChainId, FacilitatorRequest, NetworkRegistry, SettleResponse,
    SupportedResponse, VerifyResponse, U256,
};

const V1_VERIFY_REQUEST: &str = include_str!("samples/v1/verify-request.json");
const V1_SETTLE_REQUEST: &str = include_str!("samples/v1/settle-request.json");
const V1_VERIFY_RESPONSE: &str = include_str!("samples/v1/verify-response.json");
const V1_SETTLE_RESPONSE: &str = include_str!("samples/v1/settle-response.json");
const V2_VERIFY_REQUEST: &str = include_str!("samples/v2/verify-request.json");
const V2_SETTLE_REQUEST: &str = include_str!("samples/v2/settle-request.json");
const V2_VERIFY_RESPONSE: &str = include_str!("samples/v2/verify-response.json");
const V2_SETTLE_RESPONSE: &str = include_str!("samples/v2/settle-response.json");
const V2_SUPPORTED_RESPONSE: &str = include_str!("samples/v2/supported-response.json");

/// Every embedded sample, by its path under `samples/`.
const ALL: &[(&str, &str)] = &[
    ("v1/verify-request.json", V1_VERIFY_REQUEST),
    ("v1/settle-request.json", V1_SETTLE_REQUEST),
    ("v1/verify-response.json", V1_VERIFY_RESPONSE),
    ("v1/settle-response.json", V1_SETTLE_RESPONSE),
    ("v2/verify-request.json", V2_VERIFY_REQUEST),
    ("v2/settle-request.json", V2_SETTLE_REQUEST),
    ("v2/verify-response.json", V2_VERIFY_RESPONSE),
    ("v2/settle-response.json", V2_SETTLE_RESPONSE),
    ("v2/supported-response.json", V2_SUPPORTED_RESPONSE),
];

const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("sample is JSON")
}

fn addr(text: &str) -> Address {
    Address::parse(text).unwrap()
}

#[test]
fn v1_requests_decode_as_v1() {
    for sample in [V1_VERIFY_REQUEST, V1_SETTLE_REQUEST] {
        let request = decode_request(sample.as_bytes()).unwrap();
        assert_eq!(request.x402_version(), 1);
        let FacilitatorRequest::V1(v1) = &request else {
            panic!("not v1: {request:?}")
        };
        let req = &v1.payment_requirements;
        assert_eq!(req.scheme, "exact");
        assert_eq!(req.network, "base-sepolia");
        assert_eq!(req.max_amount_required, U256::from_u64(10000));
        assert_eq!(req.resource.as_deref(), Some("http://127.0.0.1:4023/paid"));
        assert_eq!(req.mime_type.as_deref(), Some("application/json"));
        assert_eq!(req.pay_to, addr(PAY_TO));
        assert_eq!(req.max_timeout_seconds, 120);
        assert_eq!(
            req.asset,
            addr("0x5FbDB2315678afecb367f032d93F642f64180aa3")
        );
        assert_eq!(
            req.output_schema.as_ref().unwrap()["input"]["method"],
            "GET"
        );
        assert_eq!(v1.payment_payload.scheme, "exact");
        assert_eq!(v1.payment_payload.network, "base-sepolia");

        let auth = &request.payload().authorization;
        assert_eq!(auth.from, addr(PAYER));
        assert_eq!(auth.to, addr(PAY_TO));
        assert_eq!(auth.value, U256::from_u64(10000));
        assert_eq!(auth.valid_after_secs(), 1795318152);
        assert_eq!(auth.valid_before_secs(), 1795318872);
        assert_eq!(auth.nonce.as_bytes()[0], 0x57);
        assert_eq!(request.payload().signature.len(), 65);

        assert_eq!(
            request.chain_id(&NetworkRegistry::builtin()),
            Ok(ChainId(84532))
        );
        assert_eq!(request.required_amount(), U256::from_u64(10000));
        let domain = x402_protocol::x402::evm::eip712_domain(request.extra()).unwrap();
        assert_eq!((domain.name, domain.version), ("USD Coin", "2"));
    }
}

#[test]
fn v2_requests_decode_as_v2() {
    for sample in [V2_VERIFY_REQUEST, V2_SETTLE_REQUEST] {
        let request = decode_request(sample.as_bytes()).unwrap();
        assert_eq!(request.x402_version(), 2);
        let FacilitatorRequest::V2(v2) = &request else {
            panic!("not v2: {request:?}")
        };
        let req = &v2.payment_requirements;
        assert_eq!(req.network, "eip155:31337");
        assert_eq!(req.chain_id(), Ok(ChainId(31337)));
        assert_eq!(req.amount, U256::from_u64(10000));
        // The sample's asset is lowercase, its payTo checksummed: both kept as sent.
        assert_eq!(
            req.asset.as_str(),
            "0x5fbdb2315678afecb367f032d93f642f64180aa3"
        );
        assert_eq!(
            req.asset,
            addr("0x5FbDB2315678afecb367f032d93F642f64180aa3")
        );
        assert_eq!(req.pay_to.as_str(), PAY_TO);
        assert_eq!(v2.payment_payload.accepted, *req);
        let resource = v2.payment_payload.resource.as_ref().unwrap();
        assert_eq!(resource.url, "http://127.0.0.1:4022/paid");
        assert_eq!(
            resource.description.as_deref(),
            Some("interop test resource")
        );
        assert_eq!(request.payload_network(), "eip155:31337");
        assert_eq!(request.payload_scheme(), "exact");

        let auth = &request.payload().authorization;
        assert_eq!(auth.from, addr(PAYER));
        assert_eq!(auth.valid_after, U256::ZERO);
        assert_eq!(auth.valid_before_secs(), 1795318871);
        assert_eq!(
            request.chain_id(&NetworkRegistry::empty()),
            Ok(ChainId(31337))
        );
        assert_eq!(request.max_timeout_seconds(), 120);
    }
}

#[test]
fn requests_re_encode_to_the_same_json() {
    for sample in [
        V1_VERIFY_REQUEST,
        V1_SETTLE_REQUEST,
        V2_VERIFY_REQUEST,
        V2_SETTLE_REQUEST,
    ] {
        let request = decode_request(sample.as_bytes()).unwrap();
        assert_eq!(serde_json::to_value(&request).unwrap(), json(sample));
        // And the re-encoded body decodes to the same request.
        let again = serde_json::to_vec(&request).unwrap();
        assert_eq!(decode_request(&again).unwrap(), request);
    }
}

#[test]
fn verify_responses_decode_and_re_encode() {
    for sample in [V1_VERIFY_RESPONSE, V2_VERIFY_RESPONSE] {
        let response: VerifyResponse = serde_json::from_str(sample).unwrap();
        assert!(response.is_valid);
        assert_eq!(response.invalid_reason, None);
        assert_eq!(response.payer.as_deref(), Some(PAYER));
        assert_eq!(serde_json::to_value(&response).unwrap(), json(sample));
        assert_eq!(response, VerifyResponse::valid(PAYER));
    }
}

#[test]
fn settle_responses_decode_and_re_encode() {
    let v1: SettleResponse = serde_json::from_str(V1_SETTLE_RESPONSE).unwrap();
    assert!(v1.success);
    assert_eq!(v1.network, "base-sepolia");
    assert_eq!(v1.amount, None);
    assert_eq!(
        v1,
        SettleResponse::success(
            "0x39e1e53afeb1d0ecd36f5639709727c545e077907c6b634c8334f7617e0b41e9",
            "base-sepolia",
            PAYER
        )
    );
    assert_eq!(serde_json::to_value(&v1).unwrap(), json(V1_SETTLE_RESPONSE));

    let v2: SettleResponse = serde_json::from_str(V2_SETTLE_RESPONSE).unwrap();
    assert!(v2.success);
    assert_eq!(v2.network, "eip155:31337");
    assert_eq!(v2.amount.as_deref(), Some("10000"));
    assert_eq!(
        v2,
        SettleResponse::success(
            "0x681faea569bab5eb8b4a1d248949fbae9d04f468233b1cb8ddf2b5581b88e59f",
            "eip155:31337",
            PAYER
        )
        .with_amount(U256::from_u64(10000))
    );
    assert_eq!(serde_json::to_value(&v2).unwrap(), json(V2_SETTLE_RESPONSE));
}

#[test]
fn supported_response_decodes_and_re_encodes() {
    let supported: SupportedResponse = serde_json::from_str(V2_SUPPORTED_RESPONSE).unwrap();
    assert_eq!(supported.kinds.len(), 2);
    assert_eq!(supported.kinds[0].x402_version, 2);
    assert_eq!(supported.kinds[0].network, "eip155:31337");
    assert_eq!(supported.kinds[1].x402_version, 1);
    assert_eq!(supported.kinds[1].network, "base-sepolia");
    assert!(supported.extensions.is_empty());
    assert_eq!(
        supported.signers["eip155:*"],
        ["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"]
    );
    assert_eq!(
        serde_json::to_value(&supported).unwrap(),
        json(V2_SUPPORTED_RESPONSE)
    );
}

/// The copies under `tests/samples/` are the shared reference samples, byte for byte, when the
/// shared folder is beside the repository (as in CI and on a developer's machine).
#[test]
fn sample_copies_match_the_shared_reference() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/samples");
    if !shared.is_dir() {
        eprintln!("{} not found: comparison skipped", shared.display());
        return;
    }
    let mut originals = 0;
    for version in ["v1", "v2"] {
        for entry in std::fs::read_dir(shared.join(version)).unwrap() {
            let path = entry.unwrap().path();
            let name = format!("{version}/{}", path.file_name().unwrap().to_string_lossy());
            let copy = ALL.iter().find(|(n, _)| *n == name);
            let (_, text) = copy.unwrap_or_else(|| panic!("no copy of shared sample {name}"));
            assert_eq!(
                *text,
                std::fs::read_to_string(&path).unwrap(),
                "{name} differs from the shared one"
            );
            originals += 1;
        }
    }
    assert_eq!(originals, ALL.len());
}
