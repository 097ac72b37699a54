//! `trellisctl nodes`: every node record with its lease and its agent's
//! health.

use crate::etcd::Etcd;
use crate::health::{self, Health};
use crate::output::{self, Format, Outcome};
use anyhow::Result;
use serde_json::json;
use trellis_common::node::NodeRecord;

pub async fn list(etcd: &Etcd, format: Format) -> Result<Outcome> {
    let kvs = etcd.list(&etcd.keys.nodes()).await?;
    // Every agent that names a status endpoint is asked at once.
    let probes = kvs.iter().map(|kv| async move {
        let addr = NodeRecord::parse(kv.value()).ok()?.status_addr?;
        Some(health::probe(addr).await)
    });
    let healths = futures::future::join_all(probes).await;
    let mut rows = Vec::new();
    let mut items = Vec::new();
    let mut bad = healths
        .iter()
        .flatten()
        .filter(|h| h.status != "ok")
        .count();
    for (kv, health) in kvs.iter().zip(healths) {
        let key = kv.key_str().unwrap_or_default();
        let Some(name) = etcd.keys.node_name_of(key) else {
            continue;
        };
        let lease_left = match kv.lease() {
            0 => None,
            id => etcd.lease_left(id).await?,
        };
        let left = lease_left.map_or("-".to_string(), |s| format!("{s}s"));
        match NodeRecord::parse(kv.value()) {
            Ok(r) => {
                rows.push(vec![
                    name.to_string(),
                    r.public_ip.to_string(),
                    r.subnets()
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    r.vtep_mac.clone(),
                    left,
                    health.as_ref().map_or("-".into(), Health::cell),
                ]);
                items.push(
                    json!({"name": name, "record": r, "leaseSecondsLeft": lease_left,
                                  "health": health}),
                );
            }
            Err(e) => {
                bad += 1;
                let error = format!("unreadable record: {e}");
                rows.push(vec![
                    name.to_string(),
                    error.clone(),
                    String::new(),
                    String::new(),
                    left,
                    String::new(),
                ]);
                items.push(json!({"name": name, "error": error, "leaseSecondsLeft": lease_left}));
            }
        }
    }
    match format {
        Format::Table => output::table(
            &[
                "NAME",
                "PUBLIC-IP",
                "SUBNET",
                "VTEP-MAC",
                "LEASE-LEFT",
                "HEALTH",
            ],
            &rows,
        ),
        Format::Json => output::json(&json!({"nodes": items})),
    }
    Ok(if bad > 0 {
        Outcome::Findings
    } else {
        Outcome::Done
    })
}
