//! Start-up: read the cluster config, lease the subnet, set up the node's
//! devices and table, publish the record. A subnet leased afresh is given
//! back when the node cannot be set up.

use super::error::AgentError;
use crate::dns::{self, DnsServer};
use crate::etcd_retry::retry;
use crate::flags::RunArgs;
use crate::lease::{self, LeaseTimes, Leased};
use crate::metrics::Metrics;
use crate::names::NameTable;
use crate::node_network::NodeNetwork;
use crate::node_table::{self, NodeTables};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::etcd::{EtcdClient, EtcdSettings};
use trellis_common::keys::Keys;
use trellis_common::node::{read_node_record, write_node_record, NodeRecord};
use trellis_kernel::{Link, Netlink};

/// What the agent has before it starts: its flags, its node's name, etcd,
/// the kernel and the underlay.
pub(super) struct Agent {
    pub args: RunArgs,
    pub node: String,
    pub settings: EtcdSettings,
    pub client: EtcdClient,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub nl: Netlink,
    pub underlay: Link,
    pub public_ip: IpAddr,
    pub times: LeaseTimes,
}

/// What start-up made.
pub(super) struct Started {
    pub config: ClusterConfig,
    pub leased: Leased,
    pub net: NodeNetwork,
    pub table: NodeTables,
    pub dns: Option<DnsServer>,
    pub record: NodeRecord,
}

/// Config, lease, node, record: retried while etcd is away.
pub(super) async fn start(agent: &Agent) -> Result<Started, AgentError> {
    let Agent {
        args,
        node,
        client,
        keys,
        metrics,
        nl,
        underlay,
        public_ip,
        times,
        ..
    } = agent;
    let (public_ip, times) = (*public_ip, *times);
    let config = retry(
        "reading the cluster configuration",
        metrics,
        client,
        |mut c| {
            let keys = keys.clone();
            async move { lease::read_config(&mut c, &keys).await }
        },
    )
    .await?;
    // Before anything is leased or made.
    crate::pod_mtu::check(&config, underlay, public_ip)?;
    let preferred = read_node_record(&args.state_dir)
        .ok()
        .flatten()
        .filter(|r| r.node_name.as_deref().is_none_or(|n| n == node))
        .and_then(|r| r.lease_subnet());
    let leased = retry("leasing a node subnet", metrics, client, |mut c| {
        let (keys, config, node) = (keys.clone(), config.clone(), node.clone());
        async move {
            lease::acquire(
                &mut c,
                &keys,
                &config,
                lease::Scope::Default,
                &node,
                preferred,
                false,
                times,
            )
            .await
        }
    })
    .await?;
    log::info!(
        "node {node}: subnet {} ({}), etcd lease {:x}",
        leased.subnet,
        if leased.reused {
            "kept from before"
        } else {
            "newly leased"
        },
        leased.lease_id
    );
    let net = NodeNetwork {
        tx_checksum_offload: args.vxlan_tx_checksum_offload,
        ..NodeNetwork::new(
            node,
            &config,
            leased.subnet,
            underlay,
            public_ip,
            &args.bridge,
        )
    };
    let table = node_table::for_node(&net, args.ip_masq, args.vxlan_notrack);
    let set_up = set_up_node(nl, &net, &table, args).await;
    if set_up.is_err() {
        // Nothing uses a subnet whose node could not be set up: give a
        // fresh lease back (a kept one stays: pods may hold its addresses).
        if !leased.reused {
            let mut c = client.pick().await.client;
            let _ = c.lease_revoke(leased.lease_id).await;
            if leased.grace_lease_id != 0 {
                let _ = c.lease_revoke(leased.grace_lease_id).await;
            }
        }
    }
    let dns = set_up?;
    let record = record_of(&net, args, dns.is_some());
    retry("publishing the node record", metrics, client, |mut c| {
        let (keys, node, record) = (keys.clone(), node.clone(), record.clone());
        async move {
            lease::publish_record(&mut c, &keys.node(&node), &record, leased.lease_id).await
        }
    })
    .await?;
    metrics.leased.store(true, Ordering::Relaxed);
    Ok(Started {
        config,
        leased,
        net,
        table,
        dns,
        record,
    })
}

/// Forwarding, the nftables table (masquerade, untracked tunnel packets),
/// the VXLAN device, the bridge and the state file for the plugins. The
/// table goes first: it needs only the subnet, and its likely failure
/// (no `nft`, no permission) then leaves no device or address holding a
/// subnet that is given back.
async fn set_up_node(
    nl: &Netlink,
    net: &NodeNetwork,
    table: &NodeTables,
    args: &RunArgs,
) -> Result<Option<DnsServer>, AgentError> {
    if trellis_kernel::sysctl::enable_ipv4_forwarding()? {
        log::info!("turned on IPv4 forwarding");
    }
    if net.subnet6.is_some() && trellis_kernel::sysctl::enable_ipv6_forwarding()? {
        log::info!("turned on IPv6 forwarding");
    }
    node_table::ensure(table).await?;
    net.ensure_vxlan(nl).await?;
    net.ensure_bridge(nl).await?;
    let dns = args.dns.then(|| start_dns(net, args)).flatten();
    write_node_record(&args.state_dir, &record_of(net, args, dns.is_some())).map_err(|source| {
        AgentError::StateFile {
            path: trellis_common::node::record_path(&args.state_dir)
                .display()
                .to_string(),
            source,
        }
    })?;
    Ok(dns)
}

/// The DNS server on this node's gateways for the default network.
fn start_dns(net: &NodeNetwork, args: &RunArgs) -> Option<DnsServer> {
    let names = NameTable::new(net.cluster_networks());
    let on = dns::On {
        port: args.dns_port,
        upstreams: args.dns_upstream.clone(),
    };
    dns::serve_gateways(net, &on, names)
}

/// The record this node publishes (etcd and `node.json`).
fn record_of(net: &NodeNetwork, args: &RunArgs, dns: bool) -> NodeRecord {
    let record = net.record();
    let status_addr = args.metrics_addr.map(|a| {
        if a.ip().is_unspecified() {
            std::net::SocketAddr::new(record.public_ip, a.port())
        } else {
            a
        }
    });
    NodeRecord {
        kubernetes: args.kubernetes,
        status_addr,
        dns,
        ..record
    }
}
