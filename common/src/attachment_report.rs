//! The report an agent publishes at `<prefix>/attachments/<node>` (under
//! its node record's lease, so it goes with the node): each allocation of
//! a trellis attachment on that node as its last pass listed it, and
//! whether the attachment's host veth was there. `trellisctl ipam check`
//! judges leaks from it; `ipam release --from-report` frees an allocation
//! only if it is unchanged since (its etcd revision).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentReport {
    /// How often the agent checks (seconds): a report older than a few of
    /// these comes from an agent that stopped reporting.
    pub interval_seconds: u64,
    pub checked: Vec<CheckedAllocation>,
}

/// One allocation as the agent's pass saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedAllocation {
    pub ip: IpAddr,
    /// The allocation key's modification revision when listed.
    pub revision: i64,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// For how long (seconds, by the agent's clock) the agent has seen the
    /// allocation without its host veth, over consecutive passes; absent
    /// when the veth was there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_veth_for: Option<u64>,
}

impl AttachmentReport {
    pub fn parse(value: &[u8]) -> Result<AttachmentReport, serde_json::Error> {
        serde_json::from_slice(value)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written() {
        let r = AttachmentReport {
            interval_seconds: 10,
            checked: vec![
                CheckedAllocation {
                    ip: "10.244.1.5".parse().unwrap(),
                    revision: 42,
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    missing_veth_for: Some(20),
                },
                CheckedAllocation {
                    ip: "10.244.1.6".parse().unwrap(),
                    revision: 43,
                    container_id: "c2".into(),
                    ifname: "eth0".into(),
                    missing_veth_for: None,
                },
            ],
        };
        let json = r.to_json();
        assert!(json.contains(r#""containerID":"c1""#), "{json}");
        assert!(json.contains(r#""missingVethFor":20"#), "{json}");
        assert!(!json.contains(r#""c2","ifname":"eth0","missingVethFor""#));
        assert_eq!(AttachmentReport::parse(json.as_bytes()).unwrap(), r);
        assert!(AttachmentReport::parse(b"{").is_err());
    }
}
