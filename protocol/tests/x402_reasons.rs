//! Every reason code string named in x402-protocol.md §1.4, checked against [`ReasonCode`]:
//! the specification's and the TS/Go reference strings are known variants whose `as_str` is
//! the exact wire string; the Python and x402-rs vocabularies decode as `Other` and re-encode
//! unchanged.

use x402_protocol::x402::ReasonCode;

/// The specification's §9 list (v1 and v2).
const SPEC: &[&str] = &[
    "insufficient_funds",
    "invalid_exact_evm_payload_authorization_valid_after",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_payload_authorization_value",
    "invalid_exact_evm_payload_authorization_value_mismatch",
    "invalid_exact_evm_payload_signature",
    "invalid_exact_evm_payload_recipient_mismatch",
    "invalid_network",
    "invalid_payload",
    "invalid_payment_requirements",
    "invalid_scheme",
    "unsupported_scheme",
    "invalid_x402_version",
    "invalid_transaction_state",
    "unexpected_verify_error",
    "unexpected_settle_error",
];

/// Additions of the legacy v1 TypeScript enum (the SVM families are not named one by one).
const LEGACY_V1: &[&str] = &[
    "invalid_exact_evm_payload_undeployed_smart_wallet",
    "invalid_payment",
    "payment_expired",
    "duplicate_settlement",
];

/// TypeScript 2.27 EVM `exact` (and 2.10's amount spelling).
const TS_EXACT: &[&str] = &[
    "invalid_exact_evm_scheme",
    "invalid_exact_evm_network_mismatch",
    "invalid_exact_evm_missing_eip712_domain",
    "invalid_exact_evm_recipient_mismatch",
    "invalid_exact_evm_signature",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_payload_authorization_valid_after",
    "invalid_exact_evm_payload_authorization_value_mismatch",
    "invalid_exact_evm_authorization_value",
    "invalid_exact_evm_payload_undeployed_smart_wallet",
    "eip6492_factory_not_allowed",
    "smart_wallet_deployment_failed",
    "asset_not_deployed_contract",
    "invalid_exact_evm_token_name_mismatch",
    "invalid_exact_evm_token_version_mismatch",
    "invalid_exact_evm_eip3009_not_supported",
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_insufficient_balance",
    "invalid_exact_evm_transaction_simulation_failed",
    "invalid_exact_evm_transaction_failed",
    "invalid_exact_evm_transfer_event_mismatch",
    "invalid_exact_evm_failed_to_parse_signature",
    "settlement_pending",
    "invalid_transaction_state",
    "unsupported_payload_type",
];

const TS_PERMIT2: &[&str] = &[
    "invalid_permit2_spender",
    "invalid_permit2_recipient_mismatch",
    "permit2_deadline_expired",
    "permit2_not_yet_valid",
    "permit2_amount_mismatch",
    "permit2_token_mismatch",
    "invalid_permit2_signature",
    "permit2_allowance_required",
    "permit2_simulation_failed",
    "permit2_insufficient_balance",
    "permit2_proxy_not_deployed",
    "permit2_invalid_amount",
    "permit2_invalid_destination",
    "permit2_invalid_owner",
    "permit2_payment_too_early",
    "permit2_invalid_nonce",
    "permit2_2612_amount_mismatch",
];

const TS_UPTO: &[&str] = &[
    "invalid_upto_evm_scheme",
    "invalid_upto_evm_network_mismatch",
    "invalid_upto_evm_payload_settlement_exceeds_amount",
    "upto_amount_exceeds_permitted",
    "upto_unauthorized_facilitator",
    "upto_facilitator_mismatch",
];

/// Go's additions; the doc abbreviates the `invalid_exact_evm` prefix as `…` (checked against
/// `go/mechanisms/evm/exact/facilitator/errors.go`).
const GO_EXACT: &[&str] = &[
    "invalid_exact_evm_payload",
    "invalid_exact_evm_payload_missing_signature",
    "invalid_exact_evm_failed_to_get_network_config",
    "invalid_exact_evm_required_amount",
    "invalid_exact_evm_failed_to_check_nonce",
    "invalid_exact_evm_failed_to_get_balance",
    "invalid_exact_evm_signature_format",
    "invalid_exact_evm_failed_to_verify_signature",
    "invalid_exact_evm_verification_failed",
    "invalid_exact_evm_failed_to_execute_transfer",
    "invalid_exact_evm_failed_to_get_receipt",
];

const GO_CORE: &[&str] = &[
    "invalid_version",
    "invalid_v1_payload",
    "invalid_v2_payload",
    "invalid_v1_requirements",
    "invalid_v2_requirements",
    "no_facilitator_for_network",
];

/// Vocabularies this crate does not emit (Python diverges, x402-rs has its own); the ones
/// that coincide with a known string are known.
const OTHERS: &[(&str, bool)] = &[
    // Python
    ("invalid_exact_evm_payload_signature", true),
    ("missing_eip712_domain", false),
    ("network_mismatch", false),
    ("transaction_failed", false),
    // x402-rs
    ("invalid_format", false),
    ("invalid_payment_amount", false),
    ("invalid_payment_early", false),
    ("invalid_payment_expired", false),
    ("chain_id_mismatch", false),
    ("recipient_mismatch", false),
    ("asset_mismatch", false),
    ("accepted_requirements_mismatch", false),
    ("invalid_signature", false),
    ("transaction_simulation", false),
    ("insufficient_funds", true),
    ("permit2_allowance_required", true),
    ("unsupported_chain", false),
    ("unsupported_scheme", true),
    ("unexpected_error", false),
];

fn known_lists() -> impl Iterator<Item = &'static str> {
    [
        SPEC, LEGACY_V1, TS_EXACT, TS_PERMIT2, TS_UPTO, GO_EXACT, GO_CORE,
    ]
    .into_iter()
    .flatten()
    .copied()
}

#[test]
fn every_reference_string_is_a_known_code() {
    for wire in known_lists() {
        let code = ReasonCode::known(wire).unwrap_or_else(|| panic!("{wire} is not known"));
        assert_eq!(code.as_str(), wire);
        assert_eq!(code.to_string(), wire);
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{wire}\""));
        let back: ReasonCode = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_str(), wire);
        assert!(back.is_known());
    }
}

#[test]
fn every_known_code_is_in_the_reference_lists() {
    let listed: std::collections::HashSet<_> = known_lists().collect();
    for code in ReasonCode::KNOWN {
        assert!(
            listed.contains(code.as_str()),
            "{} is not listed",
            code.as_str()
        );
    }
    assert_eq!(ReasonCode::KNOWN.len(), listed.len());
}

#[test]
fn other_vocabularies_round_trip_unchanged() {
    for &(wire, known) in OTHERS {
        let code: ReasonCode = serde_json::from_str(&format!("\"{wire}\"")).unwrap();
        assert_eq!(code.is_known(), known, "{wire}");
        assert_eq!(matches!(code, ReasonCode::Other(_)), !known, "{wire}");
        assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{wire}\""));
    }
}

#[test]
fn the_codes_a_resource_server_acts_on() {
    assert_eq!(
        ReasonCode::Permit2AllowanceRequired.as_str(),
        "permit2_allowance_required"
    );
    assert_eq!(ReasonCode::SettlementPending.as_str(), "settlement_pending");
    assert_eq!(
        ReasonCode::InvalidExactEvmNonceAlreadyUsed.as_str(),
        "invalid_exact_evm_nonce_already_used"
    );
    assert_eq!(
        ReasonCode::InvalidExactEvmSignature.as_str(),
        "invalid_exact_evm_signature"
    );
}
