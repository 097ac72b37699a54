//! Single-host masquerade: one nftables rule set per bridge, present while
//! the bridge has containers (and `ipMasq` is on), changed under a node-local
//! lock so that a DEL removing it never races an ADD installing it.

use crate::config::Config;
use crate::plugin::kernel_error;
use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use trellis_common::cni::{code, CniError};
use trellis_kernel::{Masquerade, Netlink, TableState};

use trellis_common::naming::is_host_veth_name;

/// An exclusive flock on `<stateDir>/<bridge>.lock`, released on drop.
pub struct NodeLock {
    _lock: Flock<File>,
}

impl NodeLock {
    pub fn acquire(cfg: &Config) -> Result<NodeLock, CniError> {
        let io = |what: &str, e: std::io::Error| {
            CniError::new(
                code::IO_FAILURE,
                format!("{what} {}: {e}", cfg.lock_path().display()),
            )
        };
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| io("creating the directory of", e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.lock_path())
            .map_err(|e| io("opening", e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io("locking", errno.into()))?;
        Ok(NodeLock { _lock: lock })
    }
}

/// The rule for the single-host `subnet`: its traffic to anywhere but the
/// subnet itself leaves masqueraded.
pub fn masquerade(cfg: &Config, subnet: IpNetwork) -> Masquerade {
    Masquerade::new(cfg.masquerade_table(), subnet, vec![subnet])
}

/// Make sure the rule is there after ADD attached a container: a read of
/// the table (cheap), and a write only when it is missing or differs.
pub fn install(cfg: &Config, subnet: IpNetwork) -> Result<(), CniError> {
    let _lock = NodeLock::acquire(cfg)?;
    converge(&masquerade(cfg, subnet), true, "a container is attached")
}

/// Drop the rule once the bridge has no container left: after DEL.
pub async fn remove_if_unused(
    node: &Netlink,
    cfg: &Config,
    subnet: IpNetwork,
) -> Result<(), CniError> {
    let _lock = NodeLock::acquire(cfg)?;
    if containers_on_bridge(node, cfg).await? > 0 {
        return Ok(());
    }
    converge(&masquerade(cfg, subnet), false, "no container left")
}

/// Make the rule match the node: present when `ipMasq` is on and the bridge
/// has containers, absent otherwise. After GC and a failed ADD.
pub async fn reconcile(node: &Netlink, cfg: &Config, subnet: IpNetwork) -> Result<(), CniError> {
    let _lock = NodeLock::acquire(cfg)?;
    let containers = containers_on_bridge(node, cfg).await?;
    let why = format!("{containers} containers on {}", cfg.bridge);
    converge(
        &masquerade(cfg, subnet),
        cfg.ip_masq && containers > 0,
        &why,
    )
}

/// Install or remove the rule so that it is there exactly when `wanted`:
/// one read of the table, a write only when it has to change. Under the
/// node lock.
fn converge(rule: &Masquerade, wanted: bool, why: &str) -> Result<(), CniError> {
    let state = rule.state().map_err(kernel_error)?;
    match (wanted, state) {
        (true, TableState::Absent | TableState::Other) => {
            log::info!(
                "installing masquerade table {} for {} ({why})",
                rule.table,
                rule.source
            );
            rule.ensure().map_err(kernel_error)
        }
        // Also a table that holds something else (another subnet from
        // before, a rule someone added): it is ours to remove.
        (false, TableState::Exactly | TableState::Other) => {
            log::info!("removing masquerade table {} ({why})", rule.table);
            rule.remove().map_err(kernel_error)
        }
        _ => Ok(()),
    }
}

/// How many host veths of trellis the bridge has.
async fn containers_on_bridge(node: &Netlink, cfg: &Config) -> Result<usize, CniError> {
    Ok(
        match node.link_by_name(&cfg.bridge).await.map_err(kernel_error)? {
            Some(bridge) => node
                .links_with_master(bridge.index)
                .await
                .map_err(kernel_error)?
                .iter()
                .filter(|l| is_host_veth_name(&l.name))
                .count(),
            None => 0,
        },
    )
}
