//! What the facilitator needs from the node it runs on, and nothing more: a narrow context
//! instead of the whole node. `/verify`, `/settle` and the reconciler read the applied state,
//! write through the typed writer, confirm freshness with the read barrier and read the
//! clock; none of them reaches Raft, the peer client or the HTTP layer.

use std::sync::Arc;

use x402_raft_store::storage::StateView;
use x402_raft_store::types::NodeId;

use super::Facilitator;
use crate::cluster::read_barrier::ReadBarrier;
use crate::cluster::writer::Writer;
use crate::seams::SharedClock;

/// The facilitator's view of its node. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// This node: the owner of the settlements it begins.
    pub id: NodeId,
    pub facilitator: Arc<Facilitator>,
    /// This replica's applied state.
    pub state: StateView,
    pub writer: Writer,
    pub barrier: ReadBarrier,
    pub clock: SharedClock,
}
