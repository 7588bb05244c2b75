//! Building signed payments: the `POST /verify` / `POST /settle` body a resource server sends
//! for a client that paid with EIP-3009, as the official SDKs build it (reference/x402-protocol.md
//! §1.2 and §6.1, the recorded samples), for `x402ctl pay`, the load generator and tests.
//!
//! [`PaymentTerms`] is one payment option (what a resource server asks for); a
//! [`PaymentBuilder`] checks it once and then signs any number of authorizations for it:
//!
//! - `validAfter = now − 600`, `validBefore = now + maxTimeoutSeconds`, as the TS client does;
//! - a random 32-byte nonce, or a given one;
//! - the payer's EIP-712 signature ([`eip3009::sign_authorization`]) under the token's domain
//!   (`extra.name`, `extra.version`, the chain id, the asset);
//! - v2: `accepted` and `paymentRequirements` are the same requirement, and `resource` is
//!   `{url, description}`; v1: the requirement carries `resource` and `description` itself.
//!
//! Addresses the payer signs (`from`, `to`) are written with their EIP-55 checksum, the nonce
//! and signature in lowercase hex, amounts and times as decimal strings.

use std::time::{SystemTime, UNIX_EPOCH};

use alloy::primitives::Address as EvmAddress;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use rand::RngCore;
use serde_json::json;

use super::common::X402Version;
use super::eip3009::{self, TransferWithAuthorization};
use super::evm::{Authorization, ExactEvmPayload, SCHEME_EXACT};
use super::hexstr::{Address, Bytes32, HexBytes};
use super::network::{ChainId, NetworkError, NetworkRegistry};
use super::request::FacilitatorRequest;
use super::{v1, v2, U256};

/// `extra.name` unless told otherwise: USDC's EIP-712 name on Ethereum and Base mainnet.
pub const DEFAULT_TOKEN_NAME: &str = "USD Coin";
/// `extra.version` unless told otherwise: USDC's.
pub const DEFAULT_TOKEN_VERSION: &str = "2";
/// `maxTimeoutSeconds` unless told otherwise.
pub const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 60;
/// The paid resource's URL unless told otherwise.
pub const DEFAULT_RESOURCE: &str = "http://localhost/x402ctl";
/// The resource's description unless told otherwise (v1 requires one).
pub const DEFAULT_DESCRIPTION: &str = "paid with x402ctl";
/// `validAfter` lies this far before the moment of signing, as in the official TS client, so a
/// facilitator whose clock is somewhat behind still finds the authorization valid.
pub const VALID_AFTER_BACKDATE_SECS: u64 = 600;

/// One payment option: what a resource server asks to be paid, and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentTerms {
    /// 1 or 2: the shape of the request body.
    pub x402_version: u8,
    /// v2: `eip155:<chainId>`; v1: a name such as `base-sepolia`.
    pub network: String,
    /// The chain of `network`: the EIP-712 domain's `chainId`.
    pub chain_id: ChainId,
    /// The token contract (the domain's `verifyingContract`).
    pub asset: Address,
    pub pay_to: Address,
    /// Token base units (v2 `amount`, v1 `maxAmountRequired`, and `authorization.value`).
    pub amount: U256,
    pub max_timeout_seconds: u64,
    /// The token's EIP-712 domain name and version (`extra.name`, `extra.version`).
    pub token_name: String,
    pub token_version: String,
    /// The paid resource's URL (v2 `resource.url`, v1 `resource`).
    pub resource: String,
    pub description: String,
}

impl PaymentTerms {
    /// v2 terms on `eip155:<chain_id>`, with the defaults above for everything else.
    pub fn v2(chain_id: ChainId, asset: Address, pay_to: Address, amount: U256) -> Self {
        PaymentTerms {
            x402_version: 2,
            network: chain_id.to_caip2(),
            chain_id,
            asset,
            pay_to,
            amount,
            max_timeout_seconds: DEFAULT_MAX_TIMEOUT_SECONDS,
            token_name: DEFAULT_TOKEN_NAME.to_owned(),
            token_version: DEFAULT_TOKEN_VERSION.to_owned(),
            resource: DEFAULT_RESOURCE.to_owned(),
            description: DEFAULT_DESCRIPTION.to_owned(),
        }
    }

    /// v1 terms on the network named `network` (chain `chain_id`), with the defaults above.
    pub fn v1(
        network: impl Into<String>,
        chain_id: ChainId,
        asset: Address,
        pay_to: Address,
        amount: U256,
    ) -> Self {
        PaymentTerms {
            x402_version: 1,
            network: network.into(),
            ..PaymentTerms::v2(chain_id, asset, pay_to, amount)
        }
    }
}

/// The chain of a network as a payer names it: a v2 `eip155:<id>` (then `chain_id`, if given,
/// must agree), or a v1 name, either built in (`base-sepolia`; `chain_id` must agree) or any
/// other valid name with its `chain_id`.
pub fn resolve_network(
    x402_version: u8,
    network: &str,
    chain_id: Option<u64>,
) -> Result<ChainId, PaymentError> {
    let resolved = match x402_version {
        2 => ChainId::from_caip2(network)?,
        1 => match (NetworkRegistry::builtin().chain_id(network), chain_id) {
            (Ok(known), _) => known,
            (Err(_), Some(id)) => {
                // Checks the name's syntax (a CAIP-2 id is not a v1 name).
                NetworkRegistry::empty().add(network, ChainId(id))?;
                ChainId(id)
            }
            (Err(_), None) => {
                return Err(PaymentError::UnknownV1Network {
                    network: network.to_owned(),
                })
            }
        },
        other => return Err(PaymentError::UnsupportedVersion(other)),
    };
    match chain_id {
        Some(id) if id != resolved.0 => Err(PaymentError::ChainMismatch {
            network: network.to_owned(),
            network_chain: resolved,
            chain_id: ChainId(id),
        }),
        _ => Ok(resolved),
    }
}

/// Why terms cannot be paid, or a payment not signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("x402 version {0} is not supported (1 or 2)")]
    UnsupportedVersion(u8),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("unknown v1 network name {network:?}: give its chain id")]
    UnknownV1Network { network: String },
    #[error("network {network} is chain {network_chain}, not chain {chain_id}")]
    ChainMismatch {
        network: String,
        network_chain: ChainId,
        chain_id: ChainId,
    },
    #[error("maxTimeoutSeconds must be positive")]
    ZeroTimeout,
    /// The key is never part of the message.
    #[error("the payer key is not a 32-byte hex private key")]
    BadPayerKey,
    #[error("cannot sign the authorization: {0}")]
    Sign(String),
    #[error("cannot encode the request body: {0}")]
    Encode(String),
}

/// Parses a payer's private key (`0x` and 64 hex digits, surrounding white space ignored). The
/// error never quotes the text.
pub fn payer_from_hex(text: &str) -> Result<PrivateKeySigner, PaymentError> {
    text.trim()
        .parse::<PrivateKeySigner>()
        .map_err(|_| PaymentError::BadPayerKey)
}

/// Seconds since the Unix epoch on this machine's clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random bytes: an EIP-3009 nonce.
pub fn random_nonce(rng: &mut impl RngCore) -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// The requirement in the shape of its version.
#[derive(Clone, Debug)]
enum Requirements {
    V1(v1::PaymentRequirements),
    V2(v2::PaymentRequirements, v2::ResourceInfo),
}

/// Checked terms, ready to sign payments for; cheap to share between threads.
#[derive(Clone, Debug)]
pub struct PaymentBuilder {
    terms: PaymentTerms,
    requirements: Requirements,
    domain: Eip712Domain,
    pay_to: EvmAddress,
}

impl PaymentBuilder {
    /// Checks `terms`: the version, the network against the chain id (v2 `eip155:<id>` must
    /// name `chain_id`; a v1 name must be a valid name), a positive `maxTimeoutSeconds`.
    pub fn new(terms: PaymentTerms) -> Result<Self, PaymentError> {
        if terms.max_timeout_seconds == 0 {
            return Err(PaymentError::ZeroTimeout);
        }
        let extra = Some(json!({
            "name": terms.token_name,
            "version": terms.token_version,
        }));
        let requirements = match terms.x402_version {
            2 => {
                let chain = ChainId::from_caip2(&terms.network)?;
                if chain != terms.chain_id {
                    return Err(PaymentError::ChainMismatch {
                        network: terms.network.clone(),
                        network_chain: chain,
                        chain_id: terms.chain_id,
                    });
                }
                Requirements::V2(
                    v2::PaymentRequirements {
                        scheme: SCHEME_EXACT.to_owned(),
                        network: terms.network.clone(),
                        amount: terms.amount,
                        asset: terms.asset.clone(),
                        pay_to: terms.pay_to.clone(),
                        max_timeout_seconds: terms.max_timeout_seconds,
                        extra,
                    },
                    v2::ResourceInfo {
                        url: terms.resource.clone(),
                        description: Some(terms.description.clone()),
                        mime_type: None,
                        service_name: None,
                        tags: None,
                        icon_url: None,
                    },
                )
            }
            1 => {
                NetworkRegistry::empty().add(&terms.network, terms.chain_id)?;
                Requirements::V1(v1::PaymentRequirements {
                    scheme: SCHEME_EXACT.to_owned(),
                    network: terms.network.clone(),
                    max_amount_required: terms.amount,
                    resource: Some(terms.resource.clone()),
                    description: Some(terms.description.clone()),
                    mime_type: None,
                    output_schema: None,
                    pay_to: terms.pay_to.clone(),
                    max_timeout_seconds: terms.max_timeout_seconds,
                    asset: terms.asset.clone(),
                    extra,
                })
            }
            other => return Err(PaymentError::UnsupportedVersion(other)),
        };
        let domain = eip3009::domain(
            &terms.token_name,
            &terms.token_version,
            terms.chain_id.0,
            EvmAddress::from(*terms.asset.as_bytes()),
        );
        Ok(PaymentBuilder {
            pay_to: EvmAddress::from(*terms.pay_to.as_bytes()),
            terms,
            requirements,
            domain,
        })
    }

    pub fn terms(&self) -> &PaymentTerms {
        &self.terms
    }

    /// The token's EIP-712 domain the payer signs under.
    pub fn domain(&self) -> &Eip712Domain {
        &self.domain
    }

    /// `(validAfter, validBefore)` of a payment signed at `now` (Unix seconds).
    pub fn validity(&self, now: u64) -> (u64, u64) {
        (
            now.saturating_sub(VALID_AFTER_BACKDATE_SECS),
            now.saturating_add(self.terms.max_timeout_seconds),
        )
    }

    /// The authorization `payer` signs at `now` with `nonce`: the whole amount to `payTo`.
    pub fn authorization(
        &self,
        payer: EvmAddress,
        now: u64,
        nonce: [u8; 32],
    ) -> TransferWithAuthorization {
        let (valid_after, valid_before) = self.validity(now);
        TransferWithAuthorization {
            from: payer,
            to: self.pay_to,
            value: alloy::primitives::U256::from_be_bytes(self.terms.amount.to_be_bytes()),
            validAfter: alloy::primitives::U256::from(valid_after),
            validBefore: alloy::primitives::U256::from(valid_before),
            nonce: nonce.into(),
        }
    }

    /// The payer's 65-byte signature of `authorization` under the token's domain.
    pub fn signature(
        &self,
        payer: &PrivateKeySigner,
        authorization: &TransferWithAuthorization,
    ) -> Result<[u8; eip3009::SIGNATURE_LEN], PaymentError> {
        eip3009::sign_authorization(payer, authorization, &self.domain)
            .map_err(|e| PaymentError::Sign(e.to_string()))
    }

    /// A complete signed request: `payer` authorizes the transfer at `now` with `nonce`.
    pub fn sign(
        &self,
        payer: &PrivateKeySigner,
        now: u64,
        nonce: [u8; 32],
    ) -> Result<FacilitatorRequest, PaymentError> {
        let authorization = self.authorization(payer.address(), now, nonce);
        let signature = self.signature(payer, &authorization)?;
        Ok(self.assemble(&authorization, &signature))
    }

    /// [`PaymentBuilder::sign`] now, with a random nonce.
    pub fn sign_now(
        &self,
        payer: &PrivateKeySigner,
        rng: &mut impl RngCore,
    ) -> Result<FacilitatorRequest, PaymentError> {
        self.sign(payer, unix_now(), random_nonce(rng))
    }

    /// The request carrying `authorization` and `signature` (not checked: this is also how a
    /// test builds a request with a wrong signature).
    pub fn assemble(
        &self,
        authorization: &TransferWithAuthorization,
        signature: &[u8],
    ) -> FacilitatorRequest {
        let payload = ExactEvmPayload {
            signature: HexBytes::from_bytes(signature.to_vec()),
            authorization: Authorization {
                from: checksummed(authorization.from),
                to: checksummed(authorization.to),
                value: wire_u256(authorization.value),
                valid_after: wire_u256(authorization.validAfter),
                valid_before: wire_u256(authorization.validBefore),
                nonce: Bytes32::from_bytes(authorization.nonce.0),
            },
        };
        match &self.requirements {
            Requirements::V1(requirements) => FacilitatorRequest::V1(v1::FacilitatorRequest {
                x402_version: X402Version,
                payment_payload: v1::PaymentPayload {
                    x402_version: X402Version,
                    scheme: SCHEME_EXACT.to_owned(),
                    network: requirements.network.clone(),
                    payload,
                },
                payment_requirements: requirements.clone(),
            }),
            Requirements::V2(requirements, resource) => {
                FacilitatorRequest::V2(v2::FacilitatorRequest {
                    x402_version: X402Version,
                    payment_payload: v2::PaymentPayload {
                        x402_version: X402Version,
                        resource: Some(resource.clone()),
                        accepted: requirements.clone(),
                        payload,
                        extensions: None,
                    },
                    payment_requirements: requirements.clone(),
                })
            }
        }
    }
}

/// The JSON body of a request, as sent to `POST /verify` or `POST /settle`.
pub fn encode(request: &FacilitatorRequest) -> Result<Vec<u8>, PaymentError> {
    serde_json::to_vec(request).map_err(|e| PaymentError::Encode(e.to_string()))
}

/// An address as the wire shows it, with its EIP-55 checksum (as `getAddress` writes it).
fn checksummed(address: EvmAddress) -> Address {
    Address::parse(&address.to_checksum(None))
        .unwrap_or_else(|_| Address::from_bytes(address.into_array()))
}

fn wire_u256(value: alloy::primitives::U256) -> U256 {
    U256::from_be_bytes(value.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::decode_request;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::Value;

    const SAMPLE_V2: &str = include_str!("../../tests/samples/v2/verify-request.json");
    const SAMPLE_V1: &str = include_str!("../../tests/samples/v1/verify-request.json");
    /// anvil's second dev key, the payer of the recorded samples.
    const PAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
    const ASSET: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

    fn payer() -> PrivateKeySigner {
        payer_from_hex(PAYER_KEY).unwrap()
    }

    fn v2_terms() -> PaymentTerms {
        PaymentTerms::v2(
            ChainId(31337),
            Address::parse(ASSET).unwrap(),
            Address::parse(PAY_TO).unwrap(),
            U256::from_u64(10_000),
        )
    }

    fn v1_terms() -> PaymentTerms {
        PaymentTerms {
            max_timeout_seconds: 120,
            ..PaymentTerms::v1(
                "base-sepolia",
                ChainId(84532),
                Address::parse(ASSET).unwrap(),
                Address::parse(PAY_TO).unwrap(),
                U256::from_u64(10_000),
            )
        }
    }

    /// The signer a decoded request's signature recovers to, under the terms' domain.
    fn recovered(builder: &PaymentBuilder, request: &FacilitatorRequest) -> EvmAddress {
        let payload = request.payload();
        let typed = eip3009::typed_authorization(&payload.authorization);
        eip3009::recover_signer(&typed, builder.domain(), payload.signature.as_bytes()).unwrap()
    }

    /// The set of key paths of a JSON value (`a.b.c`), to compare shapes with the samples.
    fn paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                paths(v, &format!("{path}."), out);
                out.push(path);
            }
        }
        out.sort();
    }

    #[test]
    fn v2_body_round_trips_and_recovers_to_the_payer() {
        let builder = PaymentBuilder::new(v2_terms()).unwrap();
        let now = 1_800_000_000;
        let nonce = [7u8; 32];
        let request = builder.sign(&payer(), now, nonce).unwrap();
        let body = encode(&request).unwrap();
        let decoded = decode_request(&body).unwrap();
        assert_eq!(decoded, request);
        assert_eq!(decoded.x402_version(), 2);
        assert_eq!(recovered(&builder, &decoded).to_checksum(None), PAYER);

        let auth = &decoded.payload().authorization;
        assert_eq!(
            auth.from.as_str(),
            PAYER,
            "EIP-55, as the TS client writes it"
        );
        assert_eq!(auth.to.as_str(), PAY_TO);
        assert_eq!(auth.value, U256::from_u64(10_000));
        assert_eq!(auth.valid_after_secs(), now - 600);
        assert_eq!(auth.valid_before_secs(), now + 60);
        assert_eq!(auth.nonce, Bytes32::from_bytes(nonce));
        assert_eq!(decoded.payload().signature.len(), 65);
        let FacilitatorRequest::V2(v2) = &decoded else {
            panic!("not v2")
        };
        assert_eq!(v2.payment_payload.accepted, v2.payment_requirements);
        assert_eq!(
            v2.payment_payload.resource.as_ref().map(|r| r.url.as_str()),
            Some(DEFAULT_RESOURCE)
        );
    }

    #[test]
    fn v1_body_round_trips_and_recovers_to_the_payer() {
        let builder = PaymentBuilder::new(v1_terms()).unwrap();
        let request = builder
            .sign_now(&payer(), &mut StdRng::seed_from_u64(1))
            .unwrap();
        let decoded = decode_request(&encode(&request).unwrap()).unwrap();
        assert_eq!(decoded, request);
        assert_eq!(decoded.x402_version(), 1);
        assert_eq!(decoded.payload_network(), "base-sepolia");
        assert_eq!(
            decoded.chain_id(&NetworkRegistry::builtin()),
            Ok(ChainId(84532))
        );
        assert_eq!(recovered(&builder, &decoded).to_checksum(None), PAYER);
        let auth = &decoded.payload().authorization;
        let now = unix_now();
        assert!(auth.valid_after_secs().abs_diff(now - 600) <= 2);
        assert_eq!(auth.valid_before_secs() - auth.valid_after_secs(), 720);
    }

    #[test]
    fn bodies_have_the_samples_fields() {
        for (terms, sample) in [(v2_terms(), SAMPLE_V2), (v1_terms(), SAMPLE_V1)] {
            let builder = PaymentBuilder::new(terms).unwrap();
            let body = encode(&builder.sign(&payer(), unix_now(), [1; 32]).unwrap()).unwrap();
            let ours: Value = serde_json::from_slice(&body).unwrap();
            let theirs: Value = serde_json::from_str(sample).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            paths(&ours, "", &mut a);
            paths(&theirs, "", &mut b);
            // The samples' optional mimeType and outputSchema are the only extras.
            b.retain(|p| !p.contains("mimeType") && !p.contains("outputSchema"));
            assert_eq!(a, b);
            // Every amount and time is a decimal string, the versions numbers.
            let auth = &ours["paymentPayload"]["payload"]["authorization"];
            for field in ["value", "validAfter", "validBefore"] {
                let text = auth[field].as_str().unwrap();
                assert!(text.bytes().all(|b| b.is_ascii_digit()), "{field}: {text}");
            }
            assert!(ours["x402Version"].is_u64());
            assert_eq!(ours["x402Version"], ours["paymentPayload"]["x402Version"]);
        }
    }

    #[test]
    fn the_recorded_v1_sample_is_what_the_builder_signs() {
        // The v1 sample was signed by the TS client: same key, terms, times and nonce give the
        // same signature (RFC 6979 signatures are deterministic).
        let sample: Value = serde_json::from_str(SAMPLE_V1).unwrap();
        let auth = &sample["paymentPayload"]["payload"]["authorization"];
        let valid_before: u64 = auth["validBefore"].as_str().unwrap().parse().unwrap();
        let nonce = Bytes32::parse(auth["nonce"].as_str().unwrap()).unwrap();
        let builder = PaymentBuilder::new(v1_terms()).unwrap();
        let request = builder
            .sign(&payer(), valid_before - 120, *nonce.as_bytes())
            .unwrap();
        assert_eq!(
            request.payload().signature.as_str(),
            sample["paymentPayload"]["payload"]["signature"]
                .as_str()
                .unwrap()
        );
    }

    #[test]
    fn the_recorded_v2_signature_is_what_the_builder_signs() {
        // The v2 sample's client signed validAfter 0 (an older TS client): same message, same
        // signature, through the builder's domain and `assemble`.
        let sample: Value = serde_json::from_str(SAMPLE_V2).unwrap();
        let request = decode_request(SAMPLE_V2.as_bytes()).unwrap();
        let builder = PaymentBuilder::new(PaymentTerms {
            max_timeout_seconds: 120,
            ..v2_terms()
        })
        .unwrap();
        let typed = eip3009::typed_authorization(&request.payload().authorization);
        let signature = builder.signature(&payer(), &typed).unwrap();
        let rebuilt = builder.assemble(&typed, &signature);
        assert_eq!(
            rebuilt.payload().signature.as_str(),
            sample["paymentPayload"]["payload"]["signature"]
                .as_str()
                .unwrap()
        );
        assert_eq!(rebuilt.payload(), request.payload());
    }

    #[test]
    fn a_wrong_domain_does_not_recover() {
        let builder = PaymentBuilder::new(v2_terms()).unwrap();
        let request = builder.sign(&payer(), unix_now(), [2; 32]).unwrap();
        let other = PaymentBuilder::new(PaymentTerms {
            token_name: "USDC".into(),
            ..v2_terms()
        })
        .unwrap();
        assert_ne!(recovered(&other, &request).to_checksum(None), PAYER);
    }

    #[test]
    fn terms_are_checked() {
        let bad = |terms: PaymentTerms| PaymentBuilder::new(terms).unwrap_err();
        assert_eq!(
            bad(PaymentTerms {
                max_timeout_seconds: 0,
                ..v2_terms()
            }),
            PaymentError::ZeroTimeout
        );
        assert!(matches!(
            bad(PaymentTerms {
                chain_id: ChainId(1),
                ..v2_terms()
            }),
            PaymentError::ChainMismatch { .. }
        ));
        assert!(matches!(
            bad(PaymentTerms {
                network: "base-sepolia".into(),
                ..v2_terms()
            }),
            PaymentError::Network(_)
        ));
        assert!(matches!(
            bad(PaymentTerms {
                network: "eip155:84532".into(),
                ..v1_terms()
            }),
            PaymentError::Network(_)
        ));
        assert_eq!(
            bad(PaymentTerms {
                x402_version: 3,
                ..v2_terms()
            }),
            PaymentError::UnsupportedVersion(3)
        );
    }

    #[test]
    fn networks_resolve_by_version() {
        assert_eq!(resolve_network(2, "eip155:31337", None), Ok(ChainId(31337)));
        assert_eq!(
            resolve_network(2, "eip155:31337", Some(31337)),
            Ok(ChainId(31337))
        );
        assert!(matches!(
            resolve_network(2, "eip155:31337", Some(1)),
            Err(PaymentError::ChainMismatch { .. })
        ));
        assert!(resolve_network(2, "base-sepolia", None).is_err());
        assert_eq!(resolve_network(1, "base-sepolia", None), Ok(ChainId(84532)));
        assert!(matches!(
            resolve_network(1, "base-sepolia", Some(31337)),
            Err(PaymentError::ChainMismatch { .. })
        ));
        assert_eq!(resolve_network(1, "anvil", Some(31337)), Ok(ChainId(31337)));
        assert!(matches!(
            resolve_network(1, "anvil", None),
            Err(PaymentError::UnknownV1Network { .. })
        ));
        assert!(resolve_network(1, "eip155:31337", Some(31337)).is_err());
        assert_eq!(
            resolve_network(3, "eip155:1", None),
            Err(PaymentError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn payer_keys_parse_without_echo() {
        let key = payer_from_hex(&format!("  {PAYER_KEY}\n")).unwrap();
        assert_eq!(key.address().to_checksum(None), PAYER);
        let err = payer_from_hex("0x59c6995e-not-a-key").unwrap_err();
        assert_eq!(err, PaymentError::BadPayerKey);
        assert!(!err.to_string().contains("59c6995e"));
    }
}
