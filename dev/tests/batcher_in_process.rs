//! The batcher's bookkeeping (`cluster/batcher.rs`) in milliseconds, on one in-process node's
//! proposer: how many operations ride in one log entry, that each gets its own answer (also two
//! answers that differ inside one entry), and that a full queue refuses at once as overloaded
//! and commits nothing of what it refused.

use std::collections::BTreeMap;

use x402_dev::bad_requests::unix_now;
use x402_dev::in_process::InProcessNode;
use x402_node::cluster::batcher::{BatchLimits, Batcher};
use x402_node::cluster::proposer::ProposeError;
use x402_node::cluster::writer::Writer;
use x402_raft_store::state::{ClaimOutcome, NonceClaim, NonceKey};

fn claim(nonce: u16, fingerprint: u8) -> NonceClaim {
    let mut n = [0u8; 32];
    n[..2].copy_from_slice(&nonce.to_be_bytes());
    NonceClaim {
        key: NonceKey {
            chain_id: 31337,
            asset: [1; 20],
            payer: [2; 20],
            nonce: n,
        },
        fingerprint: [fingerprint; 32],
        valid_before: unix_now() + 600,
    }
}

fn writer(node: &InProcessNode, limits: BatchLimits) -> Writer {
    Writer::new(Batcher::start(node.app.proposer.clone(), limits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_hold_at_most_the_limit_and_every_operation_gets_its_own_answer() {
    const OPS: u16 = 200;
    const PER_ENTRY: usize = 8;
    let node = InProcessNode::start("", "").await;
    let writer = writer(
        &node,
        BatchLimits {
            max_queued_ops: 1024,
            max_ops_per_entry: PER_ENTRY,
            max_entries_in_flight: 1,
        },
    );
    let mut claims = tokio::task::JoinSet::new();
    for nonce in 0..OPS {
        // Every nonce twice, for two different requirements: one of the two is a replay.
        for fingerprint in [1, 2] {
            let writer = writer.clone();
            claims.spawn(async move {
                let written = writer.claim(claim(nonce, fingerprint)).await;
                (nonce, written)
            });
        }
    }
    let mut per_entry: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_nonce: BTreeMap<u16, Vec<ClaimOutcome>> = BTreeMap::new();
    for (nonce, written) in claims.join_all().await {
        let written = written.expect("a leader commits every claim");
        *per_entry.entry(written.log_index).or_default() += 1;
        per_nonce.entry(nonce).or_default().push(written.answer);
    }
    assert!(
        per_entry.values().all(|&n| n <= PER_ENTRY),
        "an entry held more than {PER_ENTRY} operations: {per_entry:?}"
    );
    assert!(per_entry.len() >= 2 * OPS as usize / PER_ENTRY);
    assert!(
        per_entry.values().any(|&n| n > 1),
        "concurrent writes were batched: {per_entry:?}"
    );
    for (nonce, mut answers) in per_nonce {
        answers.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            answers,
            vec![ClaimOutcome::Accepted, ClaimOutcome::Replay],
            "nonce {nonce}: one claim accepted, the other requirements refused"
        );
    }
    node.app.state.read(|s| {
        assert_eq!(s.nonces().len(), OPS as usize, "every nonce claimed once");
    });
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_refuses_as_overloaded_and_commits_nothing_it_refused() {
    const QUEUED: usize = 4;
    let node = InProcessNode::start("", "").await;
    let writer = writer(
        &node,
        BatchLimits {
            max_queued_ops: QUEUED,
            max_ops_per_entry: 2,
            max_entries_in_flight: 1,
        },
    );
    let before = node.app.state.read(|s| s.nonces().len());
    // On one thread, every task below enqueues before the batching task runs again.
    let mut claims = tokio::task::JoinSet::new();
    for nonce in 0..64u16 {
        let writer = writer.clone();
        claims.spawn(async move { writer.claim(claim(nonce, 1)).await });
    }
    let (mut committed, mut overloaded) = (0, 0);
    for written in claims.join_all().await {
        match written {
            Ok(w) => {
                assert_eq!(w.answer, ClaimOutcome::Accepted);
                committed += 1;
            }
            Err(ProposeError::Overloaded) => overloaded += 1,
            Err(other) => panic!("only overload refuses here: {other:?}"),
        }
    }
    assert!(
        overloaded > 0,
        "64 writes into a queue of {QUEUED}: some refused"
    );
    assert!(
        committed >= QUEUED,
        "the queue's worth commits: {committed}"
    );
    let after = node.app.state.read(|s| s.nonces().len());
    assert_eq!(
        after - before,
        committed,
        "what was refused was not written"
    );
}
