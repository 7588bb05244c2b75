//! What `pay` and `bench verify|settle` share: the payment terms from the requirement flags and
//! the payer's key from `--payer-key-file` or `X402_PAYER_KEY`.

use std::ffi::OsString;

use alloy::signers::local::PrivateKeySigner;

use super::args::{PayerArgs, RequirementArgs, ENV_PAYER_KEY};
use super::CtlError;
use crate::x402::payment::{
    payer_from_hex, resolve_network, PaymentBuilder, PaymentTerms, DEFAULT_DESCRIPTION,
};

/// The checked terms of the requirement flags; `default_timeout` is `maxTimeoutSeconds` when
/// `--max-timeout-seconds` is not given.
pub(super) fn builder(
    args: &RequirementArgs,
    default_timeout: u64,
) -> Result<PaymentBuilder, CtlError> {
    let chain_id = resolve_network(args.x402_version, &args.network, args.chain_id)?;
    let terms = PaymentTerms {
        x402_version: args.x402_version,
        network: args.network.clone(),
        chain_id,
        asset: args.asset.clone(),
        pay_to: args.pay_to.clone(),
        amount: args.amount,
        max_timeout_seconds: args.max_timeout_seconds.unwrap_or(default_timeout),
        token_name: args.token_name.clone(),
        token_version: args.token_version.clone(),
        resource: args.resource.clone(),
        description: DEFAULT_DESCRIPTION.to_owned(),
    };
    Ok(PaymentBuilder::new(terms)?)
}

/// The payer's key: from `--payer-key-file` if given, else from `env` (the value of
/// `X402_PAYER_KEY`; empty counts as unset), else `None`. No message ever quotes the key.
pub(super) fn payer_key(
    args: &PayerArgs,
    env: Option<OsString>,
) -> Result<Option<PrivateKeySigner>, CtlError> {
    if let Some(path) = &args.payer_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CtlError::PayerKey(format!(
                "cannot read --payer-key-file {}: {e}",
                path.display()
            ))
        })?;
        return payer_from_hex(&text).map(Some).map_err(|_| {
            CtlError::PayerKey(format!(
                "--payer-key-file {}: not a 32-byte hex private key",
                path.display()
            ))
        });
    }
    let Some(value) = env else {
        return Ok(None);
    };
    let value = value
        .into_string()
        .map_err(|_| CtlError::PayerKey(format!("{ENV_PAYER_KEY} is not UTF-8")))?;
    if value.trim().is_empty() {
        return Ok(None);
    }
    payer_from_hex(&value)
        .map(Some)
        .map_err(|_| CtlError::PayerKey(format!("{ENV_PAYER_KEY}: not a 32-byte hex private key")))
}

/// [`payer_key`], required.
pub(super) fn required_payer_key(
    args: &PayerArgs,
    env: Option<OsString>,
    command: &str,
) -> Result<PrivateKeySigner, CtlError> {
    payer_key(args, env)?.ok_or_else(|| {
        CtlError::PayerKey(format!(
            "{command} needs the payer's private key: set {ENV_PAYER_KEY} or pass --payer-key-file"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::{Address, ChainId, U256};
    use std::path::PathBuf;

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

    fn requirements(network: &str, x402_version: u8, chain_id: Option<u64>) -> RequirementArgs {
        RequirementArgs {
            network: network.into(),
            asset: Address::parse("0x5FbDB2315678afecb367f032d93F642f64180aa3").unwrap(),
            pay_to: Address::parse("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC").unwrap(),
            amount: U256::from_u64(10_000),
            token_name: "USDC".into(),
            token_version: "2".into(),
            x402_version,
            chain_id,
            resource: "http://shop/item".into(),
            max_timeout_seconds: None,
        }
    }

    #[test]
    fn terms_follow_the_flags() {
        let b = builder(&requirements("eip155:31337", 2, None), 60).unwrap();
        let t = b.terms();
        assert_eq!((t.x402_version, t.chain_id), (2, ChainId(31337)));
        assert_eq!((t.token_name.as_str(), t.max_timeout_seconds), ("USDC", 60));
        assert_eq!(t.resource, "http://shop/item");
        let args = RequirementArgs {
            max_timeout_seconds: Some(5),
            ..requirements("anvil", 1, Some(31337))
        };
        let t = builder(&args, 60).unwrap().terms().clone();
        assert_eq!((t.network.as_str(), t.chain_id), ("anvil", ChainId(31337)));
        assert_eq!(t.max_timeout_seconds, 5);
        assert!(builder(&requirements("anvil", 1, None), 60).is_err());
        assert!(builder(&requirements("base-sepolia", 2, None), 60).is_err());
        assert!(builder(&requirements("eip155:1", 2, Some(2)), 60).is_err());
    }

    #[test]
    fn key_from_file_or_environment_never_echoed() {
        let none = PayerArgs {
            payer_key_file: None,
        };
        assert!(payer_key(&none, None).unwrap().is_none());
        assert!(payer_key(&none, Some(" ".into())).unwrap().is_none());
        let key = payer_key(&none, Some(KEY.into())).unwrap().unwrap();
        assert_eq!(key.address().to_checksum(None), PAYER);
        let bad = payer_key(&none, Some("0x59c6995e998f".into())).unwrap_err();
        assert!(bad.to_string().contains(ENV_PAYER_KEY), "{bad}");
        assert!(!bad.to_string().contains("59c6995e998f"), "{bad}");

        let dir = std::env::temp_dir().join(format!("x402ctl-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("payer.key");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let from_file = PayerArgs {
            payer_key_file: Some(path.clone()),
        };
        // The file wins over the environment.
        let other = "0x".to_owned() + &"11".repeat(32);
        let key = payer_key(&from_file, Some(other.into())).unwrap().unwrap();
        assert_eq!(key.address().to_checksum(None), PAYER);
        std::fs::write(&path, "not a key 59c6995e").unwrap();
        let bad = payer_key(&from_file, None).unwrap_err().to_string();
        assert!(
            bad.contains("payer.key") && !bad.contains("59c6995e"),
            "{bad}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = PayerArgs {
            payer_key_file: Some(PathBuf::from("/nonexistent/payer.key")),
        };
        assert!(payer_key(&missing, None).is_err());
        let err = required_payer_key(&none, None, "pay").unwrap_err();
        assert!(err.to_string().contains(ENV_PAYER_KEY), "{err}");
    }
}
