//! Removing host veths, and with each its container end, in batches.
//!
//! Unregistering a network device makes the kernel wait for RCU grace
//! periods, about 20 ms here, whoever asks and however small the device; one
//! `RTM_DELLINK` naming a link group unregisters every link of the group
//! together and waits once. So each removal moves its veth into the group
//! [`REMOVAL_GROUP`], then takes the node's removal lock; whoever holds it
//! deletes the whole group, so that the DELs of a burst share their waits,
//! and a DEL that finds its veth gone once it has the lock is done. Every
//! removal is complete when it returns: its veth, container end included,
//! is gone. A plugin killed between the two steps leaves its veth in the
//! group, where the next removal on the node (or its own retried DEL) takes
//! it.

use crate::runtime::kernel_error;
use std::path::Path;
use std::time::{Duration, Instant};
use trellis_common::cni::{code, CniError};
use trellis_common::fs::{FileLock, LockError};
use trellis_kernel::Netlink;

/// The link group of veths on their way out ("trlx"); nothing else on a
/// node may use it.
pub const REMOVAL_GROUP: u32 = 0x7472_6c78;
/// The node-wide lock of the removals, under `stateDir`.
pub const LOCK_FILE: &str = "veth-removal.lock";
/// Each holder of the lock deletes one group (tens of milliseconds): waiting
/// longer means a stuck plugin, and the runtime had better try again (11).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Removes the host veths `names` (those that exist); the ones it found.
pub async fn remove(
    node: &Netlink,
    state_dir: &Path,
    names: &[String],
) -> Result<Vec<String>, CniError> {
    let mut found = Vec::new();
    for name in names {
        if node
            .set_group_by_name(name, REMOVAL_GROUP)
            .await
            .map_err(kernel_error)?
        {
            found.push(name.clone());
        }
    }
    if found.is_empty() {
        return Ok(found);
    }
    let _lock = lock(&state_dir.join(LOCK_FILE))?;
    let mut left = false;
    for name in &found {
        left |= node
            .link_by_name(name)
            .await
            .map_err(kernel_error)?
            .is_some();
    }
    if left {
        node.delete_group(REMOVAL_GROUP)
            .await
            .map_err(kernel_error)?;
    }
    Ok(found)
}

fn lock(path: &Path) -> Result<FileLock, CniError> {
    FileLock::acquire(path, Instant::now() + LOCK_WAIT).map_err(|e| match e {
        LockError::Io { .. } => CniError::new(code::IO_FAILURE, e.to_string()),
        LockError::Timeout { .. } => CniError::try_again(e.to_string()),
    })
}
