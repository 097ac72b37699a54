//! What the check compares, read from etcd: every address key, every
//! handle, the node records and the agents' attachment reports.

use crate::etcd::Etcd;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use trellis_common::attachment_report::AttachmentReport;
use trellis_ipam::allocation::Owner;
use trellis_ipam::store::records::HandleValue;

/// An allocation as read: an IPv4 address key, or the IPv6 one a handle
/// names as its address (an IPv6-only pool's).
pub(super) struct Held {
    pub(super) ip: IpAddr,
    pub(super) key: String,
    pub(super) owner: Result<Owner, String>,
    pub(super) mod_revision: i64,
}

/// An IPv6 address key as read that no handle names as its address (a
/// dual-stack allocation's twin).
pub(super) struct Held6 {
    pub(super) ip: Ipv6Addr,
    pub(super) key: String,
    pub(super) owner: Result<Owner, String>,
    pub(super) mod_revision: i64,
}

/// A handle holding an address, as read.
pub(super) struct HandleRead {
    pub(super) key: String,
    pub(super) ip: IpAddr,
    /// The key of the IPv6 twin it names, if any.
    pub(super) ip6_key: Option<String>,
    pub(super) mod_revision: i64,
}

/// Everything the check compares, read from etcd.
pub struct Snapshot {
    pub(super) held: Vec<Held>,
    pub(super) held6: Vec<Held6>,
    /// Handles that name an address, by (containerID, ifname).
    pub(super) handles: BTreeMap<(String, String), HandleRead>,
    pub(super) nodes: BTreeSet<String>,
    pub(super) reports: BTreeMap<String, Result<AttachmentReport, String>>,
    pub(super) fences: Vec<String>,
}

impl Snapshot {
    pub async fn read(etcd: &Etcd) -> Result<Snapshot> {
        let keys = &etcd.keys;
        let addresses = etcd.list(&keys.ips()).await?;
        let mut handles = BTreeMap::new();
        let mut fences = Vec::new();
        for kv in etcd.list(&keys.handles()).await? {
            let Some(key) = kv.key_str().ok() else {
                continue;
            };
            let Some(attachment) = keys.handle_of(key) else {
                continue;
            };
            let Some(value) = HandleValue::parse(kv.value()) else {
                continue;
            };
            // Fence markers hold no address: counted, never released.
            let Some(ip) = value.ip() else {
                fences.push(key.to_string());
                continue;
            };
            handles.insert(
                (attachment.container_id, attachment.ifname),
                HandleRead {
                    key: key.to_string(),
                    ip,
                    ip6_key: value.ip6().map(|v6| keys.ip(v6)),
                    mod_revision: kv.mod_revision(),
                },
            );
        }
        let primary6: BTreeSet<IpAddr> = handles
            .values()
            .map(|h: &HandleRead| h.ip)
            .filter(IpAddr::is_ipv6)
            .collect();
        let (mut held, mut held6) = (Vec::new(), Vec::new());
        for kv in &addresses {
            let Some(ip) = kv.key_str().ok().and_then(|k| keys.address_of(k)) else {
                continue;
            };
            let owner = Owner::parse(kv.value()).map_err(|e| e.to_string());
            let (key, mod_revision) = (keys.ip(ip), kv.mod_revision());
            match ip {
                IpAddr::V6(ip6) if !primary6.contains(&ip) => held6.push(Held6 {
                    ip: ip6,
                    key,
                    owner,
                    mod_revision,
                }),
                _ => held.push(Held {
                    ip,
                    key,
                    owner,
                    mod_revision,
                }),
            }
        }
        let nodes = etcd
            .list(&keys.nodes())
            .await?
            .iter()
            .filter_map(|kv| keys.node_name_of(kv.key_str().ok()?).map(String::from))
            .collect();
        let reports = etcd
            .list(&keys.attachment_reports())
            .await?
            .iter()
            .filter_map(|kv| {
                let node = keys.attachment_report_of(kv.key_str().ok()?)?;
                let report = AttachmentReport::parse(kv.value()).map_err(|e| e.to_string());
                Some((node.to_string(), report))
            })
            .collect();
        Ok(Snapshot {
            held,
            held6,
            handles,
            nodes,
            reports,
            fences,
        })
    }
}

impl Snapshot {
    /// The handle of `owner`'s attachment, if it names `ip`.
    pub(super) fn handle_naming(&self, owner: &Owner, ip: IpAddr) -> Option<&HandleRead> {
        self.handles
            .get(&(owner.container_id.clone(), owner.ifname.clone()))
            .filter(|h| h.ip == ip)
    }
}
