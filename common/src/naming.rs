//! The plugin's name and the names derived from an attachment, shared by
//! the CNI plugin (which creates the host veth, and finds it again by name
//! on DEL, CHECK and GC), the IPAM plugin (which marks the allocations of
//! trellis's attachments) and the node agent (which looks for the veth
//! when it reclaims leaked addresses).

/// The `type` of the trellis CNI plugin in a network configuration.
pub const PLUGIN_TYPE: &str = "trellis";

/// Every host veth trellis creates starts with this.
pub const HOST_VETH_PREFIX: &str = "trl";

/// How many hex digits follow the prefix.
const HASH_DIGITS: usize = 12;

/// `trl` + 12 hex digits of a stable hash (FNV-1a 64, independent of the
/// Rust version) of `<containerID>/<ifname>`, folded to 48 bits: 15
/// characters, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (hash ^ (hash >> 48)) & 0xffff_ffff_ffff;
    format!("{HOST_VETH_PREFIX}{folded:0HASH_DIGITS$x}")
}

/// Whether `name` has the shape of a name [`host_veth_name`] makes.
pub fn is_host_veth_name(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX).is_some_and(|hash| {
        hash.len() == HASH_DIGITS
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn pinned_names() {
        // The plugin's names: a change would orphan every attachment.
        assert_eq!(host_veth_name("abc123", "eth0"), "trl18d26ad53bbe");
        assert_ne!(host_veth_name("c1e", "th0"), host_veth_name("c1", "eth0"));
        assert_eq!(host_veth_name(&"f".repeat(64), "eth0").len(), 15);
    }

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
