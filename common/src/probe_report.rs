//! What an agent answers on `GET /doctor` of its status endpoint: each
//! remote node it knows, probed four ways with the agents' probe protocol
//! (`trellis-agent --probe-port`): over the underlay to the node's public
//! address, through the VXLAN tunnel to its VTEP address, through the
//! tunnel again at the pods' full MTU, and over the underlay at the size of
//! the tunnel's packets (both don't-fragment); in a dual-stack cluster also
//! to its IPv6 VTEP address. `trellisctl doctor` reads it.

use serde::{Deserialize, Serialize};

/// The UDP payload of a probe starts with this; a responder echoes any
/// datagram that does, and nothing else.
pub const PROBE_MAGIC: &[u8; 4] = b"TRLP";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub node: String,
    pub probe_port: u16,
    /// The VXLAN UDP port of the cluster config.
    pub vxlan_port: u16,
    /// The VXLAN device's MTU on this node (the pods', unless direct
    /// routing with an explicit `mtu` gives them more).
    pub mtu: u32,
    pub peers: Vec<PeerProbes>,
    /// What this node's kernel holds differently from what etcd says it
    /// should (the VXLAN device, its MAC, FDB, neighbour, nexthop and route
    /// entries), seen twice a second apart; empty when they agree.
    #[serde(default)]
    pub drift: Vec<String>,
    /// What is wrong with the runtime's CNI config on this node against
    /// this agent (when the agent knows the directory: `--cni-conf-dir`).
    #[serde(default)]
    pub cni_config: Vec<String>,
    /// The agent's wall clock when it answered (milliseconds since the
    /// epoch), for the doctor's clock-skew check.
    #[serde(default)]
    pub time_unix_millis: u64,
}

/// Milliseconds since the epoch by this host's clock.
pub fn now_unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerProbes {
    pub node: String,
    #[serde(rename = "publicIP")]
    pub public_ip: std::net::IpAddr,
    /// The VTEP address the probes through the tunnel go to: the IPv4 one,
    /// else (IPv6-only) the IPv6 one.
    #[serde(rename = "vtepIP")]
    pub vtep_ip: std::net::IpAddr,
    /// To `publicIP:probePort` over the underlay.
    pub underlay: Probe,
    /// To `vtepIP:probePort` through the tunnel, a small datagram.
    pub overlay: Probe,
    /// The same at full size, don't-fragment: an IP packet of `mtu` bytes
    /// (the tunnel's), or of the pods' MTU to a node routed directly.
    pub overlay_full: Probe,
    /// To `publicIP:probePort` over the underlay at the size of the
    /// tunnel's packets (`mtu` plus VXLAN's overhead), don't-fragment: a
    /// path that carries the tunnel only in fragments fails it while
    /// `overlayFull` passes. Not sent to a node routed directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_full: Option<Probe>,
    /// In a dual-stack cluster: the node's IPv6 VTEP address, and a small
    /// datagram to it through the tunnel (the inner IPv6 path).
    #[serde(default, rename = "vtepIP6", skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<std::net::Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay6: Option<Probe>,
    /// An ICMP echo to `vtepIP` through the tunnel, sent when the small
    /// datagram got no echo: passing, it tells the checksum-offload
    /// pattern (ICMP passes, UDP and TCP do not) from a blocked VXLAN port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_icmp: Option<Probe>,
    /// The node is routed directly (direct routing): the probes of
    /// `vtepIP` took the unencapsulated path over the underlay, not the
    /// tunnel.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
}

/// One probe: whether an echo came back, and how fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub ok: bool,
    /// The IP packet's size.
    pub size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}
