//! Locks that outlive a panic: the node aborts on panic (crash-only), so a poisoned lock only
//! means a thread died mid-section in a process that is going down; what it guards is still the
//! most useful answer until then.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
