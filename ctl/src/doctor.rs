//! `trellisctl doctor`: every agent (or `--node` one) probes every other
//! node (`GET /doctor` of its status endpoint, see the agent's `probe`
//! module); the answers become a node-by-node matrix and findings, each
//! with the pair of nodes and the remedy. Read-only.

use crate::etcd::Etcd;
use crate::health;
use crate::output::{self, Format, Outcome};
use anyhow::Result;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use trellis_common::node::NodeRecord;
use trellis_common::probe_report::{now_unix_millis, ProbeReport};

/// How long one agent gets to probe all the others.
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(30);
/// A lease with less left than this is about to expire.
const LEASE_WARNING_SECONDS: i64 = 60;
/// etcd answering slower than this is a finding.
const ETCD_SLOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub message: String,
    pub remedy: String,
}

/// One node as read from etcd.
struct NodeSeen {
    name: String,
    status_addr: Option<SocketAddr>,
    lease_left: Option<i64>,
}

/// What one agent's probes came to, with its clock's offset from ours
/// (milliseconds), or why it could not be asked.
type Answer = Result<(ProbeReport, i64), String>;

/// Clocks further apart than this are a finding.
const SKEW_LIMIT_MILLIS: i64 = 5_000;

/// The two nodes whose clocks are furthest apart, and by how much, when
/// that is over the limit. An agent's offset is its clock at the answer
/// against the middle of our request, so the round trip counts at most
/// half.
fn skew(offsets: &[(String, i64)]) -> Option<(String, String, i64)> {
    let low = offsets.iter().min_by_key(|(_, o)| *o)?;
    let high = offsets.iter().max_by_key(|(_, o)| *o)?;
    let apart = high.1 - low.1;
    (apart > SKEW_LIMIT_MILLIS).then(|| (low.0.clone(), high.0.clone(), apart))
}

/// A probed pair that failed: which probe, and what it said.
#[derive(Debug, Clone)]
struct Failure {
    kind: &'static str,
    from: String,
    to: String,
    detail: String,
}

/// The matrix row of one agent's report, and its failed pairs.
fn judge(report: &ProbeReport, failures: &mut Vec<Failure>) -> BTreeMap<String, &'static str> {
    let mut row = BTreeMap::new();
    for p in &report.peers {
        let (kind, detail) = if !p.underlay.ok {
            ("probe-port-unreachable", p.underlay.error.clone())
        } else if !p.overlay.ok && p.direct {
            ("direct-route-blocked", p.overlay.error.clone())
        } else if !p.overlay.ok && p.overlay_icmp.as_ref().is_some_and(|o| o.ok) {
            ("tunnel-udp-lost", p.overlay.error.clone())
        } else if !p.overlay.ok {
            ("vxlan-port-unreachable", p.overlay.error.clone())
        } else if !p.overlay_full.ok {
            ("path-mtu", p.overlay_full.error.clone())
        } else if let Some(failed) = p.overlay6.as_ref().filter(|o| !o.ok) {
            ("ipv6-tunnel", failed.error.clone())
        } else {
            row.insert(p.node.clone(), "ok");
            continue;
        };
        failures.push(Failure {
            kind,
            from: report.node.clone(),
            to: p.node.clone(),
            detail,
        });
        row.insert(
            p.node.clone(),
            match kind {
                "probe-port-unreachable" => "probe-port",
                "vxlan-port-unreachable" => "vxlan",
                "ipv6-tunnel" => "ipv6",
                "tunnel-udp-lost" => "udp",
                "direct-route-blocked" => "direct",
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
fn findings_of(failures: &[Failure], reports: &[ProbeReport]) -> Vec<Finding> {
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
                _ => (
                    format!(
                        "small packets pass between {from} and {to} through the tunnel, packets of the pods' MTU ({} bytes) do not",
                        r.mtu
                    ),
                    format!(
                        "the underlay path of {on} carries less than {} bytes: raise its MTU to at least that, or give the pods a lower MTU; if the path does carry it, large offloaded packets may be corrupted: try --vxlan-tx-checksum-offload=false on the agents of {on}",
                        r.mtu + 50
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

/// One look at the cluster: what was asked, what came back, what is wrong.
struct Examination {
    names: Vec<String>,
    asked: Vec<String>,
    matrix: BTreeMap<String, BTreeMap<String, &'static str>>,
    findings: Vec<Finding>,
    reports: Vec<ProbeReport>,
    /// Agents whose kernel differs from etcd, and where to ask them.
    drifted: Vec<(String, SocketAddr)>,
}

pub async fn run(etcd: &Etcd, format: Format, only: Option<&str>, fix: bool) -> Result<Outcome> {
    let mut seen = examine(etcd, only).await?;
    let mut fixed = Vec::new();
    if fix && !seen.drifted.is_empty() {
        for (node, addr) in &seen.drifted {
            match health::request(*addr, "POST", "/resync").await {
                Ok((202, _)) => fixed.push(node.clone()),
                Ok((code, body)) => {
                    eprintln!("trellisctl: resync of {node}: {code} {}", body.trim())
                }
                Err(e) => eprintln!("trellisctl: resync of {node}: {e}"),
            }
        }
        // The resync is one dump and a few writes: then look again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        seen = examine(etcd, only).await?;
    }
    match format {
        Format::Json => output::json(&json!({
            "matrix": seen.matrix, "findings": seen.findings, "reports": seen.reports,
            "resynced": fixed,
        })),
        Format::Table => {
            if !fixed.is_empty() {
                println!(
                    "re-synced the agents of {} and looked again\n",
                    fixed.join(", ")
                );
            }
            print_table(&seen);
        }
    }
    Ok(if seen.findings.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

async fn examine(etcd: &Etcd, only: Option<&str>) -> Result<Examination> {
    let mut findings = Vec::new();
    let started = Instant::now();
    let kvs = etcd.list(&etcd.keys.nodes()).await?;
    let etcd_took = started.elapsed();
    if etcd_took > ETCD_SLOW {
        findings.push(Finding {
            kind: "etcd-slow",
            from: None,
            to: None,
            message: format!("listing the node records took {etcd_took:?}"),
            remedy: "check etcd's health (etcdctl endpoint status, disk latency)".into(),
        });
    }
    let mut nodes = Vec::new();
    for kv in &kvs {
        let Some(name) = etcd.keys.node_name_of(kv.key_str().unwrap_or_default()) else {
            continue;
        };
        let Ok(record) = NodeRecord::parse(kv.value()) else {
            findings.push(Finding {
                kind: "unreadable-record",
                from: None,
                to: Some(name.to_string()),
                message: format!("the record of {name} does not decode"),
                remedy: format!("see `trellisctl nodes`; restart the agent of {name}"),
            });
            continue;
        };
        let lease_left = match kv.lease() {
            0 => None,
            id => etcd.lease_left(id).await?,
        };
        nodes.push(NodeSeen {
            name: name.to_string(),
            status_addr: record.status_addr,
            lease_left,
        });
    }
    if let Some(n) = only {
        if !nodes.iter().any(|s| s.name == n) {
            anyhow::bail!("no node {n} in etcd");
        }
    }
    for n in &nodes {
        if let Some(left) = n.lease_left.filter(|l| *l < LEASE_WARNING_SECONDS) {
            findings.push(Finding {
                kind: "lease-expiring",
                from: None,
                to: Some(n.name.clone()),
                message: format!("the lease of {}'s record expires in {left} s", n.name),
                remedy: format!(
                    "the agent of {} is not renewing it: check that it runs and reaches etcd",
                    n.name
                ),
            });
        }
    }
    let asked: Vec<&NodeSeen> = nodes
        .iter()
        .filter(|n| only.is_none_or(|o| o == n.name))
        .collect();
    let answers: Vec<Answer> = futures::future::join_all(asked.iter().map(|n| ask(n))).await;
    let mut matrix: BTreeMap<String, BTreeMap<String, &'static str>> = BTreeMap::new();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    let mut offsets = Vec::new();
    for (n, answer) in asked.iter().zip(answers) {
        match answer {
            Ok((report, offset)) => {
                matrix.insert(n.name.clone(), judge(&report, &mut failures));
                offsets.push((n.name.clone(), offset));
                reports.push(report);
            }
            Err(e) => findings.push(Finding {
                kind: "agent-unreachable",
                from: Some(n.name.clone()),
                to: None,
                message: format!("cannot ask the agent of {}: {e}", n.name),
                remedy: format!(
                    "run the agent of {} with --metrics-addr (and --probe-port) and make its status port reachable from here",
                    n.name
                ),
            }),
        }
    }
    findings.extend(findings_of(&failures, &reports));
    if let Some((behind, ahead, apart)) = skew(&offsets) {
        findings.push(Finding {
            kind: "clock-skew",
            from: Some(behind.clone()),
            to: Some(ahead.clone()),
            message: format!(
                "the clocks of {behind} and {ahead} are {:.1} s apart",
                apart as f64 / 1000.0
            ),
            remedy: format!(
                "run NTP (chrony, systemd-timesyncd) on {behind} and {ahead}: logs, TLS certificate validity and the timestamps operators compare across nodes assume one time (etcd leases are timed by etcd and do not depend on it)"
            ),
        });
    }
    for r in &reports {
        if r.drift.is_empty() {
            continue;
        }
        let shown: Vec<&str> = r.drift.iter().take(5).map(String::as_str).collect();
        findings.push(Finding {
            kind: "kernel-drift",
            from: Some(r.node.clone()),
            to: None,
            message: format!(
                "the kernel of {} differs from etcd in {} entries: {}{}",
                r.node,
                r.drift.len(),
                shown.join("; "),
                if r.drift.len() > shown.len() { "; ..." } else { "" }
            ),
            remedy: format!(
                "`trellisctl doctor --fix` re-syncs the agent of {} now (it also re-syncs by itself every --resync-interval)",
                r.node
            ),
        });
    }
    for r in &reports {
        for problem in &r.cni_config {
            findings.push(Finding {
                kind: "cni-config",
                from: Some(r.node.clone()),
                to: None,
                message: format!("on {}: {problem}", r.node),
                remedy: format!(
                    "re-run `trellis-agent install-cni` on {} (the DaemonSet's init container does), or fix the file",
                    r.node
                ),
            });
        }
    }
    let drifted = reports
        .iter()
        .filter(|r| !r.drift.is_empty())
        .filter_map(|r| {
            let n = nodes.iter().find(|n| n.name == r.node)?;
            Some((n.name.clone(), n.status_addr?))
        })
        .collect();
    Ok(Examination {
        names: nodes.iter().map(|n| n.name.clone()).collect(),
        asked: asked.iter().map(|n| n.name.clone()).collect(),
        matrix,
        findings,
        reports,
        drifted,
    })
}

async fn ask(n: &NodeSeen) -> Answer {
    let addr = n.status_addr.ok_or_else(|| {
        "its record names no status endpoint (the agent runs without --metrics-addr)".to_string()
    })?;
    let sent = now_unix_millis();
    let (code, body) = tokio::time::timeout(DOCTOR_TIMEOUT, health::get(addr, "/doctor"))
        .await
        .map_err(|_| format!("no answer from {addr} within {DOCTOR_TIMEOUT:?}"))??;
    let middle = sent + (now_unix_millis().saturating_sub(sent)) / 2;
    if code != 200 {
        return Err(format!("{addr} answered {code}: {}", body.trim()));
    }
    let report: ProbeReport =
        serde_json::from_str(&body).map_err(|e| format!("{addr}: not a probe report: {e}"))?;
    let offset = report.time_unix_millis as i64 - middle as i64;
    Ok((report, offset))
}

fn print_table(seen: &Examination) {
    let mut header = vec!["FROM \\ TO"];
    header.extend(seen.names.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = seen
        .asked
        .iter()
        .map(|from| {
            let mut row = vec![from.clone()];
            for to in &seen.names {
                row.push(match seen.matrix.get(from) {
                    None => "?".into(),
                    Some(_) if to == from => "-".into(),
                    Some(cells) => cells.get(to).copied().unwrap_or("?").into(),
                });
            }
            row
        })
        .collect();
    output::table(&header, &rows);
    if seen.findings.is_empty() {
        println!("no findings");
    }
    for f in &seen.findings {
        println!("\n{}: {}\n  remedy: {}", f.kind, f.message, f.remedy);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn fail(kind: &'static str, from: &str, to: &str) -> Failure {
        Failure {
            kind,
            from: from.into(),
            to: to.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn clocks_far_apart_are_named() {
        let at = |n: &str, o: i64| (n.to_string(), o);
        assert_eq!(skew(&[at("a", 10), at("b", -2_000), at("c", 2_900)]), None);
        assert_eq!(
            skew(&[at("a", 10), at("b", -2_000), at("c", 3_100)]),
            Some(("b".into(), "c".into(), 5_100))
        );
        assert_eq!(skew(&[]), None);
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
