//! What the two etcd keys of an allocation hold, decoded from what etcd
//! returns: the address key's [`Owner`] and the handle key's
//! [`HandleValue`].

use crate::allocation::{Allocation, Handle, Owner};
use etcd_client::{KeyValue, TxnOpResponse, TxnResponse};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr};

/// The value of a handle key, `<prefix>/ipam/handles/<containerID>/<ifname>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HandleValue {
    /// `{"ip","ip6","node","network"}`: the attachment holds `ip` (if the
    /// address key agrees), and `ip6` in a dual-stack network.
    Holds {
        ip: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip6: Option<Ipv6Addr>,
        #[serde(default)]
        node: String,
        #[serde(default)]
        network: String,
    },
    /// `{"cancelled":true,"node","network"}`: a fence's marker, holding no
    /// address, that makes a late claim of this attachment fail.
    Cancelled {
        cancelled: bool,
        #[serde(default)]
        node: String,
        #[serde(default)]
        network: String,
    },
}

impl HandleValue {
    /// The value of `kv`; `None` when it decodes as neither.
    pub(crate) fn decode(kv: &KeyValue) -> Option<HandleValue> {
        HandleValue::parse(kv.value())
    }

    /// A handle key's value; `None` when it decodes as neither.
    pub fn parse(bytes: &[u8]) -> Option<HandleValue> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handle value serializes")
    }

    /// The address it names, if any.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            HandleValue::Holds { ip, .. } => Some(*ip),
            HandleValue::Cancelled { .. } => None,
        }
    }

    /// The IPv6 address it names beside `ip`, if any.
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        match self {
            HandleValue::Holds { ip6, .. } => *ip6,
            HandleValue::Cancelled { .. } => None,
        }
    }

    /// The addresses, node and network of a handle that holds one.
    pub(crate) fn held(self) -> Option<(IpAddr, Option<Ipv6Addr>, String, String)> {
        match self {
            HandleValue::Holds {
                ip,
                ip6,
                node,
                network,
            } => Some((ip, ip6, node, network)),
            HandleValue::Cancelled { .. } => None,
        }
    }

    /// Whether it belongs to `node` and `network`.
    pub(crate) fn is_of(&self, node: &str, network: &str) -> bool {
        let (n, w) = match self {
            HandleValue::Holds { node, network, .. }
            | HandleValue::Cancelled { node, network, .. } => (node, network),
        };
        n == node && w == network
    }
}

/// The allocation the address key `kv` of `ip` records, if it belongs to
/// `handle` (with `ip6`, the IPv6 twin its handle names).
pub(crate) fn held_by(
    kv: &KeyValue,
    ip: IpAddr,
    ip6: Option<Ipv6Addr>,
    handle: &Handle,
) -> Option<Allocation> {
    owner_of(kv)
        .filter(|o| o.holds(handle))
        .map(|owner| Allocation {
            ip,
            ip6,
            owner,
            revision: kv.mod_revision(),
        })
}

pub(crate) fn owner_of(kv: &KeyValue) -> Option<Owner> {
    Owner::parse(kv.value()).ok()
}

/// The first key of each `get` in a transaction's responses.
pub(crate) fn gets(resp: &TxnResponse) -> Vec<Option<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handle_values_keep_their_wire_form() {
        let holds = HandleValue::Holds {
            ip: "10.244.3.7".parse().unwrap(),
            ip6: None,
            node: "n1".into(),
            network: "trellis".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&holds.encode()).unwrap();
        assert_eq!(
            v,
            json!({"ip": "10.244.3.7", "node": "n1", "network": "trellis"})
        );
        let cancelled = HandleValue::Cancelled {
            cancelled: true,
            node: "n1".into(),
            network: "trellis".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&cancelled.encode()).unwrap();
        assert_eq!(
            v,
            json!({"cancelled": true, "node": "n1", "network": "trellis"})
        );
        for (text, want) in [
            (
                r#"{"ip":"10.244.3.7","node":"n1","network":"trellis"}"#,
                Some(holds.clone()),
            ),
            (
                r#"{"cancelled":true,"node":"n1","network":"trellis"}"#,
                Some(cancelled.clone()),
            ),
            (
                r#"{"ip":"10.244.3.7"}"#,
                Some(HandleValue::Holds {
                    ip: "10.244.3.7".parse().unwrap(),
                    ip6: None,
                    node: String::new(),
                    network: String::new(),
                }),
            ),
            ("garbage", None),
            (r#"{"node":"n1"}"#, None),
        ] {
            assert_eq!(
                serde_json::from_str::<HandleValue>(text).ok(),
                want,
                "{text}"
            );
        }
        assert_eq!(holds.ip(), Some("10.244.3.7".parse().unwrap()));
        let dual = HandleValue::Holds {
            ip: "10.244.3.7".parse().unwrap(),
            ip6: Some("fd10:244:0:3::7".parse().unwrap()),
            node: "n1".into(),
            network: "trellis".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&dual.encode()).unwrap();
        assert_eq!(
            v,
            json!({"ip": "10.244.3.7", "ip6": "fd10:244:0:3::7", "node": "n1", "network": "trellis"})
        );
        assert_eq!(HandleValue::parse(&dual.encode()), Some(dual.clone()));
        assert_eq!(dual.ip6(), Some("fd10:244:0:3::7".parse().unwrap()));
        assert_eq!(holds.ip6(), None);
        assert_eq!(cancelled.ip(), None);
        assert!(holds.is_of("n1", "trellis") && cancelled.is_of("n1", "trellis"));
        assert!(!holds.is_of("n2", "trellis") && !cancelled.is_of("n1", "other"));
    }
}
