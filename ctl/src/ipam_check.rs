//! `trellisctl ipam check` and `ipam release --from-report`: every
//! allocation and handle in etcd compared with what the nodes' agents
//! report of their attachments (`<prefix>/attachments/<node>`), and the
//! release of exactly what such a report names, each only if unchanged
//! since (its etcd revision), so that nothing changed meanwhile (a live
//! attachment, an address taken again) is ever freed.

mod release;
mod report;
mod snapshot;

pub use release::run_release;
use report::kind_name;
pub use report::{Finding, Kind, Report};
pub use snapshot::Snapshot;
use snapshot::{HandleRead, Held};

use crate::etcd::Etcd;
use crate::output::{self, Format, Outcome};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The findings: pure, from what was read. An allocation of a trellis
/// attachment counts as leaked when its node's report lists it at the same
/// revision as missing its veth for at least `leak_after` seconds.
pub fn check(s: &Snapshot, leak_after: u64) -> Report {
    let mut findings = Vec::new();
    let mut unchecked = Vec::new();
    let mut unreported = BTreeSet::new();
    let mut by_attachment: BTreeMap<(&str, &str, &str), Vec<&Held>> = BTreeMap::new();
    for h in &s.held {
        let owner = match &h.owner {
            Ok(o) => o,
            Err(e) => {
                findings.push(finding(Kind::Unreadable, h, None, false, e.clone()));
                continue;
            }
        };
        by_attachment
            .entry((&owner.network, &owner.container_id, &owner.ifname))
            .or_default()
            .push(h);
        if !s.nodes.contains(&owner.node) {
            let detail = format!(
                "node {} has no record: its addresses are freed by the agents' dead-node reclaim after the grace",
                owner.node
            );
            findings.push(finding(Kind::UnknownNode, h, None, false, detail));
            continue;
        }
        if !owner.is_trellis_attachment() {
            continue; // no veth to look for: its runtime's (CNI GC)
        }
        let report = match s.reports.get(&owner.node) {
            Some(Ok(r)) => r,
            _ => {
                unreported.insert(owner.node.clone());
                continue;
            }
        };
        let seen = report
            .checked
            .iter()
            .find(|c| c.ip == h.ip && c.revision == h.mod_revision);
        match seen {
            None => unchecked.push(h.ip),
            Some(c) => match c.missing_veth_for {
                Some(secs) if secs >= leak_after => {
                    let detail = format!(
                        "no host veth on {} for {secs} s (its agent's report)",
                        owner.node
                    );
                    let handle = s.handle_naming(owner, h.ip);
                    findings.push(finding(Kind::Leaked, h, handle, true, detail));
                }
                _ => {}
            },
        }
    }
    for ((_, cid, ifname), group) in &by_attachment {
        if group.len() < 2 {
            continue;
        }
        let named = s
            .handles
            .get(&(cid.to_string(), ifname.to_string()))
            .map(|h| h.ip);
        for h in group.iter().filter(|h| Some(h.ip) != named) {
            let detail = match named {
                Some(ip) => {
                    format!("{cid}/{ifname} holds {ip} by its handle; this is a second address")
                }
                None => format!(
                    "{cid}/{ifname} holds {} addresses and no handle names one: not released",
                    group.len()
                ),
            };
            findings.push(finding(Kind::Duplicate, h, None, named.is_some(), detail));
        }
    }
    let by_ip: BTreeMap<IpAddr, &Held> = s.held.iter().map(|h| (h.ip, h)).collect();
    for ((cid, ifname), handle) in &s.handles {
        let held = by_ip.get(&handle.ip).copied();
        let ok = held.is_some_and(|h| {
            h.owner
                .as_ref()
                .is_ok_and(|o| &o.container_id == cid && &o.ifname == ifname)
        });
        if !ok {
            let detail = match held {
                None => format!("names {} which is not allocated", handle.ip),
                Some(_) => format!("names {} which another attachment holds", handle.ip),
            };
            findings.push(Finding {
                kind: Kind::OrphanedHandle,
                key: handle.key.clone(),
                mod_revision: handle.mod_revision,
                ip: Some(handle.ip),
                node: String::new(),
                container_id: cid.clone(),
                ifname: ifname.clone(),
                handle_key: None,
                handle_mod_revision: 0,
                ip6_key: None,
                releasable: true,
                detail,
            });
        }
    }
    findings.extend(lone_ipv6(s));
    findings.sort_by(|a, b| (a.kind, a.ip, &a.key).cmp(&(b.kind, b.ip, &b.key)));
    Report {
        findings,
        allocations: s.held.len(),
        unchecked,
        unreported_nodes: unreported.into_iter().collect(),
        fence_markers: s.fences.clone(),
    }
}

/// IPv6 keys that no handle names and whose attachment holds no IPv4
/// address: releasable (if unchanged since). One that does not decode is
/// unreadable, as an IPv4 key would be.
fn lone_ipv6(s: &Snapshot) -> Vec<Finding> {
    let named: BTreeSet<&str> = s
        .handles
        .values()
        .filter_map(|h| h.ip6_key.as_deref())
        .collect();
    let with_ipv4: BTreeSet<(&str, &str, &str)> = s
        .held
        .iter()
        .filter_map(|h| h.owner.as_ref().ok())
        .map(|o| {
            (
                o.network.as_str(),
                o.container_id.as_str(),
                o.ifname.as_str(),
            )
        })
        .collect();
    let mut findings = Vec::new();
    for h in &s.held6 {
        if named.contains(h.key.as_str()) {
            continue;
        }
        let (kind, owner, releasable, detail) = match &h.owner {
            Err(e) => (Kind::Unreadable, None, false, format!("{}: {e}", h.ip)),
            Ok(o) if with_ipv4.contains(&(&o.network, &o.container_id, &o.ifname)) => continue,
            Ok(o) => (
                Kind::LoneIpv6,
                Some(o),
                true,
                format!(
                    "{} is held for {}/{} but neither a handle nor an IPv4 address of that attachment goes with it",
                    h.ip, o.container_id, o.ifname
                ),
            ),
        };
        findings.push(Finding {
            kind,
            key: h.key.clone(),
            mod_revision: h.mod_revision,
            ip: None,
            node: owner.map(|o| o.node.clone()).unwrap_or_default(),
            container_id: owner.map(|o| o.container_id.clone()).unwrap_or_default(),
            ifname: owner.map(|o| o.ifname.clone()).unwrap_or_default(),
            handle_key: None,
            handle_mod_revision: 0,
            ip6_key: None,
            releasable,
            detail,
        });
    }
    findings
}

fn finding(
    kind: Kind,
    h: &Held,
    handle: Option<&HandleRead>,
    releasable: bool,
    detail: String,
) -> Finding {
    let owner = h.owner.as_ref().ok();
    Finding {
        kind,
        key: h.key.clone(),
        mod_revision: h.mod_revision,
        ip: Some(h.ip),
        node: owner.map(|o| o.node.clone()).unwrap_or_default(),
        container_id: owner.map(|o| o.container_id.clone()).unwrap_or_default(),
        ifname: owner.map(|o| o.ifname.clone()).unwrap_or_default(),
        handle_key: handle.map(|h| h.key.clone()),
        handle_mod_revision: handle.map_or(0, |h| h.mod_revision),
        ip6_key: handle.and_then(|h| h.ip6_key.clone()),
        releasable,
        detail,
    }
}

pub async fn run_check(etcd: &Etcd, format: Format, leak_after: u64) -> Result<Outcome> {
    let report = check(&Snapshot::read(etcd).await?, leak_after);
    match format {
        Format::Json => output::json(&serde_json::to_value(&report)?),
        Format::Table => {
            let rows: Vec<Vec<String>> = report
                .findings
                .iter()
                .map(|f| {
                    vec![
                        kind_name(f.kind),
                        etcd.keys
                            .address_of(&f.key)
                            .map_or("-".into(), |ip| ip.to_string()),
                        or_dash(&f.node),
                        or_dash(&f.container_id),
                        or_dash(&f.ifname),
                        if f.releasable { "yes" } else { "no" }.into(),
                        f.detail.clone(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                output::table(
                    &[
                        "KIND",
                        "IP",
                        "NODE",
                        "CONTAINER",
                        "IFNAME",
                        "RELEASABLE",
                        "DETAIL",
                    ],
                    &rows,
                );
            }
            println!(
                "{} allocations checked: {} findings, {} newer than their node's last report, {} fence markers (left alone), nodes without a report: {}",
                report.allocations,
                report.findings.len(),
                report.unchecked.len(),
                report.fence_markers.len(),
                if report.unreported_nodes.is_empty() {
                    "none".to_string()
                } else {
                    report.unreported_nodes.join(", ")
                }
            );
        }
    }
    Ok(if report.findings.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests;
