//! Telling the state machine a signer's transaction count on chain (`SyncSigner`): before the
//! cluster first uses a key (the settlement that finds no synced signer, or the leader's
//! reconciler), and again whenever the key is idle and the chain shows it was used elsewhere.
//! The state machine never lowers a count, so no nonce is handed out twice.

use super::context::Context;
use super::Network;
use crate::chain::NonceTag;

/// Proposes `SyncSigner` for each of this node's signers of `network` whose count the chain
/// shows higher than the state machine's (or that the state machine does not know yet).
pub async fn sync(ctx: &Context, network: &Network) {
    for signer in network.signer_addresses() {
        let known = ctx.state.read(|s| {
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
        let synced = ctx
            .writer
            .sync_signer(network.chain_id, signer.into_array(), chain_nonce)
            .await;
        match synced {
            Ok(Ok(next_nonce)) => tracing::info!(
                %signer, network = %network.caip2, chain_nonce, next_nonce, "signer nonce synced"
            ),
            Ok(Err(why)) => tracing::warn!(%signer, %why, "signer sync refused"),
            Err(e) => tracing::warn!(%signer, error = %e, "signer sync not committed"),
        }
    }
}
