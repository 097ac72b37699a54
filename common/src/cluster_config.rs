//! The cluster configuration, `<prefix>/config`: the pod network and how
//! it is cut into node subnets, and the VXLAN id and port. Written by the
//! operator (or the installer, from the ConfigMap) and read by every agent:
//! [`ClusterConfig::parse`] is the one check both sides apply, so the
//! installer never seeds what the agents would refuse.

use crate::node::MAX_SUBNET_LEN;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// `<prefix>/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// The whole pod network, e.g. 10.244.0.0/16.
    pub network: Ipv4Network,
    #[serde(default = "default_subnet_len")]
    pub subnet_len: u8,
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_subnet_len() -> u8 {
    24
}
fn default_vni() -> u32 {
    1
}
fn default_port() -> u16 {
    8472
}

/// Why a cluster configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidClusterConfig(String);

impl ClusterConfig {
    /// Decode and check a configuration as stored: JSON with the documented
    /// keys, a network without host bits, node subnets that leave room for
    /// nodes and pods, a VNI and a port that VXLAN can use.
    pub fn parse(bytes: &[u8]) -> Result<ClusterConfig, InvalidClusterConfig> {
        let config: ClusterConfig =
            serde_json::from_slice(bytes).map_err(|e| InvalidClusterConfig(e.to_string()))?;
        config.check().map_err(InvalidClusterConfig)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let net = self.network;
        if net.network() != net.ip() {
            return Err(format!(
                "network {net} has host bits set (did you mean {}/{}?)",
                net.network(),
                net.prefix()
            ));
        }
        if self.subnet_len <= net.prefix() || self.subnet_len > MAX_SUBNET_LEN {
            return Err(format!(
                "subnetLen {} must be longer than the network's /{} and at most {MAX_SUBNET_LEN}",
                self.subnet_len,
                net.prefix()
            ));
        }
        if self.vni == 0 || self.vni > 0x00ff_ffff {
            return Err(format!("vni {} must be between 1 and 16777215", self.vni));
        }
        if self.port == 0 {
            return Err("port must not be 0".into());
        }
        Ok(())
    }

    /// How many node subnets the network holds.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.subnet_len - self.network.prefix())
    }

    /// The `index`-th node subnet of the network.
    pub fn subnet_at(&self, index: u64) -> Option<Ipv4Network> {
        if index >= self.subnet_count() {
            return None;
        }
        let base = u32::from(self.network.network()) as u64;
        let size = 1u64 << (32 - self.subnet_len);
        let addr = Ipv4Addr::from((base + index * size) as u32);
        Ipv4Network::new(addr, self.subnet_len).ok()
    }

    /// Whether `subnet` is one of the network's node subnets.
    pub fn fits(&self, subnet: Ipv4Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.network() == subnet.ip()
            && self.network.contains(subnet.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_subnets() {
        let c = ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!((c.subnet_len, c.vni, c.port), (24, 1, 8472));
        assert_eq!(c.subnet_count(), 256);
        assert_eq!(c.subnet_at(3).unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(c.subnet_at(255).unwrap().to_string(), "10.244.255.0/24");
        assert!(c.subnet_at(256).is_none());
        assert!(c.fits("10.244.9.0/24".parse().unwrap()));
        for other in ["10.245.9.0/24", "10.244.9.0/25", "10.244.9.1/24"] {
            assert!(!c.fits(other.parse().unwrap()), "{other}");
        }
    }

    #[test]
    fn impossible_configurations_are_refused_with_a_reason() {
        for (bad, reason) in [
            (
                r#"{"network":"10.244.0.0/16","subnetLen":16}"#,
                "subnetLen 16",
            ),
            (
                r#"{"network":"10.244.0.0/16","subnetLen":31}"#,
                "subnetLen 31",
            ),
            (r#"{"network":"10.244.0.0/16","vni":0}"#, "vni 0"),
            (
                r#"{"network":"10.244.0.0/16","vni":16777216}"#,
                "vni 16777216",
            ),
            (r#"{"network":"10.244.0.0/16","port":0}"#, "port"),
            (
                r#"{"network":"10.244.1.0/16"}"#,
                "host bits set (did you mean 10.244.0.0/16?)",
            ),
            (r#"{"network":"nope"}"#, "invalid"),
            ("not json", "expected"),
        ] {
            let e = ClusterConfig::parse(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(reason), "{bad}: {e}");
        }
    }
}
