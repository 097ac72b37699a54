//! Fencing a claim that got no answer.
//!
//! When etcd stops answering (SIGSTOP, a stall) while a claim transaction
//! is in flight, the request may sit unread in etcd's socket and apply when
//! etcd resumes, after the runtime was told the ADD failed. The fence is the
//! transaction that makes sure it leaves nothing behind, whichever of the
//! two etcd applies first:
//! - the claim applied already: both keys hold exactly what the claim wrote,
//!   so the fence deletes them;
//! - the claim has not applied: the handle key is absent, so the fence puts
//!   a "cancelled" record there, and the claim's "handle absent" condition
//!   fails when it arrives. DEL, a retried ADD or GC removes that record.
//!
//! The fence must be sent by a process that waits for its answer: etcd
//! cancels the requests of a client that went away, so a fence queued by an
//! exiting plugin could be dropped while the claim goes through.
//!
//! This module holds the fence as data (it is queued as JSON for the
//! keeper); `EtcdStore::claim` makes it, and `EtcdStore::apply_fence` (and
//! `undo_claim`, for a claim whose guard lease was revoked; both in
//! `store::etcd_fence`) run its transaction.

use crate::allocation::Owner;
use crate::store::records::HandleValue;
use serde::{Deserialize, Serialize};

/// Everything needed to fence one claim: the keys and the exact values it
/// wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fence {
    pub ip_key: String,
    pub ip_value: String,
    pub handle_key: String,
    pub handle_value: String,
    pub cancelled_value: String,
    /// The IPv6 twin's key of a dual-stack claim (its value is `ip_value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_key: Option<String>,
}

/// What applying a fence found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The claim had applied; its keys are gone now.
    Undone,
    /// The claim had not applied; the handle is fenced so it cannot.
    Fenced,
    /// The handle holds something else (another claim of the same
    /// attachment won): nothing to do.
    NotOurs,
}

/// The fence of a claim of `owner` that wrote `ip` = (key, value) and
/// `handle` = (key, value): undo exactly those, or cancel the handle.
pub(super) fn fence_for(owner: &Owner, ip: (&str, &[u8]), handle: (&str, &[u8])) -> Fence {
    let cancelled = HandleValue::Cancelled {
        cancelled: true,
        node: owner.node.clone(),
        network: owner.network.clone(),
    };
    Fence {
        ip_key: ip.0.to_string(),
        ip_value: String::from_utf8_lossy(ip.1).into_owned(),
        handle_key: handle.0.to_string(),
        handle_value: String::from_utf8_lossy(handle.1).into_owned(),
        cancelled_value: String::from_utf8_lossy(&cancelled.encode()).into_owned(),
        ip6_key: None,
    }
}
