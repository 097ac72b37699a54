//! The plugin's own configuration keys, validated before anything is done,
//! and the mode the node runs in (cluster or single host).

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use trellis_common::cni::env::ifname_problem;
use trellis_common::cni::{CniError, Request};
use trellis_common::network;
use trellis_common::node::{self, NodeRecord, DEFAULT_BRIDGE, DEFAULT_STATE_DIR};

/// The smallest MTU IPv4 allows; veth accepts up to 65535.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// The plugin's keys as they are in the configuration; a key of the wrong
/// type is code 7 naming the key.
#[derive(Debug, Default)]
struct RawConfig {
    bridge: Option<String>,
    state_dir: Option<PathBuf>,
    mtu: Option<u32>,
    ip_masq: Option<bool>,
    hairpin_mode: Option<bool>,
}

impl RawConfig {
    fn from_value(conf: &Value) -> Result<RawConfig, CniError> {
        Ok(RawConfig {
            bridge: field(conf, "bridge")?,
            state_dir: field(conf, "stateDir")?,
            mtu: field(conf, "mtu")?,
            ip_masq: field(conf, "ipMasq")?,
            hairpin_mode: field(conf, "hairpinMode")?,
        })
    }
}

/// One key of the configuration (`None` when absent or null).
fn field<T: DeserializeOwned>(conf: &Value, key: &str) -> Result<Option<T>, CniError> {
    match conf.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| CniError::invalid_config(format!("{key}: {e}"))),
    }
}

/// The validated `trellis` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The named network selected (`"network"`); `None`: the default one.
    pub network: Option<String>,
    /// The bridge of the default network or of single-host mode; a named
    /// network's is in its record ([`Config::bridge_for`]).
    pub bridge: String,
    pub state_dir: PathBuf,
    pub mtu: Option<u32>,
    pub ip_masq: bool,
    pub hairpin_mode: bool,
    /// The IPAM plugin's `type`.
    pub ipam_type: String,
    /// `ipam.subnet` when given (one subnet, or a list of one IPv4 and one
    /// IPv6 subnet): single-host mode. Empty: cluster mode.
    pub ipam_subnets: Vec<IpNetwork>,
}

/// Where the node's addressing comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// No agent, no etcd: the IPAM config names the subnets (one, or one
    /// of each family), the plugin owns the masquerade rules.
    SingleHost { subnets: Vec<IpNetwork> },
    /// The agent leased this node's subnet and published it in `stateDir`;
    /// it owns masquerade.
    Cluster { record: NodeRecord },
}

impl Mode {
    /// The gateway of an address: the node's (cluster) or the first address
    /// of the single-host subnet, when one of the subnets holds the address.
    pub fn gateway_for(&self, address: IpNetwork) -> Option<IpAddr> {
        let subnets = match self {
            Mode::Cluster { record } => record.subnets(),
            Mode::SingleHost { subnets } => subnets.clone(),
        };
        let subnet = subnets.into_iter().find(|s| s.contains(address.ip()))?;
        match subnet {
            IpNetwork::V4(n) => Some(node::gateway_of(n).into()),
            IpNetwork::V6(n) => Some(Ipv6Addr::from(u128::from(n.network()) + 1).into()),
        }
    }
}

/// `ipam.subnet`: absent, one subnet, or a list of one IPv4 and one IPv6
/// subnet (as trellis-ipam reads it).
fn single_host_subnets(value: Option<&Value>) -> Result<Vec<IpNetwork>, CniError> {
    let parse = |v: &Value| {
        match v {
        Value::String(s) => s.parse::<IpNetwork>().map_err(|e| {
            CniError::invalid_config(format!("ipam.subnet {s:?} is not a subnet: {e}"))
        }),
        other => Err(CniError::invalid_config(format!(
            "ipam.subnet must be a subnet like \"10.88.0.0/16\" or a list of one IPv4 and one IPv6 subnet, not {other}"
        ))),
    }
    };
    let subnets = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(parse).collect::<Result<Vec<_>, _>>()?,
        Some(one) => vec![parse(one)?],
    };
    let v4 = subnets.iter().filter(|s| s.is_ipv4()).count();
    if subnets.is_empty() || v4 > 1 || subnets.len() - v4 > 1 {
        return Err(CniError::invalid_config(format!(
            "ipam.subnet: one subnet, or one IPv4 and one IPv6 subnet, not {}",
            subnets.len()
        )));
    }
    Ok(subnets)
}

impl Config {
    /// Decode and check the configuration: every problem is code 7.
    pub fn from_request(req: &Request) -> Result<Config, CniError> {
        Self::from_value(&req.conf.raw, req.conf.ipam.as_ref())
    }

    fn from_value(conf: &Value, ipam: Option<&Value>) -> Result<Config, CniError> {
        let raw = RawConfig::from_value(conf)?;
        let network = network::selected_by(conf).map_err(CniError::invalid_config)?;
        Self::from_parts(raw, ipam, network)
    }

    fn from_parts(
        raw: RawConfig,
        ipam: Option<&Value>,
        network: Option<String>,
    ) -> Result<Config, CniError> {
        if let (Some(name), Some(_)) = (&network, &raw.bridge) {
            return Err(CniError::invalid_config(format!(
                "bridge: network {name} has the bridge the agent made for it; remove \"bridge\""
            )));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if let Some(why) = ifname_problem(&bridge) {
            return Err(CniError::invalid_config(format!("bridge: {why}")).with_details(bridge));
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(CniError::invalid_config(format!(
                "stateDir must be an absolute path, not {:?}",
                state_dir
            )));
        }
        if let Some(mtu) = raw.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(CniError::invalid_config(format!(
                    "mtu {mtu} is out of range ({MIN_MTU}-{MAX_MTU})"
                )));
            }
        }
        let ipam = match ipam {
            Some(Value::Object(o)) => o,
            Some(_) => return Err(CniError::invalid_config("ipam must be an object")),
            None => {
                return Err(CniError::invalid_config(
                    "missing ipam: trellis needs an IPAM plugin, e.g. \"ipam\": {\"type\": \"trellis-ipam\"}",
                ))
            }
        };
        let ipam_type = match ipam.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err(CniError::invalid_config("ipam.type is missing")),
        };
        let ipam_subnets = single_host_subnets(ipam.get("subnet"))?;
        if let (Some(name), Some(subnet)) = (&network, ipam_subnets.first()) {
            return Err(CniError::invalid_config(format!(
                "ipam.subnet {subnet}: network {name} takes its subnet from the agent \
                 (ipam.subnet is for single-host mode)"
            )));
        }
        Ok(Config {
            network,
            bridge,
            state_dir,
            mtu: raw.mtu,
            ip_masq: raw.ip_masq.unwrap_or(true),
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            ipam_type,
            ipam_subnets,
        })
    }

    /// Single host when the IPAM config names a subnet; otherwise the
    /// node record the agent publishes (missing: try again later, 11).
    pub fn mode(&self) -> Result<Mode, CniError> {
        if !self.ipam_subnets.is_empty() {
            return Ok(Mode::SingleHost {
                subnets: self.ipam_subnets.clone(),
            });
        }
        let path = self.record_path();
        match (self.node_record()?, &self.network) {
            (Some(record), None) => Ok(Mode::Cluster { record }),
            (Some(record), Some(name)) => match record.bridge {
                Some(_) => Ok(Mode::Cluster { record }),
                None => Err(CniError::try_again(format!(
                    "the record of network {name} at {} names no bridge",
                    path.display()
                ))),
            },
            (None, None) => Err(CniError::try_again(format!(
                "no node record at {}: is trellis-agent running on this node? \
                 (or name a subnet in ipam for single-host mode)",
                path.display()
            ))),
            (None, Some(name)) => Err(CniError::try_again(format!(
                "network {name} is not set up on this node (no {}): \
                 does `trellisctl network ls` list it, and is trellis-agent running?",
                path.display()
            ))),
        }
    }

    /// The agent's record for this network: `<stateDir>/node.json`, or a
    /// named network's `<stateDir>/networks/<name>.json`.
    pub fn record_path(&self) -> PathBuf {
        node::record_path_for(&self.state_dir, self.network.as_deref())
    }

    /// The agent's record for this network; unreadable or corrupt is code
    /// 11 (the agent rewrites it).
    pub fn node_record(&self) -> Result<Option<NodeRecord>, CniError> {
        node::read_node_record_for(&self.state_dir, self.network.as_deref()).map_err(|e| {
            CniError::try_again(format!(
                "cannot read the node record {}: {e}",
                self.record_path().display()
            ))
        })
    }

    /// This network's bridge on this node: the configured one, or a named
    /// network's as its record names it (`None`: not set up here).
    pub fn bridge_for<'a>(&'a self, record: Option<&'a NodeRecord>) -> Option<&'a str> {
        match self.network {
            None => Some(&self.bridge),
            Some(_) => record.and_then(|r| r.bridge.as_deref()),
        }
    }

    /// The nftables table of this bridge's single-host masquerade rule.
    pub fn masquerade_table(&self) -> String {
        format!("trellis-{}", self.bridge)
    }

    /// The lock file serializing masquerade changes on this node.
    pub fn lock_path(&self) -> PathBuf {
        lock_path(&self.state_dir, &self.bridge)
    }
}

pub fn lock_path(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join(format!("{bridge}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(conf: Value) -> Result<Config, CniError> {
        Config::from_value(&conf, conf.get("ipam"))
    }

    #[test]
    fn a_named_network_takes_its_bridge_and_subnet_from_the_agents_record() {
        let dir = std::env::temp_dir().join(format!("trellis-conf-{}", std::process::id()));
        let c = parse(json!({"network": "multihost", "stateDir": dir,
            "ipam": {"type": "trellis-ipam"}}))
        .unwrap();
        assert_eq!(c.network.as_deref(), Some("multihost"));
        assert_eq!(c.record_path(), dir.join("networks/multihost.json"));
        let e = c.mode().unwrap_err();
        assert_eq!(e.code, 11);
        assert!(
            e.msg
                .starts_with("network multihost is not set up on this node (no "),
            "{}",
            e.msg
        );
        assert_eq!(c.bridge_for(None), None);
        let record = NodeRecord {
            bridge: Some("trbr.2".into()),
            ..NodeRecord::parse(
                br#"{"subnet":"10.0.3.0/24","publicIP":"192.0.2.1","vtepMAC":"02:00:00:00:00:01"}"#,
            )
            .unwrap()
        };
        node::write_node_record_for(&dir, Some("multihost"), &record).unwrap();
        assert_eq!(
            c.mode().unwrap(),
            Mode::Cluster {
                record: record.clone()
            }
        );
        assert_eq!(c.bridge_for(Some(&record)), Some("trbr.2"));
        // The default network's record is not this network's.
        let default = parse(json!({"stateDir": dir, "ipam": {"type": "trellis-ipam"}})).unwrap();
        assert_eq!(default.mode().unwrap_err().code, 11);
        assert_eq!(default.bridge_for(Some(&record)), Some("trellis0"));
        std::fs::remove_dir_all(&dir).unwrap();

        for (conf, key) in [
            (
                json!({"network": "Bad_Name", "ipam": {"type": "x"}}),
                "network: ",
            ),
            (
                json!({"network": 3, "ipam": {"type": "x"}}),
                "network must be",
            ),
            (
                json!({"network": "m", "bridge": "br0", "ipam": {"type": "x"}}),
                "bridge: ",
            ),
            (
                json!({"network": "m", "ipam": {"type": "x", "subnet": "10.1.0.0/16"}}),
                "ipam.subnet 10.1.0.0/16: ",
            ),
        ] {
            let e = parse(conf.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{conf}");
            assert!(e.msg.starts_with(key), "{conf}: {}", e.msg);
        }
    }

    #[test]
    fn defaults_follow_the_interface_document() {
        let c = parse(json!({"ipam": {"type": "trellis-ipam"}})).unwrap();
        assert_eq!(c.bridge, "trellis0");
        assert_eq!(c.state_dir, PathBuf::from("/run/trellis"));
        assert_eq!(c.mtu, None);
        assert!(c.ip_masq && c.hairpin_mode);
        assert_eq!(c.ipam_type, "trellis-ipam");
        assert!(c.ipam_subnets.is_empty());
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(json!({"bridge": "br-x", "stateDir": "/tmp/s", "mtu": 1400,
            "ipMasq": false, "hairpinMode": false,
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}}))
        .unwrap();
        assert_eq!(c.bridge, "br-x");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.mtu, Some(1400));
        assert!(!c.ip_masq && !c.hairpin_mode);
        assert_eq!(c.ipam_subnets, ["10.88.0.0/16".parse().unwrap()]);
        assert_eq!(
            c.mode().unwrap(),
            Mode::SingleHost {
                subnets: vec!["10.88.0.0/16".parse().unwrap()]
            }
        );
        // Dual-stack single host: one subnet of each family.
        let dual = parse(json!({"ipam": {"type": "trellis-ipam",
            "subnet": ["10.88.0.0/16", "fd00:88::/64"]}}))
        .unwrap();
        assert_eq!(dual.ipam_subnets.len(), 2);
        assert_eq!(c.masquerade_table(), "trellis-br-x");
    }

    #[test]
    fn a_bad_bridge_name_is_reported_under_its_key() {
        let e = parse(json!({"ipam": {"type": "x"}, "bridge": "a/b"})).unwrap_err();
        assert_eq!(e.code, 7);
        assert_eq!(
            e.msg,
            "bridge: interface name contains / or : or whitespace"
        );
        assert_eq!(e.details, "a/b");
    }

    #[test]
    fn bad_values_are_code_7_and_say_why() {
        let cases = [
            (json!({"ipam": {"type": "x"}, "mtu": 0}), "mtu 0"),
            (json!({"ipam": {"type": "x"}, "mtu": 65536}), "mtu 65536"),
            (
                json!({"ipam": {"type": "x"}, "mtu": "big"}),
                "mtu: invalid type",
            ),
            (
                json!({"ipam": {"type": "x"}, "mtu": -1}),
                "mtu: invalid value",
            ),
            (json!({"ipam": {"type": "x"}, "bridge": "a/b"}), "bridge"),
            (
                json!({"ipam": {"type": "x"}, "bridge": "much-too-long-name"}),
                "bridge",
            ),
            (json!({"ipam": {"type": "x"}, "bridge": ""}), "bridge"),
            (
                json!({"ipam": {"type": "x"}, "stateDir": "rel/dir"}),
                "absolute",
            ),
            (
                json!({"ipam": {"type": "x"}, "ipMasq": "yes"}),
                "invalid type",
            ),
            (json!({}), "missing ipam"),
            (json!({"ipam": "host-local"}), "object"),
            (json!({"ipam": {}}), "ipam.type"),
            (json!({"ipam": {"type": ""}}), "ipam.type"),
            (
                json!({"ipam": {"type": "x", "subnet": "nope"}}),
                "ipam.subnet",
            ),
            (json!({"ipam": {"type": "x", "subnet": 5}}), "ipam.subnet"),
            (
                json!({"ipam": {"type": "x", "subnet": ["10.1.0.0/16", "10.2.0.0/16"]}}),
                "one subnet, or one IPv4 and one IPv6 subnet",
            ),
            (json!({"ipam": {"type": "x", "subnet": []}}), "not 0"),
        ];
        for (conf, needle) in cases {
            let e = parse(conf.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{conf}");
            assert!(
                e.msg.contains(needle),
                "{conf}: {:?} should mention {needle:?}",
                e.msg
            );
        }
    }

    #[test]
    fn gateways_are_the_first_address_of_the_subnet() {
        let single = Mode::SingleHost {
            subnets: vec!["10.88.0.0/16".parse().unwrap()],
        };
        assert_eq!(
            single.gateway_for("10.88.3.7/16".parse().unwrap()),
            Some("10.88.0.1".parse().unwrap())
        );
        assert_eq!(single.gateway_for("10.99.0.7/16".parse().unwrap()), None);
        let v6 = Mode::SingleHost {
            subnets: vec![
                "10.88.0.0/16".parse().unwrap(),
                "fd00:88::/64".parse().unwrap(),
            ],
        };
        assert_eq!(
            v6.gateway_for("fd00:88::9/64".parse().unwrap()),
            Some("fd00:88::1".parse().unwrap())
        );
        let cluster = Mode::Cluster {
            record: serde_json::from_str(
                r#"{"subnet":"10.244.3.0/24","publicIP":"192.0.2.3","vtepMAC":"02:00:00:00:00:03"}"#,
            )
            .unwrap(),
        };
        assert_eq!(
            cluster.gateway_for("10.244.3.9/24".parse().unwrap()),
            Some("10.244.3.1".parse().unwrap())
        );
    }

    #[test]
    fn cluster_mode_needs_the_agents_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(json!({"stateDir": dir.path(), "ipam": {"type": "trellis-ipam"}})).unwrap();
        let e = c.mode().unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("trellis-agent"), "{}", e.msg);
        std::fs::write(dir.path().join("node.json"), "{garbage").unwrap();
        assert_eq!(c.mode().unwrap_err().code, 11);
        let record: NodeRecord = serde_json::from_value(json!({"subnet": "10.244.3.0/24",
            "publicIP": "192.0.2.3", "vtepMAC": "02:00:00:00:00:03", "mtu": 1450}))
        .unwrap();
        node::write_node_record(dir.path(), &record).unwrap();
        assert_eq!(c.mode().unwrap(), Mode::Cluster { record });
    }
}
