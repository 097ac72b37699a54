//! The named networks, `<prefix>/networks/<name>`, as this agent sees them:
//! followed ([`crate::etcd_follow`]) and judged together with the cluster
//! config by the one rule `trellisctl network create` applies
//! (`trellis_common::network::usable`: the older of two conflicting records
//! wins). Each network coming in, changing, being ignored (with the reason,
//! once) and going is logged, the counts are on `/metrics`, and the usable
//! ones go to [`crate::network_runner`], which serves them.

use crate::etcd_follow::{Entry, Follower};
use crate::metrics::Metrics;
use crate::network_runner::Desired;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::keys::Keys;
use trellis_common::network::{self, NetworkRecord, StoredNetwork};

/// What changed in the usable networks, or in why a record is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    In(String, NetworkRecord),
    Changed(String, NetworkRecord),
    Gone(String),
    Ignored(String, String),
}

/// The stored records and what they come to beside the default network.
#[derive(Debug)]
pub struct NetworkSet {
    default: ClusterConfig,
    stored: BTreeMap<String, StoredNetwork>,
    usable: BTreeMap<String, NetworkRecord>,
    ignored: BTreeMap<String, String>,
}

impl NetworkSet {
    pub fn new(default: ClusterConfig) -> Self {
        NetworkSet {
            default,
            stored: BTreeMap::new(),
            usable: BTreeMap::new(),
            ignored: BTreeMap::new(),
        }
    }

    /// The networks in use (by name).
    pub fn usable(&self) -> &BTreeMap<String, NetworkRecord> {
        &self.usable
    }

    /// A fresh listing: what changed against what was known.
    pub fn replace(&mut self, stored: impl IntoIterator<Item = StoredNetwork>) -> Vec<Change> {
        self.stored = stored.into_iter().map(|s| (s.name.clone(), s)).collect();
        self.recompute()
    }

    pub fn put(&mut self, stored: StoredNetwork) -> Vec<Change> {
        self.stored.insert(stored.name.clone(), stored);
        self.recompute()
    }

    pub fn delete(&mut self, name: &str) -> Vec<Change> {
        if self.stored.remove(name).is_none() {
            return Vec::new();
        }
        self.recompute()
    }

    /// Which records are in depends on all of them (an older record's
    /// removal may let a younger one in), so each change judges them all.
    fn recompute(&mut self) -> Vec<Change> {
        let stored: Vec<StoredNetwork> = self.stored.values().cloned().collect();
        let judged = network::usable(Some(&self.default), &stored);
        let usable: BTreeMap<String, NetworkRecord> = judged.usable.into_iter().collect();
        let ignored: BTreeMap<String, String> = judged
            .refused
            .iter()
            .map(|e| (e.network().to_string(), e.to_string()))
            .collect();
        let mut changes = Vec::new();
        for name in self.usable.keys() {
            if !usable.contains_key(name) {
                changes.push(Change::Gone(name.clone()));
            }
        }
        for (name, record) in &usable {
            match self.usable.get(name) {
                None => changes.push(Change::In(name.clone(), record.clone())),
                Some(old) if old != record => {
                    changes.push(Change::Changed(name.clone(), record.clone()))
                }
                Some(_) => {}
            }
        }
        for (name, why) in &ignored {
            if self.ignored.get(name) != Some(why) {
                changes.push(Change::Ignored(name.clone(), why.clone()));
            }
        }
        self.usable = usable;
        self.ignored = ignored;
        changes
    }
}

/// The set as it follows `<prefix>/networks/`.
pub struct Following {
    pub keys: Keys,
    pub set: NetworkSet,
    pub metrics: Arc<Metrics>,
    /// Where the usable networks go after every listing and change (to
    /// [`crate::network_runner`]).
    pub served: watch::Sender<Desired>,
}

impl Following {
    fn stored(&self, entry: Entry) -> Option<StoredNetwork> {
        Some(StoredNetwork {
            name: self.keys.network_name_of(&entry.key)?.to_string(),
            create_revision: entry.create_revision,
            value: entry.value,
        })
    }

    fn report(&self, changes: Vec<Change>) -> bool {
        for change in changes {
            match change {
                Change::In(name, r) => log::info!("network {name}: {}", describe(&r)),
                Change::Changed(name, r) => {
                    log::info!("network {name} changed: {}", describe(&r))
                }
                Change::Gone(name) => log::info!("network {name} is gone"),
                Change::Ignored(_, why) => log::warn!("ignoring {why}"),
            }
        }
        self.metrics.networks.set(self.set.usable.len() as u64);
        self.metrics
            .networks_ignored
            .set(self.set.ignored.len() as u64);
        let usable = Some(self.set.usable.clone());
        self.served.send_if_modified(|served| {
            let changed = *served != usable;
            *served = usable;
            changed
        });
        true
    }
}

fn describe(r: &NetworkRecord) -> String {
    let c = &r.config;
    let nets: Vec<String> = c.pod_networks().iter().map(|n| n.to_string()).collect();
    let internal = if r.internal { ", internal" } else { "" };
    format!("{}, VNI {}{internal}", nets.join(" and "), c.vni)
}

impl Follower for Following {
    fn listed(&mut self, entries: Vec<Entry>, _revision: i64) -> bool {
        let stored: Vec<StoredNetwork> =
            entries.into_iter().filter_map(|e| self.stored(e)).collect();
        let changes = self.set.replace(stored);
        log::info!(
            "networks: {} in, {} ignored",
            self.set.usable.len(),
            self.set.ignored.len()
        );
        self.report(changes)
    }

    fn put(&mut self, entry: Entry) -> bool {
        let Some(stored) = self.stored(entry) else {
            return true;
        };
        let changes = self.set.put(stored);
        self.report(changes)
    }

    fn delete(&mut self, key: &str) -> bool {
        let Some(name) = self.keys.network_name_of(key) else {
            return true;
        };
        let changes = self.set.delete(name);
        self.report(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, rev: i64, value: &str) -> StoredNetwork {
        StoredNetwork {
            name: name.into(),
            create_revision: rev,
            value: value.as_bytes().to_vec(),
        }
    }

    fn set() -> NetworkSet {
        NetworkSet::new(ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap())
    }

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::In(n, _) => format!("in {n}"),
                Change::Changed(n, _) => format!("changed {n}"),
                Change::Gone(n) => format!("gone {n}"),
                Change::Ignored(n, _) => format!("ignored {n}"),
            })
            .collect()
    }

    #[test]
    fn networks_come_change_and_go_and_a_conflict_is_reported_once() {
        let mut s = set();
        let c = s.replace([
            stored("multihost", 5, r#"{"network":"10.0.0.0/16","vni":2}"#),
            stored(
                "clash",
                9,
                r#"{"network":"10.0.5.0/24","subnetLen":26,"vni":3}"#,
            ),
        ]);
        assert_eq!(names(&c), ["in multihost", "ignored clash"]);
        let c = s.put(stored("other", 10, r#"{"network":"10.1.0.0/16","vni":4}"#));
        assert_eq!(
            names(&c),
            ["in other"],
            "the ignored one is not reported again"
        );
        let c = s.put(stored(
            "other",
            10,
            r#"{"network":"10.1.0.0/16","vni":4,"internal":true}"#,
        ));
        assert_eq!(names(&c), ["changed other"]);
        // The older record goes: the younger one it blocked comes in.
        let c = s.delete("multihost");
        assert_eq!(names(&c), ["gone multihost", "in clash"]);
        assert!(s.delete("nosuch").is_empty());
        let c = s.put(stored("other", 10, r#"{"network":"bad"}"#));
        assert_eq!(names(&c), ["gone other", "ignored other"]);
        assert_eq!(s.usable().keys().collect::<Vec<_>>(), ["clash"]);
        let c = s.replace([]);
        assert_eq!(names(&c), ["gone clash"]);
    }
}
