//! Staying a member of the cluster: the etcd lease behind this node's
//! subnet key and record is kept alive, and the record is put back when it
//! goes missing or is changed by someone else. A lease that expired anyway
//! (etcd kept running while this agent could not reach it for a whole TTL)
//! is taken again for the same subnet, or the agent stops with a clear
//! error when another node has it by then.

use crate::backoff::Backoff;
use crate::deleted_nodes::KubeNodes;
use crate::lease::{self, LeaseError, Leased};
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_common::node::NodeRecord;

/// Everything the membership task needs.
pub struct Membership {
    /// Each renewal on the endpoint in use; a failed one hands over to the
    /// next endpoint.
    pub client: EtcdClient,
    pub keys: Keys,
    pub config: ClusterConfig,
    pub node: String,
    /// Which subnets are this network's ([`lease::Scope`]).
    pub scope: lease::Scope,
    /// Where the record is published: `<prefix>/nodes/<node>`, or a named
    /// network's `<prefix>/network-nodes/<network>/<node>`.
    pub record_key: String,
    pub record: NodeRecord,
    pub lease_id: i64,
    /// The lease of the subnet's grace key (0: none yet or no grace).
    pub grace_lease_id: i64,
    pub times: lease::LeaseTimes,
    pub metrics: Arc<Metrics>,
    /// With `--kubernetes`: the Nodes Kubernetes has. A node that is no
    /// Node any more is being released by the other agents; its record is
    /// then not published again.
    pub kube_nodes: Option<KubeNodes>,
}

/// How often the lease is renewed: a third of its TTL, at most a minute.
pub fn renew_interval(ttl: i64) -> Duration {
    Duration::from_secs((ttl / 3).clamp(1, 60) as u64)
}

impl Membership {
    /// Run until a permanent error (returned) or until `own_record` closes.
    pub async fn run(
        mut self,
        mut own_record: watch::Receiver<Option<Option<NodeRecord>>>,
    ) -> Result<(), LeaseError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut next_renew = tokio::time::Instant::now() + renew_interval(self.times.ttl);
        // The record must be put (again) and has not been yet: kept until a
        // put succeeds, retried with the renewals.
        let mut record_due = false;
        loop {
            tokio::select! {
                changed = own_record.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let seen = own_record.borrow_and_update().clone();
                    if let Some(seen) = seen {
                        if seen.as_ref() != Some(&self.record) {
                            log::warn!(
                                "this node's record {} in etcd is {}; publishing it again",
                                self.record_key,
                                if seen.is_some() { "not ours" } else { "gone" }
                            );
                            record_due = true;
                            if let Err(e) = self.republish(&mut record_due).await {
                                self.metrics.etcd_errors.inc();
                                log::warn!("re-publishing the node record: {e}");
                                next_renew = tokio::time::Instant::now() + backoff.next_delay();
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_renew) => {
                    let renewed = match self.renew().await {
                        Ok(reacquired) => {
                            record_due |= reacquired;
                            self.republish(&mut record_due).await
                        }
                        Err(e) => Err(e),
                    };
                    match renewed {
                        Ok(()) => {
                            backoff.reset();
                            next_renew = tokio::time::Instant::now() + renew_interval(self.times.ttl);
                        }
                        Err(e) if e.is_permanent() => return Err(e),
                        Err(e) => {
                            self.metrics.etcd_errors.inc();
                            let delay = backoff.next_delay();
                            log::warn!(
                                "renewing the subnet lease or re-publishing the node record: {e}; again in {delay:?}"
                            );
                            next_renew = tokio::time::Instant::now() + delay;
                        }
                    }
                }
            }
        }
    }

    /// Put the node record under the current lease when `due`, and clear
    /// `due` once etcd took it.
    async fn republish(&mut self, due: &mut bool) -> Result<(), LeaseError> {
        if !*due {
            return Ok(());
        }
        if self.deleted_from_kubernetes() {
            log::warn!(
                "node {} was deleted from Kubernetes: its record is not published again",
                self.node
            );
            *due = false;
            return Ok(());
        }
        let mut picked = self.client.pick().await;
        lease::publish_record(
            &mut picked.client,
            &self.record_key,
            &self.record,
            self.lease_id,
        )
        .await
        .inspect_err(|_| self.client.failed(picked.index))?;
        *due = false;
        Ok(())
    }

    fn deleted_from_kubernetes(&self) -> bool {
        self.kube_nodes
            .as_ref()
            .is_some_and(|nodes| nodes.deleted(&self.node))
    }

    /// One keep-alive; when etcd says the lease is gone, lease the same
    /// subnet again. `true` when it did: the record must be put under the
    /// new lease.
    async fn renew(&mut self) -> Result<bool, LeaseError> {
        let picked = self.client.pick().await;
        let renewed = self.renew_on(picked.client).await;
        if renewed.is_err() {
            self.client.failed(picked.index);
        }
        renewed
    }

    async fn renew_on(&mut self, mut client: etcd_client::Client) -> Result<bool, LeaseError> {
        let alive = keep_alive(&mut client, self.lease_id).await?;
        if alive {
            self.metrics.leased.store(true, Ordering::Relaxed);
            let grace_alive =
                self.grace_lease_id != 0 && keep_alive(&mut client, self.grace_lease_id).await?;
            if self.times.grace > 0 && !grace_alive {
                // Its grace key is gone (or was never written by an older
                // agent): write it again, the subnet key being ours.
                log::warn!(
                    "the grace key of subnet {} is gone; writing it again",
                    self.subnet_name()
                );
                let before = self.lease_id;
                let leased = self.acquire(&mut client).await?;
                self.take(leased);
                // A new subnet lease: the record goes under it too.
                return Ok(leased.lease_id != before);
            }
            return Ok(false);
        }
        self.metrics.leased.store(false, Ordering::Relaxed);
        if self.deleted_from_kubernetes() {
            log::warn!(
                "the etcd lease of subnet {} is gone and node {} was deleted from Kubernetes: \
                 not leasing it again",
                self.subnet_name(),
                self.node
            );
            return Ok(false);
        }
        log::warn!(
            "the etcd lease of subnet {} expired; leasing it again",
            self.subnet_name()
        );
        let leased = self.acquire(&mut client).await?;
        self.take(leased);
        self.metrics.leased.store(true, Ordering::Relaxed);
        log::info!("subnet {} leased again", leased.subnet);
        Ok(true)
    }

    /// This node's subnet, exactly, with its grace key.
    async fn acquire(&self, client: &mut etcd_client::Client) -> Result<Leased, LeaseError> {
        lease::acquire(
            client,
            &self.keys,
            &self.config,
            self.scope,
            &self.node,
            self.record.lease_subnet(),
            true,
            self.times,
        )
        .await
    }

    /// This node's lease subnet, for the log.
    fn subnet_name(&self) -> String {
        self.record
            .lease_subnet()
            .map_or_else(|| "(none)".into(), |s| s.to_string())
    }

    fn take(&mut self, leased: Leased) {
        self.lease_id = leased.lease_id;
        self.grace_lease_id = leased.grace_lease_id;
    }
}

/// One keep-alive of `lease_id`: whether the lease still exists.
async fn keep_alive(client: &mut etcd_client::Client, lease_id: i64) -> Result<bool, LeaseError> {
    match client.lease_keep_alive(lease_id).await {
        Ok((mut keeper, mut stream)) => {
            keeper.keep_alive().await?;
            match tokio::time::timeout(crate::flags::REQUEST_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(resp))) => Ok(resp.ttl() > 0),
                Ok(Ok(None)) => lease::lease_alive(client, lease_id).await,
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(LeaseError::Etcd(etcd_client::Error::LeaseKeepAliveError(
                    "no keep-alive answer in time".into(),
                ))),
            }
        }
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
            lease::lease_alive(client, lease_id).await
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_frequent_enough_and_not_chatty() {
        assert_eq!(renew_interval(3), Duration::from_secs(1));
        assert_eq!(renew_interval(1), Duration::from_secs(1));
        assert_eq!(renew_interval(30), Duration::from_secs(10));
        assert_eq!(renew_interval(86_400), Duration::from_secs(60));
    }
}
