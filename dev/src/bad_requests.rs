//! Wrong and malformed `/verify` and `/settle` requests, one table for two layers: the
//! end-to-end test (`tests/tests/facilitator_bad_input.rs`) sends each to every node of a real
//! cluster, the millisecond test (`tests/payment_checks.rs`) runs each through the node's
//! decoding and payment checks in process. Both expect the same status and reason code, so a
//! check that moves or changes fails in milliseconds first, and the cluster test still proves
//! the wiring.
//!
//! Every case is decided before the chain: chain reads are off in [`FACILITATOR`] and its RPC
//! URL leads nowhere, as the reference's order of checks says it must be.

#![allow(
    clippy::expect_used,
    reason = "test support: a failed expect is a failed test"
)]

use alloy::primitives::{address, Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::{json, Map, Value};
use x402_node::seams::{Clock, SystemClock};
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};

/// Seconds since the Unix epoch, on the node's own system clock.
pub fn unix_now() -> u64 {
    SystemClock.now_ms() / 1000
}

pub const TOKEN: Address = address!("0x5FbDB2315678afecb367f032d93F642f64180aa3");
pub const OTHER_TOKEN: Address = address!("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512");
pub const PAY_TO: Address = address!("0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65");
pub const STRANGER: Address = address!("0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc");
pub const NAME: &str = "USD Coin";
pub const VERSION: &str = "2";

pub const FACILITATOR: &str = r#"
[facilitator]
onchain_checks = false

[[facilitator.networks]]
network = "eip155:31337"
rpc_urls = ["http://127.0.0.1:9"]

[[facilitator.networks.assets]]
address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
name = "USD Coin"
version = "2"

[[facilitator.networks]]
network = "eip155:84532"
v1_name = "base-sepolia"
rpc_urls = ["http://127.0.0.1:9"]
"#;

pub fn payer() -> PrivateKeySigner {
    // anvil's dev key #3: public, test only.
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
        .parse()
        .expect("key")
}

/// What a payment is made of; each case changes one thing.
#[derive(Clone)]
pub struct Spec {
    pub chain_id: u64,
    pub token: Address,
    pub to: Address,
    pub value: u64,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
    pub sign_name: &'static str,
    pub sign_version: &'static str,
    pub key: PrivateKeySigner,
}

impl Spec {
    pub fn new(tag: u8) -> Self {
        let now = unix_now();
        Self {
            chain_id: 31337,
            token: TOKEN,
            to: PAY_TO,
            value: 10_000,
            valid_after: now - 600,
            valid_before: now + 300,
            nonce: B256::repeat_byte(tag),
            sign_name: NAME,
            sign_version: VERSION,
            key: payer(),
        }
    }

    pub fn authorization(&self) -> TransferWithAuthorization {
        TransferWithAuthorization {
            from: payer().address(),
            to: self.to,
            value: U256::from(self.value),
            validAfter: U256::from(self.valid_after),
            validBefore: U256::from(self.valid_before),
            nonce: self.nonce,
        }
    }

    pub fn signature(&self) -> String {
        let domain = eip3009::domain(self.sign_name, self.sign_version, self.chain_id, self.token);
        let sig =
            eip3009::sign_authorization(&self.key, &self.authorization(), &domain).expect("sign");
        format!("0x{}", hex(&sig))
    }

    pub fn payload(&self) -> Value {
        let a = self.authorization();
        json!({
            "signature": self.signature(),
            "authorization": {
                "from": a.from.to_checksum(None),
                "to": a.to.to_checksum(None),
                "value": a.value.to_string(),
                "validAfter": a.validAfter.to_string(),
                "validBefore": a.validBefore.to_string(),
                "nonce": a.nonce.to_string(),
            }
        })
    }

    /// A v2 body as `@x402/core` 2.27 sends it.
    pub fn v2(&self, resource: &str) -> Value {
        let requirements = json!({
            "scheme": "exact",
            "network": format!("eip155:{}", self.chain_id),
            "amount": "10000",
            "asset": self.token.to_checksum(None),
            "payTo": PAY_TO.to_checksum(None),
            "maxTimeoutSeconds": 300,
            "extra": {"name": NAME, "version": VERSION},
        });
        json!({
            "x402Version": 2,
            "paymentPayload": {
                "x402Version": 2,
                "resource": {"url": resource, "description": "", "mimeType": "application/json"},
                "accepted": requirements,
                "payload": self.payload(),
            },
            "paymentRequirements": requirements,
        })
    }

    /// A v1 body on `base-sepolia` as `x402-express` 1.x sends it.
    pub fn v1(&self, network: &str) -> Value {
        let requirements = json!({
            "scheme": "exact",
            "network": network,
            "maxAmountRequired": "10000",
            "resource": "http://localhost:4021/paid",
            "description": "",
            "mimeType": "application/json",
            "payTo": PAY_TO.to_checksum(None),
            "maxTimeoutSeconds": 300,
            "asset": self.token.to_checksum(None),
            "extra": {"name": NAME, "version": VERSION},
        });
        json!({
            "x402Version": 1,
            "paymentPayload": {"x402Version": 1, "scheme": "exact", "network": network, "payload": self.payload()},
            "paymentRequirements": requirements,
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub const RESOURCE: &str = "http://localhost:4021/paid";

/// The object holding the last key of a `/`-separated path of `body`, and that key.
fn parent<'a, 'p>(body: &'a mut Value, path: &'p str) -> (&'a mut Map<String, Value>, &'p str) {
    let (ancestors, key) = path.rsplit_once('/').unwrap_or(("", path));
    let mut at = body;
    for part in ancestors.split('/').filter(|p| !p.is_empty()) {
        at = at.get_mut(part).expect("path exists");
    }
    (at.as_object_mut().expect("object"), key)
}

/// Sets `value` at a `/`-separated path of `body`.
pub fn set(mut body: Value, path: &str, value: Value) -> Value {
    let (object, key) = parent(&mut body, path);
    object.insert(key.to_owned(), value);
    body
}

/// Removes the field at a `/`-separated path of `body`.
pub fn remove(mut body: Value, path: &str) -> Value {
    let (object, key) = parent(&mut body, path);
    object.remove(key);
    body
}

pub struct Case {
    pub name: &'static str,
    pub path: &'static str,
    pub body: Vec<u8>,
    pub status: u16,
    /// The reason code expected in `invalidReason` / `errorReason`.
    pub reason: &'static str,
    /// Text the message must contain, if any.
    pub mentions: Option<&'static str>,
}

impl Case {
    /// Whether an answer carries this case's reason code and, if the case names text, a message
    /// containing it: the one definition of what a case expects, for both layers.
    pub fn expects(&self, reason: &str, message: &str) -> bool {
        reason == self.reason && self.mentions.is_none_or(|text| message.contains(text))
    }
}

pub fn cases() -> Vec<Case> {
    let good = Spec::new(0x01).v2(RESOURCE);
    let bytes = |v: &Value| serde_json::to_vec(v).expect("json");
    let verify = |name, body: Value, status, reason, mentions| Case {
        name,
        path: "/verify",
        body: bytes(&body),
        status,
        reason,
        mentions,
    };
    let ok = 200;
    let bad = 400;
    let now = unix_now();
    let mut oversized = bytes(&good);
    oversized.pop();
    oversized.extend_from_slice(br#","padding":""#);
    oversized.extend(std::iter::repeat_n(b'x', 70_000));
    oversized.extend_from_slice(br#""}"#);
    let mut high_s = Spec::new(0x20).v2(RESOURCE);
    {
        // s' = n - s with v flipped: the same signer to ecrecover, refused by the token (EIP-2).
        let sig = high_s["paymentPayload"]["payload"]["signature"]
            .as_str()
            .expect("sig")
            .to_owned();
        let raw: Vec<u8> = (0..65)
            .map(|i| u8::from_str_radix(&sig[2 + 2 * i..4 + 2 * i], 16).expect("hex"))
            .collect();
        let n = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .expect("n");
        let s = U256::from_be_slice(&raw[32..64]);
        let mut flipped = raw.clone();
        flipped[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        flipped[64] = if raw[64] == 27 { 28 } else { 27 };
        high_s = set(
            high_s,
            "paymentPayload/payload/signature",
            json!(format!("0x{}", hex(&flipped))),
        );
    }

    vec![
        // --- not a request at all: 400 ---
        Case {
            name: "not json",
            path: "/verify",
            body: b"{not json".to_vec(),
            status: bad,
            reason: "invalid_payload",
            mentions: Some("JSON"),
        },
        Case {
            name: "empty body",
            path: "/verify",
            body: Vec::new(),
            status: bad,
            reason: "invalid_payload",
            mentions: None,
        },
        Case {
            name: "array",
            path: "/verify",
            body: b"[1,2]".to_vec(),
            status: bad,
            reason: "invalid_payload",
            mentions: Some("object"),
        },
        Case {
            name: "oversized",
            path: "/verify",
            body: oversized,
            status: 413,
            reason: "",
            mentions: None,
        },
        verify(
            "no paymentPayload",
            remove(good.clone(), "paymentPayload"),
            bad,
            "invalid_payload",
            Some("paymentPayload"),
        ),
        verify(
            "no paymentRequirements",
            remove(good.clone(), "paymentRequirements"),
            bad,
            "invalid_payment_requirements",
            Some("paymentRequirements"),
        ),
        verify(
            "x402Version 3",
            set(
                set(good.clone(), "x402Version", json!(3)),
                "paymentPayload/x402Version",
                json!(3),
            ),
            bad,
            "invalid_x402_version",
            Some("3"),
        ),
        verify(
            "x402Version as a string",
            set(good.clone(), "x402Version", json!("2")),
            bad,
            "invalid_x402_version",
            None,
        ),
        verify(
            "versions disagree",
            set(good.clone(), "x402Version", json!(1)),
            bad,
            "invalid_x402_version",
            Some("disagrees"),
        ),
        verify(
            "scheme upto",
            set(good.clone(), "paymentRequirements/scheme", json!("upto")),
            bad,
            "unsupported_scheme",
            Some("upto"),
        ),
        verify(
            "permit2 transfer method",
            set(
                good.clone(),
                "paymentRequirements/extra",
                json!({"name": NAME, "version": VERSION, "assetTransferMethod": "permit2"}),
            ),
            bad,
            "unsupported_payload_type",
            Some("permit2"),
        ),
        verify(
            "payTo not an address",
            set(good.clone(), "paymentRequirements/payTo", json!("0x1234")),
            bad,
            "invalid_payment_requirements",
            Some("paymentRequirements.payTo"),
        ),
        verify(
            "amount not decimal",
            set(good.clone(), "paymentRequirements/amount", json!("1e4")),
            bad,
            "invalid_payment_requirements",
            Some("paymentRequirements.amount"),
        ),
        verify(
            "nonce too short",
            set(
                good.clone(),
                "paymentPayload/payload/authorization/nonce",
                json!("0x1234"),
            ),
            bad,
            "invalid_payload",
            Some("nonce"),
        ),
        verify(
            "signature not hex",
            set(
                good.clone(),
                "paymentPayload/payload/signature",
                json!("0xzz"),
            ),
            bad,
            "invalid_payload",
            Some("signature"),
        ),
        verify(
            "CAIP-2 without a reference",
            set(good.clone(), "paymentRequirements/network", json!("eip155")),
            bad,
            "invalid_network",
            None,
        ),
        // --- well formed, refused: 200 with the reference's reason ---
        verify(
            "network not served",
            {
                let mut s = Spec::new(0x02);
                s.chain_id = 1;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_network",
            Some("not served"),
        ),
        verify(
            "v1 name not served",
            Spec::new(0x03).v1("avalanche-fuji"),
            ok,
            "invalid_network",
            Some("not served"),
        ),
        verify(
            "v1 name unknown",
            Spec::new(0x04).v1("no-such-chain"),
            ok,
            "invalid_network",
            Some("no-such-chain"),
        ),
        verify(
            "accepted network differs",
            set(
                good.clone(),
                "paymentPayload/accepted/network",
                json!("eip155:84532"),
            ),
            ok,
            "invalid_exact_evm_network_mismatch",
            None,
        ),
        verify(
            "client chose another scheme",
            set(
                good.clone(),
                "paymentPayload/accepted/scheme",
                json!("upto"),
            ),
            ok,
            "invalid_exact_evm_scheme",
            None,
        ),
        verify(
            "no EIP-712 domain",
            set(
                good.clone(),
                "paymentRequirements/extra",
                json!({"name": NAME}),
            ),
            ok,
            "invalid_exact_evm_missing_eip712_domain",
            Some("version"),
        ),
        verify(
            "asset not accepted",
            {
                let mut s = Spec::new(0x05);
                s.token = OTHER_TOKEN;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_payment_requirements",
            Some("not accepted"),
        ),
        verify(
            "signed under another version",
            {
                let mut s = Spec::new(0x06);
                s.sign_version = "1";
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_signature",
            None,
        ),
        verify(
            "signed by someone else",
            {
                let mut s = Spec::new(0x07);
                s.key = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"
                    .parse()
                    .expect("key");
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_signature",
            None,
        ),
        verify(
            "high-s signature",
            high_s,
            ok,
            "invalid_exact_evm_signature",
            None,
        ),
        verify(
            "value tampered after signing",
            set(
                good.clone(),
                "paymentPayload/payload/authorization/value",
                json!("10001"),
            ),
            ok,
            "invalid_exact_evm_signature",
            None,
        ),
        verify(
            "recipient is not payTo",
            {
                let mut s = Spec::new(0x08);
                s.to = STRANGER;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_recipient_mismatch",
            None,
        ),
        verify(
            "validBefore within 6 s",
            {
                let mut s = Spec::new(0x09);
                s.valid_before = now + 3;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_payload_authorization_valid_before",
            None,
        ),
        verify(
            "expired",
            {
                let mut s = Spec::new(0x0a);
                s.valid_before = now - 60;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_payload_authorization_valid_before",
            None,
        ),
        verify(
            "not yet valid",
            {
                let mut s = Spec::new(0x0b);
                s.valid_after = now + 120;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_payload_authorization_valid_after",
            None,
        ),
        verify(
            "amount differs (v2 is exact)",
            {
                let mut s = Spec::new(0x0c);
                s.value = 9_999;
                s.v2(RESOURCE)
            },
            ok,
            "invalid_exact_evm_payload_authorization_value_mismatch",
            None,
        ),
        // v1 wants the exact amount too (2.27), under its own reason.
        verify(
            "v1 underpaid",
            {
                let mut s = Spec::new(0x0d);
                s.chain_id = 84532;
                s.value = 9_999;
                s.v1("base-sepolia")
            },
            ok,
            "invalid_exact_evm_authorization_value",
            None,
        ),
        verify(
            "v1 overpaid",
            {
                let mut s = Spec::new(0x10);
                s.chain_id = 84532;
                s.value = 10_001;
                s.v1("base-sepolia")
            },
            ok,
            "invalid_exact_evm_authorization_value",
            None,
        ),
        Case {
            name: "settle: bad signature",
            path: "/settle",
            body: bytes(&{
                let mut s = Spec::new(0x0e);
                s.sign_name = "USDC";
                s.v2(RESOURCE)
            }),
            status: ok,
            reason: "invalid_exact_evm_signature",
            mentions: None,
        },
        Case {
            name: "settle: network not served",
            path: "/settle",
            body: bytes(&{
                let mut s = Spec::new(0x0f);
                s.chain_id = 10;
                s.v2(RESOURCE)
            }),
            status: ok,
            reason: "invalid_network",
            mentions: None,
        },
        Case {
            name: "settle: not json",
            path: "/settle",
            body: b"]".to_vec(),
            status: bad,
            reason: "invalid_payload",
            mentions: None,
        },
    ]
}
