//! The etcd calls of `trellisctl`, each bounded by the settings' timeout
//! and going on to the next endpoint when one is away (the agent's client).

use anyhow::{anyhow, Context, Result};
use etcd_client::{Compare, CompareOp, GetOptions, GetResponse, KeyValue, Txn, TxnOp};
use std::time::{Duration, Instant};
use trellis_common::etcd::{EtcdClient, EtcdSettings};
use trellis_common::etcd_failover::Failed;
use trellis_common::keys::Keys;

pub struct Etcd {
    client: EtcdClient,
    pub keys: Keys,
    timeout: Duration,
}

impl Etcd {
    pub async fn connect(settings: &EtcdSettings) -> Result<Etcd> {
        let client = settings.connect().await?;
        Ok(Etcd {
            client,
            keys: settings.keys(),
            timeout: settings.timeout,
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Every key under `prefix` (sorted by key).
    pub async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.read(prefix, Some(GetOptions::new().with_prefix()))
            .await
    }

    /// Every key under `prefix`, and the revision of the listing.
    pub async fn list_at(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let mut resp = self
            .get_response(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.take_kvs(), revision))
    }

    /// The key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.read(key, None).await?.into_iter().next())
    }

    async fn read(&self, key: &str, options: Option<GetOptions>) -> Result<Vec<KeyValue>> {
        Ok(self.get_response(key, options).await?.take_kvs())
    }

    async fn get_response(&self, key: &str, options: Option<GetOptions>) -> Result<GetResponse> {
        self.client
            .call(self.deadline(), |c| {
                let (key, options) = (key.to_string(), options.clone());
                async move { c.kv_client().get(key, options).await }
            })
            .await
            .map_err(|f| self.failed(&format!("reading {key}"), &f))
    }

    fn failed(&self, doing: &str, f: &Failed) -> anyhow::Error {
        anyhow!(
            "etcd ({}): {doing}: {}",
            self.client.endpoints(),
            f.describe()
        )
    }

    /// The seconds left on lease `id` (none when it is gone).
    pub async fn lease_left(&self, id: i64) -> Result<Option<i64>> {
        let resp = self
            .client
            .call(self.deadline(), |c| async move {
                c.lease_client().time_to_live(id, None).await
            })
            .await
            .map_err(|f| self.failed(&format!("lease {id:x}"), &f))?;
        Ok((resp.ttl() >= 0).then_some(resp.ttl()))
    }

    /// Put `value` at `key` only if the key's mod revision is still
    /// `revision` (0: only if it is absent); `Ok(false)` when it changed.
    pub async fn put_if_unchanged(&self, key: &str, value: &[u8], revision: i64) -> Result<bool> {
        let compare = if revision == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, revision)
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(txn, &format!("writing {key}")).await.context(
            "the write may or may not have applied: read it back with `trellisctl config get`",
        )
    }

    /// Run `txn` (a write); whether its comparisons held.
    pub async fn txn(&self, txn: Txn, doing: &str) -> Result<bool> {
        let resp = self
            .client
            .call_write(self.deadline(), |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await
            .map_err(|f| self.failed(doing, &f))?;
        Ok(resp.succeeded())
    }
}
