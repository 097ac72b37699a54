//! The agents' probe protocol (`--probe-port`, UDP): every agent echoes
//! each datagram that starts with [`PROBE_MAGIC`] back to its sender, and
//! on `GET /doctor` probes every remote node it knows four ways: over the
//! underlay to the node's public address, through the VXLAN tunnel to its
//! VTEP address (answered by the same responder, since that address is the
//! node's own), through the tunnel at the pods' full MTU, and over the
//! underlay at the size of the tunnel's packets, the last two with
//! don't-fragment set. Which of them fail tells a blocked VXLAN port from a
//! blocked probe port from a path MTU too low for the pods from an underlay
//! that carries the tunnel only in fragments.

use crate::install_cni::conf_dir;
use crate::overlay::dataplane::{read_overlay, read_underlay};
use crate::overlay::{plan, DesiredOverlay, Op, Paths, Underlay};
use crate::registry::LocalView;
use etcd_client::GetOptions;
use futures::StreamExt;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_common::node::{vxlan_overhead, NodeRecord};
use trellis_common::probe_report::{now_unix_millis, PeerProbes, Probe, ProbeReport, PROBE_MAGIC};
use trellis_kernel::Netlink;

/// IPv4 and UDP headers: a probe of an IP packet of `size` bytes carries
/// `size - HEADERS` bytes.
const HEADERS: u32 = 28;
/// The smallest probe (magic and sequence number).
const SMALL: u32 = HEADERS + 8;
/// Attempts per probe, each waiting this long for the echo.
const ATTEMPTS: u32 = 3;
const WAIT: Duration = Duration::from_millis(400);
/// Peers probed at once (four or five sockets each): bounded so that a cluster
/// of thousands neither runs out of file descriptors nor floods.
const PEERS_AT_ONCE: usize = 32;
/// Largest datagram echoed.
const MAX_DATAGRAM: usize = 9216;

/// Echo probes on `port` (all addresses of this node) forever.
pub async fn respond(socket: UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) if buf[..n].starts_with(PROBE_MAGIC) => {
                if let Err(e) = socket.send_to(&buf[..n], from).await {
                    log::debug!("probe echo to {from}: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                log::debug!("probe responder: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Bind the responder's socket (so that a port in use fails start-up): on
/// both families where the namespace has IPv6 (an IPv6 underlay), else on
/// IPv4.
pub async fn bind(port: u16) -> std::io::Result<UdpSocket> {
    match UdpSocket::bind(std::net::SocketAddrV6::new(
        Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    ))
    .await
    {
        Ok(socket) => Ok(socket),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(_) => UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).await,
    }
}

/// Send a probe of an IP packet of `size` bytes to `to` and wait for its
/// echo, a few times; from `local` when given (else the address the kernel
/// picks).
pub async fn probe(local: Option<IpAddr>, to: SocketAddr, size: u32) -> Probe {
    outcome(size, try_probe(local, to, size).await)
}

/// A probe of an IP packet of `size` bytes as it came out: its round trip,
/// or why there was no echo.
fn outcome(size: u32, rtt: Result<Duration, String>) -> Probe {
    match rtt {
        Ok(rtt) => Probe {
            ok: true,
            size,
            rtt_micros: Some(rtt.as_micros() as u64),
            error: String::new(),
        },
        Err(error) => Probe {
            ok: false,
            size,
            rtt_micros: None,
            error,
        },
    }
}

async fn try_probe(local: Option<IpAddr>, to: SocketAddr, size: u32) -> Result<Duration, String> {
    let local: SocketAddr = match (local, to) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
        (None, SocketAddr::V6(_)) => {
            std::net::SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into()
        }
    };
    // Not connected: a node reached by a direct route answers a probe of
    // its VTEP address from the address the kernel picks towards this node
    // (its public one), so the echo is known by its port and payload (this
    // socket's port is this probe's alone), not by its source address.
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("binding a probe socket: {e}"))?;
    // A full-size probe must not pass in fragments: a path that fragments
    // the tunnel's packets is what it is there to find.
    trellis_kernel::sys::dont_fragment(&socket, local.is_ipv6())
        .map_err(|e| format!("setting don't-fragment on a probe socket: {e}"))?;
    // IPv6's header is 20 bytes longer than IPv4's.
    let headers = if to.is_ipv4() { HEADERS } else { HEADERS + 20 };
    let len = size.saturating_sub(headers).max(8) as usize;
    let mut payload = vec![0u8; len];
    payload[..4].copy_from_slice(PROBE_MAGIC);
    let mut echo = vec![0u8; MAX_DATAGRAM];
    let mut last = String::from("no echo");
    for seq in 0..ATTEMPTS {
        payload[4..8].copy_from_slice(&seq.to_be_bytes());
        let sent = Instant::now();
        if let Err(e) = socket.send_to(&payload, to).await {
            last = format!("sending to {to}: {e}");
            continue;
        }
        let deadline = sent + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.recv_from(&mut echo)).await {
                Err(_) => {
                    last = format!("no echo within {WAIT:?}, {ATTEMPTS} tries");
                    break;
                }
                Ok(Err(e)) => {
                    last = e.to_string();
                    tokio::time::sleep(left.min(Duration::from_millis(50))).await;
                    break;
                }
                Ok(Ok((n, from))) if from.port() == to.port() && echo[..n] == payload[..] => {
                    return Ok(sent.elapsed())
                }
                Ok(Ok(_)) => continue, // an echo of an earlier try, or a stranger
            }
        }
    }
    Err(last)
}

/// An ICMP echo to `to` as a [`Probe`] (the IP packet of a small echo).
async fn icmp_probe(to: Ipv4Addr) -> Probe {
    let size = 20 + 8 + 14;
    outcome(size, crate::icmp_echo::echo(to, ATTEMPTS, WAIT).await)
}

/// What `/doctor` needs: where to find the other nodes, how this one sees
/// them, its kernel, and the reconciler's resync (`POST /resync`).
#[derive(Clone)]
pub struct Doctor {
    pub etcd: EtcdClient,
    pub keys: Keys,
    pub view: LocalView,
    pub probe_port: u16,
    pub vxlan_port: u16,
    pub mtu: u32,
    /// The pods' MTU: above `mtu` only with direct routing (the cluster
    /// config's `mtu`), what the probe of a directly routed node carries.
    pub pod_mtu: u32,
    pub nl: Netlink,
    pub vxlan_device: String,
    /// The underlay device's index, where direct routes leave.
    pub underlay: u32,
    /// Direct routing on or off, as the agent follows it.
    pub direct: watch::Receiver<bool>,
    /// The pod networks (the routes into them on the underlay device are
    /// the overlay's).
    pub pod_networks: Vec<IpNetwork>,
    pub resync: Arc<Notify>,
    /// The runtime's CNI config directory and what it must say.
    pub cni_conf: Option<(PathBuf, conf_dir::Expected)>,
}

impl Doctor {
    /// Probe every remote node the overlay admits (read from etcd now, the
    /// registry's rule), [`PEERS_AT_ONCE`] at a time.
    pub async fn check(&self) -> Result<ProbeReport, String> {
        // Read once for the drift and the probes: with direct routing on,
        // the subnets whose nodes' VTEP addresses are reached unencapsulated.
        let direct = *self.direct.borrow();
        let underlay = read_underlay(&self.nl, self.underlay, direct)
            .await
            .map_err(|e| format!("cannot read the underlay device: {e}"));
        let (records, desired) = self.desired().await?;
        let mut drift = self.drift(&records, &desired, underlay.as_ref()).await;
        if !drift.is_empty() {
            // The agent may have been writing just then: what is still
            // different a second later is drift.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (records, desired) = self.desired().await?;
            drift = self.drift(&records, &desired, underlay.as_ref()).await;
        }
        let port = self.probe_port;
        let direct_to: &[IpNetwork] = underlay.as_ref().map_or(&[], |u| &u.direct);
        // Through the tunnel (or the direct route) from this node's own VTEP
        // address, as pod traffic goes: between pod networks, so that an
        // underlay that drops pod addresses drops the probe either way.
        // The first family's VTEP (IPv4, else IPv6) takes the probes below;
        // a dual-stack cluster's IPv6 VTEP a small one besides.
        let own4 = self.view.subnet.map(|s| IpAddr::V4(s.network()));
        let own6 = self.view.subnet6.map(|s| IpAddr::V6(s.network()));
        let own = own4.or(own6);
        let own6 = own6.filter(|_| own4.is_some());
        let peers = desired.nodes.into_iter().map(|(name, n)| async move {
            let vtep_ip = n.first_vtep_ip();
            // Direct where the VTEP's family is the underlay's (an IPv6
            // underlay carries IPv4 over VXLAN, and an IPv4 one IPv6).
            let direct = n.public_ip.is_ipv4() == vtep_ip.is_ipv4()
                && direct_to.iter().any(|s| s.contains(n.public_ip));
            let vtep_ip6 = n
                .ipv6
                .as_ref()
                .map(|v6| v6.vtep_ip)
                .filter(|_| n.ipv4.is_some());
            let overlay6 = async {
                match vtep_ip6 {
                    Some(ip) => Some(probe(own6, SocketAddr::from((ip, port)), SMALL).await),
                    None => None,
                }
            };
            // The tunnel's packets whole over the underlay: what the VXLAN
            // device sends for a pod's packet of the full MTU.
            let underlay_full = async {
                let size = self.mtu + vxlan_overhead(n.public_ip);
                match direct {
                    true => None,
                    false => Some(probe(None, SocketAddr::from((n.public_ip, port)), size).await),
                }
            };
            let full = if direct { self.pod_mtu } else { self.mtu };
            let (underlay, overlay, overlay_full, underlay_full, overlay6) = tokio::join!(
                probe(None, SocketAddr::from((n.public_ip, port)), SMALL),
                probe(own, SocketAddr::from((vtep_ip, port)), SMALL),
                probe(own, SocketAddr::from((vtep_ip, port)), full),
                underlay_full,
                overlay6,
            );
            // The checksum pattern is a tunnel's: not asked of a direct path.
            let overlay_icmp = match vtep_ip {
                IpAddr::V4(v4) if !(overlay.ok || !underlay.ok || direct) => {
                    Some(icmp_probe(v4).await)
                }
                _ => None,
            };
            PeerProbes {
                node: name,
                public_ip: n.public_ip,
                vtep_ip,
                underlay,
                overlay,
                overlay_full,
                underlay_full,
                vtep_ip6,
                overlay6,
                overlay_icmp,
                direct,
            }
        });
        Ok(ProbeReport {
            node: self.view.node.clone(),
            probe_port: port,
            vxlan_port: self.vxlan_port,
            mtu: self.mtu,
            peers: {
                let mut done: Vec<PeerProbes> = futures::stream::iter(peers)
                    .buffer_unordered(PEERS_AT_ONCE)
                    .collect()
                    .await;
                done.sort_by(|a, b| a.node.cmp(&b.node));
                done
            },
            drift,
            cni_config: self
                .cni_conf
                .as_ref()
                .map(|(dir, expected)| conf_dir::inspect(dir, expected))
                .unwrap_or_default(),
            time_unix_millis: now_unix_millis(),
        })
    }

    /// The node records in etcd now, and the overlay they make for this
    /// node (the registry's rule).
    async fn desired(&self) -> Result<(BTreeMap<String, NodeRecord>, DesiredOverlay), String> {
        let mut c = self.etcd.pick().await.client;
        let resp = c
            .get(self.keys.nodes(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("listing the nodes: {e}"))?;
        let records = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = self.keys.node_name_of(kv.key_str().ok()?)?;
                Some((name.to_string(), NodeRecord::parse(kv.value()).ok()?))
            })
            .collect();
        let (desired, _) = DesiredOverlay::from_records(&self.view, &records);
        Ok((records, desired))
    }

    /// Where the kernel differs from `desired`, in words (read only).
    async fn drift(
        &self,
        records: &BTreeMap<String, NodeRecord>,
        desired: &DesiredOverlay,
        underlay: Result<&Underlay, &String>,
    ) -> Vec<String> {
        let dev = &self.vxlan_device;
        let link = match self.nl.link_by_name(dev).await {
            Ok(Some(link)) => link,
            Ok(None) => return vec![format!("the VXLAN device {dev} is missing")],
            Err(e) => return vec![format!("cannot read the VXLAN device {dev}: {e}")],
        };
        let mut drift = Vec::new();
        if let Some(own) = records.get(&self.view.node) {
            let mac = link.mac.map(|m| m.to_string()).unwrap_or_default();
            if !own.vtep_mac.eq_ignore_ascii_case(&mac) {
                drift.push(format!(
                    "{dev} has MAC {mac}, this node's record says {}",
                    own.vtep_mac
                ));
            }
        }
        let underlay = match underlay {
            Ok(underlay) => underlay.clone(),
            Err(e) => {
                drift.push(e.clone());
                return drift;
            }
        };
        let read = read_overlay(
            &self.nl,
            link.index,
            Some(underlay.ifindex),
            &self.pod_networks,
        );
        match read.await {
            Err(e) => drift.push(format!("cannot read the entries of {dev}: {e}")),
            Ok((actual, style)) => {
                let paths = Paths {
                    style,
                    vxlan: link.index,
                    underlay: Some(underlay),
                };
                let p = plan(desired, &actual, &paths);
                drift.extend(p.phases().into_iter().flatten().map(describe));
            }
        }
        drift
    }
}

/// One correction the agent would make, as a difference a person reads.
fn describe(op: &Op) -> String {
    match op {
        Op::DelFdb(e) => match e.dst {
            Some(dst) => format!("stale FDB entry {} -> {dst}", e.mac),
            None => format!("stale FDB entry {}", e.mac),
        },
        Op::DelNeighbour(ip) => format!("stale neighbour entry {ip}"),
        Op::DelRoute(r) => format!("stale route to {}", r.dst),
        Op::DelNexthop(id) => format!("stale nexthop {id}"),
        Op::SetFdb { mac, dst } => format!("FDB entry {mac} -> {dst} missing or different"),
        Op::SetNeighbour { ip, mac } => format!("neighbour {ip} -> {mac} missing or different"),
        Op::SetRoute { dst, via } => format!("route to {dst} via {via} missing or different"),
        Op::SetDirectRoute { dst, via } => {
            format!("direct route to {dst} via {via} on the underlay missing or different")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_echo_comes_back_and_silence_is_reported() {
        let socket = bind(0).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(respond(socket));
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let small = probe(None, to, SMALL).await;
        assert!(small.ok && small.rtt_micros.is_some(), "{small:?}");
        let full = probe(Some(Ipv4Addr::LOCALHOST.into()), to, 1450).await;
        assert!(full.ok && full.size == 1450, "{full:?}");
        // Nobody listens there: the probe says so.
        let quiet = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = quiet.local_addr().unwrap();
        drop(quiet);
        let none = probe(None, to, SMALL).await;
        assert!(!none.ok && !none.error.is_empty(), "{none:?}");
    }

    #[tokio::test]
    async fn datagrams_without_the_magic_are_not_echoed() {
        let socket = bind(0).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(respond(socket));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(("127.0.0.1", port)).await.unwrap();
        c.send(b"hello, anyone").await.unwrap();
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_millis(300), c.recv(&mut buf)).await;
        assert!(got.is_err(), "echoed a stranger's datagram");
    }
}
