//! The dev chain harness (`x402_dev::devchain`) and the `x402-devchain` binary, on a real
//! anvil: start, deploy, mint, pay with an EIP-3009 authorization and count its `Transfer`s,
//! mining modes, the `[facilitator]` TOML as the node parses it (real nodes start with it in
//! `tests/tests/dev_cluster.rs`), and no anvil left behind.
//!
//! anvil comes from `X402_ANVIL` / `ANVIL_BIN` or `contracts/node_modules` (`cd contracts && npm
//! ci`); without it these tests fail, they do not skip.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use x402_dev::devchain::Anvil;
use x402_dev::devchain::{
    facilitator_toml, facilitator_toml_with, key_signer, now_secs, signer_keys_csv, AnvilOptions,
    DevRpc, DevToken, Mining, DEPLOYER, DEPLOYER_KEY, MERCHANT, MERCHANT_KEY, ONE_TOKEN, PAYER,
    PAYER_FUNDS, PAYER_KEY, SIGNER1, SIGNER1_KEY, SIGNER2, SIGNER2_KEY,
};
use x402_node::chain::NonceTag;
use x402_node::config::Config;
use x402_protocol::x402::eip3009;

fn units(tokens: u64) -> U256 {
    U256::from(tokens * ONE_TOKEN)
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[test]
fn dev_accounts_are_the_keys_addresses() {
    for (key, address) in [
        (DEPLOYER_KEY, DEPLOYER),
        (SIGNER1_KEY, SIGNER1),
        (SIGNER2_KEY, SIGNER2),
        (PAYER_KEY, PAYER),
        (MERCHANT_KEY, MERCHANT),
    ] {
        assert_eq!(key_signer(key).address(), address);
    }
    assert_eq!(signer_keys_csv(), format!("{SIGNER1_KEY},{SIGNER2_KEY}"));
}

#[tokio::test]
async fn anvil_starts_with_the_dev_accounts_and_dies_when_dropped() {
    let anvil = Anvil::start(31337).await;
    assert!(
        anvil.url().starts_with("http://127.0.0.1:"),
        "{}",
        anvil.url()
    );
    assert_eq!(anvil.chain_id(), 31337);
    assert_eq!(anvil.rpc().chain_id().await, 31337);
    assert_eq!(anvil.network(), "eip155:31337");
    // The accounts anvil prints are ours, funded, and have sent nothing yet.
    let log = anvil.log_text();
    for address in [DEPLOYER, SIGNER1, SIGNER2, PAYER, MERCHANT] {
        assert!(
            log.contains(&address.to_checksum(None)),
            "{address} in {log}"
        );
        assert!(anvil.eth_balance(address).await > U256::ZERO);
        assert_eq!(anvil.nonce_of(address).await, 0);
    }
    let pid = anvil.pid().expect("running");
    assert!(alive(pid));
    let url = anvil.url().to_owned();

    drop(anvil);
    assert!(!alive(pid), "anvil {pid} still runs after drop");
    let rpc = DevRpc::connect(&url).unwrap();
    let err = rpc.chain().chain_id().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn another_chain_id() {
    let anvil = Anvil::start(84532).await;
    assert_eq!(anvil.chain_id(), 84532);
    assert_eq!(anvil.rpc().chain_id().await, 84532);
    let token = DevToken::deploy(&anvil, "USDC", "2").await;
    assert_eq!(token.chain_id, 84532);
    assert_eq!(token.network(), "eip155:84532");
    let name = token
        .rpc()
        .call(None, token.address, eip3009::name_calldata())
        .await
        .unwrap();
    assert_eq!(eip3009::decode_string(&name).unwrap(), "USDC");
}

#[tokio::test]
async fn token_deploys_mints_and_settles_one_authorization() {
    let anvil = Anvil::start(31337).await;
    let token = DevToken::deploy(&anvil, "USD Coin", "2").await;
    assert_eq!(
        (token.name.as_str(), token.version.as_str()),
        ("USD Coin", "2")
    );
    assert!(!anvil
        .chain()
        .code_at(token.address)
        .await
        .unwrap()
        .is_empty());
    for (calldata, expected) in [
        (eip3009::name_calldata(), "USD Coin"),
        (eip3009::version_calldata(), "2"),
    ] {
        let ret = anvil.call(None, token.address, calldata).await.unwrap();
        assert_eq!(eip3009::decode_string(&ret).unwrap(), expected);
    }

    let start_block = anvil.block_number().await;
    assert_eq!(token.balance_of(PAYER).await, U256::ZERO);
    token.mint(PAYER, units(1_000)).await;
    token.mint(PAYER, units(5)).await;
    assert_eq!(token.balance_of(PAYER).await, units(1_005));
    let mints = token.transfer_logs(start_block).await;
    assert_eq!(mints.len(), 2, "{mints:?}");
    assert!(mints
        .iter()
        .all(|t| t.from == Address::ZERO && t.to == PAYER));
    assert_eq!(mints[0].value, units(1_000));

    // The payer authorizes 3 tokens to the merchant; signer #1 settles it.
    let payer = key_signer(PAYER_KEY);
    let signed = token.authorize(&payer, MERCHANT, units(3), now_secs() + 600);
    let auth = &signed.authorization;
    assert_eq!(
        eip3009::recover_signer(auth, &token.domain(), &signed.signature).unwrap(),
        PAYER
    );
    assert!(!token.authorization_state(PAYER, auth.nonce).await);
    assert!(token
        .transfers_of_authorization(PAYER, auth.nonce)
        .await
        .is_empty());
    let signer = key_signer(SIGNER1_KEY);
    let receipt = anvil
        .send(
            &signer,
            Some(token.address),
            eip3009::transfer_with_authorization(auth, &signed.signature),
            200_000,
        )
        .await;
    assert!(receipt.status);
    assert_eq!(anvil.nonce_of(SIGNER1).await, 1);
    assert_eq!(anvil.nonce_of(SIGNER2).await, 0);
    assert!(token.authorization_state(PAYER, auth.nonce).await);
    assert_eq!(token.balance_of(MERCHANT).await, units(3));
    assert_eq!(token.balance_of(PAYER).await, units(1_002));

    let transfers = token.transfers_of_authorization(PAYER, auth.nonce).await;
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(
        (transfers[0].from, transfers[0].to, transfers[0].value),
        (PAYER, MERCHANT, units(3))
    );
    assert_eq!(transfers[0].tx_hash, receipt.transaction_hash);
    assert_eq!(
        token.authorization_used_txs(PAYER, auth.nonce).await,
        vec![receipt.transaction_hash]
    );
    assert_eq!(token.transfer_logs(start_block).await.len(), 3);
    // Another nonce of the same payer was never used.
    assert!(token
        .transfers_of_authorization(PAYER, B256::repeat_byte(7))
        .await
        .is_empty());

    // The same authorization again reverts with USDC's reason and moves nothing.
    let err = anvil
        .try_send(
            &signer,
            Some(token.address),
            eip3009::transfer_with_authorization(auth, &signed.signature),
            200_000,
        )
        .await;
    assert!(err.is_err());
    let replay = anvil
        .call(
            Some(SIGNER1),
            token.address,
            eip3009::transfer_with_authorization(auth, &signed.signature),
        )
        .await
        .unwrap_err();
    assert_eq!(
        replay.revert_reason(),
        Some("FiatTokenV2: authorization is used or canceled")
    );
    assert_eq!(
        token
            .transfers_of_authorization(PAYER, auth.nonce)
            .await
            .len(),
        1
    );
    assert_eq!(token.balance_of(MERCHANT).await, units(3));
}

#[tokio::test]
async fn manual_mining_leaves_transactions_pending_until_mined() {
    let anvil = Anvil::start_with(AnvilOptions::new(31337).mining(Mining::Manual)).await;
    assert!(!anvil.mines_by_itself().await.unwrap());
    // The helpers mine their own transactions.
    let token = DevToken::deploy(&anvil, "USD Coin", "2").await;
    token.mint(PAYER, units(10)).await;
    assert_eq!(token.balance_of(PAYER).await, units(10));

    // A settlement sent by someone else stays pending until a block is mined.
    let payer = key_signer(PAYER_KEY);
    let signed = token.authorize(&payer, MERCHANT, units(1), now_secs() + 600);
    let chain = anvil.chain();
    let fees = chain.fees().await.unwrap();
    let tx = x402_node::chain::tx::sign_eip1559(
        &key_signer(SIGNER2_KEY),
        &x402_node::chain::tx::Eip1559Request {
            chain_id: 31337,
            nonce: chain.nonce(SIGNER2, NonceTag::Pending).await.unwrap(),
            gas_limit: 200_000,
            max_fee_per_gas: fees.max_fee_per_gas(),
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: Some(token.address),
            value: U256::ZERO,
            input: eip3009::transfer_with_authorization(&signed.authorization, &signed.signature),
        },
    )
    .unwrap();
    let hash = chain.send_raw_transaction(tx.raw).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(anvil.receipt(hash).await, None);
    assert_eq!(anvil.nonce_of(SIGNER2).await, 0);
    assert_eq!(anvil.pending_nonce_of(SIGNER2).await, 1);
    let block = anvil.block_number().await;
    anvil.mine(1).await;
    assert_eq!(anvil.block_number().await, block + 1);
    let receipt = anvil.wait_receipt(hash, Duration::from_secs(5)).await;
    assert!(receipt.status);
    assert_eq!(anvil.nonce_of(SIGNER2).await, 1);
    assert_eq!(
        token
            .transfers_of_authorization(PAYER, signed.authorization.nonce)
            .await
            .len(),
        1
    );

    // Automine on: mined at once.
    anvil.set_automine(true).await;
    assert!(anvil.mines_by_itself().await.unwrap());
    token.mint(MERCHANT, units(1)).await;
    assert_eq!(token.balance_of(MERCHANT).await, units(2));
}

#[tokio::test]
async fn interval_mining() {
    let anvil = Anvil::start_with(AnvilOptions::new(31337).mining(Mining::Interval(1))).await;
    assert!(anvil.mines_by_itself().await.unwrap());
    let token = DevToken::deploy(&anvil, "USD Coin", "2").await;
    let before = anvil.block_number().await;
    token.mint(PAYER, units(1)).await;
    assert_eq!(token.balance_of(PAYER).await, units(1));
    assert!(anvil.block_number().await > before);
}

#[tokio::test]
async fn facilitator_toml_is_what_the_node_parses() {
    let base = Anvil::start(31337).await;
    let sepolia = Anvil::start(84532).await;
    let usdc = DevToken::deploy(&base, "USD Coin", "2").await;
    let other = DevToken::deploy(&sepolia, "USDC", "2").await;
    let toml = facilitator_toml_with(
        &[
            ("eip155:31337", Some("anvil"), base.url(), &usdc),
            ("eip155:84532", Some("base-sepolia"), sepolia.url(), &other),
        ],
        "X402_TEST_DEVCHAIN_SIGNER_KEYS",
        "settle_wait_ms = 1234",
        "receipt_timeout_ms = 4321\nconfirmations = 2",
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        format!("node_id = 1\nlisten = \"127.0.0.1:7999\"\n\n{toml}\n[bootstrap]\n1 = \"http://127.0.0.1:7999\"\n"),
    )
    .unwrap();
    let config = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let f = &config.facilitator;
    assert_eq!(f.settle_wait_ms, 1234);
    assert_eq!(f.networks.len(), 2);
    let n = &f.networks[0];
    assert_eq!(n.network, "eip155:31337");
    assert_eq!(n.v1_name.as_deref(), Some("anvil"));
    assert_eq!(n.rpc_urls, vec![base.url().to_owned()]);
    assert_eq!(n.receipt_timeout_ms, 4321);
    assert_eq!(n.confirmations, 2);
    assert_eq!(n.assets.len(), 1);
    assert_eq!(
        n.assets[0].address.parse::<Address>().unwrap(),
        usdc.address
    );
    assert_eq!(
        (n.assets[0].name.as_str(), n.assets[0].version.as_str()),
        ("USD Coin", "2")
    );
    assert_eq!(f.networks[1].assets[0].name, "USDC");
    assert_eq!(f.networks[1].chain_id().unwrap(), 84532);

    // The keys come from the variable named.
    // This test's own variable; nothing else reads or writes it.
    std::env::set_var("X402_TEST_DEVCHAIN_SIGNER_KEYS", signer_keys_csv());
    let signers: Vec<Address> = n.signers().unwrap().iter().map(|s| s.address()).collect();
    assert_eq!(signers, vec![SIGNER1, SIGNER2]);

    // The plain form has only the required keys.
    let plain = facilitator_toml(&[("eip155:31337", None, base.url(), &usdc)], "K");
    assert!(plain.starts_with("[facilitator]\n"));
    assert!(plain.contains("signer_keys_env = \"K\"") && !plain.contains("v1_name"));
}

/// Real nodes start with the dev chain's facilitator section and its keys in the environment.
/// `x402-devchain start` leaves a running anvil and the files it promises; `stop` ends it.
#[tokio::test]
async fn x402_devchain_binary_starts_and_stops() {
    let bin = env!("CARGO_BIN_EXE_x402-devchain");
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = |args: &[&str]| {
        let mut command = Command::new(bin);
        command.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("X402_") && key != "X402_ANVIL" {
                command.env_remove(key);
            }
        }
        command.output().unwrap()
    };
    let dir_arg = dir.path().to_str().unwrap();

    /// Kills the detached anvil if the test fails half-way.
    struct Guard<'a>(&'a Path);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(self.0.join("anvil.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) of the anvil this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
    let _guard = Guard(dir.path());

    let port_s = port.to_string();
    let out = run(&[
        "start",
        dir_arg,
        "--port",
        &port_s,
        "--token-name",
        "USD Coin",
        "--token-version",
        "2",
    ]);
    assert!(
        out.status.success(),
        "start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = std::fs::read_to_string(dir.path().join("anvil.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    assert!(dir.path().join("anvil.log").is_file());

    // devchain.env, read the way a shell would.
    let env_file = dir.path().join("devchain.env");
    let script = format!(". '{}' && env | grep '^X402_' | sort", env_file.display());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let env: std::collections::BTreeMap<String, String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(env["X402_RPC_URL"], url);
    assert_eq!(env["X402_CHAIN_ID"], "31337");
    assert_eq!(env["X402_NETWORK"], "eip155:31337");
    assert_eq!(env["X402_V1_NETWORK"], "anvil");
    assert_eq!(env["X402_TOKEN_NAME"], "USD Coin");
    assert_eq!(env["X402_TOKEN_VERSION"], "2");
    assert_eq!(env["X402_PAY_TO"].parse::<Address>().unwrap(), MERCHANT);
    assert_eq!(env["X402_PAYER"].parse::<Address>().unwrap(), PAYER);
    assert_eq!(env["X402_PAYER_KEY"], PAYER_KEY);
    assert_eq!(env["X402_SIGNER_KEYS"], signer_keys_csv());
    let token_address: Address = env["X402_TOKEN"].parse().unwrap();

    // The chain is there, with the token and the payer's funds.
    let rpc = DevRpc::connect(&url).unwrap();
    assert_eq!(rpc.chain_id().await, 31337);
    let token = DevToken::at(&rpc, 31337, token_address, "USD Coin", "2");
    assert_eq!(token.balance_of(PAYER).await, U256::from(PAYER_FUNDS));

    // facilitator.toml is the fragment for this chain.
    let toml = std::fs::read_to_string(dir.path().join("facilitator.toml")).unwrap();
    assert_eq!(
        toml,
        facilitator_toml(
            &[("eip155:31337", Some("anvil"), &url, &token)],
            "X402_SIGNER_KEYS"
        )
    );

    // A second start in the same directory, or on the same port, is refused clearly.
    let again = run(&["start", dir_arg, "--port", &port_s]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already runs"),
        "{again:?}"
    );
    let other = tempfile::tempdir().unwrap();
    let busy = run(&["start", other.path().to_str().unwrap(), "--port", &port_s]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{busy:?}"
    );
    assert!(!other.path().join("anvil.pid").exists());

    let out = run(&["stop", dir_arg]);
    assert!(out.status.success(), "{out:?}");
    assert!(!alive(pid), "anvil {pid} survived stop");
    assert!(!dir.path().join("anvil.pid").exists());
    let out = run(&["stop", dir_arg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no devchain"));
}

/// A missing anvil binary is named, with the way to get one.
#[test]
fn missing_anvil_says_how_to_get_it() {
    let options = AnvilOptions {
        bin: Some("/nonexistent/anvil".into()),
        ..AnvilOptions::new(31337)
    };
    let dir = tempfile::tempdir().unwrap();
    let err =
        x402_dev::devchain::spawn_anvil(&options, &dir.path().join("log"), false).unwrap_err();
    assert!(err.to_string().contains("npm ci"), "{err}");
}
