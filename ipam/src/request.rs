//! Static address requests: `CNI_ARGS` `IP=`, `runtimeConfig.ips` (the `ips`
//! capability) and `args.cni.ips`, as host-local reads them. Each may be a
//! bare address or address/prefix; trellis gives one address of each
//! family per attachment, so all sources together may name one IPv4 and
//! one IPv6 address at most.

use crate::error::IpamError;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use trellis_common::cni::Request;

/// The addresses the runtime asks for: at most one of each family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Requested {
    /// Nothing requested: the next free address.
    pub const NONE: Requested = Requested { v4: None, v6: None };

    /// `ip` requested, and no IPv6 address.
    pub fn v4(ip: Ipv4Addr) -> Requested {
        Requested {
            v4: Some(ip),
            v6: None,
        }
    }

    pub fn is_none(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

/// The addresses the runtime asks for, if any.
pub fn requested_address(req: &Request) -> Result<Requested, IpamError> {
    let mut wanted: Vec<IpAddr> = Vec::new();
    if let Some(list) = req.env.arg("IP") {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ip =
                parse(item).map_err(|why| IpamError::InvalidArgs(format!("IP={item}: {why}")))?;
            wanted.push(ip);
        }
    }
    let sources = [
        (
            "runtimeConfig.ips",
            req.conf.runtime_config.as_ref().and_then(|r| r.get("ips")),
        ),
        (
            "args.cni.ips",
            req.conf
                .args
                .as_ref()
                .and_then(|a| a.get("cni"))
                .and_then(|c| c.get("ips")),
        ),
    ];
    for (what, value) in sources {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            continue;
        };
        let items = value.as_array().ok_or_else(|| {
            IpamError::Config(format!("{what} must be a list of addresses, not {value}"))
        })?;
        for item in items {
            let text = item.as_str().ok_or_else(|| {
                IpamError::Config(format!("{what}: {item} is not an address string"))
            })?;
            wanted.push(
                parse(text).map_err(|why| IpamError::Config(format!("{what}: {text}: {why}")))?,
            );
        }
    }
    wanted.sort();
    wanted.dedup();
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = wanted.into_iter().partition(IpAddr::is_ipv4);
    for many in [&v4, &v6] {
        if many.len() > 1 {
            return Err(IpamError::AddressUnavailable(format!(
                "several addresses of one family requested ({}): trellis-ipam gives one address of each family per attachment",
                many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(Requested {
        v4: v4.first().map(|ip| match ip {
            IpAddr::V4(v4) => *v4,
            IpAddr::V6(_) => unreachable!("partitioned"),
        }),
        v6: v6.first().map(|ip| match ip {
            IpAddr::V6(v6) => *v6,
            IpAddr::V4(_) => unreachable!("partitioned"),
        }),
    })
}

fn parse(text: &str) -> Result<IpAddr, String> {
    match text.parse::<IpNetwork>() {
        Ok(net) => Ok(net.ip()),
        Err(_) => text
            .parse::<IpAddr>()
            .map_err(|_| "not an IP address".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use trellis_common::cni::{CniEnv, NetConf};

    fn req(cni_args: &str, conf: Value) -> Request {
        let env = CniEnv::from_lookup(|k| {
            Some(match k {
                "CNI_COMMAND" => "ADD".to_string(),
                "CNI_CONTAINERID" => "c1".into(),
                "CNI_NETNS" => "/run/netns/x".into(),
                "CNI_IFNAME" => "eth0".into(),
                "CNI_PATH" => "/opt/cni/bin".into(),
                "CNI_ARGS" if !cni_args.is_empty() => cni_args.into(),
                _ => return None,
            })
        })
        .unwrap();
        let mut c = json!({"cniVersion": "1.1.0", "name": "net"});
        c.as_object_mut()
            .unwrap()
            .extend(conf.as_object().unwrap().clone());
        Request {
            env,
            conf: NetConf::parse(c.to_string().as_bytes()).unwrap(),
            stdin: vec![],
        }
    }

    #[test]
    fn no_request_is_none() {
        assert_eq!(
            requested_address(&req("", json!({}))).unwrap(),
            Requested::NONE
        );
        assert_eq!(
            requested_address(&req("K8S_POD_NAME=x", json!({"runtimeConfig": {}}))).unwrap(),
            Requested::NONE
        );
    }

    #[test]
    fn each_source_is_read() {
        let ip: Ipv4Addr = "10.88.0.7".parse().unwrap();
        assert_eq!(
            requested_address(&req("IgnoreUnknown=1;IP=10.88.0.7", json!({}))).unwrap(),
            Requested::v4(ip)
        );
        assert_eq!(
            requested_address(&req(
                "",
                json!({"runtimeConfig": {"ips": ["10.88.0.7/16"]}})
            ))
            .unwrap(),
            Requested::v4(ip)
        );
        assert_eq!(
            requested_address(&req("", json!({"args": {"cni": {"ips": ["10.88.0.7"]}}}))).unwrap(),
            Requested::v4(ip)
        );
        // The same address from several sources is one request.
        assert_eq!(
            requested_address(&req(
                "IP=10.88.0.7",
                json!({"args": {"cni": {"ips": ["10.88.0.7/16"]}}})
            ))
            .unwrap(),
            Requested::v4(ip)
        );
    }

    #[test]
    fn one_address_of_each_family_may_be_requested() {
        let both = requested_address(&req(
            "IP=10.88.0.7,fd00:88::7",
            json!({"runtimeConfig": {"ips": ["fd00:88::7/64"]}}),
        ))
        .unwrap();
        assert_eq!(
            both,
            Requested {
                v4: Some("10.88.0.7".parse().unwrap()),
                v6: Some("fd00:88::7".parse().unwrap()),
            }
        );
        let v6 =
            requested_address(&req("", json!({"args": {"cni": {"ips": ["fd00::1"]}}}))).unwrap();
        assert_eq!((v6.v4, v6.v6), (None, Some("fd00::1".parse().unwrap())));
    }

    #[test]
    fn bad_requests_have_clear_codes() {
        let e = requested_address(&req("IP=banana", json!({}))).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("IP=banana"), "{e}");
        let e =
            requested_address(&req("", json!({"runtimeConfig": {"ips": "10.0.0.1"}}))).unwrap_err();
        assert_eq!(e.code(), 7);
        let e = requested_address(&req("IP=fd00::1,fd00::2", json!({}))).unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("fd00::1, fd00::2"), "{e}");
        let e = requested_address(&req("IP=10.0.0.1,10.0.0.2", json!({}))).unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("10.0.0.1, 10.0.0.2"), "{e}");
    }
}
