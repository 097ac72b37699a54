//! The container's network namespace, `CNI_NETNS`.

use trellis_common::cni::{CniError, Request};
use trellis_kernel::netns::NetnsFile;

/// The container's namespace; a path that is not one is a bad CNI_NETNS (4).
pub fn open_netns(req: &Request) -> Result<NetnsFile, CniError> {
    let path = req
        .env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::invalid_env("required env variables [CNI_NETNS] missing"))?;
    let netns = NetnsFile::open(path).map_err(|e| {
        CniError::invalid_env(format!("CNI_NETNS: cannot open {}", path.display()))
            .with_details(e.to_string())
    })?;
    match netns.is_namespace() {
        Ok(true) => Ok(netns),
        Ok(false) => Err(CniError::invalid_env(format!(
            "CNI_NETNS: {} is not a network namespace",
            path.display()
        ))),
        Err(e) => Err(CniError::invalid_env(format!(
            "CNI_NETNS: cannot inspect {}: {e}",
            path.display()
        ))),
    }
}
