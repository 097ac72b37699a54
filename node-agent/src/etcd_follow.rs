//! Following a key prefix in etcd: one listing, then a watch from the
//! listing's revision, forever. A compacted revision, a cancelled or broken
//! watch, or an etcd restart leads to a fresh listing (with backoff) that
//! replaces everything known; until the first listing nothing is known.
//! The node registry, the name table and the named networks follow their
//! prefixes this way.

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::sync::Arc;
use std::time::Duration;
use trellis_common::etcd::EtcdClient;

/// A key as listed or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (the older of two records that
    /// conflict may be the one that wins).
    pub create_revision: i64,
}

impl Entry {
    fn of(kv: &etcd_client::KeyValue) -> Option<Entry> {
        Some(Entry {
            key: kv.key_str().ok()?.to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
        })
    }
}

/// What follows a prefix. Each method returns `false` once nobody needs
/// the state any more, which ends [`follow`].
pub trait Follower {
    /// A fresh listing of every key under the prefix, at `revision`.
    fn listed(&mut self, entries: Vec<Entry>, revision: i64) -> bool;
    /// A key written.
    fn put(&mut self, entry: Entry) -> bool;
    /// A key deleted (or expired with its lease).
    fn delete(&mut self, key: &str) -> bool;
    /// Every event of one watch response is in.
    fn caught_up(&mut self) {}
}

/// List and watch `prefix` into `follower` until it stops listening.
/// `what` names the state in logs.
pub async fn follow(
    etcd: EtcdClient,
    prefix: String,
    what: &str,
    follower: &mut impl Follower,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        // Each listing on the endpoint in use; one that failed hands over
        // to the next (a watch on a member that died, froze or lost its
        // leader ends with an error: keep-alives, require-leader).
        let mut picked = etcd.pick().await;
        match list_and_watch(&mut picked.client, &prefix, what, follower).await {
            Ok(Flow::Stop) => return,
            Ok(Flow::ListAgain) => backoff.reset(),
            Err(e) => {
                etcd.failed(picked.index);
                metrics.etcd_errors.inc();
                log::warn!("{what} ({}): {e}", picked.endpoint);
            }
        }
        let delay = backoff.next_delay();
        log::info!("{what}: listing again in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

enum Flow {
    Stop,
    ListAgain,
}

/// One listing and the watch that follows it, until the watch ends (or the
/// follower stops listening).
async fn list_and_watch(
    client: &mut Client,
    prefix: &str,
    what: &str,
    follower: &mut impl Follower,
) -> Result<Flow, etcd_client::Error> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let kvs: Vec<Entry> = resp.kvs().iter().filter_map(Entry::of).collect();
    let count = kvs.len();
    if !follower.listed(kvs, revision) {
        return Ok(Flow::Stop);
    }
    log::info!("{what}: {count} records at revision {revision}; watching");
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_fragment(),
            ),
        )
        .await?;
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 {
            log::warn!(
                "{what}: watch fell behind compaction (revision {}); listing again",
                resp.compact_revision()
            );
            return Ok(Flow::ListAgain);
        }
        if resp.canceled() {
            log::warn!(
                "{what}: watch cancelled by etcd ({}); listing again",
                resp.cancel_reason()
            );
            return Ok(Flow::ListAgain);
        }
        for event in resp.events() {
            let Some(entry) = event.kv().and_then(Entry::of) else {
                continue;
            };
            let listening = match event.event_type() {
                EventType::Put => follower.put(entry),
                EventType::Delete => follower.delete(&entry.key),
            };
            if !listening {
                return Ok(Flow::Stop);
            }
        }
        follower.caught_up();
    }
    log::warn!("{what}: watch stream ended");
    Ok(Flow::ListAgain)
}
