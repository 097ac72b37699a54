//! DEL: remove the veth (found by name; its container end goes with it),
//! release the address, and drop the masquerade rule with the last
//! container. Succeeds when there is nothing left to remove, when the
//! container's namespace is gone, and without a prevResult.

use crate::config::Config;
use crate::masq;
use crate::runtime::{kernel_error, runtime};
use trellis_common::cni::delegate::Delegation;
use trellis_common::cni::{CniError, Command, Request};
use trellis_common::naming::host_veth_name;
use trellis_kernel::Netlink;

pub fn del(req: &Request) -> Result<(), CniError> {
    let cfg = Config::from_request(req)?;
    let env = &req.env;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    runtime()?.block_on(async {
        let node = Netlink::current().map_err(kernel_error)?;
        // The IPAM plugin releases the address while the kernel removes the
        // veth (the reference bridge plugin releases first, then removes).
        // The veth goes even when the IPAM plugin cannot be run.
        let ipam = Delegation::start(&cfg.ipam_type, Command::Del, env, &req.stdin);
        let removed = node.delete_link_by_name(&host_name).await;
        let released = ipam.and_then(Delegation::finish);
        let removed = removed.map_err(kernel_error)?;
        released?;
        if removed {
            log::info!(
                "removed veth {host_name} of {}/{}",
                env.container_id,
                env.ifname
            );
        }
        // Also when nothing was removed here: the veth vanished with its
        // namespace, and this may have been the last container.
        if let (Some(subnet), true) = (cfg.ipam_subnet, cfg.ip_masq) {
            masq::remove_if_unused(&node, &cfg, subnet).await?;
        }
        Ok(())
    })
}
