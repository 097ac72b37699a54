//! DEL: remove the veth (found by name; its container end goes with it),
//! release the address, and drop the masquerade rule with the last
//! container. Succeeds when there is nothing left to remove, when the
//! container's namespace is gone, and without a prevResult.

use crate::config::Config;
use crate::masq;
use crate::naming::host_veth_name;
use crate::plugin::{kernel_error, runtime};
use trellis_common::cni::delegate::delegate;
use trellis_common::cni::{CniError, Command, Request};
use trellis_kernel::Netlink;

pub fn del(req: &Request) -> Result<(), CniError> {
    let cfg = Config::from_request(req)?;
    let env = &req.env;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    runtime()?.block_on(async {
        let node = Netlink::current().map_err(kernel_error)?;
        // The address goes back to the pool only once nothing uses it.
        let removed = node
            .delete_link_by_name(&host_name)
            .await
            .map_err(kernel_error)?;
        if removed {
            log::info!(
                "removed veth {host_name} of {}/{}",
                env.container_id,
                env.ifname
            );
        }
        delegate(&cfg.ipam_type, Command::Del, env, &req.stdin)?;
        if let (Some(subnet), true) = (cfg.ipam_subnet, removed) {
            masq::reconcile(&node, &cfg, subnet).await?;
        }
        Ok(())
    })
}
