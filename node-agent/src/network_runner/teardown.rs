//! Taking a named network down on this node, and what an earlier run left
//! of networks that are gone.

use super::context::NodeContext;
use crate::lease;
use crate::node_network::named_bridge_name;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;
use trellis_common::network::NetworkRecord;
use trellis_common::node::{self, NodeRecord};
use trellis_kernel::Netlink;

/// Give the node's subnet in `name` back (its record there goes with its
/// lease). When etcd cannot be reached the leases, no longer renewed,
/// expire by themselves.
pub(super) async fn release(ctx: &NodeContext, name: &str, network: ipnetwork::IpNetwork) {
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

pub(super) fn remove_file(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", path.display()),
    }
}

pub(super) async fn remove_links(nl: &Netlink, names: &[String]) {
    for name in names {
        match nl.delete_link_by_name(name).await {
            Ok(true) => log::info!("deleted {name}"),
            Ok(false) => {}
            Err(e) => log::warn!("deleting {name}: {e}"),
        }
    }
}

/// Remove the network's direct routes on the underlay (its VXLAN routes
/// went with the device).
pub(super) async fn remove_direct_routes(nl: &Netlink, name: &str, networks: &[IpNetwork]) {
    match crate::overlay::dataplane::remove_direct_routes(nl, networks).await {
        Ok(0) => {}
        Ok(n) => log::info!("network {name}: removed {n} direct routes"),
        Err(e) => log::warn!("network {name}: removing its direct routes: {e}"),
    }
}

/// What an earlier run left: the record files of networks that are gone
/// (with their devices and subnets), and the devices of networks whose VNI
/// changed while the agent was down.
pub(super) async fn sweep_leftovers(ctx: &NodeContext, want: &BTreeMap<String, NetworkRecord>) {
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
        let networks: Vec<IpNetwork> = left
            .network
            .map(IpNetwork::V4)
            .into_iter()
            .chain(left.ipv6_network.map(IpNetwork::V6))
            .collect();
        remove_direct_routes(&ctx.nl, &name, &networks).await;
        if wanted.is_none() {
            remove_file(&path);
            let lease_network = left.network.map(IpNetwork::V4);
            if let Some(network) = lease_network.or(left.ipv6_network.map(IpNetwork::V6)) {
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
