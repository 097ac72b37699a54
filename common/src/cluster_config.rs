//! The cluster configuration, `<prefix>/config`: the pod network and how
//! it is cut into node subnets, and the VXLAN id and port. Written by the
//! operator (or the installer, from the ConfigMap) and read by every agent:
//! [`ClusterConfig::parse`] is the one check both sides apply, so the
//! installer never seeds what the agents would refuse.
//!
//! Dual-stack: with `ipv6Network`, each node's IPv6 subnet is the one at
//! the same index as its IPv4 subnet ([`ClusterConfig::ipv6_subnet_for`]),
//! so the one subnet lease of a node holds both families: they are leased,
//! kept and released together, and no two nodes can share an IPv6 subnet.
//! A node's lease is named by its *lease subnet*: the IPv4 subnet, or the
//! IPv6 one in a cluster without `network` (IPv6-only).

use crate::node::{MAX_IPV6_SUBNET_LEN, MAX_SUBNET_LEN};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `<prefix>/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// The whole IPv4 pod network, e.g. 10.244.0.0/16 (absent: IPv6-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Ipv4Network>,
    #[serde(default = "default_subnet_len")]
    pub subnet_len: u8,
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The IPv6 pod network of a dual-stack cluster, e.g. fd10:244::/56.
    #[serde(
        default,
        rename = "ipv6Network",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_network: Option<Ipv6Network>,
    #[serde(
        default = "default_ipv6_subnet_len",
        rename = "ipv6SubnetLen",
        skip_serializing_if = "is_default_ipv6_subnet_len"
    )]
    pub ipv6_subnet_len: u8,
    /// Route straight to the nodes whose public address is on a subnet of
    /// this node's underlay interface (via that address, no VXLAN), and
    /// over VXLAN to the others (flannel's DirectRouting, Calico's
    /// VXLANCrossSubnet). The agents follow it without a restart.
    #[serde(
        default,
        rename = "directRouting",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub direct_routing: bool,
    /// The pods' MTU (and the node bridges'), in place of the overlay's
    /// (the underlay's minus the VXLAN overhead). Larger than the overlay's
    /// only with `directRouting`, where the nodes of one subnet carry it
    /// unencapsulated; see the README's "Direct routing".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

fn default_ipv6_subnet_len() -> u8 {
    64
}
fn is_default_ipv6_subnet_len(len: &u8) -> bool {
    *len == default_ipv6_subnet_len()
}

fn default_subnet_len() -> u8 {
    24
}
fn default_vni() -> u32 {
    1
}
fn default_port() -> u16 {
    8472
}

/// Why a cluster configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidClusterConfig(String);

impl InvalidClusterConfig {
    pub(crate) fn new(why: String) -> Self {
        InvalidClusterConfig(why)
    }
}

impl ClusterConfig {
    /// Decode and check a configuration as stored: JSON with the documented
    /// keys, a network without host bits, node subnets that leave room for
    /// nodes and pods, a VNI and a port that VXLAN can use.
    pub fn parse(bytes: &[u8]) -> Result<ClusterConfig, InvalidClusterConfig> {
        let config: ClusterConfig =
            serde_json::from_slice(bytes).map_err(|e| InvalidClusterConfig(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The checks of [`ClusterConfig::parse`] on a decoded configuration
    /// (a named network's record embeds one).
    pub fn validate(&self) -> Result<(), InvalidClusterConfig> {
        self.check().map_err(InvalidClusterConfig)
    }

    fn check(&self) -> Result<(), String> {
        if self.network.is_none() && self.ipv6_network.is_none() {
            return Err("missing field `network`: the IPv4 pod network, e.g. \"10.244.0.0/16\" (or \"ipv6Network\" alone for an IPv6-only cluster)".into());
        }
        if let Some(net) = self.network {
            if net.network() != net.ip() {
                return Err(format!(
                    "network {net} has host bits set (did you mean {}/{}?)",
                    net.network(),
                    net.prefix()
                ));
            }
            if self.subnet_len <= net.prefix() || self.subnet_len > MAX_SUBNET_LEN {
                return Err(format!(
                    "subnetLen {} must be longer than the network's /{} and at most {MAX_SUBNET_LEN}",
                    self.subnet_len,
                    net.prefix()
                ));
            }
        }
        if self.vni == 0 || self.vni > 0x00ff_ffff {
            return Err(format!("vni {} must be between 1 and 16777215", self.vni));
        }
        if self.port == 0 {
            return Err("port must not be 0".into());
        }
        if let Some(mtu) = self.mtu {
            let least = if self.ipv6_network.is_some() {
                1280
            } else {
                68
            };
            if !(least..=65535).contains(&mtu) {
                return Err(format!(
                    "mtu {mtu} must be between {least} and 65535{}",
                    if least > 68 { " (IPv6 needs 1280)" } else { "" }
                ));
            }
        }
        if let Some(net6) = self.ipv6_network {
            if net6.network() != net6.ip() {
                return Err(format!(
                    "ipv6Network {net6} has host bits set (did you mean {}/{}?)",
                    net6.network(),
                    net6.prefix()
                ));
            }
            let len = self.ipv6_subnet_len;
            if len <= net6.prefix() || len > MAX_IPV6_SUBNET_LEN {
                return Err(format!(
                    "ipv6SubnetLen {len} must be longer than the ipv6Network's /{} and at most {MAX_IPV6_SUBNET_LEN}",
                    net6.prefix()
                ));
            }
            // Every IPv4 subnet needs its IPv6 twin, and every pod address
            // its IPv6 one at the same offset.
            let Some(net) = self.network else {
                return Ok(());
            };
            let v6_bits = len - net6.prefix();
            let v4_bits = self.subnet_len - net.prefix();
            if v6_bits < v4_bits {
                return Err(format!(
                    "ipv6Network {net6} holds {} /{len} subnets, fewer than the {} /{} subnets of network {net}: each node needs one of each",
                    1u128 << v6_bits,
                    self.subnet_count(),
                    self.subnet_len
                ));
            }
            if 128 - len < 32 - self.subnet_len {
                return Err(format!(
                    "ipv6SubnetLen {len} leaves fewer pod addresses than subnetLen {}: make it at most {}",
                    self.subnet_len,
                    96 + self.subnet_len
                ));
            }
        }
        Ok(())
    }

    /// The network the lease subnets are cut from: the IPv4 one, else
    /// (IPv6-only) the IPv6 one. A configuration without either never
    /// passes [`ClusterConfig::validate`]; it is taken as 0.0.0.0/32,
    /// holding no node subnet.
    pub fn lease_network(&self) -> IpNetwork {
        match (self.network, self.ipv6_network) {
            (Some(v4), _) => IpNetwork::V4(v4),
            (None, Some(v6)) => IpNetwork::V6(v6),
            (None, None) => IpNetwork::V4(Ipv4Network::from(Ipv4Addr::UNSPECIFIED)),
        }
    }

    /// The prefix length of the lease subnets.
    pub fn lease_subnet_len(&self) -> u8 {
        match self.lease_network() {
            IpNetwork::V4(_) => self.subnet_len,
            IpNetwork::V6(_) => self.ipv6_subnet_len,
        }
    }

    /// How many node subnets the network holds (at most 2^63).
    pub fn subnet_count(&self) -> u64 {
        let bits = self
            .lease_subnet_len()
            .saturating_sub(self.lease_network().prefix());
        1u64 << bits.min(63)
    }

    /// The `index`-th node subnet of the network: its lease subnet.
    pub fn subnet_at(&self, index: u64) -> Option<IpNetwork> {
        if index >= self.subnet_count() {
            return None;
        }
        let len = self.lease_subnet_len();
        match self.lease_network() {
            IpNetwork::V4(net) => {
                let size = 1u64 << (32 - len);
                let addr =
                    Ipv4Addr::from((u64::from(u32::from(net.network())) + index * size) as u32);
                Ipv4Network::new(addr, len).ok().map(IpNetwork::V4)
            }
            IpNetwork::V6(net) => nth_subnet6(net, len, index).map(IpNetwork::V6),
        }
    }

    /// The index of the lease subnet `subnet` (none: not one of them).
    fn index_of(&self, subnet: IpNetwork) -> Option<u64> {
        if !self.fits(subnet) {
            return None;
        }
        let max = if subnet.is_ipv4() { 32 } else { 128 };
        let shift = u32::from(max - subnet.prefix());
        Some(match (subnet, self.lease_network()) {
            (IpNetwork::V4(s), IpNetwork::V4(n)) => {
                u64::from((u32::from(s.network()) - u32::from(n.network())) >> shift)
            }
            (IpNetwork::V6(s), IpNetwork::V6(n)) => {
                ((u128::from(s.network()) - u128::from(n.network())) >> shift) as u64
            }
            _ => return None,
        })
    }

    /// The IPv4 subnet of the node holding the lease subnet `lease` (none
    /// in an IPv6-only cluster, or where `lease` is not one of them).
    pub fn ipv4_subnet_for(&self, lease: IpNetwork) -> Option<Ipv4Network> {
        match lease {
            IpNetwork::V4(v4) if self.fits(lease) => Some(v4),
            _ => None,
        }
    }

    /// The IPv6 subnet of the node holding the lease subnet `lease`: the
    /// one at the same index in a dual-stack cluster, `lease` itself in an
    /// IPv6-only one.
    pub fn ipv6_subnet_for(&self, lease: IpNetwork) -> Option<Ipv6Network> {
        let net6 = self.ipv6_network?;
        let index = self.index_of(lease)?;
        nth_subnet6(net6, self.ipv6_subnet_len, index)
    }

    /// The pod networks: the IPv4 one and the IPv6 one, each where the
    /// cluster has it.
    pub fn pod_networks(&self) -> Vec<IpNetwork> {
        self.network
            .map(IpNetwork::V4)
            .into_iter()
            .chain(self.ipv6_network.map(IpNetwork::V6))
            .collect()
    }

    /// Whether `ip` lies in one of the pod networks.
    pub fn holds(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.network.is_some_and(|n| n.contains(v4)),
            IpAddr::V6(v6) => self.ipv6_network.is_some_and(|n| n.contains(v6)),
        }
    }

    /// Whether `subnet` is one of the network's lease subnets.
    pub fn fits(&self, subnet: IpNetwork) -> bool {
        let net = self.lease_network();
        subnet.prefix() == self.lease_subnet_len()
            && subnet.network() == subnet.ip()
            && subnet.is_ipv4() == net.is_ipv4()
            && net.contains(subnet.network())
    }
}

/// The `index`-th /`len` subnet of `net`.
fn nth_subnet6(net: Ipv6Network, len: u8, index: u64) -> Option<Ipv6Network> {
    let size = 1u128.checked_shl(u32::from(128 - len))?;
    let addr = u128::from(net.network()).checked_add(u128::from(index).checked_mul(size)?)?;
    Ipv6Network::new(Ipv6Addr::from(addr), len)
        .ok()
        .filter(|s| net.contains(s.network()))
}

#[cfg(test)]
mod tests;
