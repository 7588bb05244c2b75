//! The EVM `exact` scheme's payload (EIP-3009 `transferWithAuthorization`), identical in v1
//! and v2, and helpers that read the scheme's fields out of a requirement's free-form `extra`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::amount::U256;
use super::hexstr::{Address, Bytes32, HexBytes};

/// The scheme name this facilitator serves.
pub const SCHEME_EXACT: &str = "exact";
/// The default `extra.assetTransferMethod` of `exact` on EVM (the only one decoded here).
pub const TRANSFER_METHOD_EIP3009: &str = "eip3009";

/// `paymentPayload.payload` of `exact` with EIP-3009: the payer's signature over a
/// `TransferWithAuthorization` message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    /// 65 bytes for an EOA; longer for ERC-1271 or ERC-6492 wallets.
    pub signature: HexBytes,
    pub authorization: Authorization,
}

/// The signed EIP-3009 message. Every field is a string on the wire; the numbers are
/// `uint256` in the contract, hence [`U256`] for the times too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The payer.
    pub from: Address,
    /// Must equal the requirement's `payTo`.
    pub to: Address,
    /// Token base units.
    pub value: U256,
    /// Unix seconds; valid when `validAfter <= now`.
    pub valid_after: U256,
    /// Unix seconds; the reference facilitators want `validBefore >= now + 6`.
    pub valid_before: U256,
    /// 32 random bytes; EIP-3009 consumes `(from, nonce)` once.
    pub nonce: Bytes32,
}

impl Authorization {
    /// `validAfter` in Unix seconds, clamped to `u64::MAX`.
    pub fn valid_after_secs(&self) -> u64 {
        self.valid_after.saturating_to_u64()
    }

    /// `validBefore` in Unix seconds, clamped to `u64::MAX`.
    pub fn valid_before_secs(&self) -> u64 {
        self.valid_before.saturating_to_u64()
    }
}

/// The token's EIP-712 domain name and version, from a requirement's `extra`
/// (`{"name": "USD Coin", "version": "2"}`); required for EIP-3009.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eip712Domain<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

/// `extra.name` and `extra.version` when both are strings; `None` is the reference's
/// `invalid_exact_evm_missing_eip712_domain`.
pub fn eip712_domain(extra: Option<&Value>) -> Option<Eip712Domain<'_>> {
    let extra = extra?;
    Some(Eip712Domain {
        name: extra.get("name")?.as_str()?,
        version: extra.get("version")?.as_str()?,
    })
}

/// `extra.assetTransferMethod`, defaulting to `"eip3009"` when absent. `None` when it is
/// present but not a string.
pub fn asset_transfer_method(extra: Option<&Value>) -> Option<&str> {
    match extra.and_then(|e| e.get("assetTransferMethod")) {
        None | Some(Value::Null) => Some(TRANSFER_METHOD_EIP3009),
        Some(method) => method.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_domain_and_the_transfer_method() {
        let extra = json!({"name": "USD Coin", "version": "2"});
        assert_eq!(
            eip712_domain(Some(&extra)),
            Some(Eip712Domain {
                name: "USD Coin",
                version: "2"
            })
        );
        assert_eq!(eip712_domain(Some(&json!({"name": "x"}))), None);
        assert_eq!(eip712_domain(None), None);
        assert_eq!(asset_transfer_method(Some(&extra)), Some("eip3009"));
        assert_eq!(asset_transfer_method(None), Some("eip3009"));
        let permit2 = json!({"assetTransferMethod": "permit2"});
        assert_eq!(asset_transfer_method(Some(&permit2)), Some("permit2"));
        assert_eq!(
            asset_transfer_method(Some(&json!({"assetTransferMethod": 7}))),
            None
        );
    }
}
