//! The agent's running parts, once the node is up: the registry and the
//! reconciler of the overlay, the followers of the cluster config, the
//! names and the named networks, the node's membership, leak and
//! dead-node reclaim, the table keeper and the IPAM service.

use super::error::AgentError;
use super::start::{Agent, Started};
use crate::dns::{self, DnsServer};
use crate::flags::REQUEST_TIMEOUT;
use crate::kube_api::KubeApi;
use crate::lease::{self, LeaseError};
use crate::membership::Membership;
use crate::names;
use crate::overlay::{KernelDataplane, Reconciler};
use crate::registry::{self, LocalView, RegistryChannels};
use crate::{config_follow, dead_nodes, deleted_nodes, etcd_follow, ipam_gc};
use crate::{network_runner, networks};
use crate::{node_table, probe, status_server};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The tasks that run until the agent stops: the membership (whose end
/// ends the agent) and the rest.
pub(super) struct Running {
    pub membership: JoinHandle<Result<(), LeaseError>>,
    background: Vec<JoinHandle<()>>,
    /// The default network's DNS server: held, since dropping it stops it.
    _dns: Option<DnsServer>,
}

impl Running {
    pub fn stop(self) {
        self.membership.abort();
        for task in self.background {
            task.abort();
        }
    }
}

/// Start every task of the node `started` made.
pub(super) fn spawn(
    agent: &Agent,
    started: Started,
    doctor: &status_server::DoctorSlot,
    kube_api: Option<KubeApi>,
) -> Result<Running, AgentError> {
    let Agent {
        args,
        node,
        settings,
        client,
        keys,
        metrics,
        nl,
        underlay,
        public_ip,
        times,
    } = agent;
    let (public_ip, times) = (*public_ip, *times);
    let Started {
        config,
        leased,
        net,
        table,
        dns,
        record,
    } = started;
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
        record_key: keys.node(node),
        record,
        lease_id: leased.lease_id,
        grace_lease_id: leased.grace_lease_id,
        times,
        metrics: metrics.clone(),
        kube_nodes,
    };
    let membership = tokio::spawn(membership.run(own_rx));
    if args.dead_node_interval > 0 {
        let store = trellis_ipam::EtcdStore::from_client(client, keys.clone(), REQUEST_TIMEOUT);
        background.push(tokio::spawn(dead_nodes::run(
            client.clone(),
            keys.clone(),
            store,
            node.clone(),
            config.lease_network(),
            Duration::from_secs(args.dead_node_interval),
            metrics.clone(),
        )));
    }
    if let Some((settings, every)) =
        ipam_gc::GcSettings::from_intervals(args.ipam_gc_interval, args.attachment_report_interval)
    {
        let gc = ipam_gc::Gc {
            store: trellis_ipam::EtcdStore::from_client(client, keys.clone(), REQUEST_TIMEOUT),
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
        net.record()
            .subnets()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        net.mtu()
    );
    Ok(Running {
        membership,
        background,
        _dns: dns,
    })
}
