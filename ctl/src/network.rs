//! `trellisctl network create|ls|inspect|rm`: the named networks at
//! `<prefix>/networks/<name>`, checked as the agents check them
//! (`trellis_common::network`) and written only if no network record and
//! no cluster config changed since they were read.

use crate::etcd::Etcd;
use crate::output::{self, Format, Outcome};
use anyhow::{bail, Result};
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use ipnetwork::{IpNetwork, Ipv6Network};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::network::{self, NetworkRecord, Networks, StoredNetwork};
use trellis_ipam::allocation::Owner;

/// What `network create` was asked for.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// The network's pod network: IPv4, e.g. 10.0.0.0/16, or IPv6 for an
    /// IPv6-only network, e.g. fd20::/56.
    #[arg(long)]
    pub subnet: IpNetwork,
    /// The length of each node's subnet (default 24, 64 for an IPv6
    /// `--subnet`).
    #[arg(long)]
    pub subnet_len: Option<u8>,
    /// The VXLAN id (default: the smallest free one from 2).
    #[arg(long)]
    pub vni: Option<u32>,
    /// No egress: its pods reach each other and their gateway only.
    #[arg(long)]
    pub internal: bool,
    /// An IPv6 pod network beside the IPv4 one (dual-stack).
    #[arg(long)]
    pub ipv6_subnet: Option<Ipv6Network>,
    /// The length of each node's IPv6 subnet (default 64).
    #[arg(long)]
    pub ipv6_subnet_len: Option<u8>,
    /// Route straight (no VXLAN) to the nodes on this node's underlay
    /// subnet, as the cluster config's `directRouting` does.
    #[arg(long)]
    pub direct_routing: bool,
}

/// Writes that lost a race with another writer are tried again this often.
const CREATE_ATTEMPTS: usize = 10;

/// The cluster config (if any, and readable) with its mod revision (0:
/// absent), and every network record as listed, at the listing's revision.
struct Read {
    default: Option<ClusterConfig>,
    config_revision: i64,
    stored: Vec<StoredNetwork>,
    revision: i64,
}

impl Read {
    fn stored(&self, name: &str) -> Option<&StoredNetwork> {
        self.stored.iter().find(|s| s.name == name)
    }
}

async fn read(etcd: &Etcd) -> Result<Read> {
    let config = etcd.get(&etcd.keys.config()).await?;
    let (kvs, revision) = etcd.list_at(&etcd.keys.networks()).await?;
    let stored = kvs
        .iter()
        .filter_map(|kv| {
            let name = etcd.keys.network_name_of(kv.key_str().ok()?)?;
            Some(StoredNetwork {
                name: name.to_string(),
                create_revision: kv.create_revision(),
                value: kv.value().to_vec(),
            })
        })
        .collect();
    Ok(Read {
        default: config
            .as_ref()
            .and_then(|kv| ClusterConfig::parse(kv.value()).ok()),
        config_revision: config.as_ref().map_or(0, |kv| kv.mod_revision()),
        stored,
        revision,
    })
}

pub async fn create(etcd: &Etcd, format: Format, args: &CreateArgs) -> Result<Outcome> {
    network::check_name(&args.name)?;
    let key = etcd.keys.network(&args.name);
    for _ in 0..CREATE_ATTEMPTS {
        let read = read(etcd).await?;
        if read.stored(&args.name).is_some() {
            bail!(
                "network {} exists (`trellisctl network inspect {}`)",
                args.name,
                args.name
            );
        }
        let networks = network::usable(read.default.as_ref(), &read.stored);
        // Checked as the agents check it.
        let (record, bytes) = record_of(args, read.default.as_ref(), &networks)?;
        if let Some(why) = network::conflict(read.default.as_ref(), &networks.usable, &record) {
            bail!("refused: {why}");
        }
        let config_unchanged = if read.config_revision == 0 {
            Compare::create_revision(etcd.keys.config(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(etcd.keys.config(), CompareOp::Equal, read.config_revision)
        };
        // No network record written since the listing (a VNI or subnet
        // taken meanwhile would otherwise be missed).
        let networks_unchanged =
            Compare::mod_revision(etcd.keys.networks(), CompareOp::Less, read.revision + 1)
                .with_prefix();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                config_unchanged,
                networks_unchanged,
            ])
            .and_then([TxnOp::put(key.as_str(), bytes, None)]);
        if etcd.txn(txn, &format!("writing {key}")).await? {
            match format {
                Format::Json => output::json(&json!({
                    "name": args.name, "key": key, "network": record, "created": true
                })),
                Format::Table => println!(
                    "network {} created: {}, VNI {}",
                    args.name,
                    record
                        .config
                        .pod_networks()
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    record.config.vni
                ),
            }
            return Ok(Outcome::Done);
        }
    }
    bail!("the networks changed while this ran, {CREATE_ATTEMPTS} times: try again")
}

/// The record `args` ask for, checked, and its bytes to store: unset fields as the
/// cluster config has them (its port), or their defaults; a VNI no other
/// network uses.
fn record_of(
    args: &CreateArgs,
    default: Option<&ClusterConfig>,
    networks: &Networks,
) -> Result<(NetworkRecord, Vec<u8>)> {
    let mut value = json!({
        "vni": args.vni.unwrap_or_else(|| network::free_vni(default, &networks.usable)),
    });
    match args.subnet {
        IpNetwork::V4(net) => {
            value["network"] = json!(net);
            if let Some(len) = args.subnet_len {
                value["subnetLen"] = json!(len);
            }
        }
        // IPv6-only: the one network is the IPv6 one.
        IpNetwork::V6(net6) => {
            if args.ipv6_subnet.is_some() || args.ipv6_subnet_len.is_some() {
                bail!("--subnet {net6} is IPv6: the network is IPv6-only, and --ipv6-subnet(-len) is for an IPv6 network beside an IPv4 one");
            }
            value["ipv6Network"] = json!(net6);
            if let Some(len) = args.subnet_len {
                value["ipv6SubnetLen"] = json!(len);
            }
        }
    }
    if let Some(port) = default.map(|c| c.port) {
        value["port"] = json!(port);
    }
    if let Some(net6) = args.ipv6_subnet {
        value["ipv6Network"] = json!(net6);
        if let Some(len) = args.ipv6_subnet_len {
            value["ipv6SubnetLen"] = json!(len);
        }
    } else if args.ipv6_subnet_len.is_some() {
        bail!("--ipv6-subnet-len needs --ipv6-subnet");
    }
    if args.internal {
        value["internal"] = json!(true);
    }
    if args.direct_routing {
        value["directRouting"] = json!(true);
    }
    let record = NetworkRecord::parse(&args.name, value.to_string().as_bytes())?;
    // Stored with every field spelled out (defaults included), so that the
    // record says what the network is whatever later defaults become.
    let bytes = serde_json::to_vec(&record)?;
    Ok((record, bytes))
}

/// Who uses a network: the nodes holding a subnet of it, and the
/// allocated addresses in it, by node.
#[derive(Default)]
struct Usage {
    subnets: Vec<(String, ipnetwork::IpNetwork)>,
    attachments: BTreeMap<String, usize>,
}

impl Usage {
    fn addresses(&self) -> usize {
        self.attachments.values().sum()
    }
}

/// The usage of every network in `configs`, from one read of the subnet
/// leases and the allocations.
async fn usage(etcd: &Etcd, configs: &[(&str, &ClusterConfig)]) -> Result<Vec<Usage>> {
    let subnets = etcd.list(&etcd.keys.subnets()).await?;
    let ips = etcd.list(&etcd.keys.ips()).await?;
    let mut out: Vec<Usage> = configs.iter().map(|_| Usage::default()).collect();
    for kv in &subnets {
        let Some(subnet) = kv.key_str().ok().and_then(|k| etcd.keys.subnet_of(k)) else {
            continue;
        };
        let node = claim_node(kv);
        for (usage, (_, config)) in out.iter_mut().zip(configs) {
            if config.fits(subnet) {
                usage.subnets.push((node.clone(), subnet));
            }
        }
    }
    for kv in &ips {
        let Some(ip) = kv.key_str().ok().and_then(|k| etcd.keys.address_of(k)) else {
            continue;
        };
        let node = Owner::parse(kv.value()).map_or_else(|_| "?".into(), |o| o.node);
        for (usage, (_, config)) in out.iter_mut().zip(configs) {
            if config.holds(ip) {
                *usage.attachments.entry(node.clone()).or_default() += 1;
            }
        }
    }
    Ok(out)
}

/// The node a subnet lease names (`{"node": ...}`), or `?`.
fn claim_node(kv: &KeyValue) -> String {
    serde_json::from_slice::<Value>(kv.value())
        .ok()
        .and_then(|v| v["node"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The default network's row name.
const DEFAULT: &str = "(default)";

pub async fn list(etcd: &Etcd, format: Format) -> Result<Outcome> {
    let read = read(etcd).await?;
    let networks = network::usable(read.default.as_ref(), &read.stored);
    let mut rows: Vec<(&str, &ClusterConfig, bool)> = Vec::new();
    if let Some(config) = &read.default {
        rows.push((DEFAULT, config, false));
    }
    for (name, record) in &networks.usable {
        rows.push((name, &record.config, record.internal));
    }
    let configs: Vec<(&str, &ClusterConfig)> = rows.iter().map(|(n, c, _)| (*n, *c)).collect();
    let usage = usage(etcd, &configs).await?;
    match format {
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .zip(&usage)
                .map(|((name, c, internal), u)| {
                    vec![
                        name.to_string(),
                        c.network.map_or("-".into(), |n| n.to_string()),
                        c.ipv6_network.map_or("-".into(), |n| n.to_string()),
                        c.vni.to_string(),
                        if *internal { "yes" } else { "no" }.into(),
                        u.subnets.len().to_string(),
                        u.addresses().to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NAME",
                    "SUBNET",
                    "IPV6",
                    "VNI",
                    "INTERNAL",
                    "NODES",
                    "ADDRESSES",
                ],
                &cells,
            );
            for e in &networks.refused {
                eprintln!("trellisctl: ignored by the agents: {e}");
            }
        }
        Format::Json => {
            let items: Vec<Value> = rows
                .iter()
                .zip(&usage)
                .map(|((name, c, internal), u)| {
                    json!({
                        "name": if *name == DEFAULT { Value::Null } else { json!(name) },
                        "default": *name == DEFAULT,
                        "config": c,
                        "internal": internal,
                        "nodes": u.subnets.len(),
                        "addresses": u.addresses(),
                    })
                })
                .collect();
            let refused: Vec<String> = networks.refused.iter().map(|e| e.to_string()).collect();
            output::json(&json!({"networks": items, "ignored": refused}));
        }
    }
    Ok(if networks.refused.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

pub async fn inspect(etcd: &Etcd, format: Format, name: &str) -> Result<Outcome> {
    let read = read(etcd).await?;
    let Some(stored) = read.stored(name) else {
        eprintln!("trellisctl: no network {name}");
        return Ok(Outcome::NotFound);
    };
    let networks = network::usable(read.default.as_ref(), &read.stored);
    let refused = networks
        .refused
        .iter()
        .find(|e| e.network() == name)
        .map(|e| e.to_string());
    let value: Value = serde_json::from_slice(&stored.value)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&stored.value).into_owned()));
    let usable = networks.usable.iter().find(|(n, _)| n == name);
    let usage = match usable {
        Some((_, record)) => usage(etcd, &[(name, &record.config)]).await?.remove(0),
        None => Usage::default(),
    };
    let nodes: Vec<Value> = usage
        .subnets
        .iter()
        .map(|(node, subnet)| {
            json!({
                "node": node,
                "subnet": subnet,
                "addresses": usage.attachments.get(node).copied().unwrap_or(0),
            })
        })
        .collect();
    let out = json!({
        "name": name,
        "key": etcd.keys.network(name),
        "network": value,
        "createRevision": stored.create_revision,
        "nodes": nodes,
        "addresses": usage.addresses(),
        "ignored": refused,
    });
    match format {
        Format::Json => output::json(&out),
        Format::Table => {
            println!(
                "network {name} ({})",
                out["key"].as_str().unwrap_or_default()
            );
            println!("{}", serde_json::to_string_pretty(&out["network"])?);
            if let Some(why) = &refused {
                println!("ignored by the agents: {why}");
            }
            let rows: Vec<Vec<String>> = usage
                .subnets
                .iter()
                .map(|(node, subnet)| {
                    vec![
                        node.clone(),
                        subnet.to_string(),
                        usage
                            .attachments
                            .get(node)
                            .copied()
                            .unwrap_or(0)
                            .to_string(),
                    ]
                })
                .collect();
            output::table(&["NODE", "SUBNET", "ADDRESSES"], &rows);
        }
    }
    Ok(if refused.is_some() {
        Outcome::Findings
    } else {
        Outcome::Done
    })
}

pub async fn remove(etcd: &Etcd, format: Format, name: &str, force: bool) -> Result<Outcome> {
    let key = etcd.keys.network(name);
    let Some(kv) = etcd.get(&key).await? else {
        eprintln!("trellisctl: no network {name}");
        return Ok(Outcome::NotFound);
    };
    // Usage by the pod networks the record names, even a record the
    // agents ignore (its addresses may still be someone's).
    let used = match NetworkRecord::parse(name, kv.value()) {
        Ok(record) => usage(etcd, &[(name, &record.config)]).await?.remove(0),
        Err(_) => Usage::default(),
    };
    if used.addresses() > 0 && !force {
        let on: Vec<String> = used
            .attachments
            .iter()
            .map(|(node, n)| format!("{node} ({n})"))
            .collect();
        bail!(
            "refused: network {name} still has {} attached addresses, on {}: remove those containers first, or --force to take it down anyway",
            used.addresses(),
            on.join(", ")
        );
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    if !etcd.txn(txn, &format!("deleting {key}")).await? {
        bail!("network {name} changed while this ran: look again (`trellisctl network inspect {name}`) and retry");
    }
    match format {
        Format::Json => output::json(&json!({
            "name": name, "removed": true, "addresses": used.addresses()
        })),
        Format::Table if used.addresses() > 0 => println!(
            "network {name} removed; {} addresses on it stay allocated until their containers are removed",
            used.addresses()
        ),
        Format::Table => println!("network {name} removed"),
    }
    Ok(Outcome::Done)
}
