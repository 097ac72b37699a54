//! `trellisctl ipam ls` and `ipam show`: the allocations in etcd
//! (`<prefix>/ipam/ips/<ip>`, decoded as trellis-ipam writes them) and the
//! handles of their attachments.

use crate::etcd::Etcd;
use crate::output::{self, Format, Outcome};
use anyhow::Result;
use etcd_client::KeyValue;
use serde_json::{json, Value};
use std::net::IpAddr;
use trellis_ipam::allocation::Owner;
use trellis_ipam::store::records::HandleValue;

/// One allocation as read, or why it could not be read: each address key
/// (the IPv6 twin of a dual-stack attachment is a row of its own, with the
/// same owner and revision).
struct Row {
    ip: IpAddr,
    owner: Result<Owner, String>,
    revision: i64,
}

async fn allocations(etcd: &Etcd) -> Result<Vec<Row>> {
    let kvs = etcd.list(&etcd.keys.ips()).await?;
    let mut rows: Vec<Row> = kvs.iter().filter_map(|kv| row(etcd, kv)).collect();
    rows.sort_by_key(|r| r.ip);
    Ok(rows)
}

fn row(etcd: &Etcd, kv: &KeyValue) -> Option<Row> {
    let ip = etcd.keys.address_of(kv.key_str().ok()?)?;
    Some(Row {
        ip,
        owner: Owner::parse(kv.value()).map_err(|e| format!("unreadable allocation: {e}")),
        revision: kv.create_revision(),
    })
}

fn cells(r: &Row) -> Vec<String> {
    match &r.owner {
        Ok(o) => vec![
            r.ip.to_string(),
            o.node.clone(),
            o.network.clone(),
            o.container_id.clone(),
            o.ifname.clone(),
            if o.plugin.is_empty() {
                "-".into()
            } else {
                o.plugin.clone()
            },
            r.revision.to_string(),
        ],
        Err(e) => vec![r.ip.to_string(), e.clone()],
    }
}

fn item(r: &Row) -> Value {
    match &r.owner {
        Ok(o) => json!({"ip": r.ip, "owner": o, "createRevision": r.revision}),
        Err(e) => json!({"ip": r.ip, "error": e, "createRevision": r.revision}),
    }
}

const HEADER: [&str; 7] = [
    "IP",
    "NODE",
    "NETWORK",
    "CONTAINER",
    "IFNAME",
    "PLUGIN",
    "SINCE-REV",
];

pub async fn list(
    etcd: &Etcd,
    format: Format,
    node: Option<&str>,
    network: Option<&str>,
) -> Result<Outcome> {
    let rows: Vec<Row> = allocations(etcd)
        .await?
        .into_iter()
        .filter(|r| match &r.owner {
            Ok(o) => node.is_none_or(|n| o.node == n) && network.is_none_or(|n| o.network == n),
            // Unreadable: shown unless a filter asks for something else.
            Err(_) => node.is_none() && network.is_none(),
        })
        .collect();
    match format {
        Format::Table => output::table(&HEADER, &rows.iter().map(cells).collect::<Vec<_>>()),
        Format::Json => {
            output::json(&json!({"allocations": rows.iter().map(item).collect::<Vec<_>>()}))
        }
    }
    Ok(if rows.iter().any(|r| r.owner.is_err()) {
        Outcome::Findings
    } else {
        Outcome::Done
    })
}

pub async fn show(etcd: &Etcd, format: Format, what: &str) -> Result<Outcome> {
    let found: Vec<Row> = match what.parse::<IpAddr>() {
        Ok(ip) => match etcd.get(&etcd.keys.ip(ip)).await? {
            Some(kv) => row(etcd, &kv).into_iter().collect(),
            None => Vec::new(),
        },
        Err(_) => {
            let rows = allocations(etcd).await?;
            let ids: std::collections::BTreeSet<String> = rows
                .iter()
                .filter_map(|r| r.owner.as_ref().ok())
                .map(|o| o.container_id.clone())
                .filter(|id| id.starts_with(what))
                .collect();
            if ids.len() > 1 {
                anyhow::bail!(
                    "{what:?} is the start of {} container IDs: give more of it",
                    ids.len()
                );
            }
            rows.into_iter()
                .filter(|r| {
                    r.owner
                        .as_ref()
                        .is_ok_and(|o| ids.contains(&o.container_id))
                })
                .collect()
        }
    };
    if found.is_empty() {
        eprintln!("trellisctl: no allocation of {what}");
        return Ok(Outcome::NotFound);
    }
    let mut shown = Vec::new();
    for r in &found {
        let handle = match &r.owner {
            Ok(o) => handle_of(etcd, o).await?,
            Err(_) => Value::Null,
        };
        shown.push((r, handle));
    }
    match format {
        Format::Table => {
            for (r, handle) in &shown {
                let c = cells(r);
                for (name, value) in HEADER.iter().zip(&c) {
                    println!("{:<10} {value}", format!("{}:", name.to_lowercase()));
                }
                println!("{:<10} {}", "handle:", describe_handle(handle));
            }
        }
        Format::Json => output::json(&json!({"allocations": shown.iter().map(|(r, h)| {
            let mut v = item(r);
            v["handle"] = h.clone();
            v
        }).collect::<Vec<_>>()})),
    }
    Ok(Outcome::Done)
}

/// The handle key of the attachment and what it holds.
async fn handle_of(etcd: &Etcd, owner: &Owner) -> Result<Value> {
    let key = etcd.keys.handle(&owner.handle());
    Ok(match etcd.get(&key).await? {
        None => json!({"key": key, "missing": true}),
        Some(kv) => match HandleValue::parse(kv.value()) {
            Some(v) => json!({"key": key, "value": v}),
            None => json!({"key": key, "error": "unreadable handle"}),
        },
    })
}

fn describe_handle(h: &Value) -> String {
    let key = h["key"].as_str().unwrap_or("?");
    if h["missing"] == true {
        format!("{key} (missing: the address has no handle)")
    } else if let Some(e) = h["error"].as_str() {
        format!("{key} ({e})")
    } else {
        format!("{key} {}", h["value"])
    }
}
