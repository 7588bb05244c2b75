//! Building and signing EIP-1559 transactions with a local key, for [`super::Chain::send_raw_transaction`].
//!
//! Settlement signs `transferWithAuthorization` transactions with the facilitator's key; tests
//! also deploy contracts with it. Pure: no network (nonce, fees and gas come from the caller).

use alloy::consensus::{SignableTransaction, Transaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::{Decodable2718, Encodable2718};
use alloy::primitives::{Bytes, TxKind};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;

use super::{Address, B256, U256};

/// The fields of an EIP-1559 (type 2) transaction, without an access list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eip1559Request {
    pub chain_id: u64,
    pub nonce: u64,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    /// `None` deploys a contract whose init code is `input`.
    pub to: Option<Address>,
    pub value: U256,
    pub input: Vec<u8>,
}

/// A signed transaction: its hash and the EIP-2718 bytes for `eth_sendRawTransaction`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransaction {
    pub hash: B256,
    pub raw: Vec<u8>,
}

/// Signs `request` with `signer`.
pub fn sign_eip1559(
    signer: &PrivateKeySigner,
    request: &Eip1559Request,
) -> Result<SignedTransaction, alloy::signers::Error> {
    let tx = TxEip1559 {
        chain_id: request.chain_id,
        nonce: request.nonce,
        gas_limit: request.gas_limit,
        max_fee_per_gas: request.max_fee_per_gas,
        max_priority_fee_per_gas: request.max_priority_fee_per_gas,
        to: match request.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        },
        value: request.value,
        access_list: Default::default(),
        input: Bytes::from(request.input.clone()),
    };
    let signature = signer.sign_hash_sync(&tx.signature_hash())?;
    let envelope = TxEnvelope::from(tx.into_signed(signature));
    Ok(SignedTransaction {
        hash: *envelope.tx_hash(),
        raw: envelope.encoded_2718(),
    })
}

/// The input (calldata) of a signed EIP-2718 transaction, if the bytes decode.
pub fn call_of(raw: &[u8]) -> Option<Vec<u8>> {
    let envelope = TxEnvelope::decode_2718(&mut &raw[..]).ok()?;
    Some(envelope.input().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::keccak256;

    #[test]
    fn hash_is_keccak_of_the_envelope() {
        let key = PrivateKeySigner::random();
        let signed = sign_eip1559(
            &key,
            &Eip1559Request {
                chain_id: 31337,
                nonce: 0,
                gas_limit: 21_000,
                max_fee_per_gas: 2_000_000_000,
                max_priority_fee_per_gas: 1_000_000_000,
                to: Some(Address::repeat_byte(1)),
                value: U256::from(1u8),
                input: Vec::new(),
            },
        )
        .unwrap();
        assert_eq!(signed.raw[0], 0x02, "type-2 envelope");
        assert_eq!(signed.hash, keccak256(&signed.raw));
    }
}
