//! The canonical contracts x402 payments rely on besides the token, on the dev chain at their
//! canonical addresses: Uniswap's Permit2 (the Permit2 transfer method and `upto`) and
//! Multicall3 (simulating several calls as one, and deploying an EIP-6492 wallet in the same
//! transaction as its payment).
//!
//! Real contracts, not look-alikes: their runtime code is read from a published npm package,
//! `@eth-optimism/contracts-bedrock` (pinned in `contracts/package.json`; OP Stack chains
//! preinstall exactly these), and checked against the code hash the contracts have on Ethereum
//! mainnet before `anvil_setCode` puts them in place. Permit2's code holds the chain id it was
//! deployed on and recomputes its EIP-712 domain separator on any other chain, so mainnet code
//! is correct on 31337 (the tests check its separator).

use alloy::primitives::{address, keccak256, Address, B256};
use alloy::sol;

use crate::devchain::{workspace_root, DevChainError, DevRpc};

/// Uniswap's Permit2, at the same address on every chain.
pub const PERMIT2: Address = address!("000000000022D473030F116dDEE9F6B43aC78BA3");
/// Multicall3, at the same address on every chain.
pub const MULTICALL3: Address = address!("cA11bde05977b3631167028862bE2a173976CA11");

/// The file of the npm package that holds the runtime code (relative to the workspace root).
pub const PREINSTALLS_SOL: &str =
    "contracts/node_modules/@eth-optimism/contracts-bedrock/src/libraries/Preinstalls.sol";

/// One canonical contract: where it lives, the constant of [`PREINSTALLS_SOL`] that holds its
/// runtime code, and that code's keccak256 on Ethereum mainnet.
#[derive(Clone, Copy, Debug)]
pub struct Canonical {
    pub name: &'static str,
    pub address: Address,
    constant: &'static str,
    pub code_hash: B256,
}

/// Every contract [`install`] puts in place.
pub const CONTRACTS: [Canonical; 2] = [
    Canonical {
        name: "Permit2",
        address: PERMIT2,
        constant: "Permit2TemplateCode",
        code_hash: alloy::primitives::b256!(
            "c67d1657868aa5146eaf24fb879fb1fdec3d2d493b3683a61c9c2f4fb2851131"
        ),
    },
    Canonical {
        name: "Multicall3",
        address: MULTICALL3,
        constant: "MultiCall3Code",
        code_hash: alloy::primitives::b256!(
            "d5c15df687b16f2ff992fc8d767b4216323184a2bbc6ee2f9c398c318e770891"
        ),
    },
];

sol! {
    /// What the tests ask the canonical contracts.
    interface Permit2View {
        function DOMAIN_SEPARATOR() external view returns (bytes32);
    }
    interface Multicall3View {
        struct Call3 { address target; bool allowFailure; bytes callData; }
        struct Result { bool success; bytes returnData; }
        function getChainId() external view returns (uint256 chainid);
        function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData);
    }
}

impl Canonical {
    /// Its runtime code, read from the npm package and checked against the mainnet code hash.
    pub fn runtime_code(&self) -> Result<Vec<u8>, DevChainError> {
        let path = workspace_root().join(PREINSTALLS_SOL);
        let source = std::fs::read_to_string(&path).map_err(|e| {
            DevChainError::new(format!(
                "cannot read {} ({e}): run `npm ci` in contracts/ (scripts/test.sh does)",
                path.display()
            ))
        })?;
        let marker = format!("bytes internal constant {} =", self.constant);
        let hex_text = source
            .split_once(&marker)
            .and_then(|(_, rest)| rest.split_once("hex\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(hex, _)| hex)
            .ok_or_else(|| {
                DevChainError::new(format!("{} holds no {}", path.display(), self.constant))
            })?;
        let code = hex::decode(hex_text).map_err(|e| {
            DevChainError::new(format!("{}: {}: {e}", path.display(), self.constant))
        })?;
        let hash = keccak256(&code);
        if hash != self.code_hash {
            return Err(DevChainError::new(format!(
                "{} in {} hashes to {hash}, not to {}'s mainnet code hash {}",
                self.constant,
                path.display(),
                self.name,
                self.code_hash
            )));
        }
        Ok(code)
    }
}

/// Puts every contract of [`CONTRACTS`] at its canonical address (`anvil_setCode`) and reads
/// each back.
pub async fn install(rpc: &DevRpc) -> Result<(), DevChainError> {
    for contract in CONTRACTS {
        let code = contract.runtime_code()?;
        let address = contract.address.to_string();
        rpc.try_rpc(
            "anvil_setCode",
            serde_json::json!([address, format!("0x{}", hex::encode(&code))]),
        )
        .await?;
        let read = rpc
            .try_rpc("eth_getCode", serde_json::json!([address, "latest"]))
            .await?;
        let read = read
            .as_str()
            .and_then(|h| hex::decode(h.trim_start_matches("0x")).ok())
            .unwrap_or_default();
        if keccak256(&read) != contract.code_hash {
            return Err(DevChainError::new(format!(
                "{} at {address} does not read back as installed",
                contract.name
            )));
        }
    }
    Ok(())
}
