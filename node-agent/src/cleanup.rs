//! `trellis-agent cleanup`: remove everything the agent created on this
//! node (VXLAN devices and with them every overlay entry, the bridges, the
//! nftables tables, the direct routes, the state files, the named networks' too) and, with `--release`, its record and
//! subnet lease in etcd.

use crate::departure::{self, DepartureError};
use crate::flags::CleanupArgs;
use crate::node_network::is_named_bridge_name;
use crate::node_table;
use crate::overlay::dataplane::remove_direct_routes;
use ipnetwork::IpNetwork;
use trellis_common::etcd::EtcdError;
use trellis_common::node::{network_records_dir, read_node_record, NodeRecord};
use trellis_common::node_name::{node_name, NodeNameError};
use trellis_kernel::{KernelError, Netlink};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Departure(#[from] DepartureError),
    #[error("{0}: pass --node-name or set NODE_NAME")]
    NodeName(#[from] NodeNameError),
    #[error("removing {path}: {source}")]
    StateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `name` is a VXLAN device name the agent gives.
pub fn is_agent_vxlan_name(name: &str) -> bool {
    let digits = name
        .strip_prefix("trellis.")
        .or_else(|| name.strip_prefix("trellis"));
    digits
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
        .is_some_and(|vni| (1..=0x00ff_ffff).contains(&vni))
}

pub async fn run(args: CleanupArgs) -> Result<(), CleanupError> {
    let nl = Netlink::current()?;
    for dev in nl.vxlan_devices().await? {
        if is_agent_vxlan_name(&dev.name) && nl.delete_link(&dev).await? {
            log::info!("deleted VXLAN device {} and its entries", dev.name);
        }
    }
    let direct = remove_direct_routes(&nl, &pod_networks(&args.state_dir)).await?;
    if direct > 0 {
        log::info!("removed {direct} direct routes to other nodes");
    }
    if nl.delete_link_by_name(&args.bridge).await? {
        log::info!("deleted bridge {}", args.bridge);
    }
    for link in nl.links().await? {
        if link.is_kind("bridge")
            && is_named_bridge_name(&link.name)
            && nl.delete_link(&link).await?
        {
            log::info!("deleted bridge {} of a named network", link.name);
        }
    }
    let networks = trellis_common::node::network_records_dir(&args.state_dir);
    match std::fs::remove_dir_all(&networks) {
        Ok(()) => log::info!("removed {}", networks.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CleanupError::StateFile {
                path: networks.display().to_string(),
                source,
            })
        }
    }
    node_table::remove().await?;
    let path = trellis_common::node::record_path(&args.state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => log::info!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CleanupError::StateFile {
                path: path.display().to_string(),
                source,
            })
        }
    }
    if args.release {
        let node = node_name(args.node_name.as_deref())?;
        let settings = args.etcd.settings();
        let client = settings.connect().await?;
        let keys = settings.keys();
        // No agent of this node is left to reclaim its pods' addresses.
        let departed = departure::release_node(&client, &keys, &node).await?;
        log::info!(
            "node {node} left the cluster (released {:?} and pod addresses {:?})",
            departed.subnets,
            departed.addresses
        );
    }
    Ok(())
}

/// The pod networks of this node's records (the default network's and
/// every named network's), read before the records go: the direct routes
/// into them are the agent's.
fn pod_networks(state_dir: &std::path::Path) -> Vec<IpNetwork> {
    let mut records: Vec<NodeRecord> = read_node_record(state_dir)
        .ok()
        .flatten()
        .into_iter()
        .collect();
    if let Ok(entries) = std::fs::read_dir(network_records_dir(state_dir)) {
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            records.extend(NodeRecord::parse(&bytes).ok());
        }
    }
    records
        .iter()
        .flat_map(|r| {
            r.network
                .map(IpNetwork::V4)
                .into_iter()
                .chain(r.ipv6_network.map(IpNetwork::V6))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agent_devices_are_matched() {
        for n in ["trellis.1", "trellis.4096", "trellis16777215"] {
            assert!(is_agent_vxlan_name(n), "{n}");
        }
        for n in [
            "trellis0",
            "trellis.",
            "trellis",
            "flannel.1",
            "trellis.1a",
            "vxlan0",
        ] {
            assert!(!is_agent_vxlan_name(n), "{n}");
        }
    }
}
