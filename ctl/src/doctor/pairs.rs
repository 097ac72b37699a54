//! The probed pairs of the agents' reports: the matrix cell of each pair,
//! the node each failed pair is blamed on, and the findings that name them.

use super::finding::Finding;
use std::collections::BTreeMap;
use trellis_common::node::vxlan_overhead;
use trellis_common::probe_report::ProbeReport;

/// A probed pair that failed: which probe, and what it said.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    kind: &'static str,
    from: String,
    to: String,
    detail: String,
    /// The size of the failed probe's IP packet.
    size: u32,
    /// The size of the packet it took on the underlay (encapsulated
    /// through the tunnel).
    underlay_size: u32,
}

/// The matrix row of one agent's report, and its failed pairs.
pub(super) fn judge(
    report: &ProbeReport,
    failures: &mut Vec<Failure>,
) -> BTreeMap<String, &'static str> {
    let mut row = BTreeMap::new();
    for p in &report.peers {
        let (kind, failed) = if !p.underlay.ok {
            ("probe-port-unreachable", &p.underlay)
        } else if !p.overlay.ok && p.direct {
            ("direct-route-blocked", &p.overlay)
        } else if !p.overlay.ok && p.overlay_icmp.as_ref().is_some_and(|o| o.ok) {
            ("tunnel-udp-lost", &p.overlay)
        } else if !p.overlay.ok {
            ("vxlan-port-unreachable", &p.overlay)
        } else if !p.overlay_full.ok {
            ("path-mtu", &p.overlay_full)
        } else if let Some(failed) = p.underlay_full.as_ref().filter(|u| !u.ok) {
            ("underlay-fragments", failed)
        } else if let Some(failed) = p.overlay6.as_ref().filter(|o| !o.ok) {
            ("ipv6-tunnel", failed)
        } else {
            row.insert(p.node.clone(), "ok");
            continue;
        };
        failures.push(Failure {
            kind,
            from: report.node.clone(),
            to: p.node.clone(),
            detail: failed.error.clone(),
            size: failed.size,
            underlay_size: match kind {
                "path-mtu" if !p.direct => failed.size + vxlan_overhead(p.public_ip),
                _ => failed.size,
            },
        });
        row.insert(
            p.node.clone(),
            match kind {
                "probe-port-unreachable" => "probe-port",
                "vxlan-port-unreachable" => "vxlan",
                "ipv6-tunnel" => "ipv6",
                "tunnel-udp-lost" => "udp",
                "direct-route-blocked" => "direct",
                "underlay-fragments" => "frag",
                _ => "mtu",
            },
        );
    }
    row
}

/// Which node each failed pair is blamed on. A probe is answered by an
/// echo, so it fails when either direction is blocked: the node that the
/// most failed pairs of one kind have in common is taken first (a firewall
/// on B fails A to B and B to A alike), then the next, until every pair
/// is covered; a pair whose two nodes tie names both.
fn blame(failures: &[Failure]) -> Vec<Vec<String>> {
    let mut blamed = vec![Vec::new(); failures.len()];
    let mut open: Vec<usize> = (0..failures.len()).collect();
    while !open.is_empty() {
        let mut count: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for &i in &open {
            let f = &failures[i];
            *count.entry((f.kind, f.from.as_str())).or_default() += 1;
            *count.entry((f.kind, f.to.as_str())).or_default() += 1;
        }
        let (&(kind, node), &most) = count.iter().max_by_key(|(_, n)| **n).expect("open pairs");
        let (kind, node) = (kind.to_string(), node.to_string());
        open.retain(|&i| {
            let f = &failures[i];
            if f.kind != kind || (f.from != node && f.to != node) {
                return true;
            }
            let other = if f.from == node { &f.to } else { &f.from };
            blamed[i].push(node.clone());
            if count.get(&(f.kind, other.as_str())) == Some(&most) && other != &node {
                blamed[i].push(other.clone());
            }
            false
        });
    }
    for b in &mut blamed {
        b.sort();
    }
    blamed
}

/// The findings of the failed pairs, each naming both nodes, the port and
/// the node(s) to fix.
pub(super) fn findings_of(failures: &[Failure], reports: &[ProbeReport]) -> Vec<Finding> {
    let report_of = |node: &str| reports.iter().find(|r| r.node == node);
    failures
        .iter()
        .zip(blame(failures))
        .map(|(f, on)| {
            let r = report_of(&f.from).expect("a failure comes from a report");
            let (from, to, on) = (&f.from, &f.to, on.join(" and on "));
            let (message, remedy) = match f.kind {
                "probe-port-unreachable" => (
                    format!(
                        "the probe port UDP {} does not answer from {from} to {to} over the underlay: {}",
                        r.probe_port, f.detail
                    ),
                    format!(
                        "allow UDP {} on {on} and check that its agent runs (the tunnel cannot be judged until then)",
                        r.probe_port
                    ),
                ),
                "vxlan-port-unreachable" => (
                    format!(
                        "{from} and {to} reach each other over the underlay but not through the tunnel (VXLAN, UDP {}): {}",
                        r.vxlan_port, f.detail
                    ),
                    format!(
                        "allow UDP {} on {on} (a host firewall, or the network between them, drops it); if it is open, the NIC or hypervisor may corrupt offloaded VXLAN checksums: run the agents of {on} with --vxlan-tx-checksum-offload=false (ethtool -K trellis.<vni> tx off)",
                        r.vxlan_port
                    ),
                ),
                "direct-route-blocked" => (
                    format!(
                        "{from} and {to} reach each other over the underlay, but not on the direct route between their pod networks (unencapsulated, directRouting): {}",
                        f.detail
                    ),
                    format!(
                        "the underlay on {on} must carry the pod networks' addresses: turn off a source/destination check or anti-spoofing there, allow the pod networks in its host firewall; or switch directRouting off (trellisctl config set) to use VXLAN"
                    ),
                ),
                "tunnel-udp-lost" => (
                    format!(
                        "ICMP passes between {from} and {to} through the tunnel, UDP does not: the checksum-offload pattern (a NIC or hypervisor corrupting the offloaded checksums of the pods' UDP and TCP, calico#9433), or a filter of the pods' UDP: {}",
                        f.detail
                    ),
                    format!(
                        "run the agents of {on} with --vxlan-tx-checksum-offload=false (ethtool -K trellis.<vni> tx off); if that does not help, look for a rule dropping UDP that arrives through the tunnel on {on}"
                    ),
                ),
                "ipv6-tunnel" => (
                    format!(
                        "IPv4 passes between {from} and {to} through the tunnel, IPv6 does not (to {to}'s IPv6 VTEP address): {}",
                        f.detail
                    ),
                    format!(
                        "check IPv6 on {on}: an ip6 or inet firewall rule dropping it, IPv6 turned off (net.ipv6.conf.*.disable_ipv6), and the node's IPv6 overlay entries (drift findings; trellisctl doctor --fix resyncs them)"
                    ),
                ),
                "underlay-fragments" => (
                    format!(
                        "packets of the pods' MTU pass between {from} and {to} through the tunnel only in fragments: the underlay carries less than {} bytes unfragmented (a don't-fragment probe of that size got no echo: {})",
                        f.size, f.detail
                    ),
                    format!(
                        "raise the MTU of the underlay path of {on} to at least {} bytes, or lower the pods' MTU (cluster config \"mtu\"); fragmented tunnel packets are slow, and dropped wherever fragments are filtered",
                        f.underlay_size
                    ),
                ),
                _ => (
                    format!(
                        "small packets pass between {from} and {to} through the tunnel, packets of the pods' MTU ({} bytes, don't-fragment) do not: {}",
                        f.size, f.detail
                    ),
                    format!(
                        "the underlay path of {on} carries less than {} bytes: raise its MTU to at least that, or give the pods a lower MTU; if the path does carry it, large offloaded packets may be corrupted: try --vxlan-tx-checksum-offload=false on the agents of {on}",
                        f.underlay_size
                    ),
                ),
            };
            Finding {
                kind: f.kind,
                from: Some(from.clone()),
                to: Some(to.clone()),
                message,
                remedy,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_common::probe_report::{PeerProbes, Probe};

    fn fail(kind: &'static str, from: &str, to: &str) -> Failure {
        Failure {
            kind,
            from: from.into(),
            to: to.into(),
            detail: String::new(),
            size: 1450,
            underlay_size: 1500,
        }
    }

    fn probe(ok: bool, size: u32) -> Probe {
        Probe {
            ok,
            size,
            rtt_micros: ok.then_some(100),
            error: if ok { String::new() } else { "no echo".into() },
        }
    }

    fn report(peers: Vec<PeerProbes>) -> ProbeReport {
        ProbeReport {
            node: "a".into(),
            probe_port: 8473,
            vxlan_port: 8472,
            mtu: 1450,
            peers,
            drift: Vec::new(),
            cni_config: Vec::new(),
            time_unix_millis: 0,
        }
    }

    fn peer(
        node: &str,
        overlay_full: bool,
        underlay_full: Option<bool>,
        direct: bool,
    ) -> PeerProbes {
        PeerProbes {
            node: node.into(),
            public_ip: "192.0.2.2".parse().unwrap(),
            vtep_ip: "10.244.1.0".parse().unwrap(),
            underlay: probe(true, 36),
            overlay: probe(true, 36),
            overlay_full: probe(overlay_full, if direct { 9000 } else { 1450 }),
            underlay_full: underlay_full.map(|ok| probe(ok, 1500)),
            vtep_ip6: None,
            overlay6: None,
            overlay_icmp: None,
            direct,
        }
    }

    #[test]
    fn a_tunnel_carried_only_in_fragments_is_told_from_a_path_mtu_too_low() {
        let r = report(vec![
            peer("b", true, Some(false), false),
            peer("c", false, Some(false), false),
            peer("d", false, None, true),
            peer("e", true, Some(true), false),
        ]);
        let mut failures = Vec::new();
        let row = judge(&r, &mut failures);
        assert_eq!(
            row.values().copied().collect::<Vec<_>>(),
            ["frag", "mtu", "mtu", "ok"]
        );
        let found = findings_of(&failures, &[r]);
        let kinds: Vec<_> = found.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["underlay-fragments", "path-mtu", "path-mtu"]);
        assert!(
            found[0].remedy.starts_with(
                "raise the MTU of the underlay path of a and on b to at least 1500 bytes"
            ),
            "{}",
            found[0].remedy
        );
        // Through the tunnel: the pods' MTU plus VXLAN's 50 bytes; routed
        // directly: the pods' MTU itself.
        assert!(
            found[1].remedy.contains("carries less than 1500 bytes"),
            "{}",
            found[1].remedy
        );
        assert!(
            found[2].remedy.contains("carries less than 9000 bytes"),
            "{}",
            found[2].remedy
        );
        assert!(
            found[2].message.contains("(9000 bytes, don't-fragment)"),
            "{}",
            found[2].message
        );
    }

    #[test]
    fn the_node_all_failures_share_is_blamed() {
        // A firewall on c: every pair with c fails, both ways.
        let v = "vxlan-port-unreachable";
        let f = [
            fail(v, "a", "c"),
            fail(v, "b", "c"),
            fail(v, "c", "a"),
            fail(v, "c", "b"),
        ];
        assert_eq!(blame(&f), vec![vec!["c".to_string()]; 4]);
        // Two nodes only: nothing tells which one drops, both are named.
        let f = [fail(v, "a", "b"), fail(v, "b", "a")];
        assert_eq!(blame(&f), vec![vec!["a".to_string(), "b".to_string()]; 2]);
        // Kinds are blamed apart.
        let f = [
            fail(v, "a", "c"),
            fail("path-mtu", "a", "b"),
            fail("path-mtu", "c", "b"),
        ];
        assert_eq!(
            blame(&f),
            [
                vec!["a".to_string(), "c".to_string()],
                vec!["b".into()],
                vec!["b".into()]
            ]
        );
    }
}
