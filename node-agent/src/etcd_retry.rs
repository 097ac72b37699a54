//! Retrying etcd work that may fail for a while (etcd unreachable, a
//! config the operator has yet to write, a network some node may free),
//! with backoff, handing over to the next endpoint after an etcd error.

use crate::backoff::Backoff;
use crate::lease::LeaseError;
use crate::metrics::Metrics;
use std::time::Duration;
use trellis_common::etcd::EtcdClient;

/// Retry `op` with backoff while it fails with a transient error (etcd
/// unreachable, a missing config the operator has yet to write, an
/// exhausted network some node may free); permanent errors return. Each
/// attempt runs on the endpoint in use; an etcd error hands over to the
/// next one, and the first retry after one comes at once.
pub async fn retry<T, F, Fut>(
    what: &str,
    metrics: &Metrics,
    etcd: &EtcdClient,
    mut op: F,
) -> Result<T, LeaseError>
where
    F: FnMut(etcd_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, LeaseError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
    loop {
        let picked = etcd.pick().await;
        match op(picked.client).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                if matches!(e, LeaseError::Etcd(_)) {
                    metrics.etcd_errors.inc();
                    etcd.failed(picked.index);
                }
                let delay = backoff.next_delay();
                log::warn!("{what} ({}): {e}; retrying in {delay:?}", picked.endpoint);
                tokio::time::sleep(delay).await;
            }
        }
    }
}
