//! `trellisctl ipam check` and `ipam release --from-report`: every
//! allocation and handle in etcd compared with what the nodes' agents
//! report of their attachments (`<prefix>/attachments/<node>`), and the
//! release of exactly what such a report names, each only if unchanged
//! since (its etcd revision), so that nothing changed meanwhile (a live
//! attachment, an address taken again) is ever freed.

use crate::etcd::Etcd;
use crate::output::{self, Format, Outcome};
use anyhow::{Context, Result};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use trellis_common::attachment_report::AttachmentReport;
use trellis_ipam::allocation::Owner;
use trellis_ipam::store::records::HandleValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Its node's agent has seen it without its host veth for long enough.
    Leaked,
    /// A second address of one attachment, not the one its handle names.
    Duplicate,
    /// A handle naming an address that is absent or someone else's.
    OrphanedHandle,
    /// Held for a node that has no record (left or dead): its agent's
    /// dead-node reclaim frees it after the grace; not released here.
    UnknownNode,
    /// An address key that does not decode.
    Unreadable,
    /// An IPv6 address key that neither a handle nor an IPv4 address of
    /// the same attachment goes with (ADD writes the three in one
    /// transaction, so this is never an ADD in progress).
    LoneIpv6,
}

/// One finding, as `-o json` prints it and `release --from-report` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: Kind,
    /// The key to free, and its modification revision when checked.
    pub key: String,
    pub mod_revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub node: String,
    #[serde(default, rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// The attachment's handle, freed with the address when it names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_key: Option<String>,
    #[serde(default)]
    pub handle_mod_revision: i64,
    /// The IPv6 twin's key of a dual-stack allocation (written with the
    /// address at its revision), freed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_key: Option<String>,
    pub releasable: bool,
    pub detail: String,
}

/// What `ipam check -o json` prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub findings: Vec<Finding>,
    pub allocations: usize,
    /// Allocations newer than their node's last report (judged next time).
    pub unchecked: Vec<Ipv4Addr>,
    /// Nodes with allocations of trellis attachments but no report (agent
    /// down, or its report turned off).
    pub unreported_nodes: Vec<String>,
    /// Handles that are fence markers (no address): left alone, since each
    /// may be what makes a late claim of its attachment fail; the runtime's
    /// CNI GC removes them.
    #[serde(default)]
    pub fence_markers: Vec<String>,
}

/// An allocation as read.
struct Held {
    ip: Ipv4Addr,
    key: String,
    owner: Result<Owner, String>,
    mod_revision: i64,
}

/// An IPv6 address key as read (a dual-stack allocation's twin).
struct Held6 {
    ip: Ipv6Addr,
    key: String,
    owner: Result<Owner, String>,
    mod_revision: i64,
}

/// A handle holding an address, as read.
struct HandleRead {
    key: String,
    ip: Ipv4Addr,
    /// The key of the IPv6 twin it names, if any.
    ip6_key: Option<String>,
    mod_revision: i64,
}

/// Everything the check compares, read from etcd.
pub struct Snapshot {
    held: Vec<Held>,
    held6: Vec<Held6>,
    /// Handles that name an address, by (containerID, ifname).
    handles: BTreeMap<(String, String), HandleRead>,
    nodes: BTreeSet<String>,
    reports: BTreeMap<String, Result<AttachmentReport, String>>,
    fences: Vec<String>,
}

impl Snapshot {
    pub async fn read(etcd: &Etcd) -> Result<Snapshot> {
        let keys = &etcd.keys;
        let (mut held, mut held6) = (Vec::new(), Vec::new());
        for kv in etcd.list(&keys.ips()).await? {
            let Some(ip) = kv.key_str().ok().and_then(|k| keys.address_of(k)) else {
                continue;
            };
            let owner = Owner::parse(kv.value()).map_err(|e| e.to_string());
            let (key, mod_revision) = (keys.ip(ip), kv.mod_revision());
            match ip {
                IpAddr::V4(ip) => held.push(Held {
                    ip,
                    key,
                    owner,
                    mod_revision,
                }),
                IpAddr::V6(ip) => held6.push(Held6 {
                    ip,
                    key,
                    owner,
                    mod_revision,
                }),
            }
        }
        let mut handles = BTreeMap::new();
        let mut fences = Vec::new();
        for kv in etcd.list(&keys.handles()).await? {
            let Some(key) = kv.key_str().ok() else {
                continue;
            };
            let Some(attachment) = keys.handle_of(key) else {
                continue;
            };
            let Some(value) = HandleValue::parse(kv.value()) else {
                continue;
            };
            // Fence markers hold no address: counted, never released.
            let Some(ip) = value.ip() else {
                fences.push(key.to_string());
                continue;
            };
            handles.insert(
                (attachment.container_id, attachment.ifname),
                HandleRead {
                    key: key.to_string(),
                    ip,
                    ip6_key: value.ip6().map(|v6| keys.ip(v6)),
                    mod_revision: kv.mod_revision(),
                },
            );
        }
        let nodes = etcd
            .list(&keys.nodes())
            .await?
            .iter()
            .filter_map(|kv| keys.node_name_of(kv.key_str().ok()?).map(String::from))
            .collect();
        let reports = etcd
            .list(&keys.attachment_reports())
            .await?
            .iter()
            .filter_map(|kv| {
                let node = keys.attachment_report_of(kv.key_str().ok()?)?;
                let report = AttachmentReport::parse(kv.value()).map_err(|e| e.to_string());
                Some((node.to_string(), report))
            })
            .collect();
        Ok(Snapshot {
            held,
            held6,
            handles,
            nodes,
            reports,
            fences,
        })
    }
}

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
    let by_ip: BTreeMap<Ipv4Addr, &Held> = s.held.iter().map(|h| (h.ip, h)).collect();
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

impl Snapshot {
    /// The handle of `owner`'s attachment, if it names `ip`.
    fn handle_naming(&self, owner: &Owner, ip: Ipv4Addr) -> Option<&HandleRead> {
        self.handles
            .get(&(owner.container_id.clone(), owner.ifname.clone()))
            .filter(|h| h.ip == ip)
    }
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

fn kind_name(k: Kind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
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

/// Free what `file` (the output of `ipam check -o json`, or `-` for
/// standard input) names as releasable, each only if unchanged since.
pub async fn run_release(etcd: &Etcd, format: Format, file: &str) -> Result<Outcome> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the report from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{file}: not a report of `trellisctl -o json ipam check`"))?;
    let (mut released, mut skipped) = (Vec::new(), Vec::new());
    for f in report.findings.iter().filter(|f| f.releasable) {
        if release(etcd, f).await? {
            released.push(f);
        } else {
            skipped.push(f);
        }
    }
    match format {
        Format::Json => output::json(&json!({"released": released, "skipped": skipped})),
        Format::Table => {
            for f in &released {
                println!("released {} ({})", f.key, kind_name(f.kind));
            }
            for f in &skipped {
                println!(
                    "skipped {} ({}): changed or gone since the report",
                    f.key,
                    kind_name(f.kind)
                );
            }
            println!("{} released, {} skipped", released.len(), skipped.len());
        }
    }
    Ok(if skipped.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

/// Delete the finding's key if its revision is still the report's, and
/// with it the handle it names (if that too is unchanged) and its IPv6
/// twin (if still of the same revision).
async fn release(etcd: &Etcd, f: &Finding) -> Result<bool> {
    let mut then = vec![TxnOp::delete(f.key.as_str(), None)];
    if let Some(k6) = &f.ip6_key {
        then.push(TxnOp::txn(
            Txn::new()
                .when([Compare::mod_revision(
                    k6.as_str(),
                    CompareOp::Equal,
                    f.mod_revision,
                )])
                .and_then([TxnOp::delete(k6.as_str(), None)]),
        ));
    }
    if let Some(hkey) = &f.handle_key {
        then.push(TxnOp::txn(
            Txn::new()
                .when([Compare::mod_revision(
                    hkey.as_str(),
                    CompareOp::Equal,
                    f.handle_mod_revision,
                )])
                .and_then([TxnOp::delete(hkey.as_str(), None)]),
        ));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            f.key.as_str(),
            CompareOp::Equal,
            f.mod_revision,
        )])
        .and_then(then);
    etcd.txn(txn, &format!("releasing {}", f.key)).await
}

#[cfg(test)]
mod tests;
