//! `MemoryChain`: what the facilitator's verify and settle code depend on, checked the way
//! `alloy_chain_on_anvil.rs` checks anvil with our TestUSDC (same helpers: `eip3009`,
//! `tx::sign_eip1559`), and held to anvil running the real contracts (the differential test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, Revert, SolCall, SolError, SolStruct};
use x402_dev::memory_chain::{
    MemoryChain, TransferRecord, CONTRACT_CALL_GAS, DEFAULT_BASE_FEE, DEFAULT_PRIORITY_FEE,
};
use x402_node::chain::tx::{sign_eip1559, Eip1559Request, SignedTransaction};
use x402_node::chain::{CallRequest, Chain, ChainError, NonceTag, Receipt, SharedChain};
use x402_node::seams::{Clock, SharedClock};
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};

sol! {
    function mint(address to, uint256 amount) external;
    function cancelAuthorization(address authorizer, bytes32 nonce, bytes signature) external;
    struct CancelAuthorization {
        address authorizer;
        bytes32 nonce;
    }
}

/// anvil's well-known dev keys (public test keys).
const FACILITATOR_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const PAYER_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const OWNER_KEY: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
const OTHER_KEY: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";

const CHAIN_ID: u64 = 84532;
const T0_MS: u64 = 1_750_000_000_000;
const ONE_ETH: u128 = 1_000_000_000_000_000_000;
const USED: &str = "FiatTokenV2: authorization is used or canceled";
const INVALID_SIGNATURE: &str = "FiatTokenV2: invalid signature";

/// A clock the test moves by hand.
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    fn advance_secs(&self, secs: u64) {
        self.0.fetch_add(secs * 1000, Ordering::SeqCst);
    }
}

fn key(hex: &str) -> PrivateKeySigner {
    hex.parse().unwrap()
}

/// A chain with a "USD Coin"/"2" token, the facilitator funded with ETH, the payer with tokens.
struct World {
    chain: Arc<MemoryChain>,
    clock: Arc<TestClock>,
    token: Address,
    domain: Eip712Domain,
    facilitator: PrivateKeySigner,
    payer: PrivateKeySigner,
    payee: Address,
}

impl World {
    fn new() -> World {
        let clock = Arc::new(TestClock(AtomicU64::new(T0_MS)));
        let chain = MemoryChain::new(CHAIN_ID, clock.clone() as SharedClock);
        let token = chain.deploy_token("USD Coin", "2");
        let facilitator = key(FACILITATOR_KEY);
        let payer = key(PAYER_KEY);
        chain.fund(facilitator.address(), U256::from(ONE_ETH));
        chain.mint(token, payer.address(), U256::from(5_000_000u64));
        // Time passes after genesis, as it would before the first payment.
        clock.advance_secs(60);
        World {
            domain: eip3009::domain("USD Coin", "2", CHAIN_ID, token),
            chain,
            clock,
            token,
            facilitator,
            payer,
            payee: Address::repeat_byte(0x77),
        }
    }

    fn dyn_chain(&self) -> &dyn Chain {
        &*self.chain
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    /// An authorization of `value` from the payer, valid for the next hour.
    fn authorization(&self, value: u64, label: &str) -> TransferWithAuthorization {
        TransferWithAuthorization {
            from: self.payer.address(),
            to: self.payee,
            value: U256::from(value),
            validAfter: U256::ZERO,
            validBefore: U256::from(self.now_secs() + 3600),
            nonce: keccak256(label.as_bytes()),
        }
    }

    fn sign(&self, a: &TransferWithAuthorization) -> [u8; 65] {
        eip3009::sign_authorization(&self.payer, a, &self.domain).unwrap()
    }

    async fn simulate(&self, data: Vec<u8>) -> Result<Vec<u8>, ChainError> {
        self.dyn_chain()
            .eth_call(CallRequest {
                from: Some(self.facilitator.address()),
                to: self.token,
                data,
            })
            .await
    }

    /// The facilitator's transaction to `to` with `input`, at `nonce`, with the chain's fees.
    async fn tx_from(
        &self,
        signer: &PrivateKeySigner,
        nonce: u64,
        to: Address,
        input: Vec<u8>,
        gas_limit: u64,
    ) -> SignedTransaction {
        let fees = self.dyn_chain().fees().await.unwrap();
        sign_eip1559(
            signer,
            &Eip1559Request {
                chain_id: CHAIN_ID,
                nonce,
                gas_limit,
                max_fee_per_gas: fees.max_fee_per_gas(),
                max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
                to: Some(to),
                value: U256::ZERO,
                input,
            },
        )
        .unwrap()
    }

    async fn settle_tx(&self, nonce: u64, input: Vec<u8>) -> SignedTransaction {
        self.tx_from(&self.facilitator, nonce, self.token, input, 100_000)
            .await
    }

    async fn send(&self, tx: &SignedTransaction) -> Result<B256, ChainError> {
        self.dyn_chain().send_raw_transaction(tx.raw.clone()).await
    }

    async fn receipt(&self, hash: B256) -> Option<Receipt> {
        self.dyn_chain().receipt(hash).await.unwrap()
    }

    async fn nonce(&self, who: Address, tag: NonceTag) -> u64 {
        self.dyn_chain().nonce(who, tag).await.unwrap()
    }
}

fn reason(result: Result<Vec<u8>, ChainError>) -> Option<String> {
    match result {
        Err(ChainError::Reverted { reason, data }) => {
            let reason = reason.expect("a revert with a reason");
            assert_eq!(
                data,
                Revert::from(reason.as_str()).abi_encode(),
                "Error(string) data"
            );
            Some(reason)
        }
        other => panic!("expected a revert, got {other:?}"),
    }
}

fn rejection(result: Result<B256, ChainError>) -> (i64, String) {
    match result {
        Err(ChainError::Rejected { code, message }) => (code, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn payment_simulates_then_settles() {
    let w = World::new();
    let chain = w.dyn_chain();
    assert_eq!(chain.chain_id().await.unwrap(), CHAIN_ID);
    assert!(!chain.code_at(w.token).await.unwrap().is_empty());
    assert!(chain.code_at(w.payer.address()).await.unwrap().is_empty());
    let view = |data: Vec<u8>| CallRequest {
        from: None,
        to: w.token,
        data,
    };
    let name = chain.eth_call(view(eip3009::name_calldata())).await;
    assert_eq!(eip3009::decode_string(&name.unwrap()).unwrap(), "USD Coin");
    let version = chain.eth_call(view(eip3009::version_calldata())).await;
    assert_eq!(eip3009::decode_string(&version.unwrap()).unwrap(), "2");

    let a = w.authorization(1_000_000, "pay-1");
    let sig = w.sign(&a);
    let data = eip3009::transfer_with_authorization(&a, &sig);
    assert_eq!(
        &data[..4],
        &eip3009::TransferWithAuthorizationVrsCall::SELECTOR
    );

    // Verify: the simulation succeeds with no return data and commits nothing.
    assert_eq!(w.simulate(data.clone()).await.unwrap(), Vec::<u8>::new());
    let gas = chain
        .estimate_gas(CallRequest {
            from: Some(w.facilitator.address()),
            to: w.token,
            data: data.clone(),
        })
        .await
        .unwrap();
    assert_eq!(gas, CONTRACT_CALL_GAS);
    let state = eip3009::authorization_state_calldata(a.from, a.nonce);
    let used = chain.eth_call(view(state.clone())).await.unwrap();
    assert!(!eip3009::decode_bool(&used).unwrap());
    assert_eq!(chain.block_number().await.unwrap(), 0);

    // Settle.
    let tx = w.settle_tx(0, data).await;
    assert_eq!(w.send(&tx).await.unwrap(), tx.hash);
    let receipt = w.receipt(tx.hash).await.expect("automine: mined at once");
    assert!(receipt.status);
    assert_eq!(receipt.transaction_hash, tx.hash);
    assert_eq!(receipt.block_number, Some(1));
    assert!(receipt.block_hash.is_some());
    assert_eq!(receipt.gas_used, CONTRACT_CALL_GAS);
    assert_eq!(chain.block_number().await.unwrap(), 1);
    assert_eq!(receipt.logs.len(), 2, "{:?}", receipt.logs);
    assert!(receipt.logs.iter().all(|l| l.address == w.token));
    assert_eq!(
        receipt.logs[0].topics[0],
        eip3009::authorization_used_topic()
    );
    assert_eq!(
        eip3009::decode_authorization_used_log(&receipt.logs[0].topics, &receipt.logs[0].data),
        Some((a.from, a.nonce))
    );
    assert_eq!(receipt.logs[1].topics[0], eip3009::transfer_topic());
    assert_eq!(
        eip3009::decode_transfer_log(&receipt.logs[1].topics, &receipt.logs[1].data),
        Some((a.from, a.to, a.value))
    );

    // Balances moved; the nonce is used; the facilitator paid gas at base fee + tip.
    let balance = chain
        .eth_call(view(eip3009::balance_of_calldata(w.payee)))
        .await
        .unwrap();
    assert_eq!(eip3009::decode_uint256(&balance).unwrap(), a.value);
    assert_eq!(
        w.chain.balance_of(w.token, w.payer.address()),
        U256::from(4_000_000u64)
    );
    let used = chain.eth_call(view(state)).await.unwrap();
    assert!(eip3009::decode_bool(&used).unwrap());
    assert!(w.chain.authorization_state(w.token, a.from, a.nonce));
    let paid = U256::from(CONTRACT_CALL_GAS) * U256::from(DEFAULT_BASE_FEE + DEFAULT_PRIORITY_FEE);
    assert_eq!(
        w.chain.eth_balance(w.facilitator.address()),
        U256::from(ONE_ETH) - paid
    );
    assert_eq!(w.nonce(w.facilitator.address(), NonceTag::Latest).await, 1);
    assert_eq!(w.nonce(w.facilitator.address(), NonceTag::Pending).await, 1);

    // What checkers see.
    assert_eq!(
        w.chain.transfers(),
        vec![TransferRecord {
            token: w.token,
            from: a.from,
            to: a.to,
            value: a.value,
            tx_hash: tx.hash,
            block: 1,
        }]
    );
    assert_eq!(
        w.chain.sent_by(w.facilitator.address()),
        vec![(0, tx.hash, true)]
    );
    assert_eq!(
        w.chain.authorization_used_count(w.token, a.from, a.nonce),
        1
    );
}

#[tokio::test]
async fn a_replay_reverts_with_used_and_consumes_the_nonce() {
    let w = World::new();
    let a = w.authorization(1_000, "replay");
    let sig = w.sign(&a);
    let tx = w
        .settle_tx(0, eip3009::transfer_with_authorization(&a, &sig))
        .await;
    w.send(&tx).await.unwrap();
    assert!(w.receipt(tx.hash).await.unwrap().status);

    // Both overloads now simulate to USDC's reason.
    for data in [
        eip3009::transfer_with_authorization(&a, &sig),
        eip3009::transfer_with_authorization_bytes(&a, &sig),
    ] {
        assert_eq!(reason(w.simulate(data).await).as_deref(), Some(USED));
    }

    // Sent anyway: mined, reverted, no logs, nonce and gas consumed, nothing moved twice.
    let before = w.chain.eth_balance(w.facilitator.address());
    let again = w
        .settle_tx(1, eip3009::transfer_with_authorization(&a, &sig))
        .await;
    w.send(&again).await.unwrap();
    let receipt = w.receipt(again.hash).await.unwrap();
    assert!(!receipt.status);
    assert!(receipt.logs.is_empty());
    assert_eq!(receipt.gas_used, CONTRACT_CALL_GAS);
    assert!(w.chain.eth_balance(w.facilitator.address()) < before);
    assert_eq!(w.nonce(w.facilitator.address(), NonceTag::Latest).await, 2);
    assert_eq!(w.chain.balance_of(w.token, w.payee), a.value);
    assert_eq!(w.chain.transfers().len(), 1);
    assert_eq!(
        w.chain.authorization_used_count(w.token, a.from, a.nonce),
        1
    );
    assert_eq!(
        w.chain.sent_by(w.facilitator.address()),
        vec![(0, tx.hash, true), (1, again.hash, false)]
    );
}

#[tokio::test]
async fn the_time_window_is_strict_against_the_block_timestamp() {
    let w = World::new();
    let now = w.now_secs(); // the timestamp the next block gets
    let window = |after: u64, before: u64| {
        let mut a = w.authorization(1_000, &format!("window-{after}-{before}"));
        a.validAfter = U256::from(after);
        a.validBefore = U256::from(before);
        let sig = w.sign(&a);
        eip3009::transfer_with_authorization(&a, &sig)
    };
    assert_eq!(
        reason(w.simulate(window(now, now + 60)).await).as_deref(),
        Some("FiatTokenV2: authorization is not yet valid")
    );
    assert!(w.simulate(window(now - 1, now + 60)).await.is_ok());
    assert_eq!(
        reason(w.simulate(window(0, now)).await).as_deref(),
        Some("FiatTokenV2: authorization is expired")
    );
    assert!(w.simulate(window(0, now + 1)).await.is_ok());

    // Valid when verified, expired by the time it is mined: the transaction reverts.
    let data = window(0, now + 10);
    assert!(w.simulate(data.clone()).await.is_ok());
    w.clock.advance_secs(10);
    assert_eq!(
        reason(w.simulate(data.clone()).await).as_deref(),
        Some("FiatTokenV2: authorization is expired")
    );
    let tx = w.settle_tx(0, data).await;
    w.send(&tx).await.unwrap();
    let receipt = w.receipt(tx.hash).await.unwrap();
    assert!(!receipt.status);
    assert_eq!(w.chain.latest_block(), (1, now + 10));
}

#[tokio::test]
async fn a_wrong_domain_is_an_invalid_signature() {
    let w = World::new();
    let a = w.authorization(1_000, "domain");
    let wrong = [
        eip3009::domain("USDC", "2", CHAIN_ID, w.token),
        eip3009::domain("USD Coin", "1", CHAIN_ID, w.token),
        eip3009::domain("USD Coin", "2", 1, w.token),
        eip3009::domain("USD Coin", "2", CHAIN_ID, Address::repeat_byte(9)),
    ];
    for domain in wrong {
        let sig = eip3009::sign_authorization(&w.payer, &a, &domain).unwrap();
        let data = eip3009::transfer_with_authorization(&a, &sig);
        assert_eq!(
            reason(w.simulate(data).await).as_deref(),
            Some(INVALID_SIGNATURE)
        );
    }
    // Someone else's signature, a tampered value, a malleable or short signature: the same.
    let other = eip3009::sign_authorization(&key(OTHER_KEY), &a, &w.domain).unwrap();
    let mut tampered = a.clone();
    tampered.value += U256::from(1u8);
    let sig = w.sign(&a);
    let mut bad_v = sig;
    bad_v[64] -= 27;
    for data in [
        eip3009::transfer_with_authorization(&a, &other),
        eip3009::transfer_with_authorization(&tampered, &sig),
        eip3009::transfer_with_authorization_bytes(&a, &bad_v),
        eip3009::transfer_with_authorization_bytes(&a, &sig[..64]),
    ] {
        assert_eq!(
            reason(w.simulate(data).await).as_deref(),
            Some(INVALID_SIGNATURE)
        );
    }
    assert!(w
        .simulate(eip3009::transfer_with_authorization(&a, &sig))
        .await
        .is_ok());
}

#[tokio::test]
async fn insufficient_token_balance() {
    let w = World::new();
    let a = w.authorization(5_000_001, "too-much");
    let sig = w.sign(&a);
    assert_eq!(
        reason(
            w.simulate(eip3009::transfer_with_authorization(&a, &sig))
                .await
        )
        .as_deref(),
        Some("ERC20: transfer amount exceeds balance")
    );
}

#[tokio::test]
async fn an_erc1271_wallet_pays_through_the_bytes_overload() {
    let w = World::new();
    let owner = key(OWNER_KEY);
    let wallet = w.chain.deploy_wallet(owner.address());
    assert_ne!(wallet, w.token);
    assert!(!w.dyn_chain().code_at(wallet).await.unwrap().is_empty());
    w.chain.mint(w.token, wallet, U256::from(1_000u64));

    let mut a = w.authorization(600, "wallet");
    a.from = wallet;
    let sig = eip3009::sign_authorization(&owner, &a, &w.domain).unwrap();
    // The wallet itself accepts it (what verify asks before simulating).
    let hash = eip3009::signing_hash(&a, &w.domain);
    let ret = w
        .dyn_chain()
        .eth_call(CallRequest {
            from: None,
            to: wallet,
            data: eip3009::is_valid_signature_calldata(hash, &sig),
        })
        .await
        .unwrap();
    assert!(eip3009::is_erc1271_magic(&ret));
    let ret = w
        .dyn_chain()
        .eth_call(CallRequest {
            from: None,
            to: wallet,
            data: eip3009::is_valid_signature_calldata(hash, &w.sign(&a)),
        })
        .await
        .unwrap();
    assert!(!eip3009::is_erc1271_magic(&ret), "not the owner's");

    // Signed by the payer EOA instead of the owner: refused by the token.
    let not_owner = eip3009::transfer_with_authorization_bytes(&a, &w.sign(&a));
    assert_eq!(
        reason(w.simulate(not_owner).await).as_deref(),
        Some(INVALID_SIGNATURE)
    );
    // The v,r,s overload goes through ERC-1271 too (TestUSDC packs r‖s‖v).
    assert!(w
        .simulate(eip3009::transfer_with_authorization(&a, &sig))
        .await
        .is_ok());

    let data = eip3009::transfer_with_authorization_bytes(&a, &sig);
    assert_eq!(
        &data[..4],
        &eip3009::TransferWithAuthorizationBytesCall::SELECTOR
    );
    let tx = w.settle_tx(0, data).await;
    w.send(&tx).await.unwrap();
    let receipt = w.receipt(tx.hash).await.unwrap();
    assert!(receipt.status);
    assert_eq!(
        eip3009::decode_authorization_used_log(&receipt.logs[0].topics, &receipt.logs[0].data),
        Some((wallet, a.nonce))
    );
    assert_eq!(w.chain.balance_of(w.token, wallet), U256::from(400u64));
    assert_eq!(w.chain.balance_of(w.token, w.payee), U256::from(600u64));

    // A contract that is not a wallet (the token itself) never accepts a signature.
    let mut b = w.authorization(1, "token-as-payer");
    b.from = w.token;
    let sig = w.sign(&b);
    assert_eq!(
        reason(
            w.simulate(eip3009::transfer_with_authorization_bytes(&b, &sig))
                .await
        )
        .as_deref(),
        Some(INVALID_SIGNATURE)
    );
}

#[tokio::test]
async fn a_nonce_below_the_account_nonce_is_rejected() {
    let w = World::new();
    let a = w.authorization(1_000, "nonce-low");
    let sig = w.sign(&a);
    let tx = w
        .settle_tx(0, eip3009::transfer_with_authorization(&a, &sig))
        .await;
    w.send(&tx).await.unwrap();

    let b = w.authorization(1_000, "nonce-low-2");
    let sig = w.sign(&b);
    let stale = w
        .settle_tx(0, eip3009::transfer_with_authorization(&b, &sig))
        .await;
    let (code, message) = rejection(w.send(&stale).await);
    assert_eq!((code, message.as_str()), (-32003, "nonce too low"));
    assert!(!ChainError::Rejected { code, message }.is_retryable());
    // As on anvil and geth: the bytes of an already *mined* transaction are "nonce too low"
    // too (only a pooled one is "already known").
    let (_, message) = rejection(w.send(&tx).await);
    assert_eq!(message, "nonce too low");
    assert_eq!(w.chain.transfers().len(), 1);
}

#[tokio::test]
async fn a_nonce_gap_is_held_until_filled() {
    let w = World::new();
    let fac = w.facilitator.address();
    let a = w.authorization(1_000, "gap-a");
    let b = w.authorization(2_000, "gap-b");
    let tx0 = w
        .settle_tx(0, eip3009::transfer_with_authorization(&a, &w.sign(&a)))
        .await;
    let tx1 = w
        .settle_tx(1, eip3009::transfer_with_authorization(&b, &w.sign(&b)))
        .await;

    assert_eq!(w.send(&tx1).await.unwrap(), tx1.hash);
    assert_eq!(w.receipt(tx1.hash).await, None);
    assert_eq!(w.chain.pending_count(), 1);
    assert_eq!(w.nonce(fac, NonceTag::Latest).await, 0);
    assert_eq!(
        w.nonce(fac, NonceTag::Pending).await,
        0,
        "a gap is not pending"
    );
    assert_eq!(w.dyn_chain().block_number().await.unwrap(), 0);

    assert_eq!(w.send(&tx0).await.unwrap(), tx0.hash);
    let r0 = w.receipt(tx0.hash).await.unwrap();
    let r1 = w.receipt(tx1.hash).await.unwrap();
    assert!(r0.status && r1.status);
    assert_eq!((r0.block_number, r1.block_number), (Some(1), Some(2)));
    assert_eq!(w.chain.pending_count(), 0);
    assert_eq!(w.nonce(fac, NonceTag::Latest).await, 2);
    assert_eq!(
        w.chain.sent_by(fac),
        vec![(0, tx0.hash, true), (1, tx1.hash, true)]
    );
    assert_eq!(w.chain.balance_of(w.token, w.payee), U256::from(3_000u64));
}

#[tokio::test]
async fn a_rebroadcast_of_the_same_bytes_executes_once() {
    let w = World::new();
    let fac = w.facilitator.address();
    w.chain.set_automine(false);
    let a = w.authorization(1_000, "rebroadcast");
    let tx = w
        .settle_tx(0, eip3009::transfer_with_authorization(&a, &w.sign(&a)))
        .await;
    assert_eq!(w.send(&tx).await.unwrap(), tx.hash);
    assert_eq!(w.send(&tx).await.unwrap(), tx.hash, "already known");
    assert_eq!(w.chain.pending_count(), 1);
    assert_eq!(w.nonce(fac, NonceTag::Latest).await, 0);
    assert_eq!(w.nonce(fac, NonceTag::Pending).await, 1);
    assert_eq!(w.receipt(tx.hash).await, None);

    assert_eq!(w.chain.mine(), 1);
    assert!(w.receipt(tx.hash).await.unwrap().status);
    assert_eq!(w.chain.sent_by(fac), vec![(0, tx.hash, true)]);
    assert_eq!(w.chain.transfers().len(), 1);
    assert_eq!(
        w.chain.authorization_used_count(w.token, a.from, a.nonce),
        1
    );
    assert_eq!(w.chain.balance_of(w.token, w.payee), U256::from(1_000u64));
    assert_eq!(w.chain.mine(), 2, "an empty block");
    assert_eq!(w.chain.transfers().len(), 1);
}

#[tokio::test]
async fn manual_mining_puts_everything_executable_in_one_block() {
    let w = World::new();
    let other = key(OTHER_KEY);
    w.chain.fund(other.address(), U256::from(ONE_ETH));
    w.chain.set_automine(false);
    let a = w.authorization(1_000, "manual-a");
    let b = w.authorization(1_000, "manual-b");
    let tx_a = w
        .settle_tx(0, eip3009::transfer_with_authorization(&a, &w.sign(&a)))
        .await;
    let tx_b = w
        .tx_from(
            &other,
            0,
            w.token,
            eip3009::transfer_with_authorization(&b, &w.sign(&b)),
            100_000,
        )
        .await;
    w.send(&tx_a).await.unwrap();
    w.send(&tx_b).await.unwrap();
    w.clock.advance_secs(5);
    let number = w.chain.mine();
    let (ra, rb) = (
        w.receipt(tx_a.hash).await.unwrap(),
        w.receipt(tx_b.hash).await.unwrap(),
    );
    assert_eq!(
        (ra.block_number, rb.block_number),
        (Some(number), Some(number))
    );
    assert_eq!(ra.block_hash, rb.block_hash);
    assert_eq!(w.chain.latest_block(), (1, w.now_secs()));
    assert_eq!(w.chain.transfers().len(), 2);
}

#[tokio::test]
async fn unavailable_answers_nothing_and_changes_nothing() {
    let w = World::new();
    let chain = w.dyn_chain();
    let fac = w.facilitator.address();
    let a = w.authorization(1_000, "unavailable");
    let data = eip3009::transfer_with_authorization(&a, &w.sign(&a));
    let tx = w.settle_tx(0, data.clone()).await;
    let call = CallRequest {
        from: Some(fac),
        to: w.token,
        data,
    };

    w.chain.set_unavailable(true);
    let errors = [
        chain.chain_id().await.err(),
        chain.block_number().await.err(),
        chain.code_at(w.token).await.err(),
        chain.eth_call(call.clone()).await.err(),
        chain.estimate_gas(call.clone()).await.err(),
        chain.nonce(fac, NonceTag::Pending).await.err(),
        chain.fees().await.err(),
        chain.send_raw_transaction(tx.raw.clone()).await.err(),
        chain.receipt(tx.hash).await.err(),
    ];
    for e in errors {
        let e = e.expect("an error");
        assert!(
            matches!(e, ChainError::Unavailable(_)) && e.is_retryable(),
            "{e:?}"
        );
    }
    assert_eq!(w.chain.pending_count(), 0);
    assert_eq!(w.chain.latest_block().0, 0, "the broadcast never arrived");

    w.chain.set_unavailable(false);
    assert_eq!(w.send(&tx).await.unwrap(), tx.hash);
    assert!(w.receipt(tx.hash).await.unwrap().status);
}

#[tokio::test]
async fn hidden_receipts_and_lost_answers() {
    let w = World::new();
    let fac = w.facilitator.address();
    let a = w.authorization(1_000, "hidden");
    let tx = w
        .settle_tx(0, eip3009::transfer_with_authorization(&a, &w.sign(&a)))
        .await;

    w.chain.set_hide_receipts(true);
    assert_eq!(w.send(&tx).await.unwrap(), tx.hash);
    assert_eq!(w.receipt(tx.hash).await, None, "looks not yet mined");
    // …but it did execute.
    assert_eq!(w.nonce(fac, NonceTag::Latest).await, 1);
    assert_eq!(w.chain.balance_of(w.token, w.payee), U256::from(1_000u64));
    w.chain.set_hide_receipts(false);
    assert!(w.receipt(tx.hash).await.unwrap().status);

    // The broadcast lands but its answer is lost: retryable error, transaction executed.
    let b = w.authorization(1_000, "lost");
    let tx = w
        .settle_tx(1, eip3009::transfer_with_authorization(&b, &w.sign(&b)))
        .await;
    w.chain.set_drop_send_responses(true);
    let err = w.send(&tx).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    w.chain.set_drop_send_responses(false);
    assert!(w.receipt(tx.hash).await.unwrap().status);
    assert_eq!(
        w.chain.authorization_used_count(w.token, b.from, b.nonce),
        1
    );
}

#[tokio::test]
async fn the_pool_refuses_what_a_node_refuses() {
    let w = World::new();
    let a = w.authorization(1_000, "pool");
    let data = eip3009::transfer_with_authorization(&a, &w.sign(&a));

    // No ETH for gas.
    let broke = key(OTHER_KEY);
    let tx = w.tx_from(&broke, 0, w.token, data.clone(), 100_000).await;
    assert_eq!(
        rejection(w.send(&tx).await).1,
        "Insufficient funds for gas * price + value"
    );
    // Another chain's transaction.
    let foreign = sign_eip1559(
        &w.facilitator,
        &Eip1559Request {
            chain_id: 1,
            nonce: 0,
            gas_limit: 100_000,
            max_fee_per_gas: 3_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: Some(w.token),
            value: U256::ZERO,
            input: data.clone(),
        },
    )
    .unwrap();
    assert_eq!(
        rejection(w.send(&foreign).await).1,
        "invalid chain id for signer"
    );
    // Garbage bytes.
    assert!(matches!(
        w.dyn_chain().send_raw_transaction(vec![0x02, 0xc0]).await,
        Err(ChainError::Rejected { .. })
    ));
    assert!(matches!(
        w.dyn_chain().send_raw_transaction(Vec::new()).await,
        Err(ChainError::Rejected { .. })
    ));
    // A fee cap under the base fee.
    let mut cheap = Eip1559Request {
        chain_id: CHAIN_ID,
        nonce: 0,
        gas_limit: 100_000,
        max_fee_per_gas: DEFAULT_BASE_FEE - 1,
        max_priority_fee_per_gas: 0,
        to: Some(w.token),
        value: U256::ZERO,
        input: data.clone(),
    };
    let tx = sign_eip1559(&w.facilitator, &cheap).unwrap();
    assert_eq!(
        rejection(w.send(&tx).await).1,
        "max fee per gas less than block base fee"
    );

    // Replacement of a pooled transaction needs a 10 % bump; the replaced one never mines.
    w.chain.set_automine(false);
    cheap.max_fee_per_gas = 2 * DEFAULT_BASE_FEE;
    cheap.max_priority_fee_per_gas = 1_000_000_000;
    let first = sign_eip1559(&w.facilitator, &cheap).unwrap();
    w.send(&first).await.unwrap();
    cheap.gas_limit += 1; // same fees, different transaction
    let same_fees = sign_eip1559(&w.facilitator, &cheap).unwrap();
    assert_eq!(
        rejection(w.send(&same_fees).await).1,
        "replacement transaction underpriced"
    );
    cheap.max_fee_per_gas *= 2;
    cheap.max_priority_fee_per_gas *= 2;
    let bumped = sign_eip1559(&w.facilitator, &cheap).unwrap();
    w.send(&bumped).await.unwrap();
    assert_eq!(w.chain.pending_count(), 1);
    w.chain.mine();
    assert_eq!(w.receipt(first.hash).await, None);
    assert!(w.receipt(bumped.hash).await.unwrap().status);
    assert_eq!(
        w.chain.authorization_used_count(w.token, a.from, a.nonce),
        1
    );
}

#[tokio::test]
async fn too_little_gas_runs_out_and_changes_nothing() {
    let w = World::new();
    let a = w.authorization(1_000, "oog");
    let data = eip3009::transfer_with_authorization(&a, &w.sign(&a));
    let tx = w
        .tx_from(&w.facilitator, 0, w.token, data.clone(), 50_000)
        .await;
    w.send(&tx).await.unwrap();
    let receipt = w.receipt(tx.hash).await.unwrap();
    assert!(!receipt.status);
    assert_eq!(receipt.gas_used, 50_000);
    assert!(!w.chain.authorization_state(w.token, a.from, a.nonce));
    assert!(w.simulate(data).await.is_ok(), "still settleable");
    assert_eq!(w.nonce(w.facilitator.address(), NonceTag::Latest).await, 1);
}

#[tokio::test]
async fn calls_behave_like_solidity() {
    let w = World::new();
    let chain = w.dyn_chain();
    // No code: a call succeeds and returns nothing.
    let ret = chain
        .eth_call(CallRequest {
            from: None,
            to: w.payee,
            data: eip3009::name_calldata(),
        })
        .await
        .unwrap();
    assert!(ret.is_empty());
    // Unknown selector, short or malformed calldata: a revert without reason or data.
    let mut dirty = eip3009::balance_of_calldata(w.payee);
    dirty[4] = 1; // high bits of an address
    for data in [vec![0xde, 0xad, 0xbe, 0xef], vec![0x70], dirty, Vec::new()] {
        assert_eq!(
            w.simulate(data).await,
            Err(ChainError::Reverted {
                reason: None,
                data: Vec::new()
            })
        );
    }
    // A plain ETH transfer to an EOA.
    let tx = sign_eip1559(
        &w.facilitator,
        &Eip1559Request {
            chain_id: CHAIN_ID,
            nonce: 0,
            gas_limit: 21_000,
            max_fee_per_gas: 3_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: Some(w.payee),
            value: U256::from(123u64),
            input: Vec::new(),
        },
    )
    .unwrap();
    w.send(&tx).await.unwrap();
    assert_eq!(w.receipt(tx.hash).await.unwrap().gas_used, 21_000);
    assert_eq!(w.chain.eth_balance(w.payee), U256::from(123u64));

    // A mint by transaction is a transfer from zero.
    let tx = w
        .tx_from(
            &w.facilitator,
            1,
            w.token,
            mintCall {
                to: w.payee,
                amount: U256::from(9u8),
            }
            .abi_encode(),
            100_000,
        )
        .await;
    w.send(&tx).await.unwrap();
    assert_eq!(w.chain.transfers()[0].from, Address::ZERO);
    assert_eq!(w.chain.balance_of(w.token, w.payee), U256::from(9u8));
}

#[tokio::test]
async fn a_canceled_authorization_cannot_settle() {
    let w = World::new();
    let a = w.authorization(1_000, "cancel");
    let digest = CancelAuthorization {
        authorizer: a.from,
        nonce: a.nonce,
    }
    .eip712_signing_hash(&w.domain);
    let sig = alloy::signers::SignerSync::sign_hash_sync(&w.payer, &digest)
        .unwrap()
        .as_bytes();
    let cancel = cancelAuthorizationCall {
        authorizer: a.from,
        nonce: a.nonce,
        signature: sig.to_vec().into(),
    }
    .abi_encode();
    let tx = w.settle_tx(0, cancel).await;
    w.send(&tx).await.unwrap();
    assert!(w.receipt(tx.hash).await.unwrap().status);
    let data = eip3009::transfer_with_authorization(&a, &w.sign(&a));
    assert_eq!(reason(w.simulate(data).await).as_deref(), Some(USED));
    assert_eq!(
        w.chain.authorization_used_count(w.token, a.from, a.nonce),
        0
    );
}

/// Same calls, same clock: same hashes, blocks and receipts (what a simulation's replay needs).
#[tokio::test]
async fn runs_are_deterministic() {
    async fn run() -> (Vec<Option<Receipt>>, Address) {
        let w = World::new();
        let chain: SharedChain = w.chain.clone();
        let mut receipts = Vec::new();
        for i in 0..3u64 {
            let a = w.authorization(100, &format!("det-{i}"));
            let tx = w
                .settle_tx(i, eip3009::transfer_with_authorization(&a, &w.sign(&a)))
                .await;
            chain.send_raw_transaction(tx.raw).await.unwrap();
            receipts.push(chain.receipt(tx.hash).await.unwrap());
            w.clock.advance_secs(1);
        }
        (receipts, w.token)
    }
    assert_eq!(run().await, run().await);
}

// ------------------------------------------------------------------------------------------
// Differential: the same calls and transactions against anvil running the real TestUSDC and
// TestWallet must give the same answers (return data, revert reasons and data, receipt status
// and logs, refusals). anvil is the dev chain's (`X402_ANVIL`, `ANVIL_BIN` or
// `contracts/node_modules`); without it this test fails, it does not skip.

mod differential {
    use std::time::{Duration, Instant};

    use alloy::primitives::{Address, B256, U256};
    use alloy::signers::local::PrivateKeySigner;
    use alloy::sol;
    use alloy::sol_types::{SolCall, SolValue};
    use x402_dev::devchain::{contract_bytecode, Anvil};
    use x402_dev::memory_chain::MemoryChain;
    use x402_node::chain::tx::{sign_eip1559, Eip1559Request};
    use x402_node::chain::{
        AlloyChain, CallRequest, Chain, ChainError, ChainLimits, NonceTag, Receipt,
    };
    use x402_node::seams::{SharedClock, SystemClock};
    use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};

    use super::{key, FACILITATOR_KEY, OWNER_KEY, PAYER_KEY};

    sol! {
        interface Usdc {
            function symbol() external view returns (string);
            function decimals() external view returns (uint8);
            function totalSupply() external view returns (uint256);
            function allowance(address owner, address spender) external view returns (uint256);
            function TRANSFER_WITH_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
            function RECEIVE_WITH_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
            function CANCEL_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
            function DOMAIN_SEPARATOR() external view returns (bytes32);
            function eip712Domain() external view returns (bytes1 fields, string name_, string version_, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions);
            function mint(address to, uint256 amount) external;
            function transfer(address to, uint256 value) external returns (bool);
            function approve(address spender, uint256 value) external returns (bool);
            function transferFrom(address from, address to, uint256 value) external returns (bool);
            function receiveWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        }
        interface Wallet {
            function owner() external view returns (address);
            function execute(address target, bytes data) external returns (bytes);
        }
    }

    const DEPLOYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ANVIL_CHAIN_ID: u64 = 31337;

    /// What a call answered, comparable across chains.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Ok(Vec<u8>),
        Reverted(Option<String>, Vec<u8>),
        Rejected(i64, String),
        Other(String),
    }

    fn out<T: Into<Vec<u8>>>(r: Result<T, ChainError>) -> Out {
        match r {
            Ok(v) => Out::Ok(v.into()),
            Err(ChainError::Reverted { reason, data }) => Out::Reverted(reason, data),
            Err(ChainError::Rejected { code, message }) => Out::Rejected(code, message),
            Err(e) => Out::Other(e.to_string()),
        }
    }

    /// One chain under test, with its own token and wallet addresses.
    struct Side<'a> {
        chain: &'a dyn Chain,
        token: Address,
        wallet: Address,
    }

    async fn wait_receipt(chain: &dyn Chain, hash: B256) -> Receipt {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = chain.receipt(hash).await.unwrap() {
                return r;
            }
            assert!(Instant::now() < deadline, "no receipt for {hash}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sign(
        signer: &PrivateKeySigner,
        nonce: u64,
        to: Option<Address>,
        input: Vec<u8>,
        gas_limit: u64,
        chain_id: u64,
    ) -> x402_node::chain::tx::SignedTransaction {
        sign_eip1559(
            signer,
            &Eip1559Request {
                chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas: 20_000_000_000,
                max_priority_fee_per_gas: 1_000_000_000,
                to,
                value: U256::ZERO,
                input,
            },
        )
        .unwrap()
    }

    async fn send_and_wait(
        chain: &dyn Chain,
        signer: &PrivateKeySigner,
        to: Option<Address>,
        input: Vec<u8>,
        gas_limit: u64,
    ) -> Receipt {
        let nonce = chain
            .nonce(signer.address(), NonceTag::Pending)
            .await
            .unwrap();
        let tx = sign(signer, nonce, to, input, gas_limit, ANVIL_CHAIN_ID);
        chain.send_raw_transaction(tx.raw).await.unwrap();
        wait_receipt(chain, tx.hash).await
    }

    fn artifact(name: &str) -> Vec<u8> {
        contract_bytecode(&format!("contracts/artifacts/{name}.json")).unwrap()
    }

    /// anvil with TestUSDC ("USD Coin", "2") and a TestWallet of OWNER_KEY; the payer and the
    /// wallet hold 5 USDC each.
    async fn anvil_side(chain: &dyn Chain) -> (Address, Address) {
        let deployer = key(DEPLOYER_KEY);
        let mut init = artifact("TestUSDC");
        init.extend(("USD Coin".to_string(), "2".to_string()).abi_encode_params());
        let r = send_and_wait(chain, &deployer, None, init, 5_000_000).await;
        assert!(r.status);
        let token = deployer.address().create(0);
        let mut init = artifact("TestWallet");
        init.extend(key(OWNER_KEY).address().abi_encode());
        assert!(
            send_and_wait(chain, &deployer, None, init, 5_000_000)
                .await
                .status
        );
        let wallet = deployer.address().create(1);
        for to in [key(PAYER_KEY).address(), wallet] {
            let mint = Usdc::mintCall {
                to,
                amount: U256::from(5_000_000u64),
            }
            .abi_encode();
            assert!(
                send_and_wait(chain, &deployer, Some(token), mint, 200_000)
                    .await
                    .status
            );
        }
        (token, wallet)
    }

    fn memory_side() -> (std::sync::Arc<MemoryChain>, Address, Address) {
        let chain = MemoryChain::new(
            ANVIL_CHAIN_ID,
            std::sync::Arc::new(SystemClock) as SharedClock,
        );
        let token = chain.deploy_token("USD Coin", "2");
        let wallet = chain.deploy_wallet(key(OWNER_KEY).address());
        for to in [key(PAYER_KEY).address(), wallet] {
            chain.mint(token, to, U256::from(5_000_000u64));
        }
        let ten_thousand_eth = U256::from(10u8).pow(U256::from(22u8));
        for k in [DEPLOYER_KEY, FACILITATOR_KEY, PAYER_KEY, OWNER_KEY] {
            chain.fund(key(k).address(), ten_thousand_eth);
        }
        (chain, token, wallet)
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Every eth_call case, labelled; signatures are made under each side's own domain.
    async fn calls(side: &Side<'_>) -> Vec<(&'static str, Out)> {
        let payer = key(PAYER_KEY);
        let owner = key(OWNER_KEY);
        let fac = Some(key(FACILITATOR_KEY).address());
        let payee = Address::repeat_byte(0x77);
        let now = now_secs();
        let domain = eip3009::domain("USD Coin", "2", ANVIL_CHAIN_ID, side.token);
        let auth = |value: u64, after: u64, before: u64, label: &str| TransferWithAuthorization {
            from: payer.address(),
            to: payee,
            value: U256::from(value),
            validAfter: U256::from(after),
            validBefore: U256::from(before),
            nonce: alloy::primitives::keccak256(label.as_bytes()),
        };
        let signed = |a: &TransferWithAuthorization, signer: &PrivateKeySigner| {
            eip3009::sign_authorization(signer, a, &domain).unwrap()
        };
        let ok = auth(1_000, 0, now + 3600, "ok");
        let ok_sig = signed(&ok, &payer);
        let mut high_s = ok_sig;
        {
            let n = U256::from_be_slice(&alloy::hex!(
                "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
            ));
            let s = U256::from_be_slice(&ok_sig[32..64]);
            high_s[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
            high_s[64] = if ok_sig[64] == 27 { 28 } else { 27 };
        }
        let mut v0 = ok_sig;
        v0[64] -= 27;
        let mut to_zero = auth(1_000, 0, now + 3600, "to-zero");
        to_zero.to = Address::ZERO;
        let mut from_wallet = auth(1_000, 0, now + 3600, "wallet");
        from_wallet.from = side.wallet;
        let mut from_token = auth(1_000, 0, now + 3600, "token");
        from_token.from = side.token;
        let wrong_domain = eip3009::domain("USDC", "2", ANVIL_CHAIN_ID, side.token);
        let wrong_sig = eip3009::sign_authorization(&payer, &ok, &wrong_domain).unwrap();
        let digest = eip3009::signing_hash(&from_wallet, &domain);
        let mut dirty = eip3009::balance_of_calldata(payee);
        dirty[4] = 1;

        let token_calls: Vec<(&'static str, Option<Address>, Vec<u8>)> = vec![
            ("name", None, eip3009::name_calldata()),
            ("version", None, eip3009::version_calldata()),
            ("symbol", None, Usdc::symbolCall {}.abi_encode()),
            ("decimals", None, Usdc::decimalsCall {}.abi_encode()),
            ("totalSupply", None, Usdc::totalSupplyCall {}.abi_encode()),
            (
                "balanceOf",
                None,
                eip3009::balance_of_calldata(payer.address()),
            ),
            (
                "allowance",
                None,
                Usdc::allowanceCall {
                    owner: payer.address(),
                    spender: payee,
                }
                .abi_encode(),
            ),
            (
                "typehash transfer",
                None,
                Usdc::TRANSFER_WITH_AUTHORIZATION_TYPEHASHCall {}.abi_encode(),
            ),
            (
                "typehash receive",
                None,
                Usdc::RECEIVE_WITH_AUTHORIZATION_TYPEHASHCall {}.abi_encode(),
            ),
            (
                "typehash cancel",
                None,
                Usdc::CANCEL_AUTHORIZATION_TYPEHASHCall {}.abi_encode(),
            ),
            (
                "authorizationState",
                None,
                eip3009::authorization_state_calldata(payer.address(), ok.nonce),
            ),
            (
                "settle vrs",
                fac,
                eip3009::transfer_with_authorization(&ok, &ok_sig),
            ),
            (
                "settle bytes",
                fac,
                eip3009::transfer_with_authorization_bytes(&ok, &ok_sig),
            ),
            (
                "settle from none",
                None,
                eip3009::transfer_with_authorization(&ok, &ok_sig),
            ),
            ("not yet valid", fac, {
                let a = auth(1_000, now + 1000, now + 3600, "later");
                eip3009::transfer_with_authorization(&a, &signed(&a, &payer))
            }),
            ("expired", fac, {
                let a = auth(1_000, 0, now - 1000, "expired");
                eip3009::transfer_with_authorization(&a, &signed(&a, &payer))
            }),
            ("too much", fac, {
                let a = auth(5_000_001, 0, now + 3600, "too-much");
                eip3009::transfer_with_authorization(&a, &signed(&a, &payer))
            }),
            (
                "wrong domain",
                fac,
                eip3009::transfer_with_authorization(&ok, &wrong_sig),
            ),
            (
                "high s",
                fac,
                eip3009::transfer_with_authorization_bytes(&ok, &high_s),
            ),
            (
                "v 0",
                fac,
                eip3009::transfer_with_authorization_bytes(&ok, &v0),
            ),
            (
                "64 bytes",
                fac,
                eip3009::transfer_with_authorization_bytes(&ok, &ok_sig[..64]),
            ),
            (
                "empty sig",
                fac,
                eip3009::transfer_with_authorization_bytes(&ok, &[]),
            ),
            (
                "to zero",
                fac,
                eip3009::transfer_with_authorization(&to_zero, &signed(&to_zero, &payer)),
            ),
            (
                "wallet bytes",
                fac,
                eip3009::transfer_with_authorization_bytes(
                    &from_wallet,
                    &signed(&from_wallet, &owner),
                ),
            ),
            (
                "wallet vrs",
                fac,
                eip3009::transfer_with_authorization(&from_wallet, &signed(&from_wallet, &owner)),
            ),
            (
                "wallet not owner",
                fac,
                eip3009::transfer_with_authorization_bytes(
                    &from_wallet,
                    &signed(&from_wallet, &payer),
                ),
            ),
            (
                "token as payer",
                fac,
                eip3009::transfer_with_authorization_bytes(
                    &from_token,
                    &signed(&from_token, &payer),
                ),
            ),
            ("receive not payee", fac, {
                let a = auth(1_000, 0, now + 3600, "receive");
                Usdc::receiveWithAuthorizationCall {
                    from: a.from,
                    to: a.to,
                    value: a.value,
                    validAfter: a.validAfter,
                    validBefore: a.validBefore,
                    nonce: a.nonce,
                    signature: ok_sig.to_vec().into(),
                }
                .abi_encode()
            }),
            (
                "mint to zero",
                fac,
                Usdc::mintCall {
                    to: Address::ZERO,
                    amount: U256::from(1u8),
                }
                .abi_encode(),
            ),
            (
                "mint overflow",
                fac,
                Usdc::mintCall {
                    to: payee,
                    amount: U256::MAX,
                }
                .abi_encode(),
            ),
            (
                "transfer",
                Some(payer.address()),
                Usdc::transferCall {
                    to: payee,
                    value: U256::from(1u8),
                }
                .abi_encode(),
            ),
            (
                "transfer too much",
                Some(payer.address()),
                Usdc::transferCall {
                    to: payee,
                    value: U256::from(5_000_001u64),
                }
                .abi_encode(),
            ),
            (
                "approve",
                Some(payer.address()),
                Usdc::approveCall {
                    spender: payee,
                    value: U256::from(1u8),
                }
                .abi_encode(),
            ),
            (
                "transferFrom no allowance",
                fac,
                Usdc::transferFromCall {
                    from: payer.address(),
                    to: payee,
                    value: U256::from(1u8),
                }
                .abi_encode(),
            ),
            ("unknown selector", fac, vec![0xde, 0xad, 0xbe, 0xef]),
            ("short", fac, vec![0x70, 0xa0]),
            ("empty", fac, Vec::new()),
            ("dirty address", fac, dirty),
            ("truncated args", fac, {
                let mut d = eip3009::transfer_with_authorization(&ok, &ok_sig);
                d.truncate(100);
                d
            }),
        ];
        let mut results = Vec::new();
        for (label, from, data) in token_calls {
            let r = side
                .chain
                .eth_call(CallRequest {
                    from,
                    to: side.token,
                    data,
                })
                .await;
            results.push((label, out(r)));
        }

        // Views whose answer contains the token's address: compare with what it should be.
        let separator = side
            .chain
            .eth_call(CallRequest {
                from: None,
                to: side.token,
                data: Usdc::DOMAIN_SEPARATORCall {}.abi_encode(),
            })
            .await
            .unwrap();
        results.push((
            "DOMAIN_SEPARATOR is the eip3009 domain's",
            Out::Ok(vec![(separator == domain.separator().abi_encode()) as u8]),
        ));
        let ret = side
            .chain
            .eth_call(CallRequest {
                from: None,
                to: side.token,
                data: Usdc::eip712DomainCall {}.abi_encode(),
            })
            .await
            .unwrap();
        let expected = Usdc::eip712DomainCall::abi_encode_returns(&Usdc::eip712DomainReturn {
            fields: alloy::primitives::FixedBytes([0x0f]),
            name_: "USD Coin".into(),
            version_: "2".into(),
            chainId: U256::from(ANVIL_CHAIN_ID),
            verifyingContract: side.token,
            salt: B256::ZERO,
            extensions: Vec::new(),
        });
        results.push(("eip712Domain", Out::Ok(vec![(ret == expected) as u8])));

        // The wallet.
        let wallet_calls: Vec<(&'static str, Option<Address>, Vec<u8>)> = vec![
            ("owner", None, Wallet::ownerCall {}.abi_encode()),
            (
                "isValidSignature owner",
                None,
                eip3009::is_valid_signature_calldata(digest, &signed(&from_wallet, &owner)),
            ),
            (
                "isValidSignature other",
                None,
                eip3009::is_valid_signature_calldata(digest, &signed(&from_wallet, &payer)),
            ),
            (
                "isValidSignature short",
                None,
                eip3009::is_valid_signature_calldata(digest, &[1, 2, 3]),
            ),
            (
                "execute not owner",
                fac,
                Wallet::executeCall {
                    target: side.token,
                    data: eip3009::name_calldata().into(),
                }
                .abi_encode(),
            ),
            (
                "execute name",
                Some(owner.address()),
                Wallet::executeCall {
                    target: side.token,
                    data: eip3009::name_calldata().into(),
                }
                .abi_encode(),
            ),
            (
                "execute bubbles a revert",
                Some(owner.address()),
                Wallet::executeCall {
                    target: side.token,
                    data: Usdc::transferCall {
                        to: payee,
                        value: U256::from(5_000_001u64),
                    }
                    .abi_encode()
                    .into(),
                }
                .abi_encode(),
            ),
            ("wallet unknown selector", fac, vec![1, 2, 3, 4]),
        ];
        for (label, from, data) in wallet_calls {
            let r = side
                .chain
                .eth_call(CallRequest {
                    from,
                    to: side.wallet,
                    data,
                })
                .await;
            results.push((label, out(r)));
        }
        let r = side
            .chain
            .eth_call(CallRequest {
                from: fac,
                to: payee,
                data: vec![1, 2, 3, 4],
            })
            .await;
        results.push(("no code", out(r)));
        let r = side
            .chain
            .estimate_gas(CallRequest {
                from: fac,
                to: side.token,
                data: eip3009::transfer_with_authorization(&ok, &wrong_sig),
            })
            .await;
        results.push(("estimate a revert", out(r.map(|_| Vec::new()))));
        results
    }

    /// Transactions: settle, replay, wallet settle, out of gas, and the refusals.
    async fn transactions(side: &Side<'_>) -> Vec<(&'static str, Out)> {
        let chain = side.chain;
        let payer = key(PAYER_KEY);
        let owner = key(OWNER_KEY);
        let fac = key(FACILITATOR_KEY);
        let payee = Address::repeat_byte(0x77);
        let domain = eip3009::domain("USD Coin", "2", ANVIL_CHAIN_ID, side.token);
        let valid_before = U256::from(now_secs() + 3600);
        let a = TransferWithAuthorization {
            from: payer.address(),
            to: payee,
            value: U256::from(1_000u64),
            validAfter: U256::ZERO,
            validBefore: valid_before,
            nonce: B256::repeat_byte(1),
        };
        let mut w = a.clone();
        w.from = side.wallet;
        w.nonce = B256::repeat_byte(2);
        let settle = eip3009::transfer_with_authorization(
            &a,
            &eip3009::sign_authorization(&payer, &a, &domain).unwrap(),
        );
        let wallet_settle = eip3009::transfer_with_authorization_bytes(
            &w,
            &eip3009::sign_authorization(&owner, &w, &domain).unwrap(),
        );

        // A receipt, with the token's address taken out of its logs.
        let summary = |r: Receipt| {
            let mut v = vec![r.status as u8];
            for log in r.logs {
                v.push((log.address == side.token) as u8);
                for t in log.topics {
                    // The wallets' addresses differ between the chains.
                    let t = if t == side.wallet.into_word() {
                        B256::repeat_byte(0xee)
                    } else {
                        t
                    };
                    v.extend_from_slice(t.as_slice());
                }
                v.extend(log.data);
            }
            Out::Ok(v)
        };
        let mut results = Vec::new();
        let base = chain.nonce(fac.address(), NonceTag::Latest).await.unwrap();
        let mut sent = Vec::new();
        for (i, (label, data, gas)) in [
            ("settle", settle.clone(), 200_000),
            ("replay", settle.clone(), 200_000),
            ("wallet settle", wallet_settle, 200_000),
            ("out of gas", settle.clone(), 30_000),
        ]
        .into_iter()
        .enumerate()
        {
            let tx = sign(
                &fac,
                base + i as u64,
                Some(side.token),
                data,
                gas,
                ANVIL_CHAIN_ID,
            );
            let hash = chain.send_raw_transaction(tx.raw.clone()).await;
            assert_eq!(hash, Ok(tx.hash), "{label}");
            results.push((label, summary(wait_receipt(chain, tx.hash).await)));
            sent.push(tx);
        }
        let next = base + sent.len() as u64;
        let stale = sign(&fac, base, Some(payee), Vec::new(), 21_000, ANVIL_CHAIN_ID);
        results.push((
            "nonce too low",
            out(chain
                .send_raw_transaction(stale.raw)
                .await
                .map(|h| h.to_vec())),
        ));
        results.push((
            "rebroadcast of a mined transaction",
            out(chain
                .send_raw_transaction(sent[0].raw.clone())
                .await
                .map(|h| h.to_vec())),
        ));
        // A key anvil did not fund (its dev accounts all hold 10 000 ETH).
        let unfunded: PrivateKeySigner =
            "0x1111111111111111111111111111111111111111111111111111111111111111"
                .parse()
                .unwrap();
        let broke_raw = sign(
            &unfunded,
            0,
            Some(payee),
            Vec::new(),
            21_000,
            ANVIL_CHAIN_ID,
        )
        .raw;
        results.push((
            "insufficient funds",
            out(chain
                .send_raw_transaction(broke_raw)
                .await
                .map(|h| h.to_vec())),
        ));
        let foreign = sign(&fac, next, Some(payee), Vec::new(), 21_000, 1);
        results.push((
            "wrong chain id",
            out(chain
                .send_raw_transaction(foreign.raw)
                .await
                .map(|h| h.to_vec())),
        ));
        let low_gas = sign(&fac, next, Some(payee), Vec::new(), 20_000, ANVIL_CHAIN_ID);
        results.push((
            "intrinsic gas too low",
            out(chain
                .send_raw_transaction(low_gas.raw)
                .await
                .map(|h| h.to_vec())),
        ));
        let fees = |max_fee: u128, tip: u128, gas: u64, nonce: u64| {
            sign_eip1559(
                &fac,
                &Eip1559Request {
                    chain_id: ANVIL_CHAIN_ID,
                    nonce,
                    gas_limit: gas,
                    max_fee_per_gas: max_fee,
                    max_priority_fee_per_gas: tip,
                    to: Some(payee),
                    value: U256::ZERO,
                    input: Vec::new(),
                },
            )
            .unwrap()
        };
        let send = |raw: Vec<u8>| async move {
            out(chain.send_raw_transaction(raw).await.map(|h| h.to_vec()))
        };
        results.push((
            "fee cap below the base fee",
            send(fees(1, 0, 21_000, next).raw).await,
        ));
        results.push((
            "tip above the fee cap",
            send(fees(2_000_000_000, 3_000_000_000, 21_000, next).raw).await,
        ));
        results.push((
            "above the block gas limit",
            send(fees(2_000_000_000, 1, 30_000_001, next).raw).await,
        ));
        // Beyond a nonce gap: pooled; the same bytes again are "already known" (Ok); a
        // different transaction with the same nonce needs a fee bump.
        let gap = fees(20_000_000_000, 1_000_000_000, 21_000, next + 5);
        results.push(("beyond a gap", send(gap.raw.clone()).await));
        // anvil answers "transaction already imported", which AlloyChain (made for geth's
        // "already known") does not yet turn into the hash; MemoryChain answers like geth.
        let again = match send(gap.raw.clone()).await {
            Out::Rejected(_, m) if m == "transaction already imported" => {
                Out::Ok(gap.hash.to_vec())
            }
            other => other,
        };
        results.push(("beyond a gap again", again));
        results.push((
            "same nonce, same fees",
            send(fees(20_000_000_000, 1_000_000_000, 21_001, next + 5).raw).await,
        ));
        results.push((
            "same nonce, fees bumped",
            send(fees(22_000_000_000, 1_100_000_000, 21_002, next + 5).raw).await,
        ));
        results.push((
            "pending nonce ignores the gap",
            Out::Ok(vec![
                (chain.nonce(fac.address(), NonceTag::Pending).await.unwrap() - next) as u8,
            ]),
        ));
        let legacy = {
            use alloy::consensus::{SignableTransaction, TxEnvelope, TxLegacy};
            use alloy::eips::eip2718::Encodable2718;
            use alloy::signers::SignerSync;
            let tx = TxLegacy {
                chain_id: None,
                nonce: next,
                gas_price: 20_000_000_000,
                gas_limit: 21_000,
                to: alloy::primitives::TxKind::Call(payee),
                value: U256::ZERO,
                input: Default::default(),
            };
            let sig = fac.sign_hash_sync(&tx.signature_hash()).unwrap();
            TxEnvelope::from(tx.into_signed(sig)).encoded_2718()
        };
        results.push(("legacy without chain id", send(legacy).await));
        results.push((
            "garbage",
            out(chain
                .send_raw_transaction(vec![0x02, 0xc0])
                .await
                .map(|h| h.to_vec())),
        ));
        results
    }

    #[tokio::test]
    async fn memory_chain_answers_like_anvil_with_test_usdc() {
        let anvil = Anvil::start(ANVIL_CHAIN_ID).await;
        let alloy_chain = AlloyChain::new(
            &[anvil.url()],
            ChainLimits::default(),
            &x402_node::tls::rpc_http_client(&x402_node::tls::Roots::None).unwrap(),
        )
        .unwrap();
        let (token, wallet) = anvil_side(&alloy_chain).await;
        let real = Side {
            chain: &alloy_chain,
            token,
            wallet,
        };
        let (memory, token, wallet) = memory_side();
        let fake = Side {
            chain: &*memory,
            token,
            wallet,
        };

        let mut mismatches = Vec::new();
        for (expected, got) in calls(&real)
            .await
            .into_iter()
            .zip(calls(&fake).await)
            .chain(
                transactions(&real)
                    .await
                    .into_iter()
                    .zip(transactions(&fake).await),
            )
        {
            assert_eq!(expected.0, got.0);
            if expected.1 != got.1 {
                mismatches.push(format!(
                    "{}:\n  anvil:  {:?}\n  memory: {:?}",
                    expected.0, expected.1, got.1
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
}
