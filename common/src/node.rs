//! The node record the agent publishes in etcd (`<prefix>/nodes/<name>`)
//! and in `stateDir` (`<stateDir>/node.json`) for the CNI plugins.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Bytes VXLAN over IPv4 adds to every frame (outer IP 20 + UDP 8 + VXLAN 8
/// + inner Ethernet 14).
pub const VXLAN_V4_OVERHEAD: u32 = 50;
/// Bytes VXLAN over IPv6 adds (outer IPv6 40 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

/// What VXLAN adds to every frame over an underlay of `public_ip`'s family.
pub fn vxlan_overhead(public_ip: IpAddr) -> u32 {
    match public_ip {
        IpAddr::V4(_) => VXLAN_V4_OVERHEAD,
        IpAddr::V6(_) => VXLAN_V6_OVERHEAD,
    }
}

pub const DEFAULT_STATE_DIR: &str = "/run/trellis";
pub const DEFAULT_BRIDGE: &str = "trellis0";
pub const NODE_RECORD_FILE: &str = "node.json";
/// The longest prefix of a node subnet: a gateway and one pod address.
pub const MAX_SUBNET_LEN: u8 = 30;
/// The longest prefix of a node's IPv6 subnet: a gateway and pods.
pub const MAX_IPV6_SUBNET_LEN: u8 = 120;

/// What the agent publishes about its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// This node's IPv4 pod subnet, e.g. 10.244.3.0/24 (absent in an
    /// IPv6-only cluster, whose records hold `ipv6Subnet` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Network>,
    /// The underlay address remote VTEPs send to.
    #[serde(rename = "publicIP")]
    pub public_ip: IpAddr,
    /// The MAC of this node's VXLAN device.
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: String,
    /// The cluster network (for masquerade decisions in the plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Ipv4Network>,
    /// The MTU pods should use (underlay minus the VXLAN overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The node is a Kubernetes Node (its agent runs with `--kubernetes`):
    /// once Kubernetes deletes that Node, the other agents release this
    /// record, its subnet and its pods' addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kubernetes: bool,
    /// Where the agent serves `/healthz` and `/metrics` (its
    /// `--metrics-addr`, with an unspecified address replaced by the public
    /// IP), for `trellisctl nodes`.
    #[serde(
        default,
        rename = "statusAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_addr: Option<std::net::SocketAddr>,
    /// The agent serves DNS on the gateways (`trellis-agent --dns`): the
    /// plugin names them as the containers' nameservers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dns: bool,
    /// This node's IPv6 pod subnet in a dual-stack cluster, e.g.
    /// fd10:244:0:3::/64 (the cluster config's `ipv6Network`, at the index
    /// of `subnet`).
    #[serde(
        default,
        rename = "ipv6Subnet",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_subnet: Option<Ipv6Network>,
    /// The cluster's IPv6 network (for masquerade decisions in the plugins).
    #[serde(
        default,
        rename = "ipv6Network",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_network: Option<Ipv6Network>,
    /// The bridge of a named network's record (`trbr.<vni>`); absent in
    /// the default network's, whose bridge is the conflist's `bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

impl NodeRecord {
    /// Decode a record as the agent publishes it, in etcd and in
    /// `node.json` (the one decoder of both). A record holds a subnet of
    /// at least one family; a subnet smaller than /30 (no gateway and pod
    /// address besides the network and broadcast addresses; the agent
    /// never leases one) is refused.
    pub fn parse(bytes: &[u8]) -> Result<NodeRecord, serde_json::Error> {
        let record: NodeRecord = serde_json::from_slice(bytes)?;
        let invalid = |why: String| <serde_json::Error as serde::de::Error>::custom(why);
        if record.subnet.is_none() && record.ipv6_subnet.is_none() {
            return Err(invalid(
                "a node record needs a \"subnet\", an \"ipv6Subnet\" or both".into(),
            ));
        }
        if let Some(subnet) = record.subnet.filter(|s| s.prefix() > MAX_SUBNET_LEN) {
            return Err(invalid(format!(
                "subnet {subnet} leaves no room for a gateway and pods (/{MAX_SUBNET_LEN} or larger)"
            )));
        }
        if let Some(subnet6) = record.ipv6_subnet {
            if subnet6.prefix() > MAX_IPV6_SUBNET_LEN {
                return Err(invalid(format!(
                    "ipv6Subnet {subnet6} leaves no room for a gateway and pods (/{} or larger)",
                    MAX_IPV6_SUBNET_LEN
                )));
            }
        }
        Ok(record)
    }

    /// The pods' IPv4 gateway: the first address of the node's subnet,
    /// held by the node bridge. (The VXLAN device holds the subnet's
    /// network address /32, as flannel's does: remote nodes route the
    /// subnet through it.)
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.subnet.map(gateway_of)
    }

    /// The subnet naming this node's lease: the IPv4 one, else (IPv6-only)
    /// the IPv6 one ([`crate::cluster_config::ClusterConfig::fits`]).
    pub fn lease_subnet(&self) -> Option<IpNetwork> {
        self.subnet
            .map(IpNetwork::V4)
            .or(self.ipv6_subnet.map(IpNetwork::V6))
    }

    /// The node's pod subnets, IPv4 first.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        self.subnet
            .map(IpNetwork::V4)
            .into_iter()
            .chain(self.ipv6_subnet.map(IpNetwork::V6))
            .collect()
    }

    /// The pods' IPv6 gateway in a dual-stack cluster: the first address of
    /// the node's IPv6 subnet, held by the node bridge beside the IPv4 one.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.ipv6_subnet.map(gateway6_of)
    }

    /// Both gateways with their subnets' prefixes, as the bridge holds them.
    pub fn gateway_networks(&self) -> Vec<IpNetwork> {
        gateway_networks_of(self.subnet, self.ipv6_subnet)
    }
}

/// The gateways of a node holding `subnet` and `subnet6`, with their
/// subnets' prefixes: the bridge's addresses.
pub fn gateway_networks_of(
    subnet: Option<Ipv4Network>,
    subnet6: Option<Ipv6Network>,
) -> Vec<IpNetwork> {
    let mut all = Vec::new();
    if let Some(subnet) = subnet {
        all.push(IpNetwork::V4(
            Ipv4Network::new(gateway_of(subnet), subnet.prefix()).expect("prefix is valid"),
        ));
    }
    if let Some(subnet6) = subnet6 {
        all.push(IpNetwork::V6(
            Ipv6Network::new(gateway6_of(subnet6), subnet6.prefix()).expect("prefix is valid"),
        ));
    }
    all
}

/// The first address of an IPv6 subnet after its subnet-router anycast
/// address: the gateway by convention.
pub fn gateway6_of(subnet: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// The first usable address of a subnet, the gateway by convention.
pub fn gateway_of(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(NODE_RECORD_FILE)
}

/// Where the agent keeps the records of the named networks it set up:
/// `<stateDir>/networks/`.
pub fn network_records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("networks")
}

/// The record file of `network` (`None`: the default network):
/// `<stateDir>/networks/<name>.json`, else `<stateDir>/node.json`.
pub fn record_path_for(state_dir: &Path, network: Option<&str>) -> PathBuf {
    match network {
        Some(name) => network_records_dir(state_dir).join(format!("{name}.json")),
        None => record_path(state_dir),
    }
}

/// Read `<stateDir>/node.json`; `Ok(None)` when the agent has not written it.
pub fn read_node_record(state_dir: &Path) -> std::io::Result<Option<NodeRecord>> {
    read_node_record_for(state_dir, None)
}

/// Read the record of `network` ([`record_path_for`]); `Ok(None)` when
/// the agent has not written it (or removed it with the network).
pub fn read_node_record_for(
    state_dir: &Path,
    network: Option<&str>,
) -> std::io::Result<Option<NodeRecord>> {
    match std::fs::read(record_path_for(state_dir, network)) {
        Ok(bytes) => NodeRecord::parse(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn write_node_record(state_dir: &Path, record: &NodeRecord) -> std::io::Result<()> {
    write_node_record_for(state_dir, None, record)
}

/// Write the record of `network` atomically (its directory made first).
pub fn write_node_record_for(
    state_dir: &Path,
    network: Option<&str>,
    record: &NodeRecord,
) -> std::io::Result<()> {
    let path = record_path_for(state_dir, network);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(record).expect("node record serializes");
    crate::fs::write_atomically(&path, &json, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_record_uses_the_documented_keys() {
        let r = NodeRecord {
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            public_ip: "192.0.2.3".parse().unwrap(),
            vtep_mac: "02:aa:bb:cc:dd:ee".into(),
            network: Some("10.244.0.0/16".parse().unwrap()),
            mtu: Some(1450),
            node_name: Some("n3".into()),
            kubernetes: false,
            status_addr: None,
            dns: false,
            ipv6_subnet: None,
            ipv6_network: None,
            bridge: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("ipv6Subnet").is_none(), "{v}");
        assert_eq!(r.gateway6(), None);
        let dual = NodeRecord {
            ipv6_subnet: Some("fd10:244:0:3::/64".parse().unwrap()),
            ipv6_network: Some("fd10:244::/56".parse().unwrap()),
            ..r.clone()
        };
        let d = serde_json::to_value(&dual).unwrap();
        assert_eq!(d["ipv6Subnet"], "fd10:244:0:3::/64");
        assert_eq!(d["ipv6Network"], "fd10:244::/56");
        assert_eq!(dual.gateway6().unwrap().to_string(), "fd10:244:0:3::1");
        assert_eq!(
            dual.gateway_networks()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.3.1/24", "fd10:244:0:3::1/64"]
        );
        assert_eq!(
            NodeRecord::parse(&serde_json::to_vec(&dual).unwrap()).unwrap(),
            dual
        );
        assert_eq!(v["subnet"], "10.244.3.0/24");
        assert_eq!(v["publicIP"], "192.0.2.3");
        assert_eq!(v["vtepMAC"], "02:aa:bb:cc:dd:ee");
        assert_eq!(r.gateway().unwrap().to_string(), "10.244.3.1");
        assert_eq!(r.lease_subnet(), Some("10.244.3.0/24".parse().unwrap()));
        // IPv6-only: no "subnet", the IPv6 subnet names the lease.
        let v6_only = NodeRecord {
            subnet: None,
            network: None,
            ..dual.clone()
        };
        let o = serde_json::to_value(&v6_only).unwrap();
        assert!(
            o.get("subnet").is_none() && o.get("network").is_none(),
            "{o}"
        );
        assert_eq!(
            NodeRecord::parse(&serde_json::to_vec(&v6_only).unwrap()).unwrap(),
            v6_only
        );
        assert_eq!(v6_only.gateway(), None);
        assert_eq!(
            v6_only.lease_subnet(),
            Some("fd10:244:0:3::/64".parse().unwrap())
        );
        assert_eq!(
            v6_only.gateway_networks()[..],
            ["fd10:244:0:3::1/64".parse().unwrap()]
        );
        let e = NodeRecord::parse(br#"{"publicIP":"192.0.2.7","vtepMAC":"02:00:00:00:00:07"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("needs a \"subnet\""), "{e}");
    }

    #[test]
    fn each_named_network_has_its_own_record_file() {
        let dir = tempfile::tempdir().unwrap();
        let r: NodeRecord = NodeRecord::parse(
            br#"{"subnet":"10.0.3.0/24","publicIP":"192.0.2.3","vtepMAC":"02:aa:bb:cc:dd:ee","bridge":"trbr.2"}"#,
        )
        .unwrap();
        assert_eq!(r.bridge.as_deref(), Some("trbr.2"));
        assert_eq!(
            read_node_record_for(dir.path(), Some("multihost")).unwrap(),
            None
        );
        write_node_record_for(dir.path(), Some("multihost"), &r).unwrap();
        assert!(dir.path().join("networks/multihost.json").is_file());
        assert_eq!(
            read_node_record_for(dir.path(), Some("multihost")).unwrap(),
            Some(r)
        );
        // The default network's node.json is another file.
        assert_eq!(read_node_record(dir.path()).unwrap(), None);
        assert_eq!(
            record_path_for(dir.path(), None),
            dir.path().join("node.json")
        );
    }

    #[test]
    fn a_record_without_room_for_a_gateway_is_refused() {
        // Confirmed with the fuzz target node_json: the gateway of
        // 255.255.255.255/32 overflowed (a panic in the plugins).
        let record = |subnet: &str| {
            NodeRecord::parse(
                format!(r#"{{"subnet":"{subnet}","publicIP":"192.0.2.7","vtepMAC":"02:00:00:00:00:07"}}"#)
                    .as_bytes(),
            )
        };
        for subnet in ["255.255.255.255/32", "10.244.3.0/31", "10.244.3.8/32"] {
            let e = record(subnet).unwrap_err();
            assert!(
                e.to_string().contains("leaves no room for a gateway"),
                "{e}"
            );
        }
        let top = record("255.255.255.252/30").unwrap();
        assert_eq!(top.gateway().unwrap().to_string(), "255.255.255.253");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            record_path(dir.path()),
            r#"{"subnet":"255.255.255.255/32","publicIP":"192.0.2.7","vtepMAC":"02:00:00:00:00:07"}"#,
        )
        .unwrap();
        let e = read_node_record(dir.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn node_record_file_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_node_record(dir.path()).unwrap(), None);
        let r: NodeRecord = serde_json::from_str(
            r#"{"subnet":"10.244.1.0/24","publicIP":"192.0.2.1","vtepMAC":"02:00:00:00:00:01"}"#,
        )
        .unwrap();
        write_node_record(dir.path(), &r).unwrap();
        assert_eq!(read_node_record(dir.path()).unwrap(), Some(r));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("node.json")]);
    }
}
