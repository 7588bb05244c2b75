//! The leader's settlement duties:
//! - tell the state machine each signer's transaction count the first time the cluster uses the
//!   key, and again whenever the key is idle and the chain shows it was used elsewhere
//!   (`SyncSigner`; the state machine never lowers a count, so no nonce is handed out twice);
//! - finish settlements whose owner went quiet for `facilitator.reconcile_after_ms`: sign an
//!   allocated nonce with the call the owner recorded (a nonce must never be left as a gap), or
//!   re-broadcast the recorded bytes and commit the outcome of their receipt.
//!
//! Everything it does goes through the log and is idempotent by content, so a leader change in
//! the middle leaves nothing half done that the next leader would not redo.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use x402_raft_store::state::{Op, SettlementPhase, SettlementRecord, SignedSettlement};

use super::settle::{self, read_outcome, rebroadcast};
use super::Network;
use crate::chain::NonceTag;
use crate::node::App;

/// Most stale settlements one round takes on, so a backlog cannot starve the leader.
const MAX_SETTLEMENTS_PER_ROUND: usize = 256;
/// Every this many rounds, idle signers are compared with the chain.
const RESYNC_EVERY_ROUNDS: u64 = 30;

pub async fn run(app: Arc<App>) {
    let interval = Duration::from_millis(app.facilitator.settings.reconcile_interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        ticker.tick().await;
        round += 1;
        let unfinished = app.state.read(|s| s.settlements().unfinished_len());
        app.metrics
            .unfinished_settlements
            .set(i64::try_from(unfinished).unwrap_or(i64::MAX));
        if app.raft.metrics().borrow().current_leader != Some(app.id) {
            continue;
        }
        for network in app.facilitator.networks.values() {
            let unsynced = network.signers.iter().any(|s| {
                app.state.read(|st| {
                    st.signers()
                        .get(network.chain_id, &s.address().into_array())
                        .is_none()
                })
            });
            if unsynced || round.is_multiple_of(RESYNC_EVERY_ROUNDS) {
                sync_signers(&app, network).await;
            }
        }
        finish_stale(&app).await;
    }
}

/// Proposes `SyncSigner` for each of this node's signers of `network` whose count the chain
/// shows higher than the state machine's (or that the state machine does not know yet).
pub async fn sync_signers(app: &App, network: &Network) {
    for signer in network.signer_addresses() {
        let known = app.state.read(|s| {
            s.signers()
                .get(network.chain_id, &signer.into_array())
                .map(|st| (st.next_nonce, st.in_flight))
        });
        if matches!(known, Some((_, in_flight)) if in_flight > 0) {
            continue; // never raise a count under transactions in flight
        }
        let chain_nonce = match network.chain.nonce(signer, NonceTag::Pending).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%signer, network = %network.caip2, error = %e, "cannot read a signer's nonce");
                continue;
            }
        };
        if matches!(known, Some((next, _)) if next >= chain_nonce) {
            continue;
        }
        let op = Op::SyncSigner {
            chain_id: network.chain_id,
            signer: signer.into_array(),
            chain_nonce,
        };
        match app.batcher.propose(op).await {
            Ok(_) => {
                tracing::info!(%signer, network = %network.caip2, chain_nonce, "signer nonce synced")
            }
            Err(e) => tracing::warn!(%signer, error = %e, "signer sync not committed"),
        }
    }
}

async fn finish_stale(app: &App) {
    let now_ms = app.clock.now_ms();
    let after_ms = app.facilitator.settings.reconcile_after_ms;
    let stale: Vec<([u8; 32], SettlementRecord)> = app.state.read(|s| {
        s.settlements()
            .unfinished()
            .filter(|(_, r)| r.updated_at_ms.saturating_add(after_ms) <= now_ms)
            .take(MAX_SETTLEMENTS_PER_ROUND)
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    });
    for (id, record) in stale {
        let Some(network) = app.facilitator.networks.get(&record.key.chain_id) else {
            tracing::error!(
                chain_id = record.key.chain_id,
                "a settlement on a network this node does not serve"
            );
            continue;
        };
        match &record.phase {
            SettlementPhase::Allocated {
                signer,
                nonce,
                call,
            } => {
                let signer = Address::from(*signer);
                let asset = Address::from(record.key.asset);
                let signed =
                    match settle::sign_transaction(network, signer, *nonce, asset, call.clone())
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot sign an abandoned settlement");
                            continue;
                        }
                    };
                tracing::info!(tx = %signed.hash, owner = record.owner, "signing an abandoned settlement");
                let op = Op::RecordSigned(SignedSettlement {
                    id,
                    signer: signer.into_array(),
                    nonce: *nonce,
                    tx_hash: signed.hash.0,
                    raw_tx: signed.raw,
                });
                if let Err(e) = app.batcher.propose(op).await {
                    tracing::warn!(error = %e, "abandoned settlement not recorded");
                }
            }
            SettlementPhase::Signed {
                signer,
                nonce,
                tx_hash,
                raw_tx,
            } => {
                let tx_hash = B256::from(*tx_hash);
                rebroadcast(network, raw_tx.clone(), tx_hash).await;
                let signer = Address::from(*signer);
                if let Some(outcome) =
                    read_outcome(network, &record, signer, *nonce, tx_hash, now_ms).await
                {
                    match settle::finish(app, id, tx_hash, outcome).await {
                        Ok(outcome) => {
                            tracing::info!(%tx_hash, ?outcome, "reconciled a settlement")
                        }
                        Err(e) => tracing::warn!(%tx_hash, error = %e, "outcome not committed"),
                    }
                }
            }
            SettlementPhase::Done { .. } => {}
        }
    }
}
