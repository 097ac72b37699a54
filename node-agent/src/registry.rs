//! The node registry: every record under `<prefix>/nodes/` (or a named
//! network's `<prefix>/network-nodes/<network>/`), followed
//! ([`crate::etcd_follow`]): until the first listing nothing is known and
//! the kernel is left alone.

use crate::etcd_follow::{self, Entry, Follower};
use crate::metrics::Metrics;
use crate::overlay::admission::Admission;
use crate::overlay::{DesiredOverlay, OverlayUpdate};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::name_under;
use trellis_common::node::NodeRecord;

pub use crate::overlay::LocalView;

/// The records known right now, and what they mean for the overlay.
///
/// A change is checked against what is admitted in O(log n) and sent as
/// that one node's update while no record is left out (the usual case).
/// When a record is left out, or a change would leave one out, which
/// records win depends on all of them (the first by name keeps a
/// contested subnet or MAC), so the state is computed again from every
/// record and sent whole.
#[derive(Debug)]
pub struct Registry {
    view: LocalView,
    records: BTreeMap<String, NodeRecord>,
    admission: Admission,
    /// Why records were left out at the last computation (each is warned
    /// about when it starts being left out, not on every change).
    left_out: BTreeSet<String>,
}

impl Registry {
    pub fn new(view: LocalView) -> Self {
        let admission = Admission::new(&view);
        Registry {
            view,
            records: BTreeMap::new(),
            admission,
            left_out: BTreeSet::new(),
        }
    }

    /// A fresh listing: everything known before is forgotten.
    pub fn replace(
        &mut self,
        records: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> OverlayUpdate {
        self.records = records
            .into_iter()
            .filter_map(|(name, value)| Some((name.clone(), parse(&name, &value)?)))
            .collect();
        self.recompute()
    }

    /// A record written: the overlay's update, if it changes the overlay.
    pub fn put(&mut self, name: String, value: &[u8]) -> Option<OverlayUpdate> {
        let Some(rec) = parse(&name, value) else {
            return self.delete(&name);
        };
        if self.records.get(&name) == Some(&rec) {
            return None;
        }
        self.records.insert(name.clone(), rec);
        if !self.left_out.is_empty() {
            return Some(self.recompute());
        }
        let old = self.admission.remove(&name);
        match self.admission.admit(&name, &self.records[&name]) {
            Ok(Some(node)) if old == Some(node) => None,
            Ok(Some(node)) => Some(OverlayUpdate::Set(name, node)),
            Ok(None) => None,
            Err(_) => Some(self.recompute()),
        }
    }

    /// A record deleted: the overlay's update, if it changes the overlay.
    pub fn delete(&mut self, name: &str) -> Option<OverlayUpdate> {
        self.records.remove(name)?;
        if !self.left_out.is_empty() {
            return Some(self.recompute());
        }
        self.admission
            .remove(name)
            .map(|_| OverlayUpdate::Remove(name.to_string()))
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

    /// The desired overlay as the updates sent so far make it.
    pub fn desired(&self) -> &DesiredOverlay {
        self.admission.desired()
    }

    /// The whole state from every record, warning about each record newly
    /// left out.
    fn recompute(&mut self) -> OverlayUpdate {
        let view = &self.view;
        let (admission, warnings) = Admission::of_records(view, &self.records);
        let warnings: BTreeSet<String> = warnings.into_iter().collect();
        for w in warnings.difference(&self.left_out) {
            log::warn!("{w}");
        }
        self.left_out = warnings;
        self.admission = admission;
        OverlayUpdate::Replace(self.admission.desired().clone())
    }
}

fn parse(name: &str, value: &[u8]) -> Option<NodeRecord> {
    NodeRecord::parse(value)
        .map_err(|e| log::warn!("node {name}: unreadable record ({e}); treating it as absent"))
        .ok()
}

/// What the registry task publishes.
pub struct RegistryChannels {
    /// The desired overlay's updates: a `Replace` after every listing,
    /// then one per change.
    pub updates: mpsc::UnboundedSender<OverlayUpdate>,
    /// This node's own record as etcd holds it (`None`: absent), after
    /// every listing and every change of it.
    pub own_record: watch::Sender<Option<Option<NodeRecord>>>,
}

impl RegistryChannels {
    /// Send `update`; `false` once nobody listens any more.
    fn send(&self, update: Option<OverlayUpdate>) -> bool {
        update.is_none_or(|u| self.updates.send(u).is_ok())
    }

    fn publish_own(&self, registry: &Registry) {
        let own = registry.get(&registry.view.node).cloned();
        self.own_record.send_if_modified(|cur| {
            if cur.as_ref() == Some(&own) {
                false
            } else {
                *cur = Some(own);
                true
            }
        });
    }
}

/// List and watch the node records under `prefix` forever.
pub async fn run(
    etcd: EtcdClient,
    prefix: String,
    view: LocalView,
    out: RegistryChannels,
    metrics: Arc<Metrics>,
) {
    let mut following = Following {
        prefix: prefix.clone(),
        out,
        registry: Registry::new(view),
    };
    etcd_follow::follow(etcd, prefix, "node registry", &mut following, metrics).await;
}

/// The registry as it follows its prefix, and where its updates go.
struct Following {
    prefix: String,
    out: RegistryChannels,
    registry: Registry,
}

impl Follower for Following {
    fn listed(&mut self, entries: Vec<Entry>, _revision: i64) -> bool {
        let prefix = &self.prefix;
        let listed = self.registry.replace(
            entries
                .into_iter()
                .filter_map(|e| Some((name_under(prefix, &e.key)?.to_string(), e.value))),
        );
        let listening = self.out.send(Some(listed));
        self.out.publish_own(&self.registry);
        listening
    }

    fn put(&mut self, entry: Entry) -> bool {
        let Some(name) = name_under(&self.prefix, &entry.key) else {
            return true;
        };
        let update = self.registry.put(name.to_string(), &entry.value);
        self.out.send(update)
    }

    fn delete(&mut self, key: &str) -> bool {
        let Some(name) = name_under(&self.prefix, key) else {
            return true;
        };
        let update = self.registry.delete(name);
        self.out.send(update)
    }

    fn caught_up(&mut self) {
        self.out.publish_own(&self.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LocalView {
        LocalView {
            node: "a".into(),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet6: None,
            network6: None,
            underlay_v6: false,
        }
    }

    fn rec(i: u8) -> Vec<u8> {
        format!(
            r#"{{"subnet":"10.244.{i}.0/24","publicIP":"192.0.2.{i}","vtepMAC":"02:00:00:00:00:{i:02x}"}}"#
        )
        .into_bytes()
    }

    fn names(r: &Registry) -> Vec<&str> {
        r.desired().nodes.keys().map(String::as_str).collect()
    }

    #[test]
    fn listing_puts_and_deletes_shape_the_desired_overlay() {
        let mut r = Registry::new(view());
        let listed = r.replace([
            ("a".into(), rec(1)),
            ("b".into(), rec(2)),
            ("c".into(), rec(3)),
        ]);
        assert!(matches!(&listed, OverlayUpdate::Replace(d) if d == r.desired()));
        assert_eq!(names(&r), ["b", "c"]);
        // Changes without conflicts travel as the one node's update.
        assert_eq!(r.delete("b"), Some(OverlayUpdate::Remove("b".into())));
        assert!(matches!(r.put("d".into(), &rec(4)), Some(OverlayUpdate::Set(n, _)) if n == "d"));
        assert_eq!(names(&r), ["c", "d"]);
        // Nothing changes: nothing is sent (this node, a record re-put
        // unchanged, a node that was not there).
        assert_eq!(r.put("d".into(), &rec(4)), None);
        assert_eq!(r.put("a".into(), &rec(1)), None);
        assert_eq!(r.delete("zz"), None);
        // A record turned unreadable counts as absent.
        assert_eq!(
            r.put("c".into(), b"{garbage"),
            Some(OverlayUpdate::Remove("c".into()))
        );
        assert_eq!(names(&r), ["d"]);
        // A fresh listing replaces everything.
        r.replace([("e".into(), rec(5))]);
        assert_eq!(names(&r), ["e"]);
        assert!(r.get("a").is_none());
    }

    #[test]
    fn conflicts_are_settled_by_name_whatever_the_order_of_events() {
        let mut r = Registry::new(view());
        // The state as the reconciler follows it, update by update.
        let mut followed = DesiredOverlay::default();
        let mut follow = |u: Option<OverlayUpdate>| {
            if let Some(u) = u {
                followed.apply(u);
            }
        };
        follow(Some(r.replace([("m".into(), rec(5))])));
        // "z" takes m's subnet: left out, and the state sent whole.
        let update = r.put("z".into(), &rec(5));
        assert!(matches!(update, Some(OverlayUpdate::Replace(_))));
        follow(update);
        assert_eq!(names(&r), ["m"]);
        // "b" comes first by name and takes it too: b wins, m goes, as a
        // listing of the same records would decide.
        follow(r.put("b".into(), &rec(5)));
        assert_eq!(names(&r), ["b"]);
        // While records are left out every change is computed whole: b
        // leaves and m (first of the rest) gets the subnet back.
        follow(r.delete("b"));
        assert_eq!(names(&r), ["m"]);
        follow(r.delete("m"));
        assert_eq!(names(&r), ["z"]);
        // No conflict left: back to single updates.
        let update = r.put("c".into(), &rec(3));
        assert!(matches!(update, Some(OverlayUpdate::Set(..))));
        follow(update);
        assert_eq!(&followed, r.desired());
        let mut listed = Registry::new(view());
        listed.replace([("c".into(), rec(3)), ("z".into(), rec(5))]);
        assert_eq!(listed.desired(), r.desired());
    }

    #[test]
    fn own_record_is_published_only_when_it_changes() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (otx, mut orx) = watch::channel(None);
        let out = RegistryChannels {
            updates: tx,
            own_record: otx,
        };
        let mut r = Registry::new(view());
        r.replace([("a".into(), rec(1)), ("b".into(), rec(2))]);
        out.publish_own(&r);
        assert!(orx.has_changed().unwrap());
        orx.borrow_and_update();
        out.publish_own(&r);
        assert!(!orx.has_changed().unwrap());
        r.delete("a");
        out.publish_own(&r);
        assert_eq!(*orx.borrow_and_update(), Some(None));
    }

    #[test]
    fn a_closed_channel_stops_the_sending() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (otx, _orx) = watch::channel(None);
        let out = RegistryChannels {
            updates: tx,
            own_record: otx,
        };
        assert!(out.send(None) && out.send(Some(OverlayUpdate::Remove("x".into()))));
        drop(rx);
        assert!(!out.send(Some(OverlayUpdate::Remove("x".into()))));
    }
}
