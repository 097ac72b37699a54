//! Which node this is: the one rule every binary applies. A name given
//! explicitly (the agent's `--node-name`, the IPAM's `nodeName`, the
//! agent's record), else `NODE_NAME` (the DaemonSet sets it from the
//! downward API), else the host name. No name at all is an error, never an
//! empty name: every key of a node carries it.

use std::ffi::OsString;

/// The environment variable holding the node name.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

#[derive(Debug, thiserror::Error)]
pub enum NodeNameError {
    #[error("no node name: none given, {NODE_NAME_ENV} is not set and the host name is empty")]
    Empty,
    #[error("no node name: none given, {NODE_NAME_ENV} is not set and the host name cannot be read: {0}")]
    HostName(#[source] std::io::Error),
}

/// This node's name (see the module).
pub fn node_name(explicit: Option<&str>) -> Result<String, NodeNameError> {
    let env = std::env::var(NODE_NAME_ENV).ok();
    resolve(explicit, env.as_deref(), || {
        nix::unistd::gethostname().map_err(std::io::Error::from)
    })
}

fn resolve(
    explicit: Option<&str>,
    env: Option<&str>,
    host_name: impl FnOnce() -> std::io::Result<OsString>,
) -> Result<String, NodeNameError> {
    if let Some(name) = [explicit, env]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
    {
        return Ok(name.to_string());
    }
    let host = host_name().map_err(NodeNameError::HostName)?;
    let host = host.to_string_lossy();
    if host.is_empty() {
        return Err(NodeNameError::Empty);
    }
    Ok(host.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> impl FnOnce() -> std::io::Result<OsString> + '_ {
        move || Ok(OsString::from(name))
    }

    #[test]
    fn explicit_then_environment_then_host_name() {
        assert_eq!(resolve(Some("a"), Some("b"), host("c")).unwrap(), "a");
        assert_eq!(resolve(Some(""), Some("b"), host("c")).unwrap(), "b");
        assert_eq!(resolve(None, Some("b"), host("c")).unwrap(), "b");
        assert_eq!(resolve(None, None, host("c")).unwrap(), "c");
        assert_eq!(resolve(None, Some(""), host("c")).unwrap(), "c");
    }

    #[test]
    fn no_name_is_an_error_not_an_empty_name() {
        let e = resolve(None, None, host("")).unwrap_err();
        assert!(matches!(e, NodeNameError::Empty), "{e}");
        let e = resolve(Some(""), Some(""), || {
            Err(std::io::Error::from_raw_os_error(nix::libc::EFAULT))
        })
        .unwrap_err();
        assert!(matches!(e, NodeNameError::HostName(_)), "{e}");
        assert!(e.to_string().contains("host name cannot be read"), "{e}");
    }
}
