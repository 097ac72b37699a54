//! Nodes that Kubernetes deleted leave trellis too (`--kubernetes`).
//!
//! A node taken out of a cluster (`kubectl drain`, then `kubectl delete
//! node`) is usually switched off with it: its agent never runs again to
//! give its subnet back, and its etcd lease would keep subnet, record and
//! every other node's entries for it for a whole TTL. So every agent watches
//! the Nodes (metadata only) and, for a node whose record says it is a
//! Kubernetes node and whose Node is gone for `grace`, releases it as
//! `cleanup --release` would ([`crate::departure`]). Agents start at
//! different moments within a second `grace` so that usually one of them
//! does it; the others find the record gone. Records without the mark (a
//! control plane host running the agent outside Kubernetes) are never
//! touched. The agent of a deleted node that still runs stops publishing
//! its own record instead of fighting the others.

use crate::backoff::Backoff;
use crate::departure;
use crate::kube_api::{KubeApi, NodeEvent};
use etcd_client::GetOptions;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_common::node::NodeRecord;

/// The Nodes Kubernetes has, as this agent last heard; `None` until the
/// first complete list.
#[derive(Clone)]
pub struct KubeNodes {
    rx: watch::Receiver<Option<Arc<BTreeSet<String>>>>,
}

impl KubeNodes {
    /// Whether `name` is known not to be a Node (false while unknown).
    pub fn deleted(&self, name: &str) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|nodes| !nodes.contains(name))
    }

    /// A fixed set, for tests.
    #[cfg(test)]
    pub fn fixed(names: &[&str]) -> KubeNodes {
        let set = names.iter().map(|n| n.to_string()).collect();
        let (_tx, rx) = watch::channel(Some(Arc::new(set)));
        KubeNodes { rx }
    }
}

/// Starts following the Nodes: the handle, and the task to spawn.
pub fn follow(api: KubeApi) -> (KubeNodes, impl std::future::Future<Output = ()>) {
    let (tx, rx) = watch::channel(None);
    (KubeNodes { rx }, track(api, tx))
}

/// List, then watch from the list's version; list again when the watch
/// ends, fails or is too old.
async fn track(api: KubeApi, tx: watch::Sender<Option<Arc<BTreeSet<String>>>>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let (mut nodes, mut version) = match api.list_nodes().await {
            Ok(listed) => listed,
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("listing the Kubernetes Nodes: {e}; again in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        let _ = tx.send(Some(Arc::new(nodes.clone())));
        loop {
            let result = api
                .watch_nodes(&version, |event| {
                    let changed = match event {
                        NodeEvent::Added(name) => nodes.insert(name),
                        NodeEvent::Deleted(name) => nodes.remove(&name),
                        NodeEvent::Progress => false,
                    };
                    if changed {
                        let _ = tx.send(Some(Arc::new(nodes.clone())));
                    }
                })
                .await;
            match result {
                // The server ended the watch (its timeout): go on from there.
                Ok(last) => version = last,
                Err(e) => {
                    if !e.is_gone() {
                        log::warn!("watching the Kubernetes Nodes: {e}; listing again");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    break;
                }
            }
        }
    }
}

/// Nodes to look at again at a given time.
#[derive(Debug, Default)]
pub struct Pending {
    due: HashMap<String, Instant>,
}

impl Pending {
    /// Look at `name` at `at` (the earlier time wins).
    pub fn add(&mut self, name: String, at: Instant) {
        let slot = self.due.entry(name).or_insert(at);
        *slot = (*slot).min(at);
    }

    /// The nodes due by `now` that are still not Nodes; nodes that came
    /// back are dropped.
    pub fn take_due(&mut self, now: Instant, nodes: &BTreeSet<String>) -> Vec<String> {
        self.due.retain(|name, _| !nodes.contains(name));
        let mut due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        due.sort();
        for name in &due {
            self.due.remove(name);
        }
        due
    }

    pub fn next(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }
}

/// Releases, in etcd, the Kubernetes nodes that are no Nodes any more, as
/// long as `nodes` is followed. `me` is never released by itself.
pub async fn release_deleted(
    client: EtcdClient,
    keys: Keys,
    mut nodes: KubeNodes,
    me: String,
    grace: Duration,
) {
    let mut pending = Pending::default();
    let mut known: Option<Arc<BTreeSet<String>>> = None;
    loop {
        let wake = pending.next();
        tokio::select! {
            changed = nodes.rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(now_known) = nodes.rx.borrow_and_update().clone() else {
                    continue;
                };
                let gone: Vec<String> = match &known {
                    // At first, every record without a Node is a candidate.
                    None => match records(&client, &keys).await {
                        Ok(records) => records
                            .into_iter()
                            .filter(|(name, r)| r.kubernetes && !now_known.contains(name))
                            .map(|(name, _)| name)
                            .collect(),
                        Err(e) => {
                            // Looked at again with the next change.
                            log::warn!("listing node records: {e}");
                            continue;
                        }
                    },
                    Some(before) => before.difference(&now_known).cloned().collect(),
                };
                for name in gone.into_iter().filter(|n| *n != me) {
                    let at = Instant::now() + grace + jitter(&me, &name, grace);
                    log::info!(
                        "node {name} is no Kubernetes Node; releasing it in etcd in {:?} \
                         unless it comes back",
                        at - Instant::now()
                    );
                    pending.add(name, at);
                }
                known = Some(now_known);
            }
            _ = sleep_until(wake) => {
                let Some(now_known) = known.clone() else { continue };
                for name in pending.take_due(Instant::now(), &now_known) {
                    if let Err(e) = release(&client, &keys, &name).await {
                        log::warn!("{e}; trying again in {grace:?}");
                        pending.add(name, Instant::now() + grace);
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Up to `grace` more, different per agent and node.
fn jitter(me: &str, node: &str, grace: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(me.as_bytes());
    h.write(node.as_bytes());
    let millis = grace.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % millis)
}

/// Every node record, by name.
async fn records(
    client: &EtcdClient,
    keys: &Keys,
) -> Result<Vec<(String, NodeRecord)>, etcd_client::Error> {
    let mut picked = client.pick().await;
    let resp = picked
        .client
        .get(keys.nodes(), Some(GetOptions::new().with_prefix()))
        .await
        .inspect_err(|_| client.failed(picked.index))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(&keys.nodes())?.to_owned();
            let record = serde_json::from_slice(kv.value()).ok()?;
            Some((name, record))
        })
        .collect())
}

/// Releases `node` if its record is still there and marks a Kubernetes
/// node.
async fn release(client: &EtcdClient, keys: &Keys, node: &str) -> Result<(), String> {
    let mut picked = client.pick().await;
    let resp = picked
        .client
        .get(keys.node(node), None)
        .await
        .map_err(|e| {
            client.failed(picked.index);
            format!(
                "reading the record of node {node} at {}: {e}",
                picked.endpoint
            )
        })?;
    let Some(kv) = resp.kvs().first() else {
        log::info!("node {node} was released already");
        return Ok(());
    };
    match serde_json::from_slice::<NodeRecord>(kv.value()) {
        Ok(r) if r.kubernetes => {}
        _ => return Ok(()),
    }
    let departed = departure::release_node(client, keys, node)
        .await
        .map_err(|e| e.to_string())?;
    log::info!(
        "node {node} was deleted from Kubernetes: released its subnet {:?} and pod addresses {:?}",
        departed.subnets,
        departed.addresses
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_node_is_due_after_its_time_unless_it_came_back() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.add("node3".into(), t0 + Duration::from_secs(30));
        p.add("node4".into(), t0 + Duration::from_secs(30));
        assert_eq!(p.next(), Some(t0 + Duration::from_secs(30)));
        assert!(p
            .take_due(t0 + Duration::from_secs(10), &set(&["node1"]))
            .is_empty());
        // node4 is a Node again: it is forgotten.
        let due = p.take_due(t0 + Duration::from_secs(31), &set(&["node1", "node4"]));
        assert_eq!(due, vec!["node3".to_string()]);
        assert_eq!(p.next(), None);
    }

    #[test]
    fn the_earlier_time_wins() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.add("n".into(), t0 + Duration::from_secs(60));
        p.add("n".into(), t0 + Duration::from_secs(5));
        p.add("n".into(), t0 + Duration::from_secs(90));
        assert_eq!(p.next(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_node_is_deleted_only_when_the_nodes_are_known_and_lack_it() {
        let nodes = KubeNodes::fixed(&["node1", "node2"]);
        assert!(!nodes.deleted("node1"));
        assert!(nodes.deleted("node3"));
        let (_tx, rx) = watch::channel(None);
        let unknown = KubeNodes { rx };
        assert!(!unknown.deleted("node3"));
    }

    #[test]
    fn jitter_stays_within_the_grace() {
        for i in 0..100 {
            let j = jitter("me", &format!("n{i}"), Duration::from_secs(30));
            assert!(j < Duration::from_secs(30));
        }
    }
}
