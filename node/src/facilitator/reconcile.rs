//! The leader's settlement duties:
//! - tell the state machine each signer's transaction count the first time the cluster uses the
//!   key, and again whenever the key is idle and the chain shows it was used elsewhere
//!   (`SyncSigner`; the state machine never lowers a count, so no nonce is handed out twice);
//! - finish settlements whose owner went quiet for `facilitator.reconcile_after_ms`: sign an
//!   allocated nonce with the call the owner recorded (a nonce must never be left as a gap), or
//!   re-broadcast the recorded bytes and commit the outcome of their receipt.
//!
//! Everything it does goes through the log and is idempotent by content, so a leader change in
//! the middle leaves nothing half done that the next leader would not redo. It acts only as a
//! confirmed leader: each round starts with a linearizable read (a quorum confirms this node
//! still leads, and its state has applied everything committed before), so a node that was
//! killed as leader and restarted, still believing for a moment that it leads its old term,
//! never signs from a stale copy of a settlement that another leader has since finished.

use std::time::Duration;

use alloy::primitives::Address;
use prometheus::IntGauge;
use tokio::time::Instant;
use x402_raft_store::state::{SettlementPhase, SettlementRecord};

use super::context::Context;
use super::settle::{self, Allocation, Driven, SignedBy};
use super::signers;
use super::Network;

/// Most stale settlements one round takes on, so a backlog cannot starve the leader.
const MAX_SETTLEMENTS_PER_ROUND: usize = 256;
/// Every this many rounds, idle signers are compared with the chain.
const RESYNC_EVERY_ROUNDS: u64 = 30;

/// The leader's settlement duties, every `facilitator.reconcile_interval_ms`, on every node (a
/// follower only keeps the `x402_unfinished_settlements` gauge up to date).
pub async fn run(ctx: Context, unfinished_gauge: IntGauge) {
    let interval = Duration::from_millis(ctx.facilitator.settings.reconcile_interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        ticker.tick().await;
        round += 1;
        let unfinished = ctx.state.read(|s| s.settlements().unfinished_len());
        unfinished_gauge.set(i64::try_from(unfinished).unwrap_or(i64::MAX));
        if !ctx.barrier.leads() {
            continue;
        }
        if let Err(e) = ctx.barrier.wait().await {
            tracing::debug!(error = %e, "leadership not confirmed; reconciling later");
            continue;
        }
        for network in ctx.facilitator.networks.values() {
            let unsynced = network.signers.iter().any(|s| {
                ctx.state.read(|st| {
                    st.signers()
                        .get(network.chain_id, &s.address().into_array())
                        .is_none()
                })
            });
            if unsynced || round.is_multiple_of(RESYNC_EVERY_ROUNDS) {
                signers::sync(&ctx, network).await;
            }
        }
        finish_stale(&ctx).await;
    }
}

async fn finish_stale(ctx: &Context) {
    let now_ms = ctx.clock.now_ms();
    let after_ms = ctx.facilitator.settings.reconcile_after_ms;
    let stale: Vec<([u8; 32], SettlementRecord)> = ctx.state.read(|s| {
        s.settlements()
            .unfinished()
            .filter(|(_, r)| r.updated_at_ms.saturating_add(after_ms) <= now_ms)
            .take(MAX_SETTLEMENTS_PER_ROUND)
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    });
    for (id, record) in stale {
        let Some(network) = ctx.facilitator.networks.get(&record.key.chain_id) else {
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
                let allocation = Allocation {
                    id,
                    asset: Address::from(record.key.asset),
                    signer: Address::from(*signer),
                    nonce: *nonce,
                    call: call.clone(),
                };
                sign_abandoned(ctx, network, allocation, record.owner).await;
            }
            SettlementPhase::Signed { .. } => {
                // One round: broadcast again, read the receipt, commit what it shows.
                match settle::drive(ctx, network, &id, record, Instant::now(), None).await {
                    Ok(Driven::Done(record)) => {
                        tracing::info!(tx = ?record.settled_tx(), "reconciled a settlement")
                    }
                    Ok(Driven::Pending(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "settlement not reconciled"),
                }
            }
            SettlementPhase::Done { .. } => {}
        }
    }
}

/// Signs an allocation whose owner went quiet, from a state confirmed fresh just before: the
/// fees are read first, then a linearizable read, then [`settle::sign_allocation`] looks at the
/// record and signs with nothing awaited in between.
async fn sign_abandoned(ctx: &Context, network: &Network, allocation: Allocation, owner: u64) {
    let fees = match network.fees().await {
        Ok(fees) => fees,
        Err(e) => {
            tracing::warn!(error = %e, "cannot sign an abandoned settlement: no fees");
            return;
        }
    };
    if let Err(e) = ctx.barrier.wait().await {
        tracing::debug!(error = %e, "leadership not confirmed; signing later");
        return;
    }
    tracing::info!(owner, "signing an abandoned settlement");
    if let Err(e) =
        settle::sign_allocation(ctx, network, allocation, fees, SignedBy::Reconciler).await
    {
        tracing::warn!(error = %e, "abandoned settlement not signed");
    }
}
