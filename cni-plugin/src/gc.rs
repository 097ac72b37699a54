//! GC: the IPAM plugin releases what no valid attachment holds, then the
//! host veths of attachments that are not valid any more are removed.

use crate::config::Config;
use crate::masq;
use crate::runtime::{kernel_error, runtime};
use std::collections::HashSet;
use trellis_common::cni::delegate::delegate;
use trellis_common::cni::{CniError, Command, Request};
use trellis_common::naming::{host_veth_name, is_host_veth_name};
use trellis_kernel::Netlink;

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
    let released = delegate(&cfg.ipam_type, Command::Gc, &req.env, &req.stdin);
    runtime()?.block_on(async {
        let node = Netlink::current().map_err(kernel_error)?;
        if let Some(bridge) = node.link_by_name(&cfg.bridge).await.map_err(kernel_error)? {
            let ports = node
                .links_with_master(bridge.index)
                .await
                .map_err(kernel_error)?;
            for port in ports {
                if is_host_veth_name(&port.name)
                    && port.is_kind("veth")
                    && !valid.contains(&port.name)
                {
                    log::info!("GC: removing veth {} of a stale attachment", port.name);
                    if !node
                        .delete_link_by_name(&port.name)
                        .await
                        .map_err(kernel_error)?
                    {
                        log::debug!("GC: {} was already gone", port.name);
                    }
                }
            }
        }
        if let Some(subnet) = cfg.ipam_subnet {
            masq::reconcile(&node, &cfg, subnet).await?;
        }
        released.map(|_| ())
    })
}
