//! The agent's nftables table `trellis-agent`, rebuilt as a whole in one
//! transaction and kept in step on every resync:
//! - `--ip-masq`: traffic from this node's pod subnet to destinations
//!   outside the cluster network leaves with the node's address;
//! - `--vxlan-notrack`: the outer VXLAN packets to and from this node's
//!   tunnel endpoint skip conntrack (the pods' own connections stay tracked).

use crate::node_network::NodeNetwork;
use ipnetwork::IpNetwork;
use trellis_kernel::{KernelError, Masquerade, NftTable, TableState, TunnelNotrack};

/// The agent's nftables table (`nft list table ip trellis-agent`).
pub const TABLE: &str = "trellis-agent";

/// What the table holds for this node.
pub fn for_node(net: &NodeNetwork, ip_masq: bool, vxlan_notrack: bool) -> NftTable {
    let mut table = NftTable::new(TABLE);
    if ip_masq {
        table = table.with_masquerade(Masquerade::new(
            IpNetwork::V4(net.subnet),
            vec![IpNetwork::V4(net.network)],
        ));
    }
    if vxlan_notrack {
        table = table.with_notrack(TunnelNotrack::new(net.vxlan.local, net.vxlan.port));
    }
    table
}

/// Install (or rebuild) the table, off the async threads (`nft` runs as a
/// child process). With nothing on, the table is removed.
pub async fn ensure(table: NftTable) -> Result<(), KernelError> {
    tokio::task::spawn_blocking(move || table.ensure())
        .await
        .expect("nft task panicked")
}

/// Remove the agent's table (absent is fine).
pub async fn remove() -> Result<(), KernelError> {
    tokio::task::spawn_blocking(|| NftTable::new(TABLE).remove())
        .await
        .expect("nft task panicked")
}

/// Rebuild the table when a part went missing or was changed (someone
/// flushed the ruleset); `true` when it had to.
pub async fn keep(table: NftTable) -> Result<bool, KernelError> {
    tokio::task::spawn_blocking(move || {
        if table.state()? == TableState::Exactly {
            Ok(false)
        } else {
            table.ensure().map(|()| true)
        }
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
        let both = for_node(&node(), true, true);
        let m = both.masquerade.as_ref().unwrap();
        assert_eq!(m.source.to_string(), "10.244.9.0/24");
        assert_eq!(m.exclude[0].to_string(), "10.244.0.0/16");
        let n = both.notrack.as_ref().unwrap();
        assert_eq!((n.local.to_string(), n.port), ("192.0.2.5".into(), 4789));
        assert!(for_node(&node(), false, true).masquerade.is_none());
        assert!(for_node(&node(), true, false).notrack.is_none());
        assert_eq!(for_node(&node(), false, false), NftTable::new(TABLE));
    }
}
