//! `/settle` and its driver (`settle::settle`, `settle::drive`) in milliseconds: one node in
//! process (real Raft on memory stores, the real writer) and a `MemoryChain`. What the
//! end-to-end tests check with three processes and anvil, at the layer where a failure names
//! the step: one transfer and one success per authorization under concurrent settles, a
//! pending answer that later succeeds, and a signer nonce taken outside the cluster, signed
//! again at a fresh nonce with no nonce reused or skipped.

use std::time::Duration;

use alloy::primitives::{B256, U256};
use tokio::time::Instant;
use x402_dev::bad_requests::{Spec, RESOURCE};
use x402_dev::in_process::{signer, InProcessNode, CHAIN_ID};
use x402_node::access::rate_limit::Gate;
use x402_node::chain::tx::{sign_eip1559, Eip1559Request};
use x402_node::chain::Chain;
use x402_node::facilitator::context::Context;
use x402_node::facilitator::payment::Payment;
use x402_node::facilitator::settle::{self, Driven};
use x402_node::facilitator::verify::authenticate;
use x402_protocol::x402::{decode_request, ReasonCode, SettleResponse};
use x402_raft_store::state::SettlementPhase;

/// The payment of `spec`, checked as `/settle` checks it.
async fn payment(node: &InProcessNode, spec: &Spec) -> Payment {
    let body = serde_json::to_vec(&spec.v2(RESOURCE)).expect("body");
    let request = decode_request(&body).expect("the table's payment decodes");
    authenticate(&node.app.payments, &request)
        .await
        .expect("the table's payment passes the checks")
}

async fn settle_once(node: &InProcessNode, payment: &Payment, taker: u8) -> SettleResponse {
    settle_as(&node.app.payments, payment, taker).await
}

async fn settle_as(ctx: &Context, payment: &Payment, taker: u8) -> SettleResponse {
    settle::settle(
        ctx,
        payment,
        &format!("eip155:{CHAIN_ID}"),
        &Gate::open(),
        [taker; 16],
    )
    .await
    .expect("the in-process node answers")
}

fn reason(answer: &SettleResponse) -> Option<&str> {
    answer.error_reason.as_ref().map(ReasonCode::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settles_of_one_payment_make_one_transfer_and_one_success() {
    let node = InProcessNode::start("", "").await;
    let payment = payment(&node, &node.spec(1)).await;
    let mut settles = tokio::task::JoinSet::new();
    for taker in 0..8u8 {
        let (ctx, payment) = (node.app.payments.clone(), payment.clone());
        settles.spawn(async move { settle_as(&ctx, &payment, taker).await });
    }
    let answers = settles.join_all().await;
    let successes: Vec<_> = answers.iter().filter(|a| a.success).collect();
    assert_eq!(
        successes.len(),
        1,
        "one payment buys one resource: {answers:#?}"
    );
    let tx = successes[0].transaction.clone();
    for other in answers.iter().filter(|a| !a.success) {
        assert_eq!(
            reason(other),
            Some("invalid_exact_evm_nonce_already_used"),
            "{other:?}"
        );
        assert_eq!(other.transaction, tx, "every loser is told the transaction");
    }
    assert_eq!(node.chain.transfers().len(), 1, "one transfer on chain");
    let sent = node.chain.sent_by(node.signer());
    assert_eq!(sent.len(), 1, "one transaction from the signer: {sent:?}");
    assert_eq!((sent[0].0, sent[0].1.to_string()), (0, tx));

    let again = settle_once(&node, &payment, 99).await;
    assert!(
        !again.success,
        "a later settle of the same payment: {again:?}"
    );
    assert_eq!(reason(&again), Some("invalid_exact_evm_nonce_already_used"));
}

#[tokio::test]
async fn a_settlement_unmined_by_its_deadline_is_pending_then_succeeds_once() {
    let node = InProcessNode::start("receipt_timeout_ms = 200", "").await;
    let payment = payment(&node, &node.spec(2)).await;
    node.chain.set_automine(false);
    let pending = settle_once(&node, &payment, 1).await;
    assert!(!pending.success, "{pending:?}");
    assert_eq!(reason(&pending), Some("settlement_pending"), "{pending:?}");
    assert!(
        !pending.transaction.is_empty(),
        "a pending answer names its hash"
    );
    assert!(node.chain.transfers().is_empty(), "nothing mined yet");

    node.chain.mine();
    let retried = settle_once(&node, &payment, 2).await;
    assert!(
        retried.success,
        "the retry after mining succeeds: {retried:?}"
    );
    assert_eq!(
        retried.transaction, pending.transaction,
        "the recorded bytes, not new ones"
    );
    let third = settle_once(&node, &payment, 3).await;
    assert_eq!(reason(&third), Some("invalid_exact_evm_nonce_already_used"));
    assert_eq!(node.chain.transfers().len(), 1);
}

#[tokio::test]
async fn drive_follows_a_signed_record_to_done_and_gives_the_success_to_its_taker() {
    let node = InProcessNode::start("receipt_timeout_ms = 100", "").await;
    let payment = payment(&node, &node.spec(3)).await;
    node.chain.set_automine(false);
    assert_eq!(
        reason(&settle_once(&node, &payment, 1).await),
        Some("settlement_pending")
    );
    let ctx = &node.app.payments;
    let id = payment.nonce_key().digest();
    let record = settle::local_record(ctx, &id).expect("the record is applied");
    assert!(
        matches!(record.phase, SettlementPhase::Signed { .. }),
        "{record:?}"
    );
    let network = ctx.facilitator.networks.get(&CHAIN_ID).expect("network");

    let soon = Instant::now() + Duration::from_millis(50);
    match settle::drive(ctx, network, &id, record.clone(), soon, Some([7; 16])).await {
        Ok(Driven::Pending(Some(_))) => {}
        other => panic!(
            "unmined: pending with its hash, got {:?}",
            other.map(|_| ())
        ),
    }
    node.chain.mine();
    let later = Instant::now() + Duration::from_secs(5);
    let done = match settle::drive(ctx, network, &id, record, later, Some([7; 16])).await {
        Ok(Driven::Done(done)) => done,
        other => panic!("mined: done, got {:?}", other.map(|_| ())),
    };
    assert!(!done.phase.is_unfinished());
    // The driver committed the verdict for its taker, so the success is taken: the request
    // that started the settlement is told it was used.
    assert_eq!(
        reason(&settle_once(&node, &payment, 1).await),
        Some("invalid_exact_evm_nonce_already_used")
    );
}

#[tokio::test]
async fn a_signer_nonce_used_outside_the_cluster_is_signed_again_without_a_gap() {
    let node = InProcessNode::start("receipt_timeout_ms = 2000", "").await;
    let first = payment(&node, &node.spec(4)).await;
    assert!(settle_once(&node, &first, 1).await.success);

    // The operator's key sends a transaction of its own at the nonce the cluster hands out next.
    let fees = node.chain.fees().await.expect("fees");
    let outside = sign_eip1559(
        &signer(),
        &Eip1559Request {
            chain_id: CHAIN_ID,
            nonce: 1,
            gas_limit: 21_000,
            max_fee_per_gas: fees.base_fee_per_gas * 2 + fees.max_priority_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: Some(node.signer()),
            value: U256::ZERO,
            input: Vec::new(),
        },
    )
    .expect("sign");
    node.chain
        .send_raw_transaction(outside.raw)
        .await
        .expect("the outside transaction is accepted");

    let second = payment(&node, &node.spec(5)).await;
    let answer = settle_once(&node, &second, 2).await;
    assert!(answer.success, "settled at a fresh nonce: {answer:?}");
    let sent = node.chain.sent_by(node.signer());
    let nonces: Vec<u64> = sent.iter().map(|(nonce, _, _)| *nonce).collect();
    assert_eq!(
        nonces,
        vec![0, 1, 2],
        "no nonce reused or skipped: {sent:?}"
    );
    assert_eq!(
        sent[1].1, outside.hash,
        "nonce 1 is the outside transaction"
    );
    assert_eq!(sent[2].1.to_string(), answer.transaction);
    assert_ne!(answer.transaction, B256::ZERO.to_string());
    assert_eq!(node.chain.transfers().len(), 2);
}
