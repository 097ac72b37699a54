//! The node subnet lease. One key per leased subnet,
//! `<prefix>/subnets/<net>-<len>` = `{"node": NAME}`, created only when
//! absent (an etcd transaction) and bound to an etcd lease the agent keeps
//! alive: two nodes can never hold one subnet, however many agents start at
//! once. On restart the agent finds its own key and keeps its subnet (and
//! its etcd lease), so running pods keep their addresses.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::keys::Keys;
use trellis_common::node::NodeRecord;

/// Transactions lost to other agents before giving up (each loss means
/// another node got a subnet, so this bounds only pathological contention).
const MAX_ATTEMPTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "no cluster configuration at {key}: write it before starting agents, e.g. \
         etcdctl put {key} '{{\"network\":\"10.244.0.0/16\",\"subnetLen\":24,\"vni\":1,\"port\":8472}}'"
    )]
    MissingConfig { key: String },
    #[error("invalid cluster configuration at {key}: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("network {network} has no free /{subnet_len} subnet left: all {count} are leased")]
    Exhausted {
        network: Ipv4Network,
        subnet_len: u8,
        count: u64,
    },
    #[error("lost {MAX_ATTEMPTS} subnet races in a row to other agents; giving up this round")]
    Contention,
    #[error(
        "this node's subnet {wanted} was leased by node {owner} while this agent was away; \
         pods on this node have addresses of {wanted}"
    )]
    SubnetTaken { wanted: Ipv4Network, owner: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

impl LeaseError {
    /// Errors that retrying with the same input cannot fix.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LeaseError::InvalidConfig { .. } | LeaseError::SubnetTaken { .. }
        )
    }
}

/// The value of a subnet key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetClaim {
    pub node: String,
}

/// A subnet key as found in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedSubnet {
    pub subnet: Ipv4Network,
    /// The node named in the key's value; `None` when unreadable.
    pub owner: Option<String>,
    /// The etcd lease the key is bound to (0: none).
    pub lease: i64,
    pub mod_revision: i64,
}

/// The subnet this agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    pub subnet: Ipv4Network,
    pub lease_id: i64,
    /// The subnet (and etcd lease) were this node's already.
    pub reused: bool,
}

/// Read and check `<prefix>/config`.
pub async fn read_config(client: &mut Client, keys: &Keys) -> Result<ClusterConfig, LeaseError> {
    let key = keys.config();
    let resp = client.get(key.as_str(), None).await?;
    let kv = resp
        .kvs()
        .first()
        .ok_or_else(|| LeaseError::MissingConfig { key: key.clone() })?;
    ClusterConfig::parse(kv.value()).map_err(|e| LeaseError::InvalidConfig {
        key,
        reason: e.to_string(),
    })
}

/// Pick a subnet: `preferred` when it fits and is free, else the first free
/// one from a position given by `seed` (so that agents starting together
/// rarely race for the same subnet).
pub fn choose_subnet(
    config: &ClusterConfig,
    taken: &HashSet<Ipv4Network>,
    preferred: Option<Ipv4Network>,
    seed: u64,
) -> Option<Ipv4Network> {
    if let Some(p) = preferred.filter(|p| config.fits(*p) && !taken.contains(p)) {
        return Some(p);
    }
    let count = config.subnet_count();
    let start = seed % count;
    (0..count)
        .map(|i| (start + i) % count)
        .filter_map(|i| config.subnet_at(i))
        .find(|s| !taken.contains(s))
}

/// Of the subnet keys naming `node`, the one it keeps: `preferred` if it is
/// among them, else the first that fits the network. The others are to be
/// released.
pub fn own_subnet<'a>(
    config: &ClusterConfig,
    listing: &'a [LeasedSubnet],
    node: &str,
    preferred: Option<Ipv4Network>,
) -> (Option<&'a LeasedSubnet>, Vec<&'a LeasedSubnet>) {
    let mut mine: Vec<&LeasedSubnet> = listing
        .iter()
        .filter(|s| s.owner.as_deref() == Some(node))
        .collect();
    mine.sort_by_key(|s| {
        (
            Some(s.subnet) != preferred,
            !config.fits(s.subnet),
            s.subnet,
        )
    });
    match mine.first() {
        Some(first) if config.fits(first.subnet) => {
            let keep = *first;
            (Some(keep), mine.into_iter().skip(1).collect())
        }
        _ => (None, mine),
    }
}

/// Every subnet key.
pub async fn list_subnets(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<LeasedSubnet>, LeaseError> {
    let resp = client
        .get(keys.subnets(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let subnet = keys.subnet_of(kv.key_str().ok()?)?;
            let owner = serde_json::from_slice::<SubnetClaim>(kv.value())
                .ok()
                .map(|c| c.node);
            Some(LeasedSubnet {
                subnet,
                owner,
                lease: kv.lease(),
                mod_revision: kv.mod_revision(),
            })
        })
        .collect())
}

fn seed(node: &str, attempt: usize) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(node.as_bytes());
    h.write_usize(attempt);
    h.write_u32(std::process::id());
    h.finish()
}

/// Lease a subnet for `node`: its own when it has one (keeping the etcd lease
/// it is bound to), else `preferred` when free, else any free one.
/// `require` demands exactly that subnet (after a lost lease: the pods have
/// its addresses).
pub async fn acquire(
    client: &mut Client,
    keys: &Keys,
    config: &ClusterConfig,
    node: &str,
    preferred: Option<Ipv4Network>,
    require: bool,
    ttl: i64,
) -> Result<Leased, LeaseError> {
    let mut attempt = Acquisition {
        client,
        keys,
        config,
        node,
        ttl,
        granted: None,
    };
    let result = attempt.run(preferred, require).await;
    // A lease granted for a lost race (or an error) holds nothing: give it back.
    if let Some(id) = attempt.granted {
        if result.as_ref().ok().map(|l| l.lease_id) != Some(id) {
            let _ = attempt.client.lease_revoke(id).await;
        }
    }
    result
}

/// One call of [`acquire`]: its inputs and the etcd lease it granted, if any
/// (granted at most once, reused over lost races, revoked unless kept).
struct Acquisition<'a> {
    client: &'a mut Client,
    keys: &'a Keys,
    config: &'a ClusterConfig,
    node: &'a str,
    ttl: i64,
    granted: Option<i64>,
}

impl Acquisition<'_> {
    async fn run(
        &mut self,
        preferred: Option<Ipv4Network>,
        require: bool,
    ) -> Result<Leased, LeaseError> {
        let (keys, config, node) = (self.keys, self.config, self.node);
        for attempt in 0..MAX_ATTEMPTS {
            let listing = list_subnets(self.client, keys).await?;
            let (own, stale) = own_subnet(config, &listing, node, preferred);
            for s in stale {
                log::info!("releasing {} (no longer this node's subnet)", s.subnet);
                let key = keys.subnet(s.subnet);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        s.mod_revision,
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                self.client.txn(txn).await?;
            }
            if let Some(own) = own.filter(|o| !require || Some(o.subnet) == preferred) {
                if own.lease != 0 {
                    return Ok(Leased {
                        subnet: own.subnet,
                        lease_id: own.lease,
                        reused: true,
                    });
                }
                // Ours but bound to no lease (written by hand?): bind it to one.
                let unchanged = Compare::mod_revision(
                    keys.subnet(own.subnet),
                    CompareOp::Equal,
                    own.mod_revision,
                );
                if let Some(lease_id) = self.claim(own.subnet, unchanged).await? {
                    return Ok(Leased {
                        subnet: own.subnet,
                        lease_id,
                        reused: true,
                    });
                }
                continue;
            }
            if require {
                let wanted = preferred.expect("require comes with a preferred subnet");
                if let Some(holder) = listing.iter().find(|s| s.subnet == wanted) {
                    return Err(LeaseError::SubnetTaken {
                        wanted,
                        owner: holder.owner.clone().unwrap_or_else(|| "?".into()),
                    });
                }
            }
            let taken: HashSet<Ipv4Network> = listing.iter().map(|s| s.subnet).collect();
            let candidate = choose_subnet(config, &taken, preferred, seed(node, attempt)).ok_or(
                LeaseError::Exhausted {
                    network: config.network,
                    subnet_len: config.subnet_len,
                    count: config.subnet_count(),
                },
            )?;
            let absent = Compare::create_revision(keys.subnet(candidate), CompareOp::Equal, 0);
            if let Some(lease_id) = self.claim(candidate, absent).await? {
                return Ok(Leased {
                    subnet: candidate,
                    lease_id,
                    reused: false,
                });
            }
            log::debug!("{candidate} was taken by another agent first; trying again");
        }
        Err(LeaseError::Contention)
    }

    /// Write this node's claim on `subnet`, bound to the lease of this call,
    /// if `when` holds; the lease id when it did.
    async fn claim(
        &mut self,
        subnet: Ipv4Network,
        when: Compare,
    ) -> Result<Option<i64>, LeaseError> {
        let lease = match self.granted {
            Some(id) => id,
            None => {
                let id = self.client.lease_grant(self.ttl, None).await?.id();
                self.granted = Some(id);
                id
            }
        };
        let claim = serde_json::to_string(&SubnetClaim {
            node: self.node.to_string(),
        })
        .expect("claim serializes");
        let txn = Txn::new().when([when]).and_then([TxnOp::put(
            self.keys.subnet(subnet),
            claim,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        Ok(self.client.txn(txn).await?.succeeded().then_some(lease))
    }
}

/// Write this node's record under its lease.
pub async fn publish_record(
    client: &mut Client,
    keys: &Keys,
    node: &str,
    record: &NodeRecord,
    lease_id: i64,
) -> Result<(), LeaseError> {
    let json = serde_json::to_string(record).expect("node record serializes");
    client
        .put(
            keys.node(node),
            json,
            Some(PutOptions::new().with_lease(lease_id)),
        )
        .await?;
    Ok(())
}

/// Whether the etcd lease still exists (keys bound to it are still there).
pub async fn lease_alive(client: &mut Client, lease_id: i64) -> Result<bool, LeaseError> {
    let resp = client.lease_time_to_live(lease_id, None).await?;
    Ok(resp.ttl() > 0)
}

/// Delete this node's record and subnet keys and revoke its lease (the node
/// leaves the cluster).
pub async fn release(
    client: &mut Client,
    keys: &Keys,
    node: &str,
) -> Result<Vec<Ipv4Network>, LeaseError> {
    let listing = list_subnets(client, keys).await?;
    let mut released = Vec::new();
    for s in listing.iter().filter(|s| s.owner.as_deref() == Some(node)) {
        client.delete(keys.subnet(s.subnet), None).await?;
        if s.lease != 0 {
            let _ = client.lease_revoke(s.lease).await;
        }
        released.push(s.subnet);
    }
    client.delete(keys.node(node), None).await?;
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(network: &str, len: u8) -> ClusterConfig {
        ClusterConfig {
            network: network.parse().unwrap(),
            subnet_len: len,
            vni: 1,
            port: 8472,
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn a_missing_config_says_how_to_write_one() {
        let missing = LeaseError::MissingConfig {
            key: "/t/config".into(),
        };
        assert!(
            missing.to_string().contains("etcdctl put /t/config"),
            "{missing}"
        );
        let invalid = LeaseError::InvalidConfig {
            key: "/t/config".into(),
            reason: "subnetLen 8 ...".into(),
        };
        assert!(
            invalid
                .to_string()
                .starts_with("invalid cluster configuration at /t/config: subnetLen 8"),
            "{invalid}"
        );
        assert!(invalid.is_permanent() && !missing.is_permanent());
    }

    #[test]
    fn preferred_subnet_wins_when_free_and_fitting() {
        let c = config("10.244.0.0/16", 24);
        let taken: HashSet<_> = [net("10.244.7.0/24")].into();
        assert_eq!(
            choose_subnet(&c, &taken, Some(net("10.244.9.0/24")), 0),
            Some(net("10.244.9.0/24"))
        );
        // Taken, or not a subnet of this network: fall back to a free one.
        for p in ["10.244.7.0/24", "10.245.9.0/24", "10.244.9.0/25"] {
            let got = choose_subnet(&c, &taken, Some(net(p)), 7).unwrap();
            assert_ne!(got, net(p));
            assert!(c.fits(got) && !taken.contains(&got));
        }
    }

    #[test]
    fn never_picks_a_taken_subnet_and_reports_exhaustion() {
        let c = config("10.0.0.0/28", 30); // 4 subnets
        let mut taken = HashSet::new();
        for seed in [0u64, 1, 2, 3] {
            let s = choose_subnet(&c, &taken, None, seed * 7919).unwrap();
            assert!(c.fits(s));
            assert!(taken.insert(s), "{s} handed out twice");
        }
        assert_eq!(choose_subnet(&c, &taken, None, 5), None);
    }

    #[test]
    fn seeds_spread_agents_over_the_network() {
        let c = config("10.244.0.0/16", 24);
        let picks: HashSet<_> = (0..32)
            .map(|i| choose_subnet(&c, &HashSet::new(), None, seed("node", i)).unwrap())
            .collect();
        assert!(picks.len() > 16, "{picks:?}");
    }

    #[test]
    fn own_subnet_is_found_and_extras_released() {
        let c = config("10.244.0.0/16", 24);
        let l = |s: &str, owner: &str| LeasedSubnet {
            subnet: net(s),
            owner: Some(owner.into()),
            lease: 5,
            mod_revision: 1,
        };
        let listing = vec![
            l("10.244.1.0/24", "a"),
            l("10.244.2.0/24", "b"),
            l("10.244.3.0/24", "a"),
            l("10.99.0.0/24", "a"),
        ];
        let (own, stale) = own_subnet(&c, &listing, "a", Some(net("10.244.3.0/24")));
        assert_eq!(own.unwrap().subnet, net("10.244.3.0/24"));
        let mut stale: Vec<_> = stale.iter().map(|s| s.subnet).collect();
        stale.sort();
        assert_eq!(stale, vec![net("10.99.0.0/24"), net("10.244.1.0/24")]);
        let (own, _) = own_subnet(&c, &listing, "a", None);
        assert_eq!(own.unwrap().subnet, net("10.244.1.0/24"));
        let (own, stale) = own_subnet(&c, &listing, "c", None);
        assert!(own.is_none() && stale.is_empty());
        // A subnet outside the (changed) network is not kept.
        let (own, stale) = own_subnet(&c, &listing[3..], "a", None);
        assert!(own.is_none());
        assert_eq!(stale.len(), 1);
    }
}
