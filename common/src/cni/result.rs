//! The ADD result, held in the 1.1.0 shape and printed in whichever version
//! the runtime asked for.

use super::error::CniError;
use super::version::Version;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; absent (empty) for host ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result. Also used for IPAM results (no interfaces) and prevResult.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Parse a result of any supported version (prevResult, a delegate's
    /// stdout). `"version"` on IPs (0.3.x/0.4.0) is accepted and dropped.
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        if let Some(ver) = v.get("cniVersion").and_then(Value::as_str) {
            if Version::parse(ver).is_none() {
                return Err(CniError::incompatible_version(format!(
                    "result version {ver} is not supported"
                )));
            }
        }
        serde_json::from_value(v.clone())
            .map_err(|e| CniError::decode(format!("cannot decode CNI result: {e}")))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("cannot decode CNI result: {e}")))?;
        Self::from_value(&v)
    }

    /// The result as JSON in `version`'s shape.
    pub fn to_value(&self, version: Version) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        let pre_1_1 = version < Version::V1_1_0;
        if !self.interfaces.is_empty() {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if pre_1_1 {
                        i.mtu = None;
                        i.socket_path = None;
                        i.pci_id = None;
                    }
                    serde_json::to_value(i).expect("interface serializes")
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = serde_json::to_value(ip).expect("ip serializes");
                    if version.ips_carry_version() {
                        let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                        v["version"] = Value::from(fam);
                    }
                    v
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if pre_1_1 {
                        r.mtu = None;
                        r.advmss = None;
                        r.priority = None;
                        r.table = None;
                        r.scope = None;
                    }
                    serde_json::to_value(r).expect("route serializes")
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        // 0.3.x/0.4.0 runtimes decode `dns` as a struct: always emit it.
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).expect("dns serializes"),
        );
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "trl1234".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    sandbox: Some("/var/run/netns/x".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.244.1.1".parse().unwrap()),
                )
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_drop_1_1_fields() {
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let j = sample().to_value(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert!(j["routes"][0].get("mtu").is_none());
            assert!(j["interfaces"][0].get("mtu").is_none());
            assert!(j["interfaces"][0].get("sandbox").is_none());
            assert_eq!(j["interfaces"][1]["sandbox"], "/var/run/netns/x");
        }
    }

    #[test]
    fn new_versions_omit_ip_version() {
        let j = sample().to_value(Version::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["routes"][0].get("mtu").is_none());
        let j = sample().to_value(Version::V1_1_0);
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(j["routes"][0]["mtu"], 1400);
        assert_eq!(j["interfaces"][1]["mtu"], 1450);
        assert_eq!(j["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(j["ips"][0]["gateway"], "10.244.1.1");
    }

    #[test]
    fn round_trips_through_every_version() {
        for v in Version::ALL {
            let back = CniResult::from_value(&sample().to_value(v)).unwrap();
            assert_eq!(back.ips, sample().ips, "{v}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn rejects_garbage_and_unknown_versions() {
        let e = CniResult::from_slice(b"{not json").unwrap_err();
        assert_eq!(e.code, 6);
        let e = CniResult::from_value(&serde_json::json!({"cniVersion": "0.2.0"})).unwrap_err();
        assert_eq!(e.code, 1);
        let e =
            CniResult::from_value(&serde_json::json!({"ips": [{"address": "nope"}]})).unwrap_err();
        assert_eq!(e.code, 6);
    }
}
