//! Named networks, `<prefix>/networks/<name>`: the same fields as the
//! cluster config (`<prefix>/config`, which stays the default network) and
//! `"internal"` (no egress). [`NetworkRecord::parse`] checks one record;
//! [`usable`] checks them together (a VNI of its own, a pod network that
//! overlaps no other network's, the default's included), the one rule
//! `trellisctl network create` refuses by and agents ignore records by, the
//! older record winning, so that both sides agree which network is in.

use crate::cluster_config::{ClusterConfig, InvalidClusterConfig};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// The longest network name: a DNS label (it is the network's domain).
const MAX_NAME: usize = 63;

/// `<prefix>/networks/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    #[serde(flatten)]
    pub config: ClusterConfig,
    /// No egress: pods reach each other and their gateway, nothing else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

/// Why a network cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNetwork {
    #[error("network name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("network {name}: {source}")]
    Record {
        name: String,
        source: InvalidClusterConfig,
    },
    #[error("network {name}: {why}")]
    Conflict { name: String, why: String },
}

impl InvalidNetwork {
    /// The name of the network it is about.
    pub fn network(&self) -> &str {
        match self {
            InvalidNetwork::Name { name, .. }
            | InvalidNetwork::Record { name, .. }
            | InvalidNetwork::Conflict { name, .. } => name,
        }
    }
}

impl NetworkRecord {
    /// Decode and check the record of network `name` as stored.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<NetworkRecord, InvalidNetwork> {
        check_name(name)?;
        let record: NetworkRecord =
            serde_json::from_slice(bytes).map_err(|e| InvalidNetwork::Record {
                name: name.into(),
                source: InvalidClusterConfig::new(e.to_string()),
            })?;
        record
            .config
            .validate()
            .map_err(|source| InvalidNetwork::Record {
                name: name.into(),
                source,
            })?;
        Ok(record)
    }
}

/// A network's name is a DNS label in lowercase (it is the domain its
/// containers' names answer in, and the name of its conflist).
pub fn check_name(name: &str) -> Result<(), InvalidNetwork> {
    let why = if name.is_empty() || name.len() > MAX_NAME {
        Some("must be 1 to 63 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may hold only lowercase letters, digits and '-'")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must not begin or end with '-'")
    } else {
        None
    };
    match why {
        Some(why) => Err(InvalidNetwork::Name {
            name: name.into(),
            why,
        }),
        None => Ok(()),
    }
}

/// The key of the `trellis` plugin's configuration that selects a named
/// network (`"network": "NAME"`); the plugin and `trellis-ipam` (which
/// receives the whole configuration) read it alike.
pub const CONF_KEY: &str = "network";

/// The named network a network configuration selects (`None`: the default
/// network); a value that is not a valid name is refused with the reason.
pub fn selected_by(conf: &serde_json::Value) -> Result<Option<String>, String> {
    match conf.get(CONF_KEY) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(name)) => {
            check_name(name).map_err(|e| format!("{CONF_KEY}: {e}"))?;
            Ok(Some(name.clone()))
        }
        Some(other) => Err(format!(
            "{CONF_KEY} must be the name of a network (a string), not {other}"
        )),
    }
}

/// A stored network record, as read: its name, its creation revision
/// (which decides between two that conflict) and its bytes.
#[derive(Debug, Clone)]
pub struct StoredNetwork {
    pub name: String,
    pub create_revision: i64,
    pub value: Vec<u8>,
}

/// The networks that are in, and why the others are not.
#[derive(Debug, Default)]
pub struct Networks {
    pub usable: Vec<(String, NetworkRecord)>,
    pub refused: Vec<InvalidNetwork>,
}

/// Which of `stored` are in beside `default` (the cluster config, if
/// any): each must parse and must neither share a VNI nor overlap a pod
/// network with the default or with an older usable one.
pub fn usable(default: Option<&ClusterConfig>, stored: &[StoredNetwork]) -> Networks {
    let mut sorted: Vec<&StoredNetwork> = stored.iter().collect();
    sorted.sort_by_key(|s| (s.create_revision, s.name.clone()));
    let mut out = Networks::default();
    for s in sorted {
        let checked = NetworkRecord::parse(&s.name, &s.value).and_then(|record| {
            match conflict(default, &out.usable, &record) {
                Some(why) => Err(InvalidNetwork::Conflict {
                    name: s.name.clone(),
                    why,
                }),
                None => Ok(record),
            }
        });
        match checked {
            Ok(record) => out.usable.push((s.name.clone(), record)),
            Err(e) => out.refused.push(e),
        }
    }
    out
}

/// Why `record` cannot join `default` and `others`, if it cannot.
pub fn conflict(
    default: Option<&ClusterConfig>,
    others: &[(String, NetworkRecord)],
    record: &NetworkRecord,
) -> Option<String> {
    let existing = default
        .map(|c| ("the default network (<prefix>/config)".to_string(), c))
        .into_iter()
        .chain(
            others
                .iter()
                .map(|(name, r)| (format!("network {name}"), &r.config)),
        );
    for (what, other) in existing {
        if other.vni == record.config.vni {
            return Some(format!("VNI {} is taken by {what}", record.config.vni));
        }
        for (mine, theirs) in record
            .config
            .pod_networks()
            .into_iter()
            .flat_map(|m| other.pod_networks().into_iter().map(move |t| (m, t)))
        {
            if overlaps(mine, theirs) {
                return Some(format!("{mine} overlaps {theirs} of {what}"));
            }
        }
    }
    None
}

/// The smallest VNI from 2 up that neither `default` nor `others` use.
pub fn free_vni(default: Option<&ClusterConfig>, others: &[(String, NetworkRecord)]) -> u32 {
    let taken: std::collections::BTreeSet<u32> = default
        .map(|c| c.vni)
        .into_iter()
        .chain(others.iter().map(|(_, r)| r.config.vni))
        .collect();
    (2..=0x00ff_ffff)
        .find(|vni| !taken.contains(vni))
        .expect("fewer networks than VNIs")
}

/// Whether `a` and `b` share an address (never across families).
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(a), IpNetwork::V4(b)) => a.contains(b.network()) || b.contains(a.network()),
        (IpNetwork::V6(a), IpNetwork::V6(b)) => a.contains(b.network()) || b.contains(a.network()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_selects_a_network_by_a_valid_name() {
        let sel = |v: serde_json::Value| selected_by(&v);
        assert_eq!(sel(serde_json::json!({"type": "trellis"})), Ok(None));
        assert_eq!(sel(serde_json::json!({"network": null})), Ok(None));
        assert_eq!(
            sel(serde_json::json!({"network": "multihost"})),
            Ok(Some("multihost".into()))
        );
        let bad = sel(serde_json::json!({"network": "Multi_Host"})).unwrap_err();
        assert!(
            bad.starts_with("network: network name \"Multi_Host\""),
            "{bad}"
        );
        let bad = sel(serde_json::json!({"network": 7})).unwrap_err();
        assert_eq!(
            bad,
            "network must be the name of a network (a string), not 7"
        );
    }

    fn stored(name: &str, rev: i64, value: &str) -> StoredNetwork {
        StoredNetwork {
            name: name.into(),
            create_revision: rev,
            value: value.as_bytes().to_vec(),
        }
    }

    fn default() -> ClusterConfig {
        ClusterConfig::parse(br#"{"network":"10.244.0.0/16","vni":1}"#).unwrap()
    }

    #[test]
    fn a_record_reads_like_the_cluster_config_and_may_be_internal() {
        let r = NetworkRecord::parse("multihost", br#"{"network":"10.0.0.0/16","vni":7}"#).unwrap();
        assert_eq!(
            (r.config.subnet_len, r.config.vni, r.internal),
            (24, 7, false)
        );
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("internal").is_none());
        let r = NetworkRecord::parse(
            "back",
            br#"{"network":"10.1.0.0/16","vni":8,"internal":true}"#,
        )
        .unwrap();
        assert!(r.internal);
        assert_eq!(serde_json::to_value(&r).unwrap()["internal"], true);
    }

    #[test]
    fn bad_names_and_records_are_refused_with_a_reason() {
        for (name, reason) in [
            ("", "1 to 63"),
            ("Multi", "lowercase"),
            ("a.b", "lowercase"),
            ("-x", "begin or end"),
            (&"n".repeat(64), "1 to 63"),
        ] {
            let e = NetworkRecord::parse(name, br#"{"network":"10.0.0.0/16"}"#).unwrap_err();
            assert!(e.to_string().contains(reason), "{name}: {e}");
        }
        let e = NetworkRecord::parse("m", br#"{"network":"10.0.0.1/16"}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("network m: network 10.0.0.1/16 has host bits"),
            "{e}"
        );
        let e = NetworkRecord::parse("m", b"{").unwrap_err();
        assert!(e.to_string().starts_with("network m: "), "{e}");
    }

    #[test]
    fn the_older_record_wins_a_conflict_and_the_default_is_never_overlapped() {
        let d = default();
        let nets = usable(
            Some(&d),
            &[
                stored("late", 9, r#"{"network":"10.0.128.0/17","vni":3}"#),
                stored("first", 5, r#"{"network":"10.0.0.0/16","vni":2}"#),
                stored("samevni", 6, r#"{"network":"10.9.0.0/16","vni":2}"#),
                stored(
                    "ondefault",
                    7,
                    r#"{"network":"10.244.3.0/24","subnetLen":26,"vni":4}"#,
                ),
                stored("defaultvni", 8, r#"{"network":"10.8.0.0/16","vni":1}"#),
                stored("broken", 4, r#"{"network":"x"}"#),
                stored("ok", 10, r#"{"network":"10.7.0.0/16","vni":9}"#),
            ],
        );
        let names: Vec<&str> = nets.usable.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["first", "ok"]);
        let why: Vec<String> = nets.refused.iter().map(|e| e.to_string()).collect();
        assert!(why[0].starts_with("network broken: "), "{why:?}");
        assert_eq!(why[1], "network samevni: VNI 2 is taken by network first");
        assert_eq!(
            why[2],
            "network ondefault: 10.244.3.0/24 overlaps 10.244.0.0/16 of the default network (<prefix>/config)"
        );
        assert_eq!(
            why[3],
            "network defaultvni: VNI 1 is taken by the default network (<prefix>/config)"
        );
        assert_eq!(
            why[4],
            "network late: 10.0.128.0/17 overlaps 10.0.0.0/16 of network first"
        );
    }

    #[test]
    fn ipv6_pod_networks_must_not_overlap_either() {
        let d =
            ClusterConfig::parse(br#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/56"}"#)
                .unwrap();
        let nets = usable(
            Some(&d),
            &[stored(
                "six",
                3,
                r#"{"network":"10.5.0.0/16","vni":5,"ipv6Network":"fd10:244::/48"}"#,
            )],
        );
        assert!(nets.usable.is_empty());
        assert!(
            nets.refused[0]
                .to_string()
                .contains("fd10:244::/48 overlaps fd10:244::/56"),
            "{:?}",
            nets.refused
        );
    }

    #[test]
    fn a_free_vni_is_the_smallest_unused_from_two() {
        let d = default();
        assert_eq!(free_vni(Some(&d), &[]), 2);
        let taken = usable(
            Some(&d),
            &[
                stored("a", 1, r#"{"network":"10.1.0.0/16","vni":2}"#),
                stored("b", 2, r#"{"network":"10.2.0.0/16","vni":4}"#),
            ],
        );
        assert_eq!(free_vni(Some(&d), &taken.usable), 3);
        assert_eq!(free_vni(None, &[]), 2);
    }
}
