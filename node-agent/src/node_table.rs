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
use trellis_kernel::{KernelError, Masquerade, NftTable, TableState, TunnelNotrack};

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
        ip = ip.with_masquerade(Masquerade::new(
            IpNetwork::V4(net.subnet),
            vec![IpNetwork::V4(net.network)],
        ));
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

/// Install (or rebuild) the tables, off the async threads (`nft` runs as a
/// child process). A table with nothing on is removed.
pub async fn ensure(tables: &NodeTables) -> Result<(), KernelError> {
    let both = tables.both();
    tokio::task::spawn_blocking(move || both.iter().try_for_each(NftTable::ensure))
        .await
        .expect("nft task panicked")
}

/// Remove the agent's tables (absent is fine).
pub async fn remove() -> Result<(), KernelError> {
    tokio::task::spawn_blocking(|| {
        NftTable::new(TABLE).remove()?;
        NftTable::new_ip6(TABLE).remove()
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
    use trellis_common::cluster_config::ClusterConfig;

    fn node() -> NodeNetwork {
        let config = ClusterConfig {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            port: 4789,
            ipv6_network: None,
            ipv6_subnet_len: 64,
        };
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
