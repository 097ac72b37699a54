//! `trellisctl doctor`: every agent (or `--node` one) probes every other
//! node (`GET /doctor` of its status endpoint, see the agent's `probe`
//! module); the answers become a node-by-node matrix and findings, each
//! with the pair of nodes and the remedy. Read-only.

mod finding;
mod pairs;

use crate::etcd::Etcd;
use crate::health;
use crate::output::{self, Format, Outcome};
use anyhow::Result;
use finding::Finding;
use pairs::{findings_of, judge};
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
}
