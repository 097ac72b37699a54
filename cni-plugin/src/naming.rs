//! The host-side veth name of an attachment, derived from container ID and
//! interface name so that DEL, CHECK and GC find it without a cached result.

use std::hash::Hasher;

/// Every host veth trellis creates starts with this.
pub const HOST_VETH_PREFIX: &str = "trl";

/// `trl` + 12 hex digits of a stable hash (FNV-1a, independent of the Rust
/// version) of `<containerID>/<ifname>`; `/` appears in neither, so two
/// attachments never hash the same text. 15 characters, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(container_id.as_bytes());
    h.write(b"/");
    h.write(ifname.as_bytes());
    let hash = h.finish();
    let folded = (hash ^ (hash >> 48)) & 0xffff_ffff_ffff;
    format!("{HOST_VETH_PREFIX}{folded:012x}")
}

/// Whether `name` looks like a host veth trellis made.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + 12
        && name.starts_with(HOST_VETH_PREFIX)
        && name[HOST_VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_stable_and_fit_the_kernel_limit() {
        let n = host_veth_name("abc123", "eth0");
        assert_eq!(n.len(), 15);
        assert!(is_host_veth_name(&n), "{n}");
        assert_eq!(n, host_veth_name("abc123", "eth0"));
        // Pinned: a change would orphan every attachment on upgrade.
        assert_eq!(host_veth_name("abc123", "eth0"), "trl18d26ad53bbe");
    }

    #[test]
    fn container_and_interface_both_count() {
        let a = host_veth_name("c1", "eth0");
        assert_ne!(a, host_veth_name("c2", "eth0"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        assert_ne!(host_veth_name("c1e", "th0"), host_veth_name("c1", "eth0"));
    }

    #[test]
    fn no_collisions_among_many_containers() {
        let names: HashSet<String> = (0..100_000)
            .map(|i| host_veth_name(&format!("{i:064x}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 100_000);
    }

    #[test]
    fn recognizes_only_our_names() {
        for other in [
            "trellis0",
            "eth0",
            "trl",
            "trl1bbfa8c0ab2",
            "trl1bbfa8c0ab2g",
            "veth1bbfa8c0ab",
        ] {
            assert!(!is_host_veth_name(other), "{other}");
        }
    }
}
