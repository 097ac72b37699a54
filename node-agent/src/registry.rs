//! The node registry: every record under `<prefix>/nodes/`, listed once,
//! then followed with a watch from the listing's revision. A compacted
//! revision, a cancelled or broken watch, or an etcd restart leads to a
//! fresh listing (with backoff); until the first listing nothing is known
//! and the kernel is left alone.

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::overlay::DesiredOverlay;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_common::node::NodeRecord;

/// Who is looking: this node, its subnet and the cluster network.
#[derive(Debug, Clone)]
pub struct LocalView {
    pub node: String,
    pub subnet: Ipv4Network,
    pub network: Ipv4Network,
}

/// The records known right now, and what they mean for the overlay.
#[derive(Debug, Default)]
pub struct Registry {
    records: BTreeMap<String, NodeRecord>,
    /// Records left out of the overlay at the last computation (each is
    /// warned about when it starts being left out, not on every change).
    left_out: std::collections::BTreeSet<String>,
}

impl Registry {
    pub fn replace(&mut self, records: impl IntoIterator<Item = (String, Vec<u8>)>) {
        self.records.clear();
        for (name, value) in records {
            self.put(name, &value);
        }
    }

    pub fn put(&mut self, name: String, value: &[u8]) {
        match NodeRecord::parse(value) {
            Ok(rec) => {
                self.records.insert(name, rec);
            }
            Err(e) => {
                log::warn!("node {name}: unreadable record ({e}); treating it as absent");
                self.records.remove(&name);
            }
        }
    }

    pub fn delete(&mut self, name: &str) {
        self.records.remove(name);
    }

    pub fn get(&self, name: &str) -> Option<&NodeRecord> {
        self.records.get(name)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn desired(&mut self, view: &LocalView) -> DesiredOverlay {
        let (desired, warnings) = DesiredOverlay::from_records(
            &view.node,
            Some(view.subnet),
            view.network,
            &self.records,
        );
        let warnings: std::collections::BTreeSet<String> = warnings.into_iter().collect();
        for w in warnings.difference(&self.left_out) {
            log::warn!("{w}");
        }
        self.left_out = warnings;
        desired
    }
}

/// What the registry task publishes.
pub struct RegistryChannels {
    /// The desired overlay (`None` until the first listing).
    pub desired: watch::Sender<Option<Arc<DesiredOverlay>>>,
    /// This node's own record as etcd holds it (`None`: absent), after
    /// every listing and every change of it.
    pub own_record: watch::Sender<Option<Option<NodeRecord>>>,
}

/// List and watch `<prefix>/nodes/` forever.
pub async fn run(
    etcd: EtcdClient,
    keys: Keys,
    view: LocalView,
    out: RegistryChannels,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut registry = Registry::default();
    loop {
        // Each listing on the endpoint in use; one that failed hands over
        // to the next (a watch on a member that died, froze or lost its
        // leader ends with an error: keep-alives, require-leader).
        let mut picked = etcd.pick().await;
        match list_and_watch(&mut picked.client, &keys, &view, &out, &mut registry).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                etcd.failed(picked.index);
                metrics.etcd_errors.inc();
                log::warn!("node registry ({}): {e}", picked.endpoint);
            }
        }
        if out.desired.is_closed() {
            return;
        }
        let delay = backoff.next_delay();
        log::info!("node registry: listing again in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// One listing and the watch that follows it, until the watch ends.
async fn list_and_watch(
    client: &mut Client,
    keys: &Keys,
    view: &LocalView,
    out: &RegistryChannels,
    registry: &mut Registry,
) -> Result<(), etcd_client::Error> {
    let prefix = keys.nodes();
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    registry.replace(resp.kvs().iter().filter_map(|kv| {
        let name = keys.node_name_of(kv.key_str().ok()?)?;
        Some((name.to_string(), kv.value().to_vec()))
    }));
    publish(registry, view, out);
    log::info!(
        "node registry: {} records at revision {revision}; watching",
        registry.len()
    );
    let mut stream = client
        .watch(
            prefix.as_str(),
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
                "node registry: watch fell behind compaction (revision {}); listing again",
                resp.compact_revision()
            );
            return Ok(());
        }
        if resp.canceled() {
            log::warn!(
                "node registry: watch cancelled by etcd ({}); listing again",
                resp.cancel_reason()
            );
            return Ok(());
        }
        let mut changed = false;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = kv.key_str().ok().and_then(|k| keys.node_name_of(k)) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => registry.put(name.to_string(), kv.value()),
                EventType::Delete => registry.delete(name),
            }
            changed = true;
        }
        if changed {
            publish(registry, view, out);
        }
    }
    log::warn!("node registry: watch stream ended");
    Ok(())
}

fn publish(registry: &mut Registry, view: &LocalView, out: &RegistryChannels) {
    let desired = registry.desired(view);
    out.desired.send_if_modified(|cur| {
        if cur.as_deref() == Some(&desired) {
            false
        } else {
            *cur = Some(Arc::new(desired));
            true
        }
    });
    let own = registry.get(&view.node).cloned();
    out.own_record.send_if_modified(|cur| {
        if cur.as_ref() == Some(&own) {
            false
        } else {
            *cur = Some(own);
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LocalView {
        LocalView {
            node: "a".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            network: "10.244.0.0/16".parse().unwrap(),
        }
    }

    fn rec(i: u8) -> Vec<u8> {
        format!(
            r#"{{"subnet":"10.244.{i}.0/24","publicIP":"192.0.2.{i}","vtepMAC":"02:00:00:00:00:{i:02x}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn listing_puts_and_deletes_shape_the_desired_overlay() {
        let mut r = Registry::default();
        r.replace([
            ("a".into(), rec(1)),
            ("b".into(), rec(2)),
            ("c".into(), rec(3)),
        ]);
        assert_eq!(
            r.desired(&view()).nodes.keys().collect::<Vec<_>>(),
            ["b", "c"]
        );
        r.delete("b");
        r.put("d".into(), &rec(4));
        assert_eq!(
            r.desired(&view()).nodes.keys().collect::<Vec<_>>(),
            ["c", "d"]
        );
        // A record turned unreadable counts as absent.
        r.put("c".into(), b"{garbage");
        assert_eq!(r.desired(&view()).nodes.keys().collect::<Vec<_>>(), ["d"]);
        // A fresh listing replaces everything.
        r.replace([("e".into(), rec(5))]);
        assert_eq!(r.desired(&view()).nodes.keys().collect::<Vec<_>>(), ["e"]);
        assert!(r.get("a").is_none());
    }

    #[test]
    fn publish_only_signals_real_changes() {
        let (dtx, mut drx) = watch::channel(None);
        let (otx, mut orx) = watch::channel(None);
        let out = RegistryChannels {
            desired: dtx,
            own_record: otx,
        };
        let mut r = Registry::default();
        r.replace([("a".into(), rec(1)), ("b".into(), rec(2))]);
        publish(&mut r, &view(), &out);
        assert!(drx.has_changed().unwrap() && orx.has_changed().unwrap());
        drx.borrow_and_update();
        orx.borrow_and_update();
        publish(&mut r, &view(), &out);
        assert!(!drx.has_changed().unwrap() && !orx.has_changed().unwrap());
        r.delete("a");
        publish(&mut r, &view(), &out);
        assert!(!drx.has_changed().unwrap());
        assert_eq!(*orx.borrow_and_update(), Some(None));
    }
}
