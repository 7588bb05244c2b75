//! EIP-3009 `transferWithAuthorization` as the `exact` EVM scheme uses it: pure code, no network.
//!
//! - the EIP-712 typed data ([`TransferWithAuthorization`]) and its domain, built from the
//!   payment requirements' `extra.name` / `extra.version`, the chain id and the asset address
//!   ([`domain`]);
//! - the signing hash and strict signer recovery ([`recover_signer`]), with the same rules as our
//!   TestUSDC and USDC: exactly 65 bytes `r‖s‖v`, `s ≤ n/2`, `v ∈ {27, 28}`;
//! - calldata for the token calls verify and settle need (both `transferWithAuthorization`
//!   overloads, `authorizationState`, `balanceOf`, `name`, `version`) and ERC-1271
//!   `isValidSignature`, with decoders for their answers;
//! - [`sign_authorization`], which signs with a local key (tests now, `x402ctl pay` later).
//!
//! Selectors, typehashes and event topics are those of USDC (reference/x402-protocol.md §7); the
//! unit tests pin them.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolCall, SolEvent, SolStruct, SolValue};

sol! {
    /// The EIP-712 message a payer signs (EIP-3009). Field names are the spec's, so the type
    /// string, and therefore the typehash, is exactly USDC's.
    #[derive(Debug, PartialEq, Eq)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// The slice of an EIP-3009 token (USDC FiatToken v2.2 / our TestUSDC) the facilitator calls.
    interface IEip3009 {
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function balanceOf(address account) external view returns (uint256);
        function name() external view returns (string);
        function version() external view returns (string);

        event Transfer(address indexed from, address indexed to, uint256 value);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    }

    /// ERC-1271: how a contract wallet says a signature is its own.
    interface IErc1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4 magicValue);
    }
}

/// `TransferWithAuthorization` calldata, v,r,s overload (`0xe3ee160e`).
pub use IEip3009::transferWithAuthorization_0Call as TransferWithAuthorizationVrsCall;
/// `TransferWithAuthorization` calldata, `bytes signature` overload (`0xcf092995`).
pub use IEip3009::transferWithAuthorization_1Call as TransferWithAuthorizationBytesCall;
/// The EIP-3009 `AuthorizationUsed` event (topic `0x98de5035…`).
pub use IEip3009::AuthorizationUsed as AuthorizationUsedEvent;
/// The ERC-20 `Transfer` event (topic `0xddf252ad…`).
pub use IEip3009::Transfer as TransferEvent;

/// Length of a strict ECDSA signature `r‖s‖v`.
pub const SIGNATURE_LEN: usize = 65;
/// What ERC-1271 `isValidSignature` answers for a valid signature.
pub const ERC1271_MAGIC_VALUE: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];
/// secp256k1 n/2: a signature with a larger `s` is malleable and refused (EIP-2).
pub const SECP256K1_HALF_N: U256 = U256::from_be_slice(&[
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

/// Why a signature does not recover to a signer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is {0} bytes, expected 65")]
    BadLength(usize),
    #[error("signature v is {0}, expected 27 or 28")]
    BadV(u8),
    #[error("signature s is above n/2 (malleable)")]
    HighS,
    #[error("signature does not recover to an address")]
    Unrecoverable,
}

/// The EIP-712 domain of an EIP-3009 token: `EIP712Domain(string name,string version,uint256
/// chainId,address verifyingContract)`. `name` and `version` come from the requirements' `extra`.
pub fn domain(
    name: &str,
    version: &str,
    chain_id: u64,
    verifying_contract: Address,
) -> Eip712Domain {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(verifying_contract),
        None,
    )
}

/// The digest the payer signs: `keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(authorization))`.
pub fn signing_hash(authorization: &TransferWithAuthorization, domain: &Eip712Domain) -> B256 {
    authorization.eip712_signing_hash(domain)
}

/// Splits a strict 65-byte signature into `(v, r, s)`, refusing what the token would refuse.
pub fn split_signature(signature: &[u8]) -> Result<(u8, B256, B256), SignatureError> {
    if signature.len() != SIGNATURE_LEN {
        return Err(SignatureError::BadLength(signature.len()));
    }
    let r = B256::from_slice(&signature[..32]);
    let s = B256::from_slice(&signature[32..64]);
    let v = signature[64];
    if U256::from_be_bytes(s.0) > SECP256K1_HALF_N {
        return Err(SignatureError::HighS);
    }
    if v != 27 && v != 28 {
        return Err(SignatureError::BadV(v));
    }
    Ok((v, r, s))
}

/// Recovers the EOA that signed `authorization` under `domain`, with the token's strict rules.
///
/// The caller compares the result with `authorization.from`; when `from` has code the signature
/// must be checked with ERC-1271 instead ([`is_valid_signature_calldata`]).
pub fn recover_signer(
    authorization: &TransferWithAuthorization,
    domain: &Eip712Domain,
    signature: &[u8],
) -> Result<Address, SignatureError> {
    let (v, _, _) = split_signature(signature)?;
    let signer = ecrecover(&signing_hash(authorization, domain), &signature[..64], v)?;
    // ecrecover answers 0 for garbage; the token refuses a zero signer.
    if signer == Address::ZERO {
        return Err(SignatureError::Unrecoverable);
    }
    Ok(signer)
}

/// `ecrecover` of a 64-byte `r‖s` with `v` 27/28, by libsecp256k1: on /verify's path this is
/// most of the CPU a verification costs, and libsecp256k1 does it in about a third of the time
/// the pure-Rust k256 takes (measured with perf on the verify benchmark).
fn ecrecover(hash: &B256, rs: &[u8], v: u8) -> Result<Address, SignatureError> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let id = RecoveryId::try_from(i32::from(v) - 27).map_err(|_| SignatureError::BadV(v))?;
    let sig =
        RecoverableSignature::from_compact(rs, id).map_err(|_| SignatureError::Unrecoverable)?;
    let key = secp256k1::SECP256K1
        .recover_ecdsa(secp256k1::Message::from_digest(hash.0), &sig)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let uncompressed = key.serialize_uncompressed();
    Ok(Address::from_raw_public_key(&uncompressed[1..]))
}

/// Signs `authorization` under `domain` with a local key: 65 bytes `r‖s‖v`, low s, v 27/28.
pub fn sign_authorization(
    signer: &PrivateKeySigner,
    authorization: &TransferWithAuthorization,
    domain: &Eip712Domain,
) -> Result<[u8; SIGNATURE_LEN], alloy::signers::Error> {
    let sig = signer.sign_hash_sync(&signing_hash(authorization, domain))?;
    // k256 signs with low s already; normalize anyway so the token never sees a high s.
    let sig = sig.normalized_s();
    Ok(sig.as_bytes())
}

/// The typed EIP-712 message of a wire authorization (the `paymentPayload.payload.authorization`
/// of a request), for [`signing_hash`], [`recover_signer`] and the calldata builders.
pub fn typed_authorization(wire: &super::evm::Authorization) -> TransferWithAuthorization {
    TransferWithAuthorization {
        from: Address::from(*wire.from.as_bytes()),
        to: Address::from(*wire.to.as_bytes()),
        value: U256::from_be_bytes(wire.value.to_be_bytes()),
        validAfter: U256::from_be_bytes(wire.valid_after.to_be_bytes()),
        validBefore: U256::from_be_bytes(wire.valid_before.to_be_bytes()),
        nonce: B256::from(*wire.nonce.as_bytes()),
    }
}

/// Calldata of `transferWithAuthorization(…, uint8 v, bytes32 r, bytes32 s)` (`0xe3ee160e`).
pub fn transfer_with_authorization_vrs(
    a: &TransferWithAuthorization,
    v: u8,
    r: B256,
    s: B256,
) -> Vec<u8> {
    TransferWithAuthorizationVrsCall {
        from: a.from,
        to: a.to,
        value: a.value,
        validAfter: a.validAfter,
        validBefore: a.validBefore,
        nonce: a.nonce,
        v,
        r,
        s,
    }
    .abi_encode()
}

/// Calldata of `transferWithAuthorization(…, bytes signature)` (`0xcf092995`): the path for
/// ERC-1271 wallets (and any non-65-byte signature).
pub fn transfer_with_authorization_bytes(
    a: &TransferWithAuthorization,
    signature: &[u8],
) -> Vec<u8> {
    TransferWithAuthorizationBytesCall {
        from: a.from,
        to: a.to,
        value: a.value,
        validAfter: a.validAfter,
        validBefore: a.validBefore,
        nonce: a.nonce,
        signature: signature.to_vec().into(),
    }
    .abi_encode()
}

/// The overload the reference facilitators pick: v,r,s for a strict 65-byte signature, `bytes`
/// otherwise (reference/x402-protocol.md §3.2 step 13, §4.1).
pub fn transfer_with_authorization(a: &TransferWithAuthorization, signature: &[u8]) -> Vec<u8> {
    match split_signature(signature) {
        Ok((v, r, s)) => transfer_with_authorization_vrs(a, v, r, s),
        Err(_) => transfer_with_authorization_bytes(a, signature),
    }
}

/// Calldata of `authorizationState(address,bytes32)`; decode the answer with [`decode_bool`].
pub fn authorization_state_calldata(authorizer: Address, nonce: B256) -> Vec<u8> {
    IEip3009::authorizationStateCall { authorizer, nonce }.abi_encode()
}

/// Calldata of `balanceOf(address)`; decode the answer with [`decode_uint256`].
pub fn balance_of_calldata(account: Address) -> Vec<u8> {
    IEip3009::balanceOfCall { account }.abi_encode()
}

/// Calldata of `name()`; decode the answer with [`decode_string`].
pub fn name_calldata() -> Vec<u8> {
    IEip3009::nameCall {}.abi_encode()
}

/// Calldata of `version()`; decode the answer with [`decode_string`].
pub fn version_calldata() -> Vec<u8> {
    IEip3009::versionCall {}.abi_encode()
}

/// Calldata of ERC-1271 `isValidSignature(bytes32,bytes)`; check the answer with
/// [`is_erc1271_magic`].
pub fn is_valid_signature_calldata(hash: B256, signature: &[u8]) -> Vec<u8> {
    IErc1271::isValidSignatureCall {
        hash,
        signature: signature.to_vec().into(),
    }
    .abi_encode()
}

/// Decodes an ABI `bool` return value (strict: a value other than 0 or 1 is an error).
pub fn decode_bool(ret: &[u8]) -> Result<bool, alloy::sol_types::Error> {
    bool::abi_decode(ret)
}

/// Decodes an ABI `uint256` return value.
pub fn decode_uint256(ret: &[u8]) -> Result<U256, alloy::sol_types::Error> {
    U256::abi_decode(ret)
}

/// Decodes an ABI `string` return value.
pub fn decode_string(ret: &[u8]) -> Result<String, alloy::sol_types::Error> {
    String::abi_decode(ret)
}

/// Whether an `isValidSignature` answer is the ERC-1271 magic value `0x1626ba7e` (the first 4
/// bytes of a 32-byte word; anything shorter is a refusal).
pub fn is_erc1271_magic(ret: &[u8]) -> bool {
    ret.len() >= 32 && ret[..4] == ERC1271_MAGIC_VALUE && ret[4..32].iter().all(|b| *b == 0)
}

/// Topic 0 of the ERC-20 `Transfer` event.
pub fn transfer_topic() -> B256 {
    TransferEvent::SIGNATURE_HASH
}

/// Topic 0 of `AuthorizationUsed`.
pub fn authorization_used_topic() -> B256 {
    AuthorizationUsedEvent::SIGNATURE_HASH
}

/// Decodes a `Transfer(from, to, value)` log from its topics and data, `None` if it is not one.
pub fn decode_transfer_log(topics: &[B256], data: &[u8]) -> Option<(Address, Address, U256)> {
    let log = alloy::primitives::LogData::new(topics.to_vec(), data.to_vec().into())?;
    let ev = TransferEvent::decode_log_data(&log).ok()?;
    Some((ev.from, ev.to, ev.value))
}

/// Decodes an `AuthorizationUsed(authorizer, nonce)` log, `None` if it is not one.
pub fn decode_authorization_used_log(topics: &[B256], data: &[u8]) -> Option<(Address, B256)> {
    let log = alloy::primitives::LogData::new(topics.to_vec(), data.to_vec().into())?;
    let ev = AuthorizationUsedEvent::decode_log_data(&log).ok()?;
    Some((ev.authorizer, ev.nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{address, b256, keccak256};

    fn sample() -> (TransferWithAuthorization, Eip712Domain, PrivateKeySigner) {
        // anvil's first dev key; any key works.
        let key: PrivateKeySigner =
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
                .parse()
                .unwrap();
        let auth = TransferWithAuthorization {
            from: key.address(),
            to: address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            value: U256::from(10_000u64),
            validAfter: U256::ZERO,
            validBefore: U256::from(1_900_000_000u64),
            nonce: keccak256(b"nonce-1"),
        };
        let dom = domain(
            "USD Coin",
            "2",
            31337,
            address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
        );
        (auth, dom, key)
    }

    #[test]
    fn typehashes_and_domain_type_are_usdcs() {
        assert_eq!(
            keccak256(TransferWithAuthorization::eip712_encode_type().as_bytes()),
            b256!("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
        );
        assert_eq!(
            TransferWithAuthorization::eip712_encode_type(),
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        );
        assert_eq!(
            keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
            b256!("0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f")
        );
        // The domain separator alloy builds is the one over exactly those four fields.
        let (_, dom, _) = sample();
        let manual = keccak256(
            (
                b256!("0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f"),
                keccak256(b"USD Coin"),
                keccak256(b"2"),
                U256::from(31337u64),
                address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            )
                .abi_encode(),
        );
        assert_eq!(dom.separator(), manual);
    }

    #[test]
    fn selectors_and_topics_match_the_reference() {
        assert_eq!(
            TransferWithAuthorizationVrsCall::SELECTOR,
            [0xe3, 0xee, 0x16, 0x0e]
        );
        assert_eq!(
            TransferWithAuthorizationBytesCall::SELECTOR,
            [0xcf, 0x09, 0x29, 0x95]
        );
        assert_eq!(
            IEip3009::authorizationStateCall::SELECTOR,
            [0xe9, 0x4a, 0x01, 0x02]
        );
        assert_eq!(IEip3009::balanceOfCall::SELECTOR, [0x70, 0xa0, 0x82, 0x31]);
        assert_eq!(IEip3009::nameCall::SELECTOR, [0x06, 0xfd, 0xde, 0x03]);
        assert_eq!(IEip3009::versionCall::SELECTOR, [0x54, 0xfd, 0x4d, 0x50]);
        assert_eq!(
            IErc1271::isValidSignatureCall::SELECTOR,
            ERC1271_MAGIC_VALUE
        );
        assert_eq!(
            transfer_topic(),
            b256!("0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")
        );
        assert_eq!(&authorization_used_topic()[..4], &[0x98, 0xde, 0x50, 0x35]);
        assert_eq!(&authorization_used_topic()[30..], &[0x10, 0xa5]);
        assert_eq!(&name_calldata()[..], &[0x06, 0xfd, 0xde, 0x03]);
        assert_eq!(&version_calldata()[..], &[0x54, 0xfd, 0x4d, 0x50]);
        assert_eq!(
            authorization_state_calldata(Address::ZERO, B256::ZERO).len(),
            4 + 64
        );
        assert_eq!(balance_of_calldata(Address::ZERO).len(), 4 + 32);
    }

    #[test]
    fn sign_then_recover_round_trip() {
        let (auth, dom, key) = sample();
        let sig = sign_authorization(&key, &auth, &dom).unwrap();
        assert!(sig[64] == 27 || sig[64] == 28);
        assert_eq!(recover_signer(&auth, &dom, &sig).unwrap(), key.address());
        // The calldata picks the v,r,s overload for a strict signature and carries its parts.
        let data = transfer_with_authorization(&auth, &sig);
        assert_eq!(&data[..4], &TransferWithAuthorizationVrsCall::SELECTOR);
        let call = TransferWithAuthorizationVrsCall::abi_decode(&data).unwrap();
        assert_eq!((call.v, call.r, call.s), split_signature(&sig).unwrap());
        assert_eq!(call.from, auth.from);
        // A 66-byte (e.g. wallet-specific) signature goes through the bytes overload.
        let long = [sig.as_slice(), &[0]].concat();
        let data = transfer_with_authorization(&auth, &long);
        let call = TransferWithAuthorizationBytesCall::abi_decode(&data).unwrap();
        assert_eq!(call.signature.as_ref(), long.as_slice());
    }

    #[test]
    fn a_tampered_field_or_domain_changes_the_signer() {
        let (auth, dom, key) = sample();
        let sig = sign_authorization(&key, &auth, &dom).unwrap();
        let mut tampered = auth.clone();
        tampered.value += U256::from(1u8);
        assert_ne!(
            recover_signer(&tampered, &dom, &sig).ok(),
            Some(key.address())
        );
        let mut tampered = auth.clone();
        tampered.to = Address::repeat_byte(0x11);
        assert_ne!(
            recover_signer(&tampered, &dom, &sig).ok(),
            Some(key.address())
        );
        let other_chain = domain("USD Coin", "2", 84532, dom.verifying_contract.unwrap());
        assert_ne!(
            recover_signer(&auth, &other_chain, &sig).ok(),
            Some(key.address())
        );
        let other_name = domain("USDC", "2", 31337, dom.verifying_contract.unwrap());
        assert_ne!(
            recover_signer(&auth, &other_name, &sig).ok(),
            Some(key.address())
        );
    }

    #[test]
    fn high_s_bad_v_and_bad_length_are_rejected() {
        let (auth, dom, key) = sample();
        let sig = sign_authorization(&key, &auth, &dom).unwrap();
        // Malleate: s' = n - s, v flipped. ecrecover would accept it; the token does not.
        let n = U256::from_be_slice(&alloy::hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        let s = U256::from_be_slice(&sig[32..64]);
        let mut high = sig;
        high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        high[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(
            recover_signer(&auth, &dom, &high),
            Err(SignatureError::HighS)
        );
        // The exact boundary: s = n/2 is allowed by the rule, n/2 + 1 is not.
        assert!(SECP256K1_HALF_N < n && SECP256K1_HALF_N * U256::from(2u8) + U256::from(1u8) == n);

        let mut bad_v = sig;
        bad_v[64] -= 27; // 0/1 "yParity" form: the token refuses it
        assert_eq!(
            recover_signer(&auth, &dom, &bad_v),
            Err(SignatureError::BadV(bad_v[64]))
        );
        assert_eq!(
            recover_signer(&auth, &dom, &sig[..64]),
            Err(SignatureError::BadLength(64))
        );
        assert_eq!(
            recover_signer(&auth, &dom, &[0u8; 65][..]),
            Err(SignatureError::BadV(0))
        );
    }

    #[test]
    fn decoders() {
        assert!(decode_bool(&true.abi_encode()).unwrap());
        assert!(decode_bool(&[0u8; 31]).is_err());
        assert_eq!(
            decode_uint256(&U256::from(7u8).abi_encode()).unwrap(),
            U256::from(7u8)
        );
        assert_eq!(
            decode_string(&"USD Coin".to_string().abi_encode()).unwrap(),
            "USD Coin"
        );
        let mut magic = [0u8; 32];
        magic[..4].copy_from_slice(&ERC1271_MAGIC_VALUE);
        assert!(is_erc1271_magic(&magic));
        assert!(!is_erc1271_magic(&magic[..4]));
        assert!(!is_erc1271_magic(&[0u8; 32]));
        let from = Address::repeat_byte(1);
        let to = Address::repeat_byte(2);
        let topics = [transfer_topic(), from.into_word(), to.into_word()];
        let data = U256::from(5u8).abi_encode();
        assert_eq!(
            decode_transfer_log(&topics, &data),
            Some((from, to, U256::from(5u8)))
        );
        assert_eq!(decode_authorization_used_log(&topics, &data), None);
    }
}
