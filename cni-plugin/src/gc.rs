//! GC: the IPAM plugin releases what no valid attachment holds, then the
//! host veths of attachments that are not valid any more are removed.

use crate::ipam;
use crate::masq;
use crate::runtime::{kernel_error, runtime};
use crate::unlink;
use std::collections::HashSet;
use trellis_common::cni::{CniError, Command, Request};
use trellis_common::naming::{host_veth_name, is_host_veth_name};
use trellis_kernel::Netlink;
use trellis_plugin::config::Config;

pub fn gc(req: &Request) -> Result<(), CniError> {
    let cfg = Config::from_request(req)?;
    // Without the list nobody can tell which attachments are in use:
    // refused before anything is deleted, as the IPAM plugin refuses it.
    let valid: HashSet<String> = req
        .conf
        .gc_valid_attachments()?
        .iter()
        .map(|a| host_veth_name(&a.container_id, &a.ifname))
        .collect();
    // Stale veths go even when the IPAM plugin fails; its error is returned.
    let released = ipam::call(&cfg, Command::Gc, &req.env, &req.stdin);
    runtime()?.block_on(async {
        let node = Netlink::current().map_err(kernel_error)?;
        // A named network not set up here has no bridge, nor ports to sweep.
        let record = cfg.node_record().ok().flatten();
        let bridge = match cfg.bridge_for(record.as_ref()) {
            Some(name) => node.link_by_name(name).await.map_err(kernel_error)?,
            None => None,
        };
        if let Some(bridge) = bridge {
            let ports = node
                .links_with_master(bridge.index)
                .await
                .map_err(kernel_error)?;
            let stale: Vec<String> = ports
                .into_iter()
                .filter(|p| {
                    is_host_veth_name(&p.name) && p.is_kind("veth") && !valid.contains(&p.name)
                })
                .map(|p| p.name)
                .collect();
            // All of them in one batch.
            for name in unlink::remove(&node, &cfg.state_dir, &stale).await? {
                log::info!("GC: removed veth {name} of a stale attachment");
            }
        }
        if !cfg.ipam_subnets.is_empty() {
            masq::reconcile(&node, &cfg, &cfg.ipam_subnets).await?;
        }
        released.map(|_| ())
    })
}
