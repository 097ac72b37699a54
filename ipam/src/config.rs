//! The `ipam` object of the network configuration, plus the top-level keys
//! the IPAM plugin reads from the whole (delegated) configuration.
//!
//! ```json
//! {"stateDir": "/run/trellis",
//!  "ipam": {"type": "trellis-ipam",
//!           "etcdEndpoints": ["https://10.0.0.10:2379"], "etcdPrefix": "/trellis",
//!           "etcdCACert": "...", "etcdCert": "...", "etcdKey": "...",
//!           "etcdUsername": "trellis-cni", "etcdPassword": "...",
//!           "subnet": "10.88.0.0/16", "dataDir": "/var/lib/trellis",
//!           "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.200",
//!           "exclude": ["10.88.0.64/28", "10.88.0.99"], "gateway": "10.88.0.1",
//!           "routes": [{"dst": "0.0.0.0/0"}], "nodeName": "node-1"}}
//! ```
//! With `etcdEndpoints` allocations live in etcd (cluster mode) and the
//! subnet is this node's, from the agent's record, unless `subnet` pins it.
//! Without, they live in a local store under `dataDir` and `subnet` is
//! required (single-host mode).

use crate::error::IpamError;
use crate::pool::Pool;
use ipnetwork::{IpNetwork, Ipv6Network};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use trellis_common::cni::{Dns, Route};
use trellis_common::etcd::{EtcdSettings, Password, SettingsSource};
use trellis_common::keys::DEFAULT_ETCD_PREFIX;
use trellis_common::node::DEFAULT_STATE_DIR;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/trellis";

/// etcd endpoints as a list or as one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Endpoints {
    List(Vec<String>),
    Joined(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    etcd_endpoints: Option<Endpoints>,
    #[serde(default)]
    etcd_prefix: Option<String>,
    #[serde(default, rename = "etcdCACert")]
    etcd_ca_cert: Option<PathBuf>,
    #[serde(default)]
    etcd_cert: Option<PathBuf>,
    #[serde(default)]
    etcd_key: Option<PathBuf>,
    /// etcd authentication, with `etcdPassword`.
    #[serde(default)]
    etcd_username: Option<String>,
    #[serde(default)]
    etcd_password: Option<String>,
    /// Milliseconds any one etcd call may take (default 3000).
    #[serde(default)]
    etcd_timeout_ms: Option<u64>,
    #[serde(default)]
    subnet: Option<Subnets>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    exclude: Vec<IpNetwork>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    node_name: Option<String>,
}

/// `"subnet"`: one subnet, or a list of one IPv4 and one IPv6 subnet
/// (dual-stack).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Subnets {
    One(IpNetwork),
    List(Vec<IpNetwork>),
}

impl Subnets {
    /// The pool's subnet (the IPv4 one, else the IPv6 one) and the IPv6
    /// twin beside an IPv4 one.
    fn split(self) -> Result<(IpNetwork, Option<Ipv6Network>), IpamError> {
        let all = match self {
            Subnets::One(one) => vec![one],
            Subnets::List(list) => list,
        };
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in all {
            match net {
                IpNetwork::V4(n) => v4.push(n),
                IpNetwork::V6(n) => v6.push(n),
            }
        }
        match (v4.as_slice(), v6.as_slice()) {
            ([one], []) => Ok((IpNetwork::V4(*one), None)),
            ([one], [six]) => Ok((IpNetwork::V4(*one), Some(*six))),
            ([], [six]) => Ok((IpNetwork::V6(*six), None)),
            ([], []) => Err(IpamError::Config(
                "subnet: an empty list (give one subnet, or one IPv4 and one IPv6 subnet)".into(),
            )),
            _ => Err(IpamError::Config(
                "subnet: at most one IPv4 and one IPv6 subnet".into(),
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTop {
    #[serde(default)]
    state_dir: Option<PathBuf>,
}

/// Where allocations are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Etcd(EtcdSettings),
    Local { data_dir: PathBuf },
}

/// The decoded and checked IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    /// The CNI network name (allocations are per network).
    pub network: String,
    /// The named trellis network selected (the top-level `"network"`, as
    /// the `trellis` plugin reads it); `None`: the default network.
    pub named: Option<String>,
    pub backend: Backend,
    /// A pinned subnet; in cluster mode `None` means the node's subnet.
    pub subnet: Option<IpNetwork>,
    /// The IPv6 subnet pinned beside it (dual-stack).
    pub subnet6: Option<Ipv6Network>,
    /// Of the family of the pool's subnet (the IPv4 one of a dual-stack
    /// pool), checked by [`Pool::new`].
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub exclude: Vec<IpNetwork>,
    pub gateway: Option<IpAddr>,
    /// Routes for the result; `None` means a default route via the gateway.
    pub routes: Option<Vec<Route>>,
    pub dns: Dns,
    /// Where the agent publishes the node record (`stateDir`).
    pub state_dir: PathBuf,
    pub node_name: Option<String>,
}

impl IpamConf {
    /// Decode from the whole network configuration (`raw`) of network
    /// `network`. Missing or malformed keys are code 7.
    pub fn from_netconf(network: &str, raw: &serde_json::Value) -> Result<IpamConf, IpamError> {
        let ipam = raw.get("ipam").filter(|v| v.is_object()).ok_or_else(|| {
            IpamError::Config("the network configuration has no \"ipam\" object".into())
        })?;
        let r: RawIpam = serde_json::from_value(ipam.clone())
            .map_err(|e| IpamError::Config(format!("ipam: {e}")))?;
        let top: RawTop = serde_json::from_value(raw.clone())
            .map_err(|e| IpamError::Config(format!("stateDir: {e}")))?;

        let endpoints: Vec<String> = match r.etcd_endpoints {
            None => Vec::new(),
            Some(Endpoints::List(l)) => l,
            Some(Endpoints::Joined(s)) => s.split(',').map(str::to_string).collect(),
        }
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
        let backend = if endpoints.is_empty() {
            if r.etcd_ca_cert.is_some() || r.etcd_cert.is_some() || r.etcd_key.is_some() {
                return Err(IpamError::Config(
                    "etcdCACert/etcdCert/etcdKey are set but etcdEndpoints is missing".into(),
                ));
            }
            if r.etcd_username.is_some() || r.etcd_password.is_some() {
                return Err(IpamError::Config(
                    "etcdUsername/etcdPassword are set but etcdEndpoints is missing".into(),
                ));
            }
            if r.subnet.is_none() {
                return Err(IpamError::Config(
                    "ipam needs \"etcdEndpoints\" (cluster mode) or \"subnet\" (single-host mode)"
                        .into(),
                ));
            }
            Backend::Local {
                data_dir: r.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            }
        } else {
            // Any form (`trellis`, `/trellis/`): `Keys` reads them alike.
            let prefix = r.etcd_prefix.unwrap_or_else(|| DEFAULT_ETCD_PREFIX.into());
            let settings = EtcdSettings {
                endpoints,
                prefix,
                ca_cert: r.etcd_ca_cert,
                cert: r.etcd_cert,
                key: r.etcd_key,
                username: r.etcd_username,
                password: r.etcd_password.map(Password),
                timeout: Duration::from_millis(
                    r.etcd_timeout_ms.unwrap_or(3000).clamp(100, 60_000),
                ),
                source: SettingsSource::Conflist,
            };
            settings.validate()?;
            Backend::Etcd(settings)
        };

        let (subnet, subnet6) = match r.subnet {
            Some(s) => {
                let (v4, v6) = s.split()?;
                (Some(v4), v6)
            }
            None => (None, None),
        };
        let named = trellis_common::network::selected_by(raw).map_err(IpamError::Config)?;
        if let (Some(name), Backend::Local { .. }) = (&named, &backend) {
            return Err(IpamError::Config(format!(
                "network {name} is served by the agents: it needs etcdEndpoints"
            )));
        }
        let conf = IpamConf {
            network: network.to_string(),
            named,
            backend,
            subnet,
            subnet6,
            range_start: r.range_start,
            range_end: r.range_end,
            exclude: r.exclude,
            gateway: r.gateway,
            routes: r.routes,
            dns: r.dns.unwrap_or_default(),
            state_dir: top.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            node_name: r.node_name.filter(|n| !n.is_empty()),
        };
        if let Some(subnet) = conf.subnet {
            // Fail early on a pool that can never work.
            conf.pool(subnet)?.with_ipv6(conf.subnet6)?;
        }
        Ok(conf)
    }

    /// The pool over `subnet` with this configuration's range and exclusions.
    pub fn pool(&self, subnet: IpNetwork) -> Result<Pool, IpamError> {
        Pool::new(
            subnet,
            self.range_start,
            self.range_end,
            self.exclude.clone(),
            self.gateway,
        )
    }

    /// The per-node allocation lock and cursor (cluster mode).
    pub fn node_lock_path(&self) -> PathBuf {
        self.state_dir
            .join("ipam")
            .join(format!("{}.lock", self.network))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> Result<IpamConf, IpamError> {
        IpamConf::from_netconf("net", &v)
    }

    #[test]
    fn the_named_network_is_read_as_the_plugin_reads_it() {
        let etcd = json!({"type": "trellis-ipam", "etcdEndpoints": ["http://127.0.0.1:2379"]});
        let c = conf(json!({"network": "multihost", "ipam": etcd})).unwrap();
        assert_eq!(c.named.as_deref(), Some("multihost"));
        assert_eq!(conf(json!({"ipam": etcd})).unwrap().named, None);
        let e = conf(json!({"network": "Not_A_Name", "ipam": etcd})).unwrap_err();
        assert!(e.to_string().contains("network name \"Not_A_Name\""), "{e}");
        let local = json!({"type": "trellis-ipam", "subnet": "10.88.0.0/16"});
        let e = conf(json!({"network": "multihost", "ipam": local})).unwrap_err();
        assert!(
            e.to_string()
                .contains("network multihost is served by the agents"),
            "{e}"
        );
    }

    #[test]
    fn cluster_mode_with_defaults() {
        let c = conf(json!({"ipam": {"type": "trellis-ipam",
            "etcdEndpoints": ["http://127.0.0.1:2379"]}}))
        .unwrap();
        let Backend::Etcd(s) = &c.backend else {
            panic!()
        };
        assert_eq!(s.prefix, "/trellis");
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(c.state_dir, PathBuf::from("/run/trellis"));
        assert_eq!(c.subnet, None);
        assert_eq!(
            c.node_lock_path(),
            PathBuf::from("/run/trellis/ipam/net.lock")
        );
    }

    #[test]
    fn single_host_mode_and_pool_keys() {
        let c = conf(
            json!({"stateDir": "/tmp/x", "ipam": {"type": "trellis-ipam",
            "subnet": "10.88.0.0/16", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.20",
            "exclude": ["10.88.0.12", "10.88.0.16/30"]}}),
        )
        .unwrap();
        assert_eq!(
            c.backend,
            Backend::Local {
                data_dir: "/var/lib/trellis".into()
            }
        );
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        let pool = c.pool(c.subnet.unwrap()).unwrap();
        assert!(!pool.is_usable("10.88.0.12".parse().unwrap()));
        assert!(!pool.is_usable("10.88.0.17".parse().unwrap()));
        assert!(pool.is_usable("10.88.0.11".parse().unwrap()));
    }

    #[test]
    fn single_host_subnet_may_be_one_of_each_family() {
        let c = conf(json!({"ipam": {"subnet": ["10.88.0.0/16", "fd00:88::/64"]}})).unwrap();
        assert_eq!(c.subnet.unwrap().to_string(), "10.88.0.0/16");
        assert_eq!(c.subnet6.unwrap().to_string(), "fd00:88::/64");
        let one = conf(json!({"ipam": {"subnet": ["10.88.0.0/16"]}})).unwrap();
        assert_eq!(one.subnet6, None);
        // IPv6 alone: an IPv6-only pool, with no twin.
        for six in [json!("fd00:88::/64"), json!(["fd00:88::/64"])] {
            let c = conf(json!({"ipam": {"subnet": six, "rangeStart": "fd00:88::10"}})).unwrap();
            assert_eq!(c.subnet.unwrap().to_string(), "fd00:88::/64");
            assert_eq!(c.subnet6, None);
            let pool = c.pool(c.subnet.unwrap()).unwrap();
            assert_eq!(pool.gateway().to_string(), "fd00:88::1");
            assert_eq!(
                pool.to_string(),
                "fd00:88::/64 (range fd00:88::10-fd00:88::ffff:ffff:ffff:ffff)"
            );
        }
        for (bad, why) in [
            (
                json!(["10.88.0.0/16", "10.89.0.0/16"]),
                "at most one IPv4 and one IPv6",
            ),
            (
                json!(["fd00:88::/64", "fd00:89::/64"]),
                "at most one IPv4 and one IPv6",
            ),
            (
                json!(["10.0.0.0/8", "fd00::/120"]),
                "smaller than the IPv4 subnet",
            ),
            (json!([]), "an empty list"),
        ] {
            let e = conf(json!({"ipam": {"subnet": bad}})).unwrap_err();
            assert_eq!(e.code(), 7, "{e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_prefix_without_slashes_is_the_same_prefix() {
        for prefix in ["trellis", "/trellis", "/trellis/"] {
            let c =
                conf(json!({"ipam": {"etcdEndpoints": ["http://e:2379"], "etcdPrefix": prefix}}))
                    .unwrap();
            let Backend::Etcd(s) = &c.backend else {
                panic!()
            };
            assert_eq!(s.keys().config(), "/trellis/config", "{prefix}");
        }
    }

    #[test]
    fn etcd_user_and_password() {
        let c = conf(json!({"ipam": {"etcdEndpoints": ["http://e:2379"],
            "etcdUsername": "trellis-cni", "etcdPassword": "pw"}}))
        .unwrap();
        let Backend::Etcd(s) = &c.backend else {
            panic!()
        };
        assert_eq!(s.username.as_deref(), Some("trellis-cni"));
        assert_eq!(s.password, Some(Password("pw".into())));
    }

    #[test]
    fn endpoints_may_be_one_comma_separated_string() {
        let c = conf(json!({"ipam": {"etcdEndpoints": "http://a:2379, http://b:2379"}})).unwrap();
        let Backend::Etcd(s) = &c.backend else {
            panic!()
        };
        assert_eq!(s.endpoints, vec!["http://a:2379", "http://b:2379"]);
    }

    #[test]
    fn bad_configurations_are_code_7_with_a_reason() {
        for (v, needle) in [
            (json!({}), "no \"ipam\""),
            (json!({"ipam": {}}), "etcdEndpoints"),
            (json!({"ipam": {"subnet": "nope"}}), "ipam:"),
            (json!({"ipam": {"subnet": "fd00::/127"}}), "too small"),
            (
                json!({"ipam": {"subnet": "fd00::/64", "rangeStart": "10.0.0.1"}}),
                "rangeStart 10.0.0.1 is not a usable address of subnet fd00::/64",
            ),
            (
                json!({"ipam": {"subnet": "10.0.0.0/24", "exclude": ["fd00::/64"]}}),
                "exclude fd00::/64 is not of the family of subnet 10.0.0.0/24",
            ),
            (json!({"ipam": {"subnet": "10.0.0.0/31"}}), "too small"),
            (
                json!({"ipam": {"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}}),
                "rangeStart",
            ),
            (
                json!({"ipam": {"etcdEndpoints": ["127.0.0.1:2379"]}}),
                "http://",
            ),
            (
                json!({"ipam": {"etcdEndpoints": ["https://e:2379"]}}),
                "etcdCACert",
            ),
            (
                json!({"ipam": {"subnet": "10.0.0.0/24", "etcdCACert": "/ca"}}),
                "etcdEndpoints",
            ),
            (
                json!({"stateDir": 5, "ipam": {"subnet": "10.0.0.0/24"}}),
                "stateDir",
            ),
            (
                json!({"ipam": {"etcdEndpoints": ["http://e:2379"], "etcdUsername": "u"}}),
                "etcdUsername/etcdPassword go together",
            ),
            (
                json!({"ipam": {"subnet": "10.0.0.0/24", "etcdPassword": "p"}}),
                "etcdUsername/etcdPassword are set but etcdEndpoints is missing",
            ),
        ] {
            let e = conf(v.clone()).unwrap_err();
            assert_eq!(e.code(), 7, "{v}: {e}");
            assert!(e.to_string().contains(needle), "{v}: {e}");
        }
    }
}
