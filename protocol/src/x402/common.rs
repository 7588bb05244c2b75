//! Pieces shared by every x402 wire type: the [`FormatError`] of a malformed field value
//! (address, hex bytes, decimal amount) and the [`X402Version`] tag that pins a v1 or v2
//! message to its version number on the wire.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string field does not hold the value its wire format promises. The message says what
/// was expected; the decoder of a request adds where (`paymentRequirements.payTo`, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// An address, 32-byte value or signature that does not start with `0x`.
    #[error("{what} must start with 0x, got {got:?}")]
    MissingHexPrefix { what: &'static str, got: String },
    /// A fixed-size hex value (address, nonce) with the wrong number of digits.
    #[error("{what} must be 0x followed by {expected} hex digits, got {got} digits")]
    HexLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A hex value with an odd number of digits (bytes are two digits each).
    #[error("{what} must have an even number of hex digits, got {got}")]
    OddHexLength { what: &'static str, got: usize },
    /// A character outside `0-9a-fA-F` after the `0x`.
    #[error("{what} contains {found:?}, which is not a hex digit")]
    NotHex { what: &'static str, found: char },
    /// An amount or time that is empty.
    #[error("empty amount: expected a decimal integer string such as \"10000\"")]
    EmptyAmount,
    /// An amount or time with a sign, decimal point, exponent, spaces or any other non-digit.
    #[error(
        "amount {got:?} is not a non-negative decimal integer \
         (digits only: no sign, decimal point, exponent or spaces)"
    )]
    NotDecimal { got: String },
    /// An amount or time that does not fit in 256 bits.
    #[error("amount {got:?} is larger than 2^256 - 1")]
    AmountOverflow { got: String },
}

/// At most this many characters of a bad value are echoed in an error message, so a hostile
/// megabyte-long field does not become a megabyte-long log line.
const ECHO_LIMIT: usize = 80;

/// The start of `s` for an error message.
pub(crate) fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}...", &s[..cut]),
    }
}

/// The `x402Version` field of a message that exists in one version only: it serializes as the
/// number `N` and refuses to deserialize from anything else, so a `v1::PaymentPayload` can never
/// hold `x402Version: 2`. It is a unit value: there is nothing to set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct X402Version<const N: u8>;

impl<const N: u8> X402Version<N> {
    /// The version number this tag stands for.
    pub const NUMBER: u8 = N;
}

impl<const N: u8> fmt::Debug for X402Version<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X402Version({N})")
    }
}

impl<const N: u8> Serialize for X402Version<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(N)
    }
}

impl<'de, const N: u8> Deserialize<'de> for X402Version<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let got = u64::deserialize(deserializer)?;
        if got == u64::from(N) {
            Ok(Self)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "x402Version must be {N} here, got {got}"
            )))
        }
    }
}

/// For the top-level `x402Version` of a request body: absent or `null` reads as the version
/// (the payload's one is authoritative), anything else must be `N`.
pub(crate) fn optional_version<'de, D, const N: u8>(
    deserializer: D,
) -> Result<X402Version<N>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<X402Version<N>>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tag_round_trips_and_rejects_others() {
        assert_eq!(serde_json::to_string(&X402Version::<2>).unwrap(), "2");
        assert!(serde_json::from_str::<X402Version<2>>("2").is_ok());
        let err = serde_json::from_str::<X402Version<2>>("1").unwrap_err();
        assert!(err.to_string().contains("must be 2"), "{err}");
        assert!(serde_json::from_str::<X402Version<1>>("\"1\"").is_err());
    }

    #[test]
    fn echo_cuts_long_values() {
        assert_eq!(echo("short"), "short");
        let long = "x".repeat(1000);
        assert_eq!(echo(&long).len(), ECHO_LIMIT + 3);
    }
}
