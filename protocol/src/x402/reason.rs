//! [`ReasonCode`]: the `invalidReason` of a verify response and the `errorReason` of a settle
//! response.
//!
//! On the wire these are free-form snake_case strings; resource servers copy them into their
//! 402 answer, and the TypeScript one acts on two of them (`permit2_allowance_required` → 412,
//! `settlement_pending` → one automatic re-settle). The known strings are those of the x402
//! specification (§9), the legacy v1 TypeScript enum, and the TypeScript 2.27 / Go reference
//! facilitators (which keep them character-for-character identical); a facilitator should emit
//! those. Any other string (the Python or x402-rs vocabularies, a newer SDK) decodes as
//! [`ReasonCode::Other`] and re-encodes unchanged.

use std::convert::Infallible;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! reason_codes {
    ($( $(#[$meta:meta])* $variant:ident = $wire:literal, )*) => {
        /// A verify or settle failure reason. Equality and hashing go by the wire string, so
        /// `Other("insufficient_funds")` equals `InsufficientFunds` (but [`ReasonCode::parse`]
        /// never builds the former).
        #[derive(Clone)]
        pub enum ReasonCode {
            $( $(#[$meta])* $variant, )*
            /// A string this crate does not know, kept as it was received.
            Other(String),
        }

        impl ReasonCode {
            /// Every known code, in declaration order.
            pub const KNOWN: &'static [ReasonCode] = &[ $( ReasonCode::$variant, )* ];

            /// The exact wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( ReasonCode::$variant => $wire, )*
                    ReasonCode::Other(other) => other,
                }
            }

            /// The known code for a wire string, if it is one.
            pub fn known(wire: &str) -> Option<ReasonCode> {
                match wire {
                    $( $wire => Some(ReasonCode::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    // The specification's list (§9 of x402-specification-v1/v2).
    InsufficientFunds = "insufficient_funds",
    InvalidExactEvmPayloadAuthorizationValidAfter = "invalid_exact_evm_payload_authorization_valid_after",
    InvalidExactEvmPayloadAuthorizationValidBefore = "invalid_exact_evm_payload_authorization_valid_before",
    /// The v1 spelling of the amount check.
    InvalidExactEvmPayloadAuthorizationValue = "invalid_exact_evm_payload_authorization_value",
    /// `value != amount` (v2 requires an exact match; also the TS 2.27 string).
    InvalidExactEvmPayloadAuthorizationValueMismatch = "invalid_exact_evm_payload_authorization_value_mismatch",
    InvalidExactEvmPayloadSignature = "invalid_exact_evm_payload_signature",
    InvalidExactEvmPayloadRecipientMismatch = "invalid_exact_evm_payload_recipient_mismatch",
    InvalidNetwork = "invalid_network",
    InvalidPayload = "invalid_payload",
    InvalidPaymentRequirements = "invalid_payment_requirements",
    InvalidScheme = "invalid_scheme",
    UnsupportedScheme = "unsupported_scheme",
    InvalidX402Version = "invalid_x402_version",
    InvalidTransactionState = "invalid_transaction_state",
    UnexpectedVerifyError = "unexpected_verify_error",
    UnexpectedSettleError = "unexpected_settle_error",

    // Legacy v1 TypeScript enum additions (EVM and generic).
    InvalidExactEvmPayloadUndeployedSmartWallet = "invalid_exact_evm_payload_undeployed_smart_wallet",
    InvalidPayment = "invalid_payment",
    PaymentExpired = "payment_expired",
    DuplicateSettlement = "duplicate_settlement",

    // TypeScript 2.27 / Go, EVM `exact`: shape and domain.
    InvalidExactEvmScheme = "invalid_exact_evm_scheme",
    InvalidExactEvmNetworkMismatch = "invalid_exact_evm_network_mismatch",
    InvalidExactEvmMissingEip712Domain = "invalid_exact_evm_missing_eip712_domain",
    InvalidExactEvmRecipientMismatch = "invalid_exact_evm_recipient_mismatch",
    InvalidExactEvmSignature = "invalid_exact_evm_signature",
    /// The 2.10 spelling of the amount check (2.27: `…_payload_authorization_value_mismatch`).
    InvalidExactEvmAuthorizationValue = "invalid_exact_evm_authorization_value",
    // Smart wallets and asset.
    Eip6492FactoryNotAllowed = "eip6492_factory_not_allowed",
    SmartWalletDeploymentFailed = "smart_wallet_deployment_failed",
    AssetNotDeployedContract = "asset_not_deployed_contract",
    // Diagnosis after a failed simulation.
    InvalidExactEvmTokenNameMismatch = "invalid_exact_evm_token_name_mismatch",
    InvalidExactEvmTokenVersionMismatch = "invalid_exact_evm_token_version_mismatch",
    InvalidExactEvmEip3009NotSupported = "invalid_exact_evm_eip3009_not_supported",
    InvalidExactEvmNonceAlreadyUsed = "invalid_exact_evm_nonce_already_used",
    InvalidExactEvmInsufficientBalance = "invalid_exact_evm_insufficient_balance",
    InvalidExactEvmTransactionSimulationFailed = "invalid_exact_evm_transaction_simulation_failed",
    // Settlement.
    InvalidExactEvmTransactionFailed = "invalid_exact_evm_transaction_failed",
    InvalidExactEvmTransferEventMismatch = "invalid_exact_evm_transfer_event_mismatch",
    InvalidExactEvmFailedToParseSignature = "invalid_exact_evm_failed_to_parse_signature",
    /// The broadcast happened but its outcome is unknown; `transaction` carries the hash and the
    /// TS resource server re-settles once with the identical payload.
    SettlementPending = "settlement_pending",
    UnsupportedPayloadType = "unsupported_payload_type",

    // Permit2.
    InvalidPermit2Spender = "invalid_permit2_spender",
    InvalidPermit2RecipientMismatch = "invalid_permit2_recipient_mismatch",
    Permit2DeadlineExpired = "permit2_deadline_expired",
    Permit2NotYetValid = "permit2_not_yet_valid",
    Permit2AmountMismatch = "permit2_amount_mismatch",
    Permit2TokenMismatch = "permit2_token_mismatch",
    InvalidPermit2Signature = "invalid_permit2_signature",
    /// The TS resource server answers HTTP 412 for this one.
    Permit2AllowanceRequired = "permit2_allowance_required",
    Permit2SimulationFailed = "permit2_simulation_failed",
    Permit2InsufficientBalance = "permit2_insufficient_balance",
    Permit2ProxyNotDeployed = "permit2_proxy_not_deployed",
    Permit2InvalidAmount = "permit2_invalid_amount",
    Permit2InvalidDestination = "permit2_invalid_destination",
    Permit2InvalidOwner = "permit2_invalid_owner",
    Permit2PaymentTooEarly = "permit2_payment_too_early",
    Permit2InvalidNonce = "permit2_invalid_nonce",
    /// `permit2_2612_amount_mismatch`: the EIP-2612 permit amount differs.
    Permit2Eip2612AmountMismatch = "permit2_2612_amount_mismatch",

    // `upto`.
    InvalidUptoEvmScheme = "invalid_upto_evm_scheme",
    InvalidUptoEvmNetworkMismatch = "invalid_upto_evm_network_mismatch",
    InvalidUptoEvmPayloadSettlementExceedsAmount = "invalid_upto_evm_payload_settlement_exceeds_amount",
    UptoAmountExceedsPermitted = "upto_amount_exceeds_permitted",
    UptoUnauthorizedFacilitator = "upto_unauthorized_facilitator",
    UptoFacilitatorMismatch = "upto_facilitator_mismatch",

    // Go EVM `exact` additions (go/mechanisms/evm/exact/facilitator/errors.go).
    InvalidExactEvmPayload = "invalid_exact_evm_payload",
    InvalidExactEvmPayloadMissingSignature = "invalid_exact_evm_payload_missing_signature",
    InvalidExactEvmFailedToGetNetworkConfig = "invalid_exact_evm_failed_to_get_network_config",
    InvalidExactEvmRequiredAmount = "invalid_exact_evm_required_amount",
    InvalidExactEvmFailedToCheckNonce = "invalid_exact_evm_failed_to_check_nonce",
    InvalidExactEvmFailedToGetBalance = "invalid_exact_evm_failed_to_get_balance",
    InvalidExactEvmSignatureFormat = "invalid_exact_evm_signature_format",
    InvalidExactEvmFailedToVerifySignature = "invalid_exact_evm_failed_to_verify_signature",
    InvalidExactEvmVerificationFailed = "invalid_exact_evm_verification_failed",
    InvalidExactEvmFailedToExecuteTransfer = "invalid_exact_evm_failed_to_execute_transfer",
    InvalidExactEvmFailedToGetReceipt = "invalid_exact_evm_failed_to_get_receipt",

    // Go core.
    InvalidVersion = "invalid_version",
    InvalidV1Payload = "invalid_v1_payload",
    InvalidV2Payload = "invalid_v2_payload",
    InvalidV1Requirements = "invalid_v1_requirements",
    InvalidV2Requirements = "invalid_v2_requirements",
    NoFacilitatorForNetwork = "no_facilitator_for_network",
}

impl ReasonCode {
    /// The code for a wire string: a known variant, or [`ReasonCode::Other`].
    pub fn parse(wire: &str) -> ReasonCode {
        ReasonCode::known(wire).unwrap_or_else(|| ReasonCode::Other(wire.to_owned()))
    }

    /// True unless this is [`ReasonCode::Other`] holding an unknown string.
    pub fn is_known(&self) -> bool {
        ReasonCode::known(self.as_str()).is_some()
    }

    /// The wire string of a known code with a `'static` lifetime (a label to count failures
    /// by); `None` for an unknown one.
    pub fn known_str(&self) -> Option<&'static str> {
        ReasonCode::KNOWN
            .iter()
            .find(|known| *known == self)
            .map(ReasonCode::as_str)
    }
}

impl PartialEq for ReasonCode {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ReasonCode {}

impl Hash for ReasonCode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode({:?})", self.as_str())
    }
}

impl FromStr for ReasonCode {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ReasonCode::parse(s))
    }
}

impl From<&str> for ReasonCode {
    fn from(s: &str) -> Self {
        ReasonCode::parse(s)
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReasonCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ReasonCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reason code string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ReasonCode, E> {
                Ok(ReasonCode::parse(v))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_are_distinct_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for code in ReasonCode::KNOWN {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert_eq!(ReasonCode::parse(code.as_str()).as_str(), code.as_str());
            assert!(code.is_known());
            assert_eq!(code.known_str(), Some(code.as_str()));
            assert!(!matches!(code, ReasonCode::Other(_)));
        }
    }

    #[test]
    fn unknown_strings_are_kept() {
        let code = ReasonCode::parse("invalid_signature");
        assert_eq!(code, ReasonCode::Other("invalid_signature".into()));
        assert!(!code.is_known());
        assert_eq!(code.known_str(), None);
        assert_eq!(
            ReasonCode::Other("settlement_pending".into()).known_str(),
            Some("settlement_pending")
        );
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            "\"invalid_signature\""
        );
        assert_eq!(
            ReasonCode::Other("settlement_pending".into()),
            ReasonCode::SettlementPending
        );
    }
}
