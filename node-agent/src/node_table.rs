//! The agent's nftables tables `ip trellis-agent` and, in a dual-stack
//! cluster, `ip6 trellis-agent`, each rebuilt as a whole in one transaction
//! and kept in step on every resync:
//! - `--ip-masq`: traffic from this node's pod subnets to destinations
//!   outside the cluster networks leaves with the node's address (IPv4 in
//!   the `ip` table, IPv6 in the `ip6` one);
//! - `--vxlan-notrack`: the outer VXLAN packets to and from this node's
//!   tunnel endpoint skip conntrack (the pods' own connections stay tracked).

use crate::node_network::NodeNetwork;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::network::NetworkRecord;
use trellis_kernel::{
    Isolated, Isolation, KernelError, Masquerade, NftTable, TableState, TunnelNotrack,
};

/// The agent's nftables tables' name (`nft list table ip trellis-agent`,
/// `nft list table ip6 trellis-agent`).
pub const TABLE: &str = "trellis-agent";

/// What the agent's tables hold for this node: the `ip` table, then the
/// `ip6` one (empty, hence absent, unless the node has an IPv6 subnet and
/// masquerades).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTables {
    pub ip: NftTable,
    pub ip6: NftTable,
}

/// What the tables hold for this node.
pub fn for_node(net: &NodeNetwork, ip_masq: bool, vxlan_notrack: bool) -> NodeTables {
    let mut ip = NftTable::new(TABLE);
    let mut ip6 = NftTable::new_ip6(TABLE);
    if ip_masq {
        if let (Some(subnet), Some(network)) = (net.subnet, net.network) {
            ip = ip.with_masquerade(Masquerade::new(
                IpNetwork::V4(subnet),
                vec![IpNetwork::V4(network)],
            ));
        }
        if let (Some(subnet6), Some(network6)) = (net.subnet6, net.network6) {
            ip6 = ip6.with_masquerade(Masquerade::new(
                IpNetwork::V6(subnet6),
                vec![IpNetwork::V6(network6)],
            ));
        }
    }
    if vxlan_notrack {
        // In the table of the tunnel's own family.
        let rule = TunnelNotrack::new(net.vxlan.local, net.vxlan.port);
        if net.vxlan.local.is_ipv4() {
            ip = ip.with_notrack(rule);
        } else {
            ip6 = ip6.with_notrack(rule);
        }
    }
    NodeTables { ip, ip6 }
}

impl NodeTables {
    fn both(&self) -> [NftTable; 2] {
        [self.ip.clone(), self.ip6.clone()]
    }
}

/// The named networks' tables `ip trellis-networks` and `ip6
/// trellis-networks`, owned by [`crate::network_runner`].
pub const NETWORKS_TABLE: &str = "trellis-networks";

/// What the named networks' tables hold: each network kept apart from
/// every other trellis network (the default one too), an internal one
/// from everything; with `ip_masq`, the traffic of the others leaving the
/// cluster's networks masqueraded. A network's pods egress through their
/// own node, so matching the whole network is matching this node's
/// subnet of it.
pub fn for_networks(
    default: &ClusterConfig,
    networks: &BTreeMap<String, NetworkRecord>,
    ip_masq: bool,
) -> NodeTables {
    let family = |v4: bool| {
        let nets = |c: &ClusterConfig| -> Vec<IpNetwork> {
            c.pod_networks()
                .into_iter()
                .filter(|n| n.is_ipv4() == v4)
                .collect()
        };
        let all: Vec<IpNetwork> = nets(default)
            .into_iter()
            .chain(networks.values().flat_map(|r| nets(&r.config)))
            .collect();
        let mut isolated = Vec::new();
        let mut masqueraded = Vec::new();
        for record in networks.values() {
            for network in nets(&record.config) {
                isolated.push(Isolated {
                    network,
                    others: all.iter().copied().filter(|n| *n != network).collect(),
                    internal: record.internal,
                });
                if !record.internal {
                    masqueraded.push(network);
                }
            }
        }
        let mut table = if v4 {
            NftTable::new(NETWORKS_TABLE)
        } else {
            NftTable::new_ip6(NETWORKS_TABLE)
        };
        if let Some(rule) = Masquerade::of_all(&masqueraded, all).filter(|_| ip_masq) {
            table = table.with_masquerade(rule);
        }
        table.with_isolation(Isolation { networks: isolated })
    };
    NodeTables {
        ip: family(true),
        ip6: family(false),
    }
}

/// Install (or rebuild) the tables, off the async threads (`nft` runs as a
/// child process). A table with nothing on is removed.
pub async fn ensure(tables: &NodeTables) -> Result<(), KernelError> {
    let both = tables.both();
    tokio::task::spawn_blocking(move || both.iter().try_for_each(NftTable::ensure))
        .await
        .expect("nft task panicked")
}

/// Remove the agent's tables, the named networks' too (absent is fine).
pub async fn remove() -> Result<(), KernelError> {
    tokio::task::spawn_blocking(|| {
        for name in [TABLE, NETWORKS_TABLE] {
            NftTable::new(name).remove()?;
            NftTable::new_ip6(name).remove()?;
        }
        Ok(())
    })
    .await
    .expect("nft task panicked")
}

/// Rebuild a table when a part went missing or was changed (someone
/// flushed the ruleset); `true` when one had to be.
pub async fn keep(tables: &NodeTables) -> Result<bool, KernelError> {
    let both = tables.both();
    tokio::task::spawn_blocking(move || {
        let mut rebuilt = false;
        for table in &both {
            let state = table.state()?;
            // An empty table is one that is removed: absent is right.
            let fine =
                state == TableState::Exactly || (table.is_empty() && state == TableState::Absent);
            if !fine {
                table.ensure()?;
                rebuilt = true;
            }
        }
        Ok(rebuilt)
    })
    .await
    .expect("nft task panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_config() -> ClusterConfig {
        ClusterConfig {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet_len: 24,
            vni: 1,
            port: 4789,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            direct_routing: false,
            mtu: None,
        }
    }

    fn node() -> NodeNetwork {
        let config = node_config();
        let underlay = crate::node_network::tests::underlay(2, 1500);
        NodeNetwork::new(
            "n",
            &config,
            "10.244.9.0/24".parse().unwrap(),
            &underlay,
            "192.0.2.5".parse().unwrap(),
            "trellis0",
        )
    }

    #[test]
    fn the_flags_choose_the_parts() {
        let both = for_node(&node(), true, true).ip;
        let m = both.masquerade.as_ref().unwrap();
        assert_eq!(m.source.to_string(), "10.244.9.0/24");
        assert_eq!(m.exclude[0].to_string(), "10.244.0.0/16");
        let n = both.notrack.as_ref().unwrap();
        assert_eq!((n.local.to_string(), n.port), ("192.0.2.5".into(), 4789));
        assert!(for_node(&node(), false, true).ip.masquerade.is_none());
        assert!(for_node(&node(), true, false).ip.notrack.is_none());
        assert_eq!(for_node(&node(), false, false).ip, NftTable::new(TABLE));
        // IPv4 only: the ip6 table stays empty (absent).
        assert_eq!(for_node(&node(), true, true).ip6, NftTable::new_ip6(TABLE));
    }

    #[test]
    fn named_networks_are_kept_apart_and_masqueraded_unless_internal() {
        let default = node_config();
        let record = |json: &str| NetworkRecord::parse("n", json.as_bytes()).unwrap();
        let mut networks = BTreeMap::new();
        assert!(for_networks(&default, &networks, true).ip.is_empty());
        networks.insert(
            "a".to_string(),
            record(r#"{"network":"10.0.0.0/16","vni":2}"#),
        );
        networks.insert(
            "b".to_string(),
            record(r#"{"network":"10.1.0.0/16","vni":3,"internal":true}"#),
        );
        let tables = for_networks(&default, &networks, true);
        let isolated = &tables.ip.isolation.as_ref().unwrap().networks;
        let a = &isolated[0];
        assert_eq!(a.network.to_string(), "10.0.0.0/16");
        let others: Vec<String> = a.others.iter().map(ToString::to_string).collect();
        assert_eq!(others, ["10.244.0.0/16", "10.1.0.0/16"]);
        assert!(!a.internal && isolated[1].internal);
        let m = tables.ip.masquerade.as_ref().unwrap();
        assert_eq!(m.source.to_string(), "10.0.0.0/16");
        assert!(m.also.is_empty(), "the internal network has no egress");
        assert_eq!(m.exclude.len(), 3);
        assert!(tables.ip6.is_empty());
        assert!(for_networks(&default, &networks, false)
            .ip
            .masquerade
            .is_none());
    }

    #[test]
    fn a_dual_stack_node_masquerades_ipv6_in_its_ip6_table() {
        let mut net = node();
        net.subnet6 = Some("fd10:244:0:9::/64".parse().unwrap());
        net.network6 = Some("fd10:244::/56".parse().unwrap());
        let tables = for_node(&net, true, true);
        let m = tables.ip6.masquerade.as_ref().unwrap();
        assert_eq!(m.source.to_string(), "fd10:244:0:9::/64");
        assert_eq!(m.exclude[0].to_string(), "fd10:244::/56");
        assert_eq!(tables.ip6.id, NftTable::new_ip6(TABLE).id);
        assert!(tables.ip6.notrack.is_none());
        assert!(for_node(&net, false, true).ip6.masquerade.is_none());
    }
}
