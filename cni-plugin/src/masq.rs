//! Single-host masquerade: one nftables table per bridge and family, present while
//! the bridge has containers (and `ipMasq` is on), changed under a node-local
//! lock so that a DEL removing it never races an ADD installing it.

use crate::runtime::kernel_error;
use ipnetwork::IpNetwork;
use std::path::Path;
use std::time::{Duration, Instant};
use trellis_common::cni::{code, CniError};
use trellis_common::fs::{FileLock, LockError};
use trellis_kernel::{Masquerade, Netlink, NftTable, TableState};
use trellis_plugin::config::Config;

use trellis_common::naming::is_host_veth_name;

/// How long a masquerade change waits for another one on the node: each
/// holds the lock for one `nft` read or write, so waiting longer means a
/// stuck plugin, and the runtime had better try again (11).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The exclusive lock on `<stateDir>/<bridge>.lock`, released on drop.
fn node_lock(cfg: &Config) -> Result<FileLock, CniError> {
    lock_within(&cfg.lock_path(), LOCK_WAIT)
}

/// The lock at `path`, waited for `wait` at most: not obtained in time is
/// code 11, a lock file that cannot be created code 5.
fn lock_within(path: &Path, wait: Duration) -> Result<FileLock, CniError> {
    FileLock::acquire(path, Instant::now() + wait).map_err(|e| match e {
        LockError::Io { .. } => CniError::new(code::IO_FAILURE, e.to_string()),
        LockError::Timeout { .. } => CniError::try_again(e.to_string()),
    })
}

/// The rule for the single-host `subnet`: its traffic to anywhere but the
/// subnet itself leaves masqueraded.
fn masquerade(cfg: &Config, subnet: IpNetwork) -> NftTable {
    NftTable::new(cfg.masquerade_table()).with_masquerade(Masquerade::new(subnet, vec![subnet]))
}

/// Make sure the rules are there after ADD attached a container: a read
/// of each table (cheap), and a write only when it is missing or differs.
pub fn install(cfg: &Config, subnets: &[IpNetwork]) -> Result<(), CniError> {
    let _lock = node_lock(cfg)?;
    converge(cfg, subnets, true, "a container is attached")
}

/// Drop the rule once the bridge has no container left: after DEL.
pub async fn remove_if_unused(
    node: &Netlink,
    cfg: &Config,
    subnets: &[IpNetwork],
) -> Result<(), CniError> {
    let _lock = node_lock(cfg)?;
    if containers_on_bridge(node, cfg).await? > 0 {
        return Ok(());
    }
    converge(cfg, subnets, false, "no container left")
}

/// Make the rule match the node: present when `ipMasq` is on and the bridge
/// has containers, absent otherwise. After GC and a failed ADD.
pub async fn reconcile(
    node: &Netlink,
    cfg: &Config,
    subnets: &[IpNetwork],
) -> Result<(), CniError> {
    let _lock = node_lock(cfg)?;
    let containers = containers_on_bridge(node, cfg).await?;
    let why = format!("{containers} containers on {}", cfg.bridge);
    converge(cfg, subnets, cfg.ip_masq && containers > 0, &why)
}

/// Install or remove the rules (one table per subnet, of its family) so
/// that they are there exactly when `wanted`. Under the node lock.
fn converge(cfg: &Config, subnets: &[IpNetwork], wanted: bool, why: &str) -> Result<(), CniError> {
    subnets
        .iter()
        .try_for_each(|subnet| converge_one(cfg, *subnet, wanted, why))
}

/// One subnet's table: one read, a write only when it has to change.
fn converge_one(cfg: &Config, subnet: IpNetwork, wanted: bool, why: &str) -> Result<(), CniError> {
    let table = masquerade(cfg, subnet);
    let state = table.state().map_err(kernel_error)?;
    match (wanted, state) {
        (true, TableState::Absent | TableState::Other) => {
            log::info!(
                "installing masquerade table {} for {} ({why})",
                table.id.name,
                subnet
            );
            table.ensure().map_err(kernel_error)
        }
        // Also a table that holds something else (another subnet from
        // before, a rule someone added): it is ours to remove.
        (false, TableState::Exactly | TableState::Other) => {
            log::info!("removing masquerade table {} ({why})", table.id.name);
            table.remove().map_err(kernel_error)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_try_again_and_an_impossible_one_an_io_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/trellis0.lock");
        let held = lock_within(&path, Duration::ZERO).unwrap();
        let e = lock_within(&path, Duration::from_millis(100))
            .err()
            .unwrap();
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
        assert!(e.msg.contains("trellis0.lock"), "{e}");
        drop(held);
        // The timed-out wait's helper thread takes the freed lock for a
        // moment before it lets it go (FileLock::wait): allow for that.
        lock_within(&path, Duration::from_secs(2)).unwrap();

        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = lock_within(&file.join("trellis0.lock"), Duration::ZERO)
            .err()
            .unwrap();
        assert_eq!(e.code, code::IO_FAILURE, "{e}");
    }
}
