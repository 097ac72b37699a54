//! Serving one named network on this node: its subnet, devices, DNS and
//! record, then its registry, reconciler, names and membership, all in
//! one task.

use super::context::NodeContext;
use crate::dns::{self, DnsServer};
use crate::etcd_follow;
use crate::etcd_retry::retry;
use crate::lease::{self, LeaseError};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::names::{self, NameTable};
use crate::node_network::NodeNetwork;
use crate::overlay::{KernelDataplane, LocalView, Reconciler};
use crate::registry::{self, RegistryChannels};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use trellis_common::network::NetworkRecord;
use trellis_common::node::{self, NodeRecord};
use trellis_kernel::KernelError;

/// Serve `name` until aborted; a failure (devices that cannot be made, a
/// subnet taken by another node) starts it again after a pause.
pub(super) async fn serve(ctx: Arc<NodeContext>, name: String, record: NetworkRecord) {
    // Its own figures, so that its remote nodes and entries are not mixed
    // with the default network's: on `/metrics` with its name as label
    // while it is served (the runner removes them when it stops it).
    let metrics = Arc::new(Metrics::default());
    ctx.metrics
        .per_network
        .write()
        .expect("metrics lock")
        .insert(name.clone(), metrics.clone());
    loop {
        if let Err(e) = serve_once(&ctx, &name, &record, &metrics).await {
            log::error!("network {name}: {e}; setting it up again in 10s");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("setting up its devices: {0}")]
    Kernel(#[from] KernelError),
    #[error("writing {path}: {source}")]
    StateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    PodMtu(#[from] crate::pod_mtu::PodMtuError),
}

async fn serve_once(
    ctx: &NodeContext,
    name: &str,
    record: &NetworkRecord,
    metrics: &Arc<Metrics>,
) -> Result<(), ServeError> {
    let config = &record.config;
    crate::pod_mtu::check(config, &ctx.underlay, ctx.public_ip)?;
    let scope = lease::Scope::Named(config.lease_network());
    let preferred = node::read_node_record_for(&ctx.state_dir, Some(name))
        .ok()
        .flatten()
        .filter(|r| r.node_name.as_deref().is_none_or(|n| n == ctx.node))
        .and_then(|r| r.lease_subnet());
    let what = format!("network {name}: leasing a subnet");
    let leased = retry(&what, metrics, &ctx.client, |mut c| async move {
        lease::acquire(
            &mut c, &ctx.keys, config, scope, &ctx.node, preferred, false, ctx.times,
        )
        .await
    })
    .await?;
    let net = NodeNetwork {
        tx_checksum_offload: ctx.tx_checksum_offload,
        ..NodeNetwork::named(
            &ctx.node,
            name,
            config,
            leased.subnet,
            &ctx.underlay,
            ctx.public_ip,
        )
    };
    let (own, dns) = match set_up(ctx, name, &net).await {
        Ok(done) => done,
        Err(e) => {
            // A fresh subnet nothing uses goes back (a kept one stays: pods
            // may hold its addresses). Devices made before the failure stay
            // for the next attempt, or go with the network.
            if !leased.reused {
                let mut c = ctx.client.pick().await.client;
                let _ = c.lease_revoke(leased.lease_id).await;
                if leased.grace_lease_id != 0 {
                    let _ = c.lease_revoke(leased.grace_lease_id).await;
                }
            }
            return Err(e);
        }
    };
    let key = ctx.keys.network_node(name, &ctx.node);
    let what = format!("network {name}: publishing the node record");
    retry(&what, metrics, &ctx.client, |mut c| {
        let (key, own) = (key.clone(), own.clone());
        async move { lease::publish_record(&mut c, &key, &own, leased.lease_id).await }
    })
    .await?;
    metrics
        .leased
        .store(true, std::sync::atomic::Ordering::Relaxed);
    log::info!(
        "network {name}: subnet {} on {} and {} (MTU {})",
        net.lease_subnet(),
        net.bridge,
        net.vxlan.name,
        net.mtu()
    );

    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let (own_tx, own_rx) = watch::channel(None);
    let registry = registry::run(
        ctx.client.clone(),
        ctx.keys.network_nodes(name),
        LocalView::of(&net),
        RegistryChannels {
            updates: updates_tx,
            own_record: own_tx,
        },
        metrics.clone(),
    );
    // A record that changes is served again: direct routing as it says.
    let direct = watch::channel(config.direct_routing).1;
    let dataplane = KernelDataplane::new(ctx.nl.clone(), net.clone(), direct);
    let reconciler = Reconciler::new(dataplane, metrics.clone()).run(
        updates_rx,
        ctx.resync,
        Arc::new(Notify::new()),
    );
    let membership = Membership {
        client: ctx.client.clone(),
        keys: ctx.keys.clone(),
        config: config.clone(),
        node: ctx.node.clone(),
        scope,
        record_key: key,
        record: own,
        lease_id: leased.lease_id,
        grace_lease_id: leased.grace_lease_id,
        times: ctx.times,
        metrics: metrics.clone(),
        kube_nodes: None,
    };
    let names = async {
        match &dns {
            Some(server) => {
                let mut following = names::Following {
                    keys: ctx.keys.clone(),
                    table: server.names(),
                };
                let what = format!("names of network {name}");
                let prefix = ctx.keys.ips();
                etcd_follow::follow(
                    ctx.client.clone(),
                    prefix,
                    &what,
                    &mut following,
                    metrics.clone(),
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    // All of it in this task: aborting it stops every part (and drops the
    // DNS server).
    tokio::select! {
        r = membership.run(own_rx) => r?,
        () = registry => {}
        () = reconciler => {}
        () = names => {}
    }
    Ok(())
}

/// The devices, the DNS server and the record file of `net`: the record
/// as published, and the server.
async fn set_up(
    ctx: &NodeContext,
    name: &str,
    net: &NodeNetwork,
) -> Result<(NodeRecord, Option<DnsServer>), ServeError> {
    if net.subnet6.is_some() {
        trellis_kernel::sysctl::enable_ipv6_forwarding()?;
    }
    net.ensure_vxlan(&ctx.nl).await?;
    net.ensure_bridge(&ctx.nl).await?;
    let server = ctx.dns.as_ref().and_then(|on| {
        let names = NameTable::for_network(net.cluster_networks(), name);
        dns::serve_gateways(net, on, names)
    });
    let record = NodeRecord {
        dns: server.is_some(),
        ..net.record()
    };
    node::write_node_record_for(&ctx.state_dir, Some(name), &record).map_err(|source| {
        ServeError::StateFile {
            path: node::record_path_for(&ctx.state_dir, Some(name))
                .display()
                .to_string(),
            source,
        }
    })?;
    Ok((record, server))
}
