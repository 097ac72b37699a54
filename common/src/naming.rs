//! Names derived from an attachment, shared by the CNI plugin (which
//! creates the host veth) and the node agent (which looks for it when it
//! reclaims leaked addresses).

/// Every host veth trellis creates starts with this.
pub const HOST_VETH_PREFIX: &str = "trl";

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
    format!("{HOST_VETH_PREFIX}{folded:012x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_names() {
        // The plugin's names: a change would orphan every attachment.
        assert_eq!(host_veth_name("abc123", "eth0"), "trl18d26ad53bbe");
        assert_ne!(host_veth_name("c1e", "th0"), host_veth_name("c1", "eth0"));
        assert_eq!(host_veth_name(&"f".repeat(64), "eth0").len(), 15);
    }
}
