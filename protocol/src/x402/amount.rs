//! [`U256`]: the unsigned 256-bit integer of token amounts and EIP-3009 times.
//!
//! On the x402 wire every amount (`amount`, `maxAmountRequired`, `authorization.value`) and
//! every EIP-3009 time (`validAfter`, `validBefore`) is a JSON *string* holding a decimal
//! integer, because JavaScript numbers cannot carry 256 bits. This type parses exactly that
//! (digits only; no sign, decimal point, exponent, spaces or hex) and writes it back in canonical
//! form. No floating point anywhere; arithmetic is checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::{echo, FormatError};

/// An unsigned 256-bit integer. Ordering and equality are numeric.
///
/// Serde: a decimal string (`"10000"`). Leading zeros are accepted on input (`"010"` is 10,
/// as JavaScript's `BigInt` reads it) and dropped on output.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct U256([u64; 4]); // limbs, most significant first (so the derived Ord is numeric)

impl U256 {
    pub const ZERO: U256 = U256([0; 4]);
    pub const MAX: U256 = U256([u64::MAX; 4]);

    pub const fn from_u64(v: u64) -> Self {
        U256([0, 0, 0, v])
    }

    pub const fn from_u128(v: u128) -> Self {
        U256([0, 0, (v >> 64) as u64, v as u64])
    }

    /// Parses a decimal integer string as it appears on the wire.
    pub fn from_dec_str(s: &str) -> Result<Self, FormatError> {
        if s.is_empty() {
            return Err(FormatError::EmptyAmount);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FormatError::NotDecimal { got: echo(s) });
        }
        let mut value = U256::ZERO;
        for digit in s.bytes().map(|b| u64::from(b - b'0')) {
            value = value
                .mul_small(10)
                .and_then(|v| v.checked_add(U256::from_u64(digit)))
                .ok_or_else(|| FormatError::AmountOverflow { got: echo(s) })?;
        }
        Ok(value)
    }

    pub fn is_zero(&self) -> bool {
        *self == U256::ZERO
    }

    /// The value as a `u64`, or `None` when it is larger.
    pub fn to_u64(&self) -> Option<u64> {
        match self.0 {
            [0, 0, 0, low] => Some(low),
            _ => None,
        }
    }

    /// The value as a `u128`, or `None` when it is larger.
    pub fn to_u128(&self) -> Option<u128> {
        match self.0 {
            [0, 0, high, low] => Some((u128::from(high) << 64) | u128::from(low)),
            _ => None,
        }
    }

    /// The value clamped to `u64::MAX`. For EIP-3009 times this keeps comparisons against a
    /// Unix clock right: a `validBefore` beyond `u64::MAX` seconds is "never expires", a
    /// `validAfter` beyond it is "not yet valid".
    pub fn saturating_to_u64(&self) -> u64 {
        self.to_u64().unwrap_or(u64::MAX)
    }

    /// Big-endian bytes, as the EVM ABI-encodes a `uint256`.
    pub fn to_be_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        out
    }

    pub fn from_be_bytes(bytes: [u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *limb = u64::from_be_bytes(word);
        }
        U256(limbs)
    }

    pub fn checked_add(self, other: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry = false;
        for i in (0..4).rev() {
            let (sum, c1) = self.0[i].overflowing_add(other.0[i]);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            out[i] = sum;
            carry = c1 || c2;
        }
        (!carry).then_some(U256(out))
    }

    pub fn checked_sub(self, other: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for i in (0..4).rev() {
            let (diff, b1) = self.0[i].overflowing_sub(other.0[i]);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            out[i] = diff;
            borrow = b1 || b2;
        }
        (!borrow).then_some(U256(out))
    }

    fn mul_small(self, factor: u64) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry = 0u128;
        for i in (0..4).rev() {
            let product = u128::from(self.0[i]) * u128::from(factor) + carry;
            out[i] = product as u64;
            carry = product >> 64;
        }
        (carry == 0).then_some(U256(out))
    }

    /// (self / divisor, self % divisor) for a non-zero divisor.
    fn div_rem_small(self, divisor: u64) -> (U256, u64) {
        let mut quotient = [0u64; 4];
        let mut rem = 0u128;
        for (q, limb) in quotient.iter_mut().zip(self.0) {
            let current = (rem << 64) | u128::from(limb);
            *q = (current / u128::from(divisor)) as u64;
            rem = current % u128::from(divisor);
        }
        (U256(quotient), rem as u64)
    }
}

impl From<u64> for U256 {
    fn from(v: u64) -> Self {
        U256::from_u64(v)
    }
}

impl From<u128> for U256 {
    fn from(v: u128) -> Self {
        U256::from_u128(v)
    }
}

impl FromStr for U256 {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        U256::from_dec_str(s)
    }
}

impl fmt::Display for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CHUNK: u64 = 10_000_000_000_000_000_000; // 10^19, the largest power of 10 in a u64
        if let Some(small) = self.to_u64() {
            return fmt::Display::fmt(&small, f);
        }
        // At most 78 decimal digits: five chunks of 19.
        let mut chunks = Vec::with_capacity(5);
        let mut rest = *self;
        while !rest.is_zero() {
            let (q, r) = rest.div_rem_small(CHUNK);
            chunks.push(r);
            rest = q;
        }
        let mut text = String::with_capacity(78);
        let mut iter = chunks.iter().rev();
        if let Some(first) = iter.next() {
            text.push_str(&first.to_string());
        }
        for chunk in iter {
            text.push_str(&format!("{chunk:019}"));
        }
        f.pad(&text)
    }
}

impl fmt::Debug for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U256({self})")
    }
}

impl Serialize for U256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for U256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = U256;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal integer string such as \"10000\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<U256, E> {
                U256::from_dec_str(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_decimal() {
        for text in [
            "0",
            "1",
            "10000",
            "18446744073709551615",
            "18446744073709551616",
        ] {
            assert_eq!(U256::from_dec_str(text).unwrap().to_string(), text);
        }
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(U256::from_dec_str(max).unwrap(), U256::MAX);
        assert_eq!(U256::MAX.to_string(), max);
        assert_eq!(U256::from_dec_str("000123").unwrap(), U256::from_u64(123));
        assert_eq!(
            U256::from_u128(u128::MAX).to_string(),
            u128::MAX.to_string()
        );
    }

    #[test]
    fn rejects_everything_but_digits() {
        for bad in ["-1", "+1", "1.0", "1e3", " 1", "1 ", "0x10", "１", "1_000"] {
            assert!(
                matches!(U256::from_dec_str(bad), Err(FormatError::NotDecimal { .. })),
                "{bad}"
            );
        }
        assert_eq!(U256::from_dec_str(""), Err(FormatError::EmptyAmount));
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        assert!(matches!(
            U256::from_dec_str(over),
            Err(FormatError::AmountOverflow { .. })
        ));
    }

    #[test]
    fn orders_numerically_and_converts() {
        let small = U256::from_u64(u64::MAX);
        let big = U256::from_dec_str("18446744073709551616").unwrap();
        assert!(small < big);
        assert_eq!(small.checked_add(U256::from_u64(1)), Some(big));
        assert_eq!(big.checked_sub(U256::from_u64(1)), Some(small));
        assert_eq!(U256::ZERO.checked_sub(U256::from_u64(1)), None);
        assert_eq!(U256::MAX.checked_add(U256::from_u64(1)), None);
        assert_eq!(big.to_u64(), None);
        assert_eq!(big.saturating_to_u64(), u64::MAX);
        assert_eq!(big.to_u128(), Some(1u128 << 64));
        assert_eq!(U256::from_be_bytes(big.to_be_bytes()), big);
        assert_eq!(U256::from_u64(1).to_be_bytes()[31], 1);
    }

    #[test]
    fn serde_is_a_decimal_string() {
        let v: U256 = serde_json::from_str("\"10000\"").unwrap();
        assert_eq!(v, U256::from_u64(10000));
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"10000\"");
        assert!(
            serde_json::from_str::<U256>("10000").is_err(),
            "a JSON number"
        );
        assert!(serde_json::from_str::<U256>("\"-5\"").is_err());
    }
}
