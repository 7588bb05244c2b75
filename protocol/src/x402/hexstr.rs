//! `0x`-prefixed hex strings of the EVM wire: [`Address`] (20 bytes), [`Bytes32`] (an
//! EIP-3009 nonce) and [`HexBytes`] (a signature of any length).
//!
//! Each value keeps the text it arrived as, so re-encoding a message gives back the same
//! characters (a checksummed address stays checksummed), while equality and hashing use the
//! bytes (`0xABC…` equals `0xabc…`, as `getAddress(a) == getAddress(b)` does in the reference).
//! The EIP-55 checksum is not verified: that needs keccak-256, and the reference facilitators
//! accept lowercase addresses anyway (the v2 sample's `asset` is lowercase).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::{echo, FormatError};

/// A fixed-size byte string written as `0x` and exactly `2 * N` hex digits (either case).
#[derive(Clone)]
pub struct FixedHex<const N: usize> {
    bytes: [u8; N],
    text: Box<str>,
}

/// An EVM address: `0x` and 40 hex digits.
pub type Address = FixedHex<20>;
/// A 32-byte value such as an EIP-3009 nonce or a transaction hash: `0x` and 64 hex digits.
pub type Bytes32 = FixedHex<32>;

impl<const N: usize> FixedHex<N> {
    fn what() -> &'static str {
        match N {
            20 => "address",
            32 => "32-byte hex value",
            _ => "hex value",
        }
    }

    /// Parses `0x` followed by exactly `2 * N` hex digits.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let what = Self::what();
        let digits = strip_0x(text, what)?;
        check_hex(digits, what)?;
        if digits.len() != 2 * N {
            return Err(FormatError::HexLength {
                what,
                expected: 2 * N,
                got: digits.len(),
            });
        }
        let mut bytes = [0u8; N];
        decode_into(digits, &mut bytes, what)?;
        Ok(FixedHex {
            bytes,
            text: text.into(),
        })
    }

    /// From raw bytes; the text is lowercase hex.
    pub fn from_bytes(bytes: [u8; N]) -> Self {
        let text = format!("0x{}", ::hex::encode(bytes)).into_boxed_str();
        FixedHex { bytes, text }
    }

    pub fn as_bytes(&self) -> &[u8; N] {
        &self.bytes
    }

    /// The text as received (or lowercase, for a value built from bytes).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `0x` and lowercase hex, whatever case the value arrived in.
    pub fn to_lowercase_hex(&self) -> String {
        format!("0x{}", ::hex::encode(self.bytes))
    }
}

impl<const N: usize> PartialEq for FixedHex<N> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<const N: usize> Eq for FixedHex<N> {}

impl<const N: usize> Hash for FixedHex<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl<const N: usize> PartialOrd for FixedHex<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for FixedHex<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl<const N: usize> fmt::Display for FixedHex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<const N: usize> fmt::Debug for FixedHex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.text)
    }
}

impl<const N: usize> FromStr for FixedHex<N> {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<const N: usize> Serialize for FixedHex<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, const N: usize> Deserialize<'de> for FixedHex<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::<Self>::new(
            "a 0x-prefixed hex string",
            Self::parse,
        ))
    }
}

/// A byte string of any length (an EOA, ERC-1271 or ERC-6492 signature): `0x` and an even
/// number of hex digits. `0x` alone (no bytes) is accepted here; the verifier reports it as a
/// missing signature.
#[derive(Clone)]
pub struct HexBytes {
    bytes: Vec<u8>,
    text: Box<str>,
}

impl HexBytes {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let what = "hex byte string";
        let digits = strip_0x(text, what)?;
        check_hex(digits, what)?;
        if digits.len() % 2 != 0 {
            return Err(FormatError::OddHexLength {
                what,
                got: digits.len(),
            });
        }
        let mut bytes = vec![0u8; digits.len() / 2];
        decode_into(digits, &mut bytes, what)?;
        Ok(HexBytes {
            bytes,
            text: text.into(),
        })
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let text = format!("0x{}", ::hex::encode(&bytes)).into_boxed_str();
        HexBytes { bytes, text }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for HexBytes {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for HexBytes {}

impl Hash for HexBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.text)
    }
}

impl FromStr for HexBytes {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::<Self>::new(
            "a 0x-prefixed hex string",
            Self::parse,
        ))
    }
}

fn strip_0x<'a>(text: &'a str, what: &'static str) -> Result<&'a str, FormatError> {
    text.strip_prefix("0x")
        .ok_or_else(|| FormatError::MissingHexPrefix {
            what,
            got: echo(text),
        })
}

fn check_hex(digits: &str, what: &'static str) -> Result<(), FormatError> {
    match digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        Some(found) => Err(FormatError::NotHex { what, found }),
        None => Ok(()),
    }
}

/// Decodes `digits` (checked by [`check_hex`], `2 * out.len()` digits long) into `out`.
fn decode_into(digits: &str, out: &mut [u8], what: &'static str) -> Result<(), FormatError> {
    // All ASCII hex digits of the right length: this cannot fail.
    ::hex::decode_to_slice(digits, out).map_err(|_| FormatError::NotHex { what, found: '?' })
}

/// A serde visitor that reads a string and runs a parser over it.
struct ParseVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, FormatError>,
}

impl<T> ParseVisitor<T> {
    fn new(expecting: &'static str, parse: fn(&str) -> Result<T, FormatError>) -> Self {
        ParseVisitor { expecting, parse }
    }
}

impl<T> serde::de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKSUMMED: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

    #[test]
    fn address_keeps_text_and_compares_bytes() {
        let a = Address::parse(CHECKSUMMED).unwrap();
        let b = Address::parse(&CHECKSUMMED.to_lowercase()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), CHECKSUMMED);
        assert_eq!(b.to_lowercase_hex(), CHECKSUMMED.to_lowercase());
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            format!("\"{CHECKSUMMED}\"")
        );
        assert_eq!(Address::from_bytes(*a.as_bytes()), a);
    }

    #[test]
    fn address_errors_are_typed() {
        assert!(matches!(
            Address::parse("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            Err(FormatError::MissingHexPrefix { .. })
        ));
        assert_eq!(
            Address::parse("0x1234"),
            Err(FormatError::HexLength {
                what: "address",
                expected: 40,
                got: 4
            })
        );
        assert_eq!(
            Address::parse("0x70997970C51812dc3A010C7d01b50e0d17dc79CZ"),
            Err(FormatError::NotHex {
                what: "address",
                found: 'Z'
            })
        );
        // Multi-byte characters are reported as such, whatever the length.
        assert!(matches!(
            Address::parse(&format!("0x{}", "é".repeat(20))),
            Err(FormatError::NotHex { found: 'é', .. })
        ));
    }

    #[test]
    fn bytes32_and_hex_bytes() {
        let nonce = Bytes32::parse(&format!("0x{}", "ab".repeat(32))).unwrap();
        assert_eq!(nonce.as_bytes()[0], 0xab);
        assert!(matches!(
            Bytes32::parse(&format!("0x{}", "ab".repeat(31))),
            Err(FormatError::HexLength { expected: 64, .. })
        ));
        let sig = HexBytes::parse("0x0102ff").unwrap();
        assert_eq!(sig.as_bytes(), &[1, 2, 255]);
        assert!(HexBytes::parse("0x").unwrap().is_empty());
        assert!(matches!(
            HexBytes::parse("0x123"),
            Err(FormatError::OddHexLength { got: 3, .. })
        ));
        assert!(matches!(
            HexBytes::parse("0xgg"),
            Err(FormatError::NotHex { found: 'g', .. })
        ));
    }
}
