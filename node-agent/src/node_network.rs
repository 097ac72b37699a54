//! This node's own devices: the VXLAN device (VTEP) holding the subnet's
//! network address /32 (the gateway remote nodes route through, as in
//! flannel), and the bridge holding the subnet's first address (the pods'
//! gateway). Both are made idempotently and kept across restarts. In a
//! dual-stack cluster each also holds the IPv6 twin: the VXLAN device the
//! IPv6 subnet's network address /128, the bridge its first address.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::net::IpAddr;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::node::{gateway_networks_of, vxlan_overhead, NodeRecord};
use trellis_kernel::ethtool;
use trellis_kernel::vxlan::{VxlanChange, VxlanSpec};
use trellis_kernel::{KernelError, Link, MacAddr, Netlink};

#[derive(Debug, thiserror::Error)]
pub enum NodeNetworkError {
    #[error("underlay: {0}")]
    Underlay(#[source] KernelError),
    #[error("underlay interface {iface} has no IPv4 or global IPv6 address; pass --public-ip")]
    NoAddress { iface: String },
    #[error("underlay interface {iface} MTU {mtu} leaves no room for VXLAN ({overhead} bytes)")]
    MtuTooSmall {
        iface: String,
        mtu: u32,
        overhead: u32,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// The name of the VXLAN device for `vni`: `trellis.<vni>`, or
/// `trellis<vni>` for VNIs too long for the kernel's 15 characters.
pub fn vxlan_name(vni: u32) -> String {
    let dotted = format!("trellis.{vni}");
    if dotted.len() <= 15 {
        dotted
    } else {
        format!("trellis{vni}")
    }
}

/// The bridge of a named network with `vni`: `trbr.<vni>` (at most 13
/// characters). Its name reaches the plugins through the network's record.
pub fn named_bridge_name(vni: u32) -> String {
    format!("trbr.{vni}")
}

/// Whether `name` is a named network's bridge as the agent names them.
pub fn is_named_bridge_name(name: &str) -> bool {
    name.strip_prefix("trbr.")
        .and_then(|d| d.parse::<u32>().ok())
        .is_some_and(|vni| named_bridge_name(vni) == name && (1..=0x00ff_ffff).contains(&vni))
}

/// The underlay interface and the public IP: `--iface` when given, else
/// the interface holding `--public-ip`, else the default route's; the
/// public IP is `--public-ip`, else the interface's first IPv4 address,
/// else its first global IPv6 one (an IPv6 underlay: VXLAN over IPv6).
pub async fn resolve_underlay(
    nl: &Netlink,
    iface: Option<&str>,
    public_ip: Option<IpAddr>,
) -> Result<(Link, IpAddr), NodeNetworkError> {
    let (found, what) = match (iface, public_ip) {
        (Some(name), _) => (nl.link_by_name(name).await, name.to_string()),
        (None, Some(ip)) => (
            nl.link_holding(ip).await,
            format!("an interface holding {ip}"),
        ),
        (None, None) => (
            nl.default_route_link().await,
            "an IPv4 default route (pass --iface to choose the underlay)".to_string(),
        ),
    };
    let link = found
        .map_err(NodeNetworkError::Underlay)?
        .ok_or(NodeNetworkError::Underlay(KernelError::NotFound(what)))?;
    let first_address = || async {
        let addresses = nl.addresses(link.index).await?;
        let v4 = addresses.iter().find_map(|a| match a {
            IpNetwork::V4(v4) => Some(IpAddr::V4(v4.ip())),
            IpNetwork::V6(_) => None,
        });
        let v6 = addresses.iter().find_map(|a| match a {
            IpNetwork::V6(v6) if !v6.ip().is_unicast_link_local() && !v6.ip().is_loopback() => {
                Some(IpAddr::V6(v6.ip()))
            }
            _ => None,
        });
        Ok::<_, KernelError>(v4.or(v6))
    };
    let ip = match public_ip {
        Some(ip) => ip,
        None => match first_address().await.map_err(NodeNetworkError::Underlay)? {
            Some(ip) => ip,
            None => return Err(NodeNetworkError::NoAddress { iface: link.name }),
        },
    };
    let overhead = vxlan_overhead(ip);
    // 1280: the least MTU IPv6 allows a link (and more than IPv4's 68).
    if link.mtu <= overhead + if ip.is_ipv4() { 68 } else { 1280 } {
        return Err(NodeNetworkError::MtuTooSmall {
            iface: link.name,
            mtu: link.mtu,
            overhead,
        });
    }
    Ok((link, ip))
}

/// What this node's devices look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    pub node_name: String,
    /// The cluster's IPv4 network and this node's IPv4 subnet (none:
    /// IPv6-only).
    pub network: Option<Ipv4Network>,
    pub subnet: Option<Ipv4Network>,
    /// The cluster's IPv6 network and this node's IPv6 subnet (dual-stack,
    /// IPv6-only).
    pub network6: Option<Ipv6Network>,
    pub subnet6: Option<Ipv6Network>,
    pub public_ip: IpAddr,
    pub vxlan: VxlanSpec,
    pub bridge: String,
    /// The named network these devices serve (`None`: the default one).
    pub named: Option<String>,
    /// Leave the VXLAN device's transmit checksum offload on (the kernel's
    /// default); off, it is turned off whenever the device is ensured.
    pub tx_checksum_offload: bool,
    /// The pods' and the bridge's MTU: the cluster config's `mtu`, else the
    /// overlay's (checked by [`crate::pod_mtu::check`]).
    pub pod_mtu: u32,
}

impl NodeNetwork {
    pub fn new(
        node_name: &str,
        config: &ClusterConfig,
        lease: IpNetwork,
        underlay: &Link,
        public_ip: IpAddr,
        bridge: &str,
    ) -> NodeNetwork {
        NodeNetwork {
            node_name: node_name.to_string(),
            network: config.network,
            subnet: config.ipv4_subnet_for(lease),
            network6: config.ipv6_network,
            subnet6: config.ipv6_subnet_for(lease),
            public_ip,
            vxlan: VxlanSpec {
                name: vxlan_name(config.vni),
                vni: config.vni,
                port: config.port,
                local: public_ip,
                underlay_index: underlay.index,
                mtu: underlay.mtu - vxlan_overhead(public_ip),
                mac: MacAddr::derived_from(node_name),
            },
            bridge: bridge.to_string(),
            named: None,
            tx_checksum_offload: true,
            pod_mtu: config
                .mtu
                .unwrap_or(underlay.mtu - vxlan_overhead(public_ip)),
        }
    }

    /// The devices of named network `name` on this node: VXLAN device
    /// `trellis.<vni>`, bridge `trbr.<vni>`, and a VTEP MAC of its own
    /// (derived from `<node>/<name>`), so that no two VTEPs share one.
    pub fn named(
        node_name: &str,
        name: &str,
        config: &ClusterConfig,
        lease: IpNetwork,
        underlay: &Link,
        public_ip: IpAddr,
    ) -> NodeNetwork {
        let bridge = named_bridge_name(config.vni);
        let mut net = NodeNetwork::new(node_name, config, lease, underlay, public_ip, &bridge);
        net.vxlan.mac = MacAddr::derived_from(&format!("{node_name}/{name}"));
        net.named = Some(name.to_string());
        net
    }

    /// The pods' MTU, and the bridge's: the overlay's (the VXLAN
    /// device's) unless the cluster config sets `mtu`.
    pub fn mtu(&self) -> u32 {
        self.pod_mtu
    }

    /// The subnet naming this node's lease: the IPv4 one, else the IPv6
    /// one.
    pub fn lease_subnet(&self) -> IpNetwork {
        self.subnet
            .map(IpNetwork::V4)
            .or(self.subnet6.map(IpNetwork::V6))
            .expect("a node network holds a subnet of at least one family")
    }

    /// The VXLAN device's addresses: the subnet's network address /32, and
    /// the IPv6 subnet's network address /128.
    pub fn vtep_addresses(&self) -> Vec<IpNetwork> {
        let mut all = Vec::new();
        if let Some(subnet) = self.subnet {
            all.push(IpNetwork::V4(
                Ipv4Network::new(subnet.network(), 32).expect("/32 is valid"),
            ));
        }
        if let Some(subnet6) = self.subnet6 {
            all.push(IpNetwork::V6(
                Ipv6Network::new(subnet6.network(), 128).expect("/128 is valid"),
            ));
        }
        all
    }

    /// The bridge's addresses: the pods' gateways, the subnets' first
    /// addresses.
    pub fn bridge_addresses(&self) -> Vec<IpNetwork> {
        gateway_networks_of(self.subnet, self.subnet6)
    }

    /// The cluster's pod networks.
    pub fn cluster_networks(&self) -> Vec<IpNetwork> {
        self.network
            .map(IpNetwork::V4)
            .into_iter()
            .chain(self.network6.map(IpNetwork::V6))
            .collect()
    }

    /// Whether `addr` lies in one of the cluster's pod networks.
    fn in_cluster_network(&self, addr: &IpNetwork) -> bool {
        match addr {
            IpNetwork::V4(v4) => self.network.is_some_and(|n| n.contains(v4.ip())),
            IpNetwork::V6(v6) => self.network6.is_some_and(|n| n.contains(v6.ip())),
        }
    }

    /// The record published in etcd and in `<stateDir>/node.json`.
    pub fn record(&self) -> NodeRecord {
        NodeRecord {
            subnet: self.subnet,
            public_ip: self.public_ip,
            vtep_mac: self.vxlan.mac.to_string(),
            network: self.network,
            mtu: Some(self.mtu()),
            node_name: Some(self.node_name.clone()),
            kubernetes: false,
            status_addr: None,
            dns: false,
            ipv6_subnet: self.subnet6,
            ipv6_network: self.network6,
            // The plugins take a named network's bridge from its record;
            // the default network's is in their configuration.
            bridge: self.named.as_ref().map(|_| self.bridge.clone()),
        }
    }

    /// The VXLAN device with exactly its address; its index and whether it
    /// had to be (re)created.
    pub async fn ensure_vxlan(&self, nl: &Netlink) -> Result<(u32, bool), KernelError> {
        let (dev, change) = nl.ensure_vxlan(&self.vxlan).await?;
        if change != VxlanChange::Kept {
            log::info!(
                "{} VXLAN device {} (VNI {}, port {}, local {}, MAC {}, MTU {})",
                if change == VxlanChange::Created {
                    "created"
                } else {
                    "re-created"
                },
                self.vxlan.name,
                self.vxlan.vni,
                self.vxlan.port,
                self.vxlan.local,
                self.vxlan.mac,
                self.vxlan.mtu
            );
        }
        // Any other address of the device is stale (but its IPv6 link-local).
        self.keep_only_addresses(
            nl,
            dev.index,
            &self.vtep_addresses(),
            |a| !matches!(a, IpNetwork::V6(v6) if v6.ip().is_unicast_link_local()),
        )
        .await?;
        if !self.tx_checksum_offload {
            // An ioctl in the agent's own namespace, where its netlink
            // socket is too.
            let name = &self.vxlan.name;
            if ethtool::tx_checksum(name)? {
                ethtool::set_tx_checksum(name, false)?;
                log::info!("turned transmit checksum offload off on {name}");
            }
        }
        Ok((dev.index, change != VxlanChange::Kept))
    }

    /// The bridge, up, with the overlay MTU and the gateway address; other
    /// addresses of the cluster network on it (an earlier subnet) removed.
    pub async fn ensure_bridge(&self, nl: &Netlink) -> Result<u32, KernelError> {
        let link = nl.ensure_bridge(&self.bridge, Some(self.mtu())).await?;
        if link.mtu != self.mtu() {
            nl.set_link_mtu(link.index, self.mtu()).await?;
        }
        self.keep_only_addresses(nl, link.index, &self.bridge_addresses(), |a| {
            self.in_cluster_network(a)
        })
        .await?;
        Ok(link.index)
    }

    /// Make `want` the addresses of `index`: remove the others for which
    /// `stale` holds, add the missing ones (IPv6 ones without duplicate
    /// address detection: usable at once, not "tentative" for a second).
    async fn keep_only_addresses(
        &self,
        nl: &Netlink,
        index: u32,
        want: &[IpNetwork],
        stale: impl Fn(&IpNetwork) -> bool,
    ) -> Result<(), KernelError> {
        let current = nl.addresses(index).await?;
        for addr in current.iter().filter(|a| !want.contains(a) && stale(a)) {
            log::info!("removing stale address {addr} from link #{index}");
            nl.delete_address(index, *addr).await?;
        }
        for addr in want.iter().filter(|a| !current.contains(a)) {
            nl.ensure_address(index, *addr).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An underlay link as the kernel would report it.
    pub(crate) fn underlay(index: u32, mtu: u32) -> Link {
        Link {
            index,
            name: "eth0".into(),
            kind: None,
            mtu,
            mac: None,
            up: true,
            master: None,
            peer_index: None,
            vxlan: None,
        }
    }

    #[test]
    fn devices_follow_flannel_layout() {
        let config = ClusterConfig {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet_len: 24,
            vni: 1,
            port: 8472,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            direct_routing: false,
            mtu: None,
        };
        let underlay = underlay(7, 1500);
        let n = NodeNetwork::new(
            "node-a",
            &config,
            "10.244.3.0/24".parse().unwrap(),
            &underlay,
            "192.0.2.10".parse().unwrap(),
            "trellis0",
        );
        assert_eq!(n.vxlan.name, "trellis.1");
        assert_eq!(n.mtu(), 1450);
        assert_eq!(n.vtep_addresses()[0].to_string(), "10.244.3.0/32");
        assert_eq!(n.bridge_addresses()[0].to_string(), "10.244.3.1/24");
        assert_eq!(n.vtep_addresses().len(), 1);
        let r = n.record();
        assert_eq!(r.ipv6_subnet, None);
        assert_eq!(r.vtep_mac, MacAddr::derived_from("node-a").to_string());
        assert_eq!(r.mtu, Some(1450));
        assert_eq!(r.network, config.network);
        assert_eq!(r.gateway().unwrap().to_string(), "10.244.3.1");
    }

    #[test]
    fn a_dual_stack_node_holds_both_families() {
        let config =
            ClusterConfig::parse(br#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/56"}"#)
                .unwrap();
        let n = NodeNetwork::new(
            "node-a",
            &config,
            "10.244.3.0/24".parse().unwrap(),
            &underlay(7, 1500),
            "192.0.2.10".parse().unwrap(),
            "trellis0",
        );
        let text = |v: Vec<IpNetwork>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            text(n.vtep_addresses()),
            ["10.244.3.0/32", "fd10:244:0:3::/128"]
        );
        assert_eq!(
            text(n.bridge_addresses()),
            ["10.244.3.1/24", "fd10:244:0:3::1/64"]
        );
        let r = n.record();
        assert_eq!(r.ipv6_subnet.unwrap().to_string(), "fd10:244:0:3::/64");
        assert_eq!(r.ipv6_network.unwrap().to_string(), "fd10:244::/56");
        assert!(n.in_cluster_network(&"fd10:244:0:9::1/64".parse().unwrap()));
        assert!(!n.in_cluster_network(&"fe80::1/64".parse().unwrap()));
        assert!(!n.in_cluster_network(&"10.245.0.1/24".parse().unwrap()));
    }

    #[test]
    fn an_ipv6_underlay_costs_70_bytes_and_carries_the_tunnel() {
        let config = ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap();
        let n = NodeNetwork::new(
            "node-a",
            &config,
            "10.244.3.0/24".parse().unwrap(),
            &underlay(7, 1500),
            "2001:db8:2::1".parse().unwrap(),
            "trellis0",
        );
        assert_eq!(n.mtu(), 1430);
        assert_eq!(n.vxlan.local.to_string(), "2001:db8:2::1");
        assert_eq!(n.record().public_ip.to_string(), "2001:db8:2::1");
    }

    #[test]
    fn a_named_network_has_devices_and_a_vtep_mac_of_its_own() {
        let config = ClusterConfig::parse(br#"{"network":"10.0.0.0/16","vni":7}"#).unwrap();
        let n = NodeNetwork::named(
            "node-a",
            "multihost",
            &config,
            "10.0.3.0/24".parse().unwrap(),
            &underlay(7, 1500),
            "192.0.2.10".parse().unwrap(),
        );
        assert_eq!(
            (n.vxlan.name.as_str(), n.bridge.as_str()),
            ("trellis.7", "trbr.7")
        );
        let default_mac = MacAddr::derived_from("node-a");
        assert_ne!(n.vxlan.mac, default_mac);
        assert_eq!(n.vxlan.mac, MacAddr::derived_from("node-a/multihost"));
        let r = n.record();
        assert_eq!(r.bridge.as_deref(), Some("trbr.7"));
        assert_eq!(r.mtu, Some(1450));
        assert_eq!(r.gateway().unwrap().to_string(), "10.0.3.1");
        assert!(named_bridge_name(16_777_215).len() <= 15);
        assert!(is_named_bridge_name("trbr.7"));
        for other in ["trbr.", "trbr.07", "trbr.0", "trbr.x", "trellis0", "trbr7"] {
            assert!(!is_named_bridge_name(other), "{other}");
        }
    }

    #[test]
    fn vxlan_names_fit_the_kernel_limit() {
        assert_eq!(vxlan_name(1), "trellis.1");
        assert_eq!(vxlan_name(9_999_999), "trellis.9999999");
        assert_eq!(vxlan_name(16_777_215), "trellis16777215");
        assert!(vxlan_name(16_777_215).len() <= 15);
    }
}
