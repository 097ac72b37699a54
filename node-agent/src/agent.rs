//! `trellis-agent run`: lease the subnet, set up the node's devices,
//! publish the node, then keep the overlay in step with etcd until SIGTERM
//! (which leaves the data path as it is, so a restart does not touch pods).

mod error;
mod start;
mod tasks;

pub use error::AgentError;
use start::Agent;

use crate::flags::RunArgs;
use crate::kube_api::KubeApi;
use crate::lease;
use crate::metrics::Metrics;
use crate::node_network::resolve_underlay;
use crate::{probe, status_server};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use trellis_common::node_name::node_name;
use trellis_kernel::Netlink;

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

    let agent = Agent {
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
    };
    let started = tokio::select! {
        r = start::start(&agent) => r?,
        _ = sigterm.recv() => { log::info!("SIGTERM during start-up; stopping"); return Ok(()); }
        _ = sigint.recv() => { log::info!("SIGINT during start-up; stopping"); return Ok(()); }
    };
    let mut running = tasks::spawn(&agent, started, &doctor, kube_api)?;

    let result = tokio::select! {
        _ = sigterm.recv() => { log::info!("SIGTERM: stopping; the data path stays as it is"); Ok(()) }
        _ = sigint.recv() => { log::info!("SIGINT: stopping; the data path stays as it is"); Ok(()) }
        r = &mut running.membership => match r {
            Ok(Err(e)) => Err(AgentError::Lease(e)),
            _ => Ok(()),
        },
    };
    running.stop();
    result
}
