//! `chain::AlloyChain` and `x402::eip3009` against a real anvil with our TestUSDC.
//!
//! Deploys the token from its committed artifact through our own `send_raw_transaction` and
//! `receipt`, then walks one EIP-3009 payment: simulate, settle, read the logs, replay (reverts
//! with USDC's reason), plus code checks, failover past a dead URL and a per-call deadline.
//!
//! anvil is the dev chain's (`X402_ANVIL`, `ANVIL_BIN` or `contracts/node_modules`: `cd contracts
//! && npm ci`); without it the test fails, it does not skip.

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{SolCall, SolValue};
use x402_dev::devchain::{contract_bytecode, Anvil, TEST_USDC_ARTIFACT};
use x402_node::chain::tx::{sign_eip1559, Eip1559Request};
use x402_node::chain::{
    AlloyChain, CallRequest, Chain, ChainError, ChainLimits, NonceTag, Receipt,
};
use x402_node::tls::{rpc_http_client, Roots};
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};

sol! {
    function mint(address to, uint256 amount) external;
}

/// anvil's first two dev accounts (public, well-known test keys).
const DEPLOYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const FACILITATOR_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A local port nobody listens on (bound, then released).
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// The client of `http://` URLs (no roots: these tests reach anvil in the clear).
fn plain() -> reqwest::Client {
    rpc_http_client(&Roots::None).unwrap()
}

fn key(hex: &str) -> PrivateKeySigner {
    hex.parse().unwrap()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn wait_receipt(chain: &dyn Chain, hash: B256) -> Receipt {
    let deadline = Instant::now() + RECEIPT_TIMEOUT;
    loop {
        if let Some(r) = chain.receipt(hash).await.unwrap() {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no receipt for {hash} within {RECEIPT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs and sends a transaction with our own helpers; returns its successful receipt.
async fn send(
    chain: &dyn Chain,
    signer: &PrivateKeySigner,
    to: Option<Address>,
    input: Vec<u8>,
    gas_limit: u64,
) -> Receipt {
    let chain_id = chain.chain_id().await.unwrap();
    let nonce = chain
        .nonce(signer.address(), NonceTag::Pending)
        .await
        .unwrap();
    let fees = chain.fees().await.unwrap();
    assert!(fees.base_fee_per_gas > 0);
    let signed = sign_eip1559(
        signer,
        &Eip1559Request {
            chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas(),
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to,
            value: U256::ZERO,
            input,
        },
    )
    .unwrap();
    let hash = chain.send_raw_transaction(signed.raw).await.unwrap();
    assert_eq!(hash, signed.hash);
    let receipt = wait_receipt(chain, hash).await;
    assert_eq!(receipt.transaction_hash, hash);
    assert!(receipt.status, "transaction {hash} reverted");
    assert!(receipt.block_number.is_some() && receipt.block_hash.is_some());
    receipt
}

async fn deploy_test_usdc(chain: &dyn Chain, deployer: &PrivateKeySigner) -> Address {
    let mut init = contract_bytecode(TEST_USDC_ARTIFACT).unwrap();
    init.extend(("USD Coin".to_string(), "2".to_string()).abi_encode_params());
    let nonce = chain
        .nonce(deployer.address(), NonceTag::Pending)
        .await
        .unwrap();
    send(chain, deployer, None, init, 5_000_000).await;
    deployer.address().create(nonce)
}

async fn call(
    chain: &dyn Chain,
    from: Option<Address>,
    to: Address,
    data: Vec<u8>,
) -> Result<Vec<u8>, ChainError> {
    chain.eth_call(CallRequest { from, to, data }).await
}

#[tokio::test]
async fn eip3009_payment_on_anvil() {
    let anvil = Anvil::start(31337).await;
    let chain = AlloyChain::new(&[anvil.url()], ChainLimits::default(), &plain()).unwrap();
    let chain: &dyn Chain = &chain;
    assert_eq!(chain.chain_id().await.unwrap(), 31337);

    let deployer = key(DEPLOYER_KEY);
    let facilitator = key(FACILITATOR_KEY);
    let payer = PrivateKeySigner::random();
    let payee = PrivateKeySigner::random().address();

    let token = deploy_test_usdc(chain, &deployer).await;
    assert!(
        !chain.code_at(token).await.unwrap().is_empty(),
        "token has code"
    );
    assert!(
        chain.code_at(payer.address()).await.unwrap().is_empty(),
        "an EOA has no code"
    );

    // What the diagnosis reads.
    let name = call(chain, None, token, eip3009::name_calldata())
        .await
        .unwrap();
    assert_eq!(eip3009::decode_string(&name).unwrap(), "USD Coin");
    let version = call(chain, None, token, eip3009::version_calldata())
        .await
        .unwrap();
    assert_eq!(eip3009::decode_string(&version).unwrap(), "2");

    let value = U256::from(1_000_000u64); // 1 USDC
    let minted = mintCall {
        to: payer.address(),
        amount: value * U256::from(3u8),
    }
    .abi_encode();
    send(chain, &deployer, Some(token), minted, 200_000).await;
    let balance = |who: Address| async move {
        let ret = call(chain, None, token, eip3009::balance_of_calldata(who))
            .await
            .unwrap();
        eip3009::decode_uint256(&ret).unwrap()
    };
    assert_eq!(balance(payer.address()).await, value * U256::from(3u8));

    // The payer signs in Rust, under the domain the requirements' `extra` would give.
    let domain = eip3009::domain("USD Coin", "2", 31337, token);
    let auth = TransferWithAuthorization {
        from: payer.address(),
        to: payee,
        value,
        validAfter: U256::ZERO,
        validBefore: U256::from(now_s() + 3600),
        nonce: B256::from(rand::random::<[u8; 32]>()),
    };
    let sig = eip3009::sign_authorization(&payer, &auth, &domain).unwrap();
    assert_eq!(
        eip3009::recover_signer(&auth, &domain, &sig).unwrap(),
        payer.address()
    );
    let settle_data = eip3009::transfer_with_authorization(&auth, &sig);
    let fac = Some(facilitator.address());

    // Verify: simulation from the facilitator's address succeeds; the nonce is unused.
    assert_eq!(
        call(chain, fac, token, settle_data.clone()).await.unwrap(),
        Vec::<u8>::new()
    );
    let state = eip3009::authorization_state_calldata(payer.address(), auth.nonce);
    let used = call(chain, None, token, state.clone()).await.unwrap();
    assert!(!eip3009::decode_bool(&used).unwrap());

    // A tampered value fails the token's signature check, and the reason is decoded.
    let mut tampered = auth.clone();
    tampered.value += U256::from(1u8);
    let err = call(
        chain,
        fac,
        token,
        eip3009::transfer_with_authorization(&tampered, &sig),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.revert_reason(),
        Some("FiatTokenV2: invalid signature"),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // Settle for real through our send_raw_transaction.
    let gas = chain
        .estimate_gas(CallRequest {
            from: fac,
            to: token,
            data: settle_data.clone(),
        })
        .await
        .unwrap();
    assert!(gas > 21_000);
    let receipt = send(
        chain,
        &facilitator,
        Some(token),
        settle_data.clone(),
        gas * 2,
    )
    .await;
    let ours: Vec<_> = receipt.logs.iter().filter(|l| l.address == token).collect();
    assert_eq!(
        ours.len(),
        2,
        "AuthorizationUsed and Transfer: {:?}",
        receipt.logs
    );
    assert_eq!(
        eip3009::decode_authorization_used_log(&ours[0].topics, &ours[0].data),
        Some((payer.address(), auth.nonce))
    );
    assert_eq!(
        eip3009::decode_transfer_log(&ours[1].topics, &ours[1].data),
        Some((payer.address(), payee, value))
    );
    assert_eq!(balance(payee).await, value);

    // The nonce is now used, and the same simulation reverts with USDC's reason (both overloads).
    let used = call(chain, None, token, state).await.unwrap();
    assert!(eip3009::decode_bool(&used).unwrap());
    for data in [
        settle_data,
        eip3009::transfer_with_authorization_bytes(&auth, &sig),
    ] {
        let err = call(chain, fac, token, data).await.unwrap_err();
        match &err {
            ChainError::Reverted { reason, data } => {
                assert_eq!(
                    reason.as_deref(),
                    Some("FiatTokenV2: authorization is used or canceled")
                );
                assert!(!data.is_empty(), "raw revert data kept");
            }
            other => panic!("expected a revert, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "execution reverted: FiatTokenV2: authorization is used or canceled"
        );
    }

    // A transaction with a used nonce is refused by the node: not a revert, not retryable.
    assert!(receipt.gas_used > 0);
    assert_eq!(
        chain
            .nonce(facilitator.address(), NonceTag::Latest)
            .await
            .unwrap(),
        1
    );
    let fees = chain.fees().await.unwrap();
    let stale = sign_eip1559(
        &facilitator,
        &Eip1559Request {
            chain_id: 31337,
            nonce: 0,
            gas_limit: 21_000,
            max_fee_per_gas: fees.max_fee_per_gas(),
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: Some(payee),
            value: U256::from(1u8),
            input: Vec::new(),
        },
    )
    .unwrap();
    let err = chain.send_raw_transaction(stale.raw).await.unwrap_err();
    assert!(
        matches!(err, ChainError::Rejected { .. }) && !err.is_retryable(),
        "{err:?}"
    );

    // An unknown transaction has no receipt.
    assert_eq!(
        chain
            .receipt(B256::from(rand::random::<[u8; 32]>()))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn fails_over_past_dead_and_hanging_endpoints() {
    let anvil = Anvil::start(31337).await;

    // A dead URL first: connection refused, so the next URL answers.
    let chain = AlloyChain::new(
        &[dead_url(), anvil.url().to_owned()],
        ChainLimits::default(),
        &plain(),
    )
    .unwrap();
    assert_eq!(chain.chain_id().await.unwrap(), 31337);
    let deployer = key(DEPLOYER_KEY);
    assert!(chain.code_at(deployer.address()).await.unwrap().is_empty());
    let token = deploy_test_usdc(&chain, &deployer).await;
    assert!(!chain.code_at(token).await.unwrap().is_empty());

    // Only dead URLs: retryable "unavailable", naming no more than scheme, host and port.
    let dead =
        AlloyChain::new(&[dead_url(), dead_url()], ChainLimits::default(), &plain()).unwrap();
    let err = dead.chain_id().await.unwrap_err();
    assert!(
        matches!(err, ChainError::Unavailable(_)) && err.is_retryable(),
        "{err:?}"
    );

    // An endpoint that accepts connections but never answers: the per-call deadline fires and
    // the call fails over to anvil.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    let limits = ChainLimits {
        call_timeout: Duration::from_millis(300),
    };
    let only_hanging = AlloyChain::new(&[hanging_url.as_str()], limits, &plain()).unwrap();
    let started = Instant::now();
    let err = only_hanging.chain_id().await.unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("timed out"),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "deadline honoured"
    );
    let chain = AlloyChain::new(&[hanging_url, anvil.url().to_owned()], limits, &plain()).unwrap();
    assert_eq!(chain.chain_id().await.unwrap(), 31337);
    // The endpoint that answered is preferred from now on: no second wait on the hanging one.
    let started = Instant::now();
    assert_eq!(chain.chain_id().await.unwrap(), 31337);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    drop(hanging);
}
