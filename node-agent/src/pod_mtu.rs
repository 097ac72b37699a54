//! The pods' MTU against what the paths carry: the cluster config's `mtu`
//! may be lower than the overlay's (the VXLAN device's) anywhere, and
//! higher only with direct routing, up to the underlay's: then the nodes of
//! one subnet carry it unencapsulated, and the packets above the overlay's
//! MTU to nodes reached over VXLAN rely on path MTU discovery (the node
//! answers them with ICMP "fragmentation needed", as any router would).

use std::net::IpAddr;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::node::vxlan_overhead;
use trellis_kernel::Link;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodMtuError {
    #[error("cluster config mtu {mtu} is larger than the MTU {underlay} of the underlay interface {iface}")]
    AboveUnderlay {
        mtu: u32,
        underlay: u32,
        iface: String,
    },
    #[error("cluster config mtu {mtu} is larger than the overlay MTU {overlay} (the underlay {iface}'s {underlay} minus the VXLAN header): only direct routing carries it; set \"directRouting\": true, or an mtu of at most {overlay}")]
    AboveOverlay {
        mtu: u32,
        overlay: u32,
        underlay: u32,
        iface: String,
    },
}

/// Whether the pods' MTU of `config` can be carried from this node, whose
/// underlay is `underlay` with `public_ip`: refused above the underlay's,
/// and above the overlay's unless `config` routes directly.
pub fn check(
    config: &ClusterConfig,
    underlay: &Link,
    public_ip: IpAddr,
) -> Result<(), PodMtuError> {
    let overlay = underlay.mtu - vxlan_overhead(public_ip);
    let Some(mtu) = config.mtu else {
        return Ok(());
    };
    let iface = underlay.name.clone();
    if mtu > underlay.mtu {
        return Err(PodMtuError::AboveUnderlay {
            mtu,
            underlay: underlay.mtu,
            iface,
        });
    }
    if mtu > overlay && !config.direct_routing {
        return Err(PodMtuError::AboveOverlay {
            mtu,
            overlay,
            underlay: underlay.mtu,
            iface,
        });
    }
    if mtu > overlay {
        log::info!(
            "pods get MTU {mtu}: the nodes on this node's subnet carry it directly; packets above {overlay} to nodes reached over VXLAN rely on path MTU discovery"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_network::NodeNetwork;

    fn underlay() -> Link {
        crate::node_network::tests::underlay(2, 1500)
    }

    fn net(config: &ClusterConfig) -> NodeNetwork {
        let underlay = underlay();
        NodeNetwork::new(
            "n1",
            config,
            "10.244.1.0/24".parse().unwrap(),
            &underlay,
            "192.0.2.1".parse().unwrap(),
            "trellis0",
        )
    }

    #[test]
    fn an_mtu_above_the_overlay_needs_direct_routing_and_never_passes_the_underlay() {
        let config = |json: &str| ClusterConfig::parse(json.as_bytes()).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let plain = config(r#"{"network":"10.244.0.0/16"}"#);
        assert_eq!(net(&plain).mtu(), 1450);
        assert!(check(&plain, &underlay(), ip).is_ok());
        let lower = config(r#"{"network":"10.244.0.0/16","mtu":1400}"#);
        assert_eq!(net(&lower).mtu(), 1400);
        assert!(check(&lower, &underlay(), ip).is_ok());
        let full = config(r#"{"network":"10.244.0.0/16","mtu":1500}"#);
        let e = check(&full, &underlay(), ip).unwrap_err();
        assert!(
            e.to_string().contains("only direct routing carries it"),
            "{e}"
        );
        let direct = config(r#"{"network":"10.244.0.0/16","mtu":1500,"directRouting":true}"#);
        assert!(check(&direct, &underlay(), ip).is_ok());
        assert_eq!(
            net(&direct).vxlan.mtu,
            1450,
            "the VXLAN device keeps the overlay's"
        );
        let jumbo = config(r#"{"network":"10.244.0.0/16","mtu":9000,"directRouting":true}"#);
        let e = check(&jumbo, &underlay(), ip).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster config mtu 9000 is larger than the MTU 1500 of the underlay interface eth0"
        );
    }
}
