//! The host-side veth name of an attachment, derived from container ID and
//! interface name so that DEL, CHECK and GC find it without a cached result
//! (the derivation lives in `trellis_common::naming`, shared with the
//! agent's leak reclaim).

pub use trellis_common::naming::{host_veth_name, HOST_VETH_PREFIX};

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
        // Pinned: a change would orphan every attachment on upgrade.
        assert_eq!(n, "trl18d26ad53bbe");
    }

    #[test]
    fn container_and_interface_both_count() {
        let a = host_veth_name("c1", "eth0");
        assert_ne!(a, host_veth_name("c2", "eth0"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        assert_ne!(host_veth_name("c1e", "th0"), a);
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
            "trl18d26ad53bb",
            "trl18d26ad53bbg",
            "veth18d26ad53bb",
        ] {
            assert!(!is_host_veth_name(other), "{other}");
        }
    }
}
