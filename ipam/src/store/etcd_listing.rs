//! Reads over many keys of the etcd store: the addresses used in a subnet
//! (the allocator's fallback), a node's or the cluster's allocations (GC,
//! the agent's leak reclaim, cleanup), the handles GC sweeps, the node
//! record, and the readiness read of STATUS.

use crate::allocation::{Allocation, Handle, Owner};
use crate::error::IpamError;
use crate::store::etcd::EtcdStore;
use crate::store::records::{held_by, HandleValue};
use etcd_client::{GetOptions, KeyValue};
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use trellis_common::node::NodeRecord;

impl EtcdStore {
    /// The narrowest key prefix covering every address of `subnet`: its
    /// whole leading octets (`10.244.3.` for a /24), then filtered exactly.
    /// (An IPv6 subnet's keys have no such prefix in their compressed
    /// text: the whole directory is read.)
    fn scan_prefix(&self, subnet: IpNetwork) -> String {
        let IpNetwork::V4(subnet) = subnet else {
            return self.keys.ips();
        };
        let whole = (subnet.prefix() / 8) as usize;
        let octets = subnet.network().octets();
        let mut p = self.keys.ips();
        for o in &octets[..whole] {
            p.push_str(&o.to_string());
            p.push('.');
        }
        p
    }

    /// This node's record as its agent published it (`<prefix>/nodes/<node>`).
    pub async fn node_record(
        &self,
        node: &str,
        network: Option<&str>,
    ) -> Result<Option<NodeRecord>, IpamError> {
        let key = match network {
            None => self.keys.node(node),
            Some(name) => self.keys.network_node(name, node),
        };
        let kvs = self
            .get("reading the node record", key.clone(), None)
            .await?;
        kvs.first()
            .map(|kv| {
                NodeRecord::parse(kv.value()).map_err(|e| IpamError::Corrupt {
                    key,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Every allocation held by containers of `node` (for leak GC).
    pub async fn list_node(&self, node: &str) -> Result<Vec<Allocation>, IpamError> {
        let mut all = self.list_all().await?;
        all.retain(|a| a.owner.node == node);
        Ok(all)
    }

    /// Every allocation in the cluster.
    pub async fn list_all(&self) -> Result<Vec<Allocation>, IpamError> {
        let kvs = self
            .get(
                "listing allocations",
                self.keys.ips(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(self.decode_allocations(kvs, |_| true))
    }

    fn decode_allocations(
        &self,
        kvs: Vec<KeyValue>,
        keep: impl Fn(IpAddr) -> bool,
    ) -> Vec<Allocation> {
        let dir = self.keys.ips();
        // Each key's address and owner, each value decoded once.
        let decoded: Vec<(IpAddr, &KeyValue, Result<Owner, serde_json::Error>)> = kvs
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let ip = key.strip_prefix(&dir)?.parse().ok()?;
                Some((ip, kv, Owner::parse(kv.value())))
            })
            .collect();
        let write = |kv: &KeyValue, owner: &Owner| (owner.handle(), kv.mod_revision());
        // An IPv6 address written by the attachment and revision of an IPv4
        // one is its twin; any other is an allocation of its own (an
        // IPv6-only pool).
        let v4_writes: HashSet<(Handle, i64)> = decoded
            .iter()
            .filter_map(|(ip, kv, owner)| {
                Some(write(kv, owner.as_ref().ok().filter(|_| ip.is_ipv4())?))
            })
            .collect();
        let mut twins: std::collections::HashMap<(Handle, i64), Ipv6Addr> = Default::default();
        let mut allocations = Vec::new();
        for (ip, kv, owner) in decoded {
            match (ip, owner) {
                (IpAddr::V6(ip6), Ok(owner)) if v4_writes.contains(&write(kv, &owner)) => {
                    twins.insert(write(kv, &owner), ip6);
                }
                (ip, Ok(owner)) => allocations.push((ip, kv, owner)),
                (_, Err(e)) => log::warn!(
                    "ignoring undecodable allocation {}: {e}",
                    String::from_utf8_lossy(kv.key())
                ),
            }
        }
        allocations
            .into_iter()
            .filter(|(ip, _, _)| keep(*ip))
            .map(|(ip, kv, owner)| Allocation {
                ip,
                ip6: twins.get(&write(kv, &owner)).copied(),
                owner,
                revision: kv.mod_revision(),
            })
            .collect()
    }

    /// Remove the handle keys of `node` in `network` that hold no address
    /// (fences, or handles whose address record is gone or someone else's)
    /// and whose attachment `keep` does not claim. Returns how many went.
    pub async fn sweep_handles(
        &self,
        node: &str,
        network: &str,
        keep: impl Fn(&Handle) -> bool,
    ) -> Result<usize, IpamError> {
        let kvs = self
            .get(
                "listing handles",
                self.keys.handles(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut removed = 0;
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(handle) = self.keys.handle_of(&key) else {
                continue;
            };
            let Some(value) = HandleValue::decode(kv) else {
                continue;
            };
            if !value.is_of(node, network) || keep(&handle) {
                continue;
            }
            let holds = match value.ip() {
                None => false,
                Some(ip) => self
                    .get("reading the address", self.keys.ip(ip), None)
                    .await?
                    .first()
                    .is_some_and(|kv| held_by(kv, ip, None, &handle).is_some()),
            };
            if !holds {
                self.delete_handle_if(&key, kv.mod_revision()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The addresses held inside `subnet` (keys only: one cheap range read).
    pub async fn used_in(&self, subnet: IpNetwork) -> Result<HashSet<IpAddr>, IpamError> {
        let dir = self.keys.ips();
        let kvs = self
            .get(
                "listing allocated addresses",
                self.scan_prefix(subnet),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(&dir)?
                    .parse::<IpAddr>()
                    .ok()
            })
            .filter(|ip| subnet.contains(*ip))
            .collect())
    }

    /// Every decodable allocation inside `subnet`.
    pub async fn list_in(&self, subnet: IpNetwork) -> Result<Vec<Allocation>, IpamError> {
        let kvs = self
            .get(
                "listing allocations",
                self.scan_prefix(subnet),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(self.decode_allocations(kvs, |ip| subnet.contains(ip)))
    }

    /// One linearizable read: etcd has a leader and answers.
    pub async fn ping(&self) -> Result<(), IpamError> {
        self.get(
            "checking etcd",
            self.keys.config(),
            Some(GetOptions::new().with_count_only()),
        )
        .await
        .map(|_| ())
    }
}
