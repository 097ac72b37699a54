//! Ethernet MAC addresses: parsed, printed and derived, never passed around
//! as strings.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:aa:bb:cc:dd:ee")]
pub struct InvalidMac(pub String);

impl MacAddr {
    /// A stable, locally administered unicast address derived from `seed`
    /// (for instance a node name): the same seed always gives the same MAC.
    /// FNV-1a keeps the derivation independent of the Rust version.
    pub fn derived_from(seed: &str) -> MacAddr {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = hash.to_be_bytes();
        let mut mac = [b[2], b[3], b[4], b[5], b[6], b[7]];
        // Locally administered (bit 1), unicast (bit 0 clear).
        mac[0] = (mac[0] | 0x02) & !0x01;
        MacAddr(mac)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// From the bytes of a netlink link-layer attribute.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(s: &str) -> Result<MacAddr, InvalidMac> {
        let bad = || InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "02:AA:bb:0c:dd:ee".parse().unwrap();
        assert_eq!(m.octets(), [0x02, 0xaa, 0xbb, 0x0c, 0xdd, 0xee]);
        assert_eq!(m.to_string(), "02:aa:bb:0c:dd:ee");
        for bad in [
            "",
            "02:aa:bb:cc:dd",
            "02:aa:bb:cc:dd:ee:ff",
            "2:aa:bb:cc:dd:ee",
            "zz:aa:bb:cc:dd:ee",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_mac_is_stable_local_unicast_and_differs_per_seed() {
        let a = MacAddr::derived_from("node-a");
        assert_eq!(a, MacAddr::derived_from("node-a"));
        assert_ne!(a, MacAddr::derived_from("node-b"));
        assert_eq!(a.0[0] & 0x03, 0x02, "{a}");
        // Pinned: a change here would change every node's VTEP MAC on upgrade.
        assert_eq!(a.to_string(), "1e:c2:20:78:cb:53");
        let all: std::collections::HashSet<_> = (0..10_000)
            .map(|i| MacAddr::derived_from(&format!("node-{i}")))
            .collect();
        assert_eq!(all.len(), 10_000);
    }
}
