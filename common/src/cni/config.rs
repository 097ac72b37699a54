//! The fields of a network configuration every plugin reads. A plugin's own
//! keys are parsed from the same bytes by `Request::plugin_config`.

use super::env::is_valid_identifier;
use super::error::CniError;
use super::result::CniResult;
use super::version::Version;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    plugin_type: String,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    runtime_config: Option<Value>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

/// The common part of the network configuration on stdin.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub plugin_type: String,
    pub prev_result: Option<CniResult>,
    pub runtime_config: Option<Value>,
    pub args: Option<Value>,
    /// The `ipam` object, if any (its `type` names the IPAM plugin).
    pub ipam: Option<Value>,
    /// GC: the attachments still in use (`cni.dev/valid-attachments`, or
    /// the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole document, for plugin-specific keys and for delegation.
    pub raw: Value,
}

impl NetConf {
    /// Decode stdin: undecodable JSON is code 6, an unsupported version
    /// code 1, a missing or malformed name code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("cannot decode network configuration: {e}")))?;
        if !raw.is_object() {
            return Err(CniError::decode(
                "network configuration is not a JSON object",
            ));
        }
        let conf: RawNetConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decode(format!("cannot decode network configuration: {e}")))?;
        let cni_version = parse_version(&conf.cni_version)?;
        if conf.name.is_empty() {
            return Err(CniError::invalid_config("missing network name"));
        }
        if !is_valid_identifier(&conf.name) {
            return Err(
                CniError::invalid_config("invalid characters found in network name")
                    .with_details(conf.name),
            );
        }
        let prev_result = conf
            .prev_result
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| CniResult::from_value(v).map_err(|e| e.context("prevResult")))
            .transpose()?;
        Ok(NetConf {
            cni_version,
            name: conf.name,
            plugin_type: conf.plugin_type,
            prev_result,
            runtime_config: conf.runtime_config,
            args: conf.args,
            ipam: conf.ipam,
            valid_attachments: conf.valid_attachments.or(conf.attachments),
            raw,
        })
    }

    /// GC's list of the attachments in use. A GC without it is refused
    /// (7) rather than guessed: it would take every attachment for stale.
    pub fn gc_valid_attachments(&self) -> Result<&[Attachment], CniError> {
        self.valid_attachments.as_deref().ok_or_else(|| {
            CniError::invalid_config(
                "GC needs \"cni.dev/valid-attachments\": refusing to guess which attachments are in use",
            )
        })
    }

    /// The IPAM plugin's `type`, if an `ipam` object names one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }
}

/// An empty or missing cniVersion is 0.1.0 by the spec, which we do not speak.
pub fn parse_version(s: &str) -> Result<Version, CniError> {
    let shown = if s.is_empty() { "0.1.0 (empty)" } else { s };
    Version::parse(s).ok_or_else(|| {
        CniError::incompatible_version("incompatible CNI versions").with_details(format!(
            "config is \"{shown}\", plugin supports [{}]",
            Version::supported_list().join(" ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_common_fields_and_prev_result() {
        let conf = NetConf::parse(
            json!({
                "cniVersion": "0.4.0", "name": "trellis", "type": "trellis",
                "ipam": {"type": "trellis-ipam", "subnet": "10.88.0.0/16"},
                "prevResult": {"cniVersion": "0.4.0",
                    "ips": [{"version": "4", "address": "10.88.0.2/16", "interface": 1}]},
                "mtu": 1450
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(conf.cni_version, Version::V0_4_0);
        assert_eq!(conf.ipam_type(), Some("trellis-ipam"));
        assert_eq!(conf.prev_result.unwrap().ips.len(), 1);
        assert_eq!(conf.raw["mtu"], 1450);
    }

    #[test]
    fn error_codes_for_bad_configs() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion": "0.2.0", "name": "a"}"#)
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(NetConf::parse(br#"{"name": "a"}"#).unwrap_err().code, 1);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion": "1.0.0"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion": "1.0.0", "name": "a b"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion": "1.0.0", "name": 5}"#)
                .unwrap_err()
                .code,
            6
        );
    }

    #[test]
    fn gc_attachments_accept_both_keys() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "b");
    }
}
