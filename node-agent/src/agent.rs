//! `trellis-agent run`: lease the subnet, set up the node's devices,
//! publish the node, then keep the overlay in step with etcd until SIGTERM
//! (which leaves the data path as it is, so a restart does not touch pods).

use crate::dns::{self, DnsServer};
use crate::etcd_retry::retry;
use crate::flags::{RunArgs, REQUEST_TIMEOUT};
use crate::kube_api::KubeApi;
use crate::lease::{self, LeaseError, Leased};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::names::{self, NameTable};
use crate::node_network::{resolve_underlay, NodeNetwork, NodeNetworkError};
use crate::node_table::NodeTables;
use crate::overlay::{KernelDataplane, Reconciler};
use crate::registry::{self, LocalView, RegistryChannels};
use crate::{config_follow, dead_nodes, deleted_nodes, etcd_follow, ipam_gc};
use crate::{network_runner, networks};
use crate::{node_table, probe, status_server};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::etcd::EtcdError;
use trellis_common::node::{read_node_record, write_node_record};
use trellis_common::node_name::{node_name, NodeNameError};
use trellis_kernel::{KernelError, Netlink};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}: pass --node-name or set NODE_NAME")]
    NodeName(#[from] NodeNameError),
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("probe port UDP {port}: {source}")]
    Probe {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    NodeNetwork(#[from] NodeNetworkError),
    #[error("setting up the node: {0}")]
    Kernel(#[from] KernelError),
    #[error("writing {path}: {source}")]
    StateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("--lease-ttl must be at least 5 seconds (got {0})")]
    LeaseTtl(i64),
    #[error("--subnet-grace must not be negative (got {0})")]
    SubnetGrace(i64),
    #[error("--kubernetes: {0}")]
    Kube(#[from] crate::kube_api::KubeError),
    #[error(transparent)]
    IpamService(#[from] crate::ipam_service::ServiceError),
    #[error(transparent)]
    PodMtu(#[from] crate::pod_mtu::PodMtuError),
}

/// Run the agent until SIGTERM or SIGINT (`Ok`) or a fatal error.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    if args.lease_ttl < 5 {
        return Err(AgentError::LeaseTtl(args.lease_ttl));
    }
    if args.subnet_grace < 0 {
        return Err(AgentError::SubnetGrace(args.subnet_grace));
    }
    let times = lease::LeaseTimes {
        ttl: args.lease_ttl,
        grace: args.subnet_grace,
    };
    let node = node_name(args.node_name.as_deref())?;
    // Checked (URLs, TLS files) before anything is set up; the connection
    // itself opens with the first request (with a user, the endpoints that
    // answer log in at once: a refused password stops the agent here).
    let settings = args.etcd.settings();
    let client = settings.connect().await?;
    let keys = settings.keys();
    // Checked before anything is set up too: a DaemonSet without its
    // service account token fails here, saying so.
    let kube_api = if args.kubernetes {
        Some(KubeApi::in_cluster()?)
    } else {
        None
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let metrics = Arc::new(Metrics::default());
    let doctor = status_server::DoctorSlot::default();
    if let Some(addr) = args.metrics_addr {
        let listener = status_server::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        log::info!("serving /healthz, /metrics and /doctor on {addr}");
        tokio::spawn(status_server::serve(
            listener,
            metrics.clone(),
            doctor.clone(),
        ));
    }
    if args.probe_port != 0 {
        let port = args.probe_port;
        let socket = probe::bind(port)
            .await
            .map_err(|source| AgentError::Probe { port, source })?;
        tokio::spawn(probe::respond(socket));
    }
    let nl = Netlink::current()?;
    let (underlay, public_ip) =
        resolve_underlay(&nl, args.iface.as_deref(), args.public_ip).await?;
    log::info!(
        "node {node}: underlay {} (MTU {}), public IP {public_ip}",
        underlay.name,
        underlay.mtu
    );

    let start = async {
        let config = retry(
            "reading the cluster configuration",
            &metrics,
            &client,
            |mut c| {
                let keys = keys.clone();
                async move { lease::read_config(&mut c, &keys).await }
            },
        )
        .await?;
        // Before anything is leased or made.
        crate::pod_mtu::check(&config, &underlay, public_ip)?;
        let preferred = read_node_record(&args.state_dir)
            .ok()
            .flatten()
            .filter(|r| r.node_name.as_deref().is_none_or(|n| n == node))
            .map(|r| r.subnet);
        let leased = retry("leasing a node subnet", &metrics, &client, |mut c| {
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
                &node,
                &config,
                leased.subnet,
                &underlay,
                public_ip,
                &args.bridge,
            )
        };
        let table = node_table::for_node(&net, args.ip_masq, args.vxlan_notrack);
        let set_up = set_up_node(&nl, &net, &table, &args).await;
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
        let record = record_of(&net, &args, dns.is_some());
        retry("publishing the node record", &metrics, &client, |mut c| {
            let (keys, node, record) = (keys.clone(), node.clone(), record.clone());
            async move {
                lease::publish_record(&mut c, &keys.node(&node), &record, leased.lease_id).await
            }
        })
        .await?;
        metrics.leased.store(true, Ordering::Relaxed);
        Ok::<
            (
                ClusterConfig,
                Leased,
                NodeNetwork,
                NodeTables,
                Option<DnsServer>,
                trellis_common::node::NodeRecord,
            ),
            AgentError,
        >((config, leased, net, table, dns, record))
    };
    let (config, leased, net, table, dns, record) = tokio::select! {
        r = start => r?,
        _ = sigterm.recv() => { log::info!("SIGTERM during start-up; stopping"); return Ok(()); }
        _ = sigint.recv() => { log::info!("SIGINT during start-up; stopping"); return Ok(()); }
    };

    let (updates_tx, updates_rx) = tokio::sync::mpsc::unbounded_channel();
    let (own_tx, own_rx) = watch::channel(None);
    let view = LocalView::of(&net);
    let resync_now = Arc::new(tokio::sync::Notify::new());
    let (direct_tx, direct) = watch::channel(config.direct_routing);
    if args.probe_port != 0 {
        let _ = doctor.set(probe::Doctor {
            etcd: client.clone(),
            keys: keys.clone(),
            view: view.clone(),
            probe_port: args.probe_port,
            vxlan_port: config.port,
            mtu: net.vxlan.mtu,
            pod_mtu: net.pod_mtu,
            nl: nl.clone(),
            vxlan_device: net.vxlan.name.clone(),
            underlay: net.vxlan.underlay_index,
            direct: direct.clone(),
            pod_networks: net.cluster_networks(),
            resync: resync_now.clone(),
            cni_conf: args.cni_conf_dir.clone().map(|dir| {
                let expected = crate::install_cni::conf_dir::Expected {
                    bridge: args.bridge.clone(),
                    state_dir: args.state_dir.clone(),
                    keys: keys.clone(),
                };
                (dir, expected)
            }),
        });
    }
    let registry = tokio::spawn(registry::run(
        client.clone(),
        keys.nodes(),
        view,
        RegistryChannels {
            updates: updates_tx,
            own_record: own_tx,
        },
        metrics.clone(),
    ));
    // The reconciler ensures the device again before each pass.
    let dataplane = KernelDataplane::new(nl.clone(), net.clone(), direct);
    let reconciler = tokio::spawn(Reconciler::new(dataplane, metrics.clone()).run(
        updates_rx,
        Duration::from_secs(args.resync_interval.max(1)),
        resync_now.clone(),
    ));
    let mut following_config = config_follow::ConfigFollower {
        key: keys.config(),
        running: config.clone(),
        direct: direct_tx,
        resync: resync_now,
        pending: None,
        overlay_mtu: net.vxlan.mtu,
    };
    let (etcd, prefix, follow_metrics) = (client.clone(), keys.config(), metrics.clone());
    let config_task = tokio::spawn(async move {
        let what = "cluster config";
        etcd_follow::follow(etcd, prefix, what, &mut following_config, follow_metrics).await
    });
    let mut background = vec![registry, reconciler, config_task];
    if let Some(dns) = &dns {
        let mut following = names::Following {
            keys: keys.clone(),
            table: dns.names(),
        };
        let (etcd, prefix, metrics) = (client.clone(), keys.ips(), metrics.clone());
        background.push(tokio::spawn(async move {
            etcd_follow::follow(etcd, prefix, "names", &mut following, metrics).await
        }));
    }
    let (served_tx, served_rx) = watch::channel(None);
    let mut networks = networks::Following {
        keys: keys.clone(),
        set: networks::NetworkSet::new(config.clone()),
        metrics: metrics.clone(),
        served: served_tx,
    };
    let named = network_runner::NodeContext {
        client: client.clone(),
        keys: keys.clone(),
        node: node.clone(),
        nl: nl.clone(),
        underlay: underlay.clone(),
        public_ip,
        state_dir: args.state_dir.clone(),
        times,
        resync: Duration::from_secs(args.resync_interval.max(1)),
        tx_checksum_offload: args.vxlan_tx_checksum_offload,
        default: config.clone(),
        ip_masq: args.ip_masq,
        cni_conf_dir: args.cni_conf_dir.clone(),
        dns: args.dns.then(|| dns::On {
            port: args.dns_port,
            upstreams: args.dns_upstream.clone(),
        }),
        metrics: metrics.clone(),
    };
    background.push(tokio::spawn(network_runner::run(
        Arc::new(named),
        served_rx,
    )));
    let (etcd, prefix, follow_metrics) = (client.clone(), keys.networks(), metrics.clone());
    background.push(tokio::spawn(async move {
        etcd_follow::follow(etcd, prefix, "networks", &mut networks, follow_metrics).await
    }));
    let kube_nodes = kube_api.map(|api| {
        let (nodes, follow) = deleted_nodes::follow(api);
        background.push(tokio::spawn(follow));
        background.push(tokio::spawn(deleted_nodes::release_deleted(
            client.clone(),
            keys.clone(),
            nodes.clone(),
            node.clone(),
            Duration::from_secs(args.deleted_node_grace),
        )));
        nodes
    });
    let membership = Membership {
        client: client.clone(),
        keys: keys.clone(),
        config: config.clone(),
        node: node.clone(),
        scope: lease::Scope::Default,
        record_key: keys.node(&node),
        record,
        lease_id: leased.lease_id,
        grace_lease_id: leased.grace_lease_id,
        times,
        metrics: metrics.clone(),
        kube_nodes,
    };
    let mut membership = tokio::spawn(membership.run(own_rx));
    if args.dead_node_interval > 0 {
        let store = trellis_ipam::EtcdStore::from_client(&client, keys.clone(), REQUEST_TIMEOUT);
        background.push(tokio::spawn(dead_nodes::run(
            client.clone(),
            keys.clone(),
            store,
            node.clone(),
            config.network,
            Duration::from_secs(args.dead_node_interval),
            metrics.clone(),
        )));
    }
    if let Some((settings, every)) =
        ipam_gc::GcSettings::from_intervals(args.ipam_gc_interval, args.attachment_report_interval)
    {
        let gc = ipam_gc::Gc {
            store: trellis_ipam::EtcdStore::from_client(&client, keys.clone(), REQUEST_TIMEOUT),
            client: client.clone(),
            keys: keys.clone(),
            nl: nl.clone(),
            node: node.clone(),
            metrics: metrics.clone(),
        };
        background.push(tokio::spawn(ipam_gc::run(gc, settings, every)));
    }
    {
        let every = Duration::from_secs(args.resync_interval.max(1));
        background.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match node_table::keep(&table).await {
                    Ok(true) => log::warn!(
                        "nftables table {} was missing or changed; re-installed",
                        node_table::TABLE
                    ),
                    Ok(false) => {}
                    Err(e) => log::warn!("nftables table {}: {e}", node_table::TABLE),
                }
            }
        }));
    }
    if args.ipam_service {
        let socket =
            crate::ipam_service::start(&args.state_dir, settings.clone(), metrics.clone())?;
        log::info!("serving trellis-ipam on {}", socket.display());
    }
    log::info!(
        "node {node} is up: subnet {}, overlay MTU {}",
        net.subnet,
        net.mtu()
    );

    let result = tokio::select! {
        _ = sigterm.recv() => { log::info!("SIGTERM: stopping; the data path stays as it is"); Ok(()) }
        _ = sigint.recv() => { log::info!("SIGINT: stopping; the data path stays as it is"); Ok(()) }
        r = &mut membership => match r {
            Ok(Err(e)) => Err(AgentError::Lease(e)),
            _ => Ok(()),
        },
    };
    membership.abort();
    for task in background {
        task.abort();
    }
    result
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
fn record_of(net: &NodeNetwork, args: &RunArgs, dns: bool) -> trellis_common::node::NodeRecord {
    let record = net.record();
    let status_addr = args.metrics_addr.map(|a| {
        if a.ip().is_unspecified() {
            std::net::SocketAddr::new(record.public_ip, a.port())
        } else {
            a
        }
    });
    trellis_common::node::NodeRecord {
        kubernetes: args.kubernetes,
        status_addr,
        dns,
        ..record
    }
}
