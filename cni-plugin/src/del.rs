//! DEL: remove the veth (found by name; its container end goes with it;
//! in a batch with the other removals of the moment, see [`crate::unlink`]),
//! release the address, and drop the masquerade rule with the last
//! container. Succeeds when there is nothing left to remove, when the
//! container's namespace is gone, and without a prevResult.

use crate::ipam;
use crate::masq;
use crate::runtime::{kernel_error, runtime};
use crate::unlink;
use trellis_common::cni::delegate::Delegation;
use trellis_common::cni::{CniError, Command, Request};
use trellis_common::naming::host_veth_name;
use trellis_kernel::Netlink;
use trellis_plugin::config::Config;

pub fn del(req: &Request) -> Result<(), CniError> {
    let cfg = Config::from_request(req)?;
    let env = &req.env;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    runtime()?.block_on(async {
        let node = Netlink::current().map_err(kernel_error)?;
        // The IPAM plugin releases the address while the kernel removes the
        // veth (the reference bridge plugin releases first, then removes).
        // The veth goes even when the IPAM plugin cannot be run.
        let ipam = ipam::start(&cfg, Command::Del, env, &req.stdin);
        let removed = unlink::remove(&node, &cfg.state_dir, std::slice::from_ref(&host_name)).await;
        let released = ipam.and_then(Delegation::finish);
        let removed = !removed?.is_empty();
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
        if !cfg.ipam_subnets.is_empty() && cfg.ip_masq {
            masq::remove_if_unused(&node, &cfg, &cfg.ipam_subnets).await?;
        }
        Ok(())
    })
}
