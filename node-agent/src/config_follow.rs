//! The cluster config `<prefix>/config` while the agent runs: a change of
//! `directRouting` is applied at once (the overlay's routes move over in a
//! full resync, each replaced in place); a change of anything else (the
//! network, the VNI, the port) needs the agents restarted, and is logged
//! as such. A config that no longer parses, or is deleted, leaves the
//! agent on the one it runs with.

use crate::etcd_follow::{Entry, Follower};
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use trellis_common::cluster_config::ClusterConfig;

pub struct ConfigFollower {
    /// `<prefix>/config` (the prefix followed may hold other keys too).
    pub key: String,
    /// The config the agent started with.
    pub running: ClusterConfig,
    /// Direct routing on or off, read by the reconciler on every pass.
    pub direct: watch::Sender<bool>,
    /// Asks the reconciler for a full resync.
    pub resync: Arc<Notify>,
    /// The last config that differed from `running` beyond direct routing
    /// (logged once).
    pub pending: Option<ClusterConfig>,
    /// The VXLAN device's MTU, against which pods of a larger `mtu` are
    /// warned about when direct routing goes off.
    pub overlay_mtu: u32,
}

impl ConfigFollower {
    fn seen(&mut self, value: &[u8]) {
        let new = match ClusterConfig::parse(value) {
            Ok(new) => new,
            Err(e) => {
                log::warn!(
                    "cluster config {} is not usable ({e}); keeping the one this agent runs with",
                    self.key
                );
                return;
            }
        };
        let on = new.direct_routing;
        if self
            .direct
            .send_if_modified(|d| std::mem::replace(d, on) != on)
        {
            log::info!(
                "cluster config: direct routing {}; moving the routes over",
                if on { "on" } else { "off" }
            );
            self.resync.notify_one();
            if let Some(mtu) = self.running.mtu.filter(|m| !on && *m > self.overlay_mtu) {
                log::warn!(
                    "the pods' MTU {mtu} is larger than the overlay's {}: with direct routing off, their larger packets rely on path MTU discovery (restart the agents with an mtu of at most {} to avoid it)",
                    self.overlay_mtu,
                    self.overlay_mtu
                );
            }
        }
        let beyond = ClusterConfig {
            direct_routing: self.running.direct_routing,
            ..new.clone()
        };
        if beyond == self.running {
            self.pending = None;
        } else if self.pending.as_ref() != Some(&beyond) {
            log::warn!(
                "cluster config {} changed beyond directRouting; this agent applies that only when restarted",
                self.key
            );
            self.pending = Some(beyond);
        }
    }
}

impl Follower for ConfigFollower {
    fn listed(&mut self, entries: Vec<Entry>, _revision: i64) -> bool {
        match entries.iter().find(|e| e.key == self.key) {
            Some(e) => self.seen(&e.value),
            None => log::warn!(
                "cluster config {} is gone; keeping the one this agent runs with",
                self.key
            ),
        }
        true
    }

    fn put(&mut self, entry: Entry) -> bool {
        if entry.key == self.key {
            self.seen(&entry.value);
        }
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        if key == self.key {
            log::warn!("cluster config {key} was deleted; keeping the one this agent runs with");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
        }
    }

    #[test]
    fn direct_routing_follows_the_config_and_nothing_else_does() {
        let running = ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap();
        let (tx, mut rx) = watch::channel(false);
        let resync = Arc::new(Notify::new());
        let mut f = ConfigFollower {
            key: "/trellis/config".into(),
            running,
            direct: tx,
            resync: resync.clone(),
            pending: None,
            overlay_mtu: 1450,
        };
        let on = r#"{"network":"10.244.0.0/16","directRouting":true}"#;
        f.listed(vec![entry("/trellis/config", on)], 5);
        assert!(*rx.borrow_and_update());
        let resynced = || resync.notified().now_or_never().is_some();
        assert!(resynced());
        // Another key under the prefix, a broken config, a deletion: no change.
        f.put(entry(
            "/trellis/configuration",
            r#"{"network":"10.0.0.0/8"}"#,
        ));
        f.put(entry("/trellis/config", "not json"));
        f.delete("/trellis/config");
        assert!(!rx.has_changed().unwrap());
        assert!(*rx.borrow() && !resynced());
        // Off again; a new network is only noted.
        f.put(entry(
            "/trellis/config",
            r#"{"network":"10.245.0.0/16","directRouting":false}"#,
        ));
        assert!(!*rx.borrow_and_update() && resynced());
        assert_eq!(
            f.pending.as_ref().map(|c| c.lease_network().to_string()),
            Some("10.245.0.0/16".into())
        );
        // The same value again changes nothing.
        f.put(entry("/trellis/config", r#"{"network":"10.244.0.0/16"}"#));
        assert!(!rx.has_changed().unwrap() && !resynced());
        assert!(f.pending.is_none());
    }
}
