//! `trellisctl config get|set`: the cluster config at `<prefix>/config`,
//! written only as the agents read it (`ClusterConfig::parse`) and only if
//! nobody changed it in between.

use crate::etcd::Etcd;
use crate::output::{self, Format, Outcome};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Read;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::node::NodeRecord;

pub async fn get(etcd: &Etcd, format: Format) -> Result<Outcome> {
    let key = etcd.keys.config();
    let Some(kv) = etcd.get(&key).await? else {
        eprintln!("trellisctl: no cluster config at {key}");
        return Ok(Outcome::NotFound);
    };
    let text = String::from_utf8_lossy(kv.value()).into_owned();
    let checked = ClusterConfig::parse(kv.value());
    match format {
        Format::Json => {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let mut out = json!({"key": key, "config": value, "modRevision": kv.mod_revision()});
            if let Err(e) = &checked {
                out["error"] = json!(e.to_string());
            }
            output::json(&out);
        }
        Format::Table => {
            println!("{text}");
            if let Err(e) = &checked {
                eprintln!("trellisctl: the agents refuse this config: {e}");
            }
        }
    }
    Ok(if checked.is_err() {
        Outcome::Findings
    } else {
        Outcome::Done
    })
}

fn read_value(value: &str) -> Result<Vec<u8>> {
    if value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        Ok(buf)
    } else if let Some(path) = value.strip_prefix('@') {
        std::fs::read(path).with_context(|| format!("reading {path}"))
    } else {
        Ok(value.as_bytes().to_vec())
    }
}

pub async fn set(etcd: &Etcd, format: Format, value: &str, force: bool) -> Result<Outcome> {
    let bytes = read_value(value)?;
    let config = ClusterConfig::parse(&bytes).context("refused, as the agents would refuse it")?;
    let key = etcd.keys.config();
    let revision = etcd.get(&key).await?.map_or(0, |kv| kv.mod_revision());
    // Leased subnets outside the new network would be neither routed nor
    // given out again: name their nodes.
    let mut outside = Vec::new();
    for kv in etcd.list(&etcd.keys.nodes()).await? {
        let name = etcd
            .keys
            .node_name_of(kv.key_str().unwrap_or_default())
            .unwrap_or("?")
            .to_string();
        if let Ok(record) = NodeRecord::parse(kv.value()) {
            if record.lease_subnet().is_some_and(|s| !config.fits(s)) {
                let subnets: Vec<String> = record.subnets().iter().map(|s| s.to_string()).collect();
                outside.push(format!("{name} ({})", subnets.join(", ")));
            }
        }
    }
    if !outside.is_empty() && !force {
        bail!(
            "refused: the subnets of {} do not fit {} with subnetLen {} (--force writes it anyway)",
            outside.join(", "),
            config.lease_network(),
            config.lease_subnet_len()
        );
    }
    // Stored as given (the agents read the same bytes), once checked.
    if !etcd.put_if_unchanged(&key, &bytes, revision).await? {
        bail!("{key} changed while this ran: read it again (`trellisctl config get`) and retry");
    }
    match format {
        Format::Json => output::json(&json!({"key": key, "config": config, "written": true})),
        Format::Table => println!("{key} written"),
    }
    Ok(Outcome::Done)
}
