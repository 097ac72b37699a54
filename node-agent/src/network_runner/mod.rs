//! The named networks, served on this node. For each usable network the
//! agent leases a subnet inside it, makes its VXLAN device and bridge
//! ([`NodeNetwork::named`]), writes its record to
//! `<stateDir>/networks/<name>.json` for the plugins and publishes it at
//! `<prefix>/network-nodes/<name>/<node>`, then follows the network's other
//! nodes as the default network's (registry, reconciler, membership, all
//! under the network's keys). A network that goes is taken down: its record
//! file first (an ADD on it fails at once), then its tasks, its devices and
//! its subnet. Desired against actual: the runner is handed the whole set of
//! usable networks after every change, and with the first one it removes
//! what an earlier run left of networks that are gone by now.

mod conflists;
mod context;
mod serve;
mod teardown;

pub use context::NodeContext;

use crate::node_network::{named_bridge_name, vxlan_name};
use crate::node_table;
use serve::serve;
use std::collections::BTreeMap;
use std::sync::Arc;
use teardown::{release, remove_direct_routes, remove_file, remove_links, sweep_leftovers};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_common::network::NetworkRecord;
use trellis_common::node;

/// The usable named networks by name (`None` until the first listing).
pub type Desired = Option<BTreeMap<String, NetworkRecord>>;

/// One network being served: what it was started for, and its task
/// (setting up, then following; aborted to stop it).
struct Served {
    record: NetworkRecord,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve the networks `desired` names until its sender goes (the agent
/// stops: the networks' data paths stay as they are, like the default
/// network's).
pub async fn run(ctx: Arc<NodeContext>, mut desired: watch::Receiver<Desired>) {
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut swept = false;
    // The tables and the networks as last set up, kept on every resync.
    let mut last: Option<(node_table::NodeTables, BTreeMap<String, NetworkRecord>)> = None;
    let mut resync = tokio::time::interval(ctx.resync);
    loop {
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = resync.tick() => {
                if let Some((tables, networks)) = &last {
                    keep_tables(tables).await;
                    if let Some(dir) = &ctx.cni_conf_dir {
                        conflists::sync(dir, networks);
                    }
                }
                continue;
            }
        }
        let Some(want) = desired.borrow_and_update().clone() else {
            continue;
        };
        // Isolation first: a network's pods are kept apart before any is
        // attached; the conflists of networks that go, before they go.
        let tables = node_table::for_networks(&ctx.default, &want, ctx.ip_masq);
        if let Err(e) = node_table::ensure(&tables).await {
            log::error!("nftables table {}: {e}", node_table::NETWORKS_TABLE);
        }
        if let Some(dir) = &ctx.cni_conf_dir {
            conflists::sync(dir, &want);
        }
        last = Some((tables, want.clone()));
        if !swept {
            sweep_leftovers(&ctx, &want).await;
            swept = true;
        }
        let names: Vec<String> = served.keys().cloned().collect();
        for name in names {
            let keep = match want.get(&name) {
                Some(record) if *record == served[&name].record => continue,
                Some(record) => same_place(&served[&name].record, record),
                None => false,
            };
            let old = served.remove(&name).expect("listed above");
            stop(&ctx, &name, old, keep).await;
        }
        for (name, record) in want {
            if let std::collections::btree_map::Entry::Vacant(slot) = served.entry(name) {
                let task = tokio::spawn(serve(ctx.clone(), slot.key().clone(), record.clone()));
                slot.insert(Served { record, task });
            }
        }
        ctx.metrics.networks_served.set(served.len() as u64);
    }
}

/// Put the named networks' tables back when someone changed them.
async fn keep_tables(tables: &node_table::NodeTables) {
    match node_table::keep(tables).await {
        Ok(true) => log::warn!(
            "nftables table {} was missing or changed; re-installed",
            node_table::NETWORKS_TABLE
        ),
        Ok(false) => {}
        Err(e) => log::warn!("nftables table {}: {e}", node_table::NETWORKS_TABLE),
    }
}

/// Whether a changed network keeps its subnet and devices (only, say,
/// `internal` changed): then it is only restarted, not taken down.
fn same_place(old: &NetworkRecord, new: &NetworkRecord) -> bool {
    let (o, n) = (&old.config, &new.config);
    (o.network, o.subnet_len, o.vni, o.port, o.ipv6_network)
        == (n.network, n.subnet_len, n.vni, n.port, n.ipv6_network)
}

/// Stop serving `name`; unless `keep`, take it down on this node.
async fn stop(ctx: &NodeContext, name: &str, mut served: Served, keep: bool) {
    let path = node::record_path_for(&ctx.state_dir, Some(name));
    if !keep {
        remove_file(&path);
    }
    served.task.abort();
    // Every part of the network runs inside its task: once it is gone,
    // nothing writes to its devices any more.
    let _ = (&mut served.task).await;
    ctx.metrics
        .per_network
        .write()
        .expect("metrics lock")
        .remove(name);
    if keep {
        log::info!("network {name} changed: serving it again");
        return;
    }
    let vni = served.record.config.vni;
    remove_links(&ctx.nl, &[vxlan_name(vni), named_bridge_name(vni)]).await;
    remove_direct_routes(&ctx.nl, name, &served.record.config.pod_networks()).await;
    release(ctx, name, served.record.config.lease_network()).await;
    log::info!("network {name} is taken down on this node");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> NetworkRecord {
        NetworkRecord::parse("n", json.as_bytes()).unwrap()
    }

    #[test]
    fn only_a_change_of_place_takes_a_network_down() {
        let base = record(r#"{"network":"10.0.0.0/16","vni":2}"#);
        let internal = record(r#"{"network":"10.0.0.0/16","vni":2,"internal":true}"#);
        assert!(same_place(&base, &internal));
        for moved in [
            r#"{"network":"10.1.0.0/16","vni":2}"#,
            r#"{"network":"10.0.0.0/16","vni":3}"#,
            r#"{"network":"10.0.0.0/16","vni":2,"subnetLen":26}"#,
            r#"{"network":"10.0.0.0/16","vni":2,"port":4789}"#,
        ] {
            assert!(!same_place(&base, &record(moved)), "{moved}");
        }
    }
}
