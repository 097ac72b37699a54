//! The fence's transactions on etcd (see `store::fence`): applying a fence
//! and undoing a claim whose guard was revoked.

use crate::error::IpamError;
use crate::store::etcd::EtcdStore;
use crate::store::fence::{Fence, FenceOutcome};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

/// What undoing `fence`'s claim compares and deletes: both keys it wrote
/// holding exactly its values, and its IPv6 twin's key if it wrote one.
fn undo_of(fence: &Fence) -> (Vec<Compare>, Vec<TxnOp>) {
    let (ikey, hkey) = (fence.ip_key.as_str(), fence.handle_key.as_str());
    let mut when = vec![
        Compare::value(ikey, CompareOp::Equal, fence.ip_value.as_bytes()),
        Compare::value(hkey, CompareOp::Equal, fence.handle_value.as_bytes()),
    ];
    let mut ops = vec![TxnOp::delete(ikey, None), TxnOp::delete(hkey, None)];
    if let Some(k6) = fence.ip6_key.as_deref() {
        when.push(Compare::value(
            k6,
            CompareOp::Equal,
            fence.ip_value.as_bytes(),
        ));
        ops.push(TxnOp::delete(k6, None));
    }
    (when, ops)
}

/// Every key `fence` may touch.
fn keys_of(fence: &Fence) -> Vec<&str> {
    let mut keys = vec![fence.ip_key.as_str(), fence.handle_key.as_str()];
    keys.extend(fence.ip6_key.as_deref());
    keys
}

impl EtcdStore {
    /// Undo the claim `fence` describes if it applied (both keys hold
    /// exactly what it wrote); `true` when it had. For a claim whose guard
    /// was revoked (`end_claims`): no copy of it can apply any more, so no
    /// "cancelled" record is needed.
    pub async fn undo_claim(&self, fence: &Fence) -> Result<bool, IpamError> {
        let (when, ops) = undo_of(fence);
        let txn = Txn::new().when(when).and_then(ops);
        Ok(self
            .txn("undoing an unanswered claim", &keys_of(fence), txn)
            .await?
            .succeeded())
    }

    /// Apply `fence` and wait for etcd's answer (within this store's
    /// timeout and deadline).
    pub async fn apply_fence(&self, fence: &Fence) -> Result<FenceOutcome, IpamError> {
        let hkey = fence.handle_key.as_str();
        let (when, ops) = undo_of(fence);
        let txn = Txn::new().when(when).and_then(ops).or_else([TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision(hkey, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(hkey, fence.cancelled_value.as_bytes(), None)]),
        )]);
        let resp = self
            .txn("fencing an unanswered claim", &keys_of(fence), txn)
            .await?;
        if resp.succeeded() {
            return Ok(FenceOutcome::Undone);
        }
        let nested_succeeded = resp
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, TxnOpResponse::Txn(t) if t.succeeded()));
        Ok(if nested_succeeded {
            FenceOutcome::Fenced
        } else {
            FenceOutcome::NotOurs
        })
    }
}
