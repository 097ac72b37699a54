//! The reference data paths, built by hand in the same run on the
//! cluster's underlay bridge: two "nodes" with one "pod" each, joined
//! either as flannel's VXLAN backend and the bridge plugin join them (a
//! vxlan device with `nolearning`, one FDB entry, one permanent neighbour
//! and one `onlink` route per remote node, a bridge `cni0` holding the
//! gateway, a veth per pod; MTU 1450) or as flannel's host-gw does (a route
//! per remote node's pod subnet via its underlay address; MTU 1500). No
//! nftables unless [`HandBuilt::set_masquerade`] adds flannel's
//! masquerade (which, as trellis's table does, puts conntrack on the path).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use trellis_tests::netns::{attach_to_bridge, veth_pair, Netns};

/// Which reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    FlannelVxlan,
    HostGw,
}

/// Two nodes and their pods; everything goes with the namespaces.
pub struct HandBuilt {
    pub nodes: [Netns; 2],
    pub pods: [Netns; 2],
    /// The pods' addresses.
    pub pod_ips: [IpAddr; 2],
    /// The pod network, `10.<second>.0.0/16`.
    network: Ipv4Network,
}

fn net(a: Ipv4Addr, prefix: u8) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(a, prefix).expect("a valid prefix"))
}

impl HandBuilt {
    /// Build `kind` on `underlay`'s bridge `br0`: nodes 192.0.2.`host` and
    /// .`host+1`, pod subnets 10.`second`.1.0/24 and 10.`second`.2.0/24.
    pub fn build(underlay: &Netns, kind: Kind, host: u8, second: u8) -> Result<HandBuilt> {
        let tag = match kind {
            Kind::FlannelVxlan => "fl",
            Kind::HostGw => "hg",
        };
        let mtu = match kind {
            Kind::FlannelVxlan => "1450",
            Kind::HostGw => "1500",
        };
        let node_ip = |i: usize| Ipv4Addr::new(192, 0, 2, host + i as u8);
        let subnet = |i: usize| Ipv4Addr::new(10, second, i as u8 + 1, 0);
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 0..2 {
            let node = Netns::new(&format!("{tag}-node{}", i + 1))?;
            let port = format!("{tag}{}", i + 1);
            attach_to_bridge(
                underlay,
                "br0",
                &port,
                &node,
                "eth0",
                Some(net(node_ip(i), 24)),
            )?;
            node.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let s = subnet(i);
            let gateway = Ipv4Addr::from(u32::from(s) + 1);
            let pod_ip = Ipv4Addr::from(u32::from(s) + 2);
            node.sh_ok(&format!(
                "ip link add cni0 type bridge && ip addr add {gateway}/24 dev cni0 && \
                 ip link set cni0 mtu {mtu} up"
            ))?;
            let pod = Netns::new(&format!("{tag}-pod{}", i + 1))?;
            veth_pair(&node, "veth0", None, &pod, "eth0", Some(net(pod_ip, 24)))?;
            node.sh_ok(&format!("ip link set veth0 mtu {mtu} master cni0"))?;
            pod.sh_ok(&format!(
                "ip link set eth0 mtu {mtu} && ip route add default via {gateway}"
            ))?;
            if kind == Kind::FlannelVxlan {
                node.sh_ok(&format!(
                    "ip link add flannel.1 type vxlan id 42 dev eth0 local {} dstport 8472 nolearning && \
                     ip link set flannel.1 mtu 1450 up && ip addr add {s}/32 dev flannel.1",
                    node_ip(i)
                ))?;
            }
            nodes.push(node);
            pods.push(pod);
        }
        for i in 0..2 {
            let j = 1 - i;
            let (s, remote) = (subnet(j), node_ip(j));
            let script = match kind {
                Kind::FlannelVxlan => {
                    let mac = vxlan_mac(&nodes[j])?;
                    format!(
                        "bridge fdb append {mac} dev flannel.1 dst {remote} && \
                         ip neigh replace {s} lladdr {mac} dev flannel.1 nud permanent && \
                         ip route replace {s}/24 via {s} dev flannel.1 onlink"
                    )
                }
                Kind::HostGw => format!("ip route replace {s}/24 via {remote} dev eth0"),
            };
            nodes[i].sh_ok(&script)?;
        }
        let pod_ips = [0, 1].map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(subnet(i)) + 2)));
        let [n1, n2]: [Netns; 2] = nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?;
        let [p1, p2]: [Netns; 2] = pods.try_into().map_err(|_| anyhow::anyhow!("two pods"))?;
        Ok(HandBuilt {
            nodes: [n1, n2],
            pods: [p1, p2],
            pod_ips,
            network: Ipv4Network::new(Ipv4Addr::new(10, second, 0, 0), 16)?,
        })
    }

    /// Flannel's `--ip-masq` on both nodes (on) or no nftables at all
    /// (off): pod traffic leaving the pod network masqueraded, which puts
    /// every forwarded packet through conntrack.
    pub fn set_masquerade(&self, on: bool) -> Result<()> {
        for node in &self.nodes {
            let _ = node.exec(&["nft", "delete", "table", "ip", "flannel-masq"]);
            if on {
                node.sh_ok(&format!(
                    "nft add table ip flannel-masq && \
                     nft add chain ip flannel-masq postrouting '{{ type nat hook postrouting priority 100; }}' && \
                     nft add rule ip flannel-masq postrouting ip saddr {n} ip daddr != {{ {n}, 224.0.0.0/4 }} masquerade",
                    n = self.network
                ))?;
            }
        }
        Ok(())
    }
}

fn vxlan_mac(node: &Netns) -> Result<String> {
    let out = node.ok(&["ip", "-j", "link", "show", "flannel.1"])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    links[0]["address"]
        .as_str()
        .map(str::to_string)
        .context("flannel.1 has no MAC")
}
