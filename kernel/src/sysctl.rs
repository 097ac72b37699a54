//! Network sysctls of the calling thread's namespace (`/proc/sys/net/...`
//! shows the namespace of whoever opens it).

use crate::error::{KernelError, Result};
use std::path::PathBuf;

/// `net.ipv4.ip_forward` or `net/ipv4/conf/eth0.100/forwarding` (the
/// slash form for keys holding interface names with dots).
fn path_of(key: &str) -> PathBuf {
    if key.contains('/') {
        PathBuf::from("/proc/sys").join(key)
    } else {
        PathBuf::from("/proc/sys").join(key.replace('.', "/"))
    }
}

/// Read a sysctl, e.g. `net.ipv4.ip_forward`, without the trailing newline.
pub fn read_sysctl(key: &str) -> Result<String> {
    std::fs::read_to_string(path_of(key))
        .map(|s| s.trim_end().to_string())
        .map_err(KernelError::io(format!("reading sysctl {key}")))
}

/// Set a sysctl to `value` unless it already has it (one read, at most one
/// write). `true` when it was changed.
pub fn ensure_sysctl(key: &str, value: &str) -> Result<bool> {
    if read_sysctl(key)? == value {
        return Ok(false);
    }
    std::fs::write(path_of(key), value).map_err(|e| {
        let what = write_failure(key, value, &e);
        KernelError::io(what)(e)
    })?;
    Ok(true)
}

/// What a failed sysctl write says: with the fix when /proc/sys is
/// read-only, as container runtimes mount it (the agent's DaemonSet pod).
fn write_failure(key: &str, value: &str, err: &std::io::Error) -> String {
    if err.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        format!(
            "setting sysctl {key} to {value} (it is off, and /proc/sys is read-only here, \
             as in a container: set it on the host, `sysctl -w {key}={value}`, as kubeadm's \
             preflight requires)"
        )
    } else {
        format!("setting sysctl {key} to {value}")
    }
}

/// Turn on IPv4 forwarding in this namespace (containers reach the world
/// through the node).
pub fn enable_ipv4_forwarding() -> Result<bool> {
    ensure_sysctl("net.ipv4.ip_forward", "1")
}

/// Turn on IPv6 forwarding in this namespace.
pub fn enable_ipv6_forwarding() -> Result<bool> {
    ensure_sysctl("net.ipv6.conf.all.forwarding", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_proc_sys_says_how_to_fix_it() {
        let rofs = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let msg = write_failure("net.ipv4.ip_forward", "1", &rofs);
        assert!(msg.contains("sysctl -w net.ipv4.ip_forward=1"), "{msg}");
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            write_failure("net.ipv4.ip_forward", "1", &other),
            "setting sysctl net.ipv4.ip_forward to 1"
        );
    }

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path_of("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of("net/ipv4/conf/eth0.100/forwarding"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
    }

    #[test]
    fn reads_a_sysctl_and_names_a_missing_one() {
        let v = read_sysctl("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
        let e = read_sysctl("net.ipv4.no_such_knob").unwrap_err();
        assert!(e.to_string().contains("net.ipv4.no_such_knob"));
        assert!(e.is_not_found());
    }
}
