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

use crate::dns::{self, DnsServer};
use crate::etcd_follow;
use crate::etcd_retry::retry;
use crate::lease::{self, LeaseError, LeaseTimes};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::names::{self, NameTable};
use crate::node_network::{named_bridge_name, vxlan_name, NodeNetwork};
use crate::node_table;
use crate::overlay::{KernelDataplane, LocalView, Reconciler};
use crate::registry::{self, RegistryChannels};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_common::network::NetworkRecord;
use trellis_common::node::{self, NodeRecord};
use trellis_kernel::{KernelError, Link, Netlink};

/// The usable named networks by name (`None` until the first listing).
pub type Desired = Option<BTreeMap<String, NetworkRecord>>;

/// What every network served on this node shares.
pub struct NodeContext {
    pub client: EtcdClient,
    pub keys: Keys,
    pub node: String,
    pub nl: Netlink,
    pub underlay: Link,
    pub public_ip: IpAddr,
    pub state_dir: PathBuf,
    pub times: LeaseTimes,
    pub resync: Duration,
    pub tx_checksum_offload: bool,
    /// The default network, which every named one is kept apart from.
    pub default: ClusterConfig,
    /// `--ip-masq`: the named networks' egress is masqueraded too (but an
    /// internal network's, which has none).
    pub ip_masq: bool,
    /// With `--dns`: each network's DNS on its gateways, answering its
    /// containers' names.
    pub dns: Option<dns::On>,
    /// The agent's metrics: etcd errors of every network count there, and
    /// the number of networks served.
    pub metrics: Arc<Metrics>,
}

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
    let mut tables = None;
    let mut resync = tokio::time::interval(ctx.resync);
    loop {
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = resync.tick() => {
                keep_tables(tables.as_ref()).await;
                continue;
            }
        }
        let Some(want) = desired.borrow_and_update().clone() else {
            continue;
        };
        // Isolation first: a network's pods are kept apart before any is
        // attached.
        let now = node_table::for_networks(&ctx.default, &want, ctx.ip_masq);
        if let Err(e) = node_table::ensure(&now).await {
            log::error!("nftables table {}: {e}", node_table::NETWORKS_TABLE);
        }
        tables = Some(now);
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
async fn keep_tables(tables: Option<&node_table::NodeTables>) {
    let Some(tables) = tables else {
        return;
    };
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
    if keep {
        log::info!("network {name} changed: serving it again");
        return;
    }
    let vni = served.record.config.vni;
    remove_links(&ctx.nl, &[vxlan_name(vni), named_bridge_name(vni)]).await;
    release(ctx, name, served.record.config.network).await;
    log::info!("network {name} is taken down on this node");
}

/// Give the node's subnet in `name` back (its record there goes with its
/// lease). When etcd cannot be reached the leases, no longer renewed,
/// expire by themselves.
async fn release(ctx: &NodeContext, name: &str, network: ipnetwork::Ipv4Network) {
    let key = ctx.keys.network_node(name, &ctx.node);
    let mut picked = ctx.client.pick().await;
    let released = tokio::time::timeout(
        crate::flags::REQUEST_TIMEOUT * 3,
        lease::release_named(&mut picked.client, &ctx.keys, &ctx.node, network, &key),
    )
    .await;
    match released {
        Ok(Ok(subnets)) => {
            for subnet in subnets {
                log::info!("network {name}: released subnet {subnet}");
            }
        }
        Ok(Err(e)) => log::warn!("network {name}: releasing its subnet: {e}; its lease expires"),
        Err(_) => log::warn!("network {name}: releasing its subnet timed out; its lease expires"),
    }
}

fn remove_file(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", path.display()),
    }
}

async fn remove_links(nl: &Netlink, names: &[String]) {
    for name in names {
        match nl.delete_link_by_name(name).await {
            Ok(true) => log::info!("deleted {name}"),
            Ok(false) => {}
            Err(e) => log::warn!("deleting {name}: {e}"),
        }
    }
}

/// What an earlier run left: the record files of networks that are gone
/// (with their devices and subnets), and the devices of networks whose VNI
/// changed while the agent was down.
async fn sweep_leftovers(ctx: &NodeContext, want: &BTreeMap<String, NetworkRecord>) {
    let dir = node::network_records_dir(&ctx.state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".json"))
            .map(str::to_string)
        else {
            continue;
        };
        let left = match node::read_node_record_for(&ctx.state_dir, Some(&name)) {
            Ok(Some(record)) => record,
            _ => {
                remove_file(&path);
                continue;
            }
        };
        let wanted = want.get(&name);
        let bridge = wanted.map(|r| named_bridge_name(r.config.vni));
        if wanted.is_some() && left.bridge == bridge {
            continue;
        }
        let mut links: Vec<String> = left.bridge.iter().cloned().collect();
        links.extend(vxlan_with_mac(&ctx.nl, &left).await);
        remove_links(&ctx.nl, &links).await;
        if wanted.is_none() {
            remove_file(&path);
            if let Some(network) = left.network {
                release(ctx, &name, network).await;
            }
            log::info!("network {name} is gone: took down what was left of it");
        }
    }
}

/// The VXLAN device holding `record`'s VTEP MAC (a MAC of its own per
/// network and node).
async fn vxlan_with_mac(nl: &Netlink, record: &NodeRecord) -> Option<String> {
    let devices = nl.vxlan_devices().await.ok()?;
    devices
        .into_iter()
        .find(|d| d.mac.is_some_and(|m| m.to_string() == record.vtep_mac))
        .map(|d| d.name)
}

/// Serve `name` until aborted; a failure (devices that cannot be made, a
/// subnet taken by another node) starts it again after a pause.
async fn serve(ctx: Arc<NodeContext>, name: String, record: NetworkRecord) {
    loop {
        if let Err(e) = serve_once(&ctx, &name, &record).await {
            log::error!("network {name}: {e}; setting it up again in 10s");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("setting up its devices: {0}")]
    Kernel(#[from] KernelError),
    #[error("writing {path}: {source}")]
    StateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

async fn serve_once(
    ctx: &NodeContext,
    name: &str,
    record: &NetworkRecord,
) -> Result<(), ServeError> {
    let config = &record.config;
    let scope = lease::Scope::Named(config.network);
    let preferred = node::read_node_record_for(&ctx.state_dir, Some(name))
        .ok()
        .flatten()
        .filter(|r| r.node_name.as_deref().is_none_or(|n| n == ctx.node))
        .map(|r| r.subnet);
    let what = format!("network {name}: leasing a subnet");
    let leased = retry(&what, &ctx.metrics, &ctx.client, |mut c| async move {
        lease::acquire(
            &mut c, &ctx.keys, config, scope, &ctx.node, preferred, false, ctx.times,
        )
        .await
    })
    .await?;
    let net = NodeNetwork {
        tx_checksum_offload: ctx.tx_checksum_offload,
        ..NodeNetwork::named(
            &ctx.node,
            name,
            config,
            leased.subnet,
            &ctx.underlay,
            ctx.public_ip,
        )
    };
    let set_up = set_up(ctx, name, &net).await;
    if let Err(e) = set_up {
        // A fresh subnet nothing uses goes back (a kept one stays: pods
        // may hold its addresses).
        if !leased.reused {
            let mut c = ctx.client.pick().await.client;
            let _ = c.lease_revoke(leased.lease_id).await;
            if leased.grace_lease_id != 0 {
                let _ = c.lease_revoke(leased.grace_lease_id).await;
            }
        }
        return Err(e);
    }
    let (own, dns) = set_up.expect("checked above");
    let key = ctx.keys.network_node(name, &ctx.node);
    let what = format!("network {name}: publishing the node record");
    retry(&what, &ctx.metrics, &ctx.client, |mut c| {
        let (key, own) = (key.clone(), own.clone());
        async move { lease::publish_record(&mut c, &key, &own, leased.lease_id).await }
    })
    .await?;
    log::info!(
        "network {name}: subnet {} on {} and {} (MTU {})",
        net.subnet,
        net.bridge,
        net.vxlan.name,
        net.mtu()
    );

    // Its own metrics, so that its remote nodes and entries are not
    // mixed with the default network's.
    let metrics = Arc::new(Metrics::default());
    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let (own_tx, own_rx) = watch::channel(None);
    let registry = registry::run(
        ctx.client.clone(),
        ctx.keys.network_nodes(name),
        LocalView::of(&net),
        RegistryChannels {
            updates: updates_tx,
            own_record: own_tx,
        },
        metrics.clone(),
    );
    let dataplane = KernelDataplane::new(ctx.nl.clone(), net.clone());
    let reconciler = Reconciler::new(dataplane, metrics.clone()).run(
        updates_rx,
        ctx.resync,
        Arc::new(Notify::new()),
    );
    let membership = Membership {
        client: ctx.client.clone(),
        keys: ctx.keys.clone(),
        config: config.clone(),
        node: ctx.node.clone(),
        scope,
        record_key: key,
        record: own,
        lease_id: leased.lease_id,
        grace_lease_id: leased.grace_lease_id,
        times: ctx.times,
        metrics: metrics.clone(),
        kube_nodes: None,
    };
    let names = async {
        match &dns {
            Some(server) => {
                let mut following = names::Following {
                    keys: ctx.keys.clone(),
                    table: server.names(),
                };
                let what = format!("names of network {name}");
                let prefix = ctx.keys.ips();
                etcd_follow::follow(
                    ctx.client.clone(),
                    prefix,
                    &what,
                    &mut following,
                    metrics.clone(),
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    // All of it in this task: aborting it stops every part (and drops the
    // DNS server).
    tokio::select! {
        r = membership.run(own_rx) => r?,
        () = registry => {}
        () = reconciler => {}
        () = names => {}
    }
    Ok(())
}

/// The devices, the DNS server and the record file of `net`: the record
/// as published, and the server.
async fn set_up(
    ctx: &NodeContext,
    name: &str,
    net: &NodeNetwork,
) -> Result<(NodeRecord, Option<DnsServer>), ServeError> {
    if net.subnet6.is_some() {
        trellis_kernel::sysctl::enable_ipv6_forwarding()?;
    }
    net.ensure_vxlan(&ctx.nl).await?;
    net.ensure_bridge(&ctx.nl).await?;
    let server = ctx.dns.as_ref().and_then(|on| {
        let names = NameTable::for_network(net.cluster_networks(), name);
        dns::serve_gateways(net, on, names)
    });
    let record = NodeRecord {
        dns: server.is_some(),
        ..net.record()
    };
    node::write_node_record_for(&ctx.state_dir, Some(name), &record).map_err(|source| {
        ServeError::StateFile {
            path: node::record_path_for(&ctx.state_dir, Some(name))
                .display()
                .to_string(),
            source,
        }
    })?;
    Ok((record, server))
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
