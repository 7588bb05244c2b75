//! The canonical contracts of the dev chain (`x402_dev::canonical`) are the real ones and work
//! on a local chain id: their code hashes are mainnet's, Permit2's EIP-712 domain separator is
//! the one of the local chain (mainnet code recomputes it), and Multicall3 answers calls to
//! other contracts in one `aggregate3`.

use alloy::primitives::{keccak256, Address, Bytes, B256, U256};
use alloy::sol_types::{SolCall, SolValue};
use x402_dev::canonical::{Multicall3View, Permit2View, CONTRACTS, MULTICALL3, PERMIT2};
use x402_dev::devchain::{DevChain, DevRpc, PAYER, PAYER_FUNDS};

async fn call(rpc: &DevRpc, to: Address, data: Vec<u8>) -> Vec<u8> {
    let answer = rpc
        .rpc(
            "eth_call",
            serde_json::json!([{"to": to.to_string(), "data": format!("0x{}", hex::encode(data))}, "latest"]),
        )
        .await;
    hex::decode(answer.as_str().expect("hex").trim_start_matches("0x")).expect("hex")
}

/// EIP-712 domain separator of Permit2 on `chain_id` (its domain has a name and no version).
fn permit2_domain_separator(chain_id: u64) -> B256 {
    let typehash = keccak256("EIP712Domain(string name,uint256 chainId,address verifyingContract)");
    keccak256(
        (
            typehash,
            keccak256("Permit2"),
            U256::from(chain_id),
            PERMIT2,
        )
            .abi_encode(),
    )
}

#[tokio::test]
async fn permit2_and_multicall3_are_mainnets_and_work_on_local_chain_ids() {
    for chain_id in [31337, 84532] {
        let chain = DevChain::start(chain_id).await;
        let rpc = chain.anvil.rpc();
        for contract in CONTRACTS {
            let code = rpc
                .rpc(
                    "eth_getCode",
                    serde_json::json!([contract.address.to_string(), "latest"]),
                )
                .await;
            let code = hex::decode(code.as_str().unwrap().trim_start_matches("0x")).unwrap();
            assert_eq!(
                keccak256(&code),
                contract.code_hash,
                "{} on {chain_id}",
                contract.name
            );
        }

        let separator = call(
            rpc,
            PERMIT2,
            Permit2View::DOMAIN_SEPARATORCall {}.abi_encode(),
        )
        .await;
        assert_eq!(
            B256::from_slice(&separator),
            permit2_domain_separator(chain_id),
            "Permit2's domain is chain {chain_id}'s"
        );
        assert_ne!(
            permit2_domain_separator(chain_id),
            permit2_domain_separator(1)
        );

        let answer = call(
            rpc,
            MULTICALL3,
            Multicall3View::getChainIdCall {}.abi_encode(),
        )
        .await;
        assert_eq!(U256::from_be_slice(&answer), U256::from(chain_id));
        let balance_of = [
            &keccak256("balanceOf(address)")[..4],
            &PAYER.abi_encode()[..],
        ]
        .concat();
        let calls = vec![
            Multicall3View::Call3 {
                target: chain.token.address,
                allowFailure: false,
                callData: Bytes::from(balance_of),
            },
            Multicall3View::Call3 {
                target: PERMIT2,
                allowFailure: false,
                callData: Bytes::from(Permit2View::DOMAIN_SEPARATORCall {}.abi_encode()),
            },
        ];
        let answer = call(
            rpc,
            MULTICALL3,
            Multicall3View::aggregate3Call { calls }.abi_encode(),
        )
        .await;
        let results = Multicall3View::aggregate3Call::abi_decode_returns(&answer).expect("decodes");
        assert!(
            results.iter().all(|r| r.success),
            "every call of aggregate3 succeeds"
        );
        assert_eq!(
            U256::from_be_slice(&results[0].returnData),
            U256::from(PAYER_FUNDS)
        );
        assert_eq!(
            B256::from_slice(&results[1].returnData),
            permit2_domain_separator(chain_id)
        );
    }
}
