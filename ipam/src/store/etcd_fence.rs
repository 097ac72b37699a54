//! The fence's transactions on etcd (see `store::fence`): applying a fence
//! and undoing a claim whose guard was revoked.

use crate::error::IpamError;
use crate::store::etcd::EtcdStore;
use crate::store::fence::{Fence, FenceOutcome};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

impl EtcdStore {
    /// Undo the claim `fence` describes if it applied (both keys hold
    /// exactly what it wrote); `true` when it had. For a claim whose guard
    /// was revoked (`end_claims`): no copy of it can apply any more, so no
    /// "cancelled" record is needed.
    pub async fn undo_claim(&self, fence: &Fence) -> Result<bool, IpamError> {
        let (ikey, hkey) = (fence.ip_key.as_str(), fence.handle_key.as_str());
        let txn = Txn::new()
            .when([
                Compare::value(ikey, CompareOp::Equal, fence.ip_value.as_bytes()),
                Compare::value(hkey, CompareOp::Equal, fence.handle_value.as_bytes()),
            ])
            .and_then([TxnOp::delete(ikey, None), TxnOp::delete(hkey, None)]);
        Ok(self
            .txn("undoing an unanswered claim", &[ikey, hkey], txn)
            .await?
            .succeeded())
    }

    /// Apply `fence` and wait for etcd's answer (within this store's
    /// timeout and deadline).
    pub async fn apply_fence(&self, fence: &Fence) -> Result<FenceOutcome, IpamError> {
        let (ikey, hkey) = (fence.ip_key.as_str(), fence.handle_key.as_str());
        let txn = Txn::new()
            .when([
                Compare::value(ikey, CompareOp::Equal, fence.ip_value.as_bytes()),
                Compare::value(hkey, CompareOp::Equal, fence.handle_value.as_bytes()),
            ])
            .and_then([TxnOp::delete(ikey, None), TxnOp::delete(hkey, None)])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision(hkey, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(hkey, fence.cancelled_value.as_bytes(), None)]),
            )]);
        let resp = self
            .txn("fencing an unanswered claim", &[ikey, hkey], txn)
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
