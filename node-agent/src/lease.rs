//! The node subnet lease. One key per leased subnet,
//! `<prefix>/subnets/<net>-<len>` = `{"node": NAME}`, created only when
//! absent (an etcd transaction) and bound to an etcd lease the agent keeps
//! alive: two nodes can never hold one subnet, however many agents start at
//! once. On restart the agent finds its own key and keeps its subnet (and
//! its etcd lease), so running pods keep their addresses.
//!
//! Next to it, `<prefix>/subnet-grace/<net>-<len>` = `{"node": NAME}` under
//! a second etcd lease of the subnet lease's TTL plus the grace
//! (`--subnet-grace`), written in the same transaction and kept alive with
//! it. When the node dies, its subnet key goes with its lease and its grace
//! key a grace later: until then no other node is given the subnet (the
//! node itself may take it back), and its pods' addresses stay allocated
//! ([`crate::dead_nodes`] reclaims them once both keys are gone).

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::keys::Keys;
use trellis_common::network::{overlaps, NetworkRecord};
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
    /// The etcd lease of the subnet's grace key (0: no grace).
    pub grace_lease_id: i64,
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

/// Which of a node's subnet keys one network's lease answers for (a node
/// holds one subnet per network it serves, all under `<prefix>/subnets/`,
/// and networks never overlap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The default network: every subnet outside the named networks (a
    /// subnet of an earlier default network included: it is released).
    Default,
    /// A named network: the subnets inside its network.
    Named(Ipv4Network),
}

impl Scope {
    /// Whether `subnet` is this scope's, the named networks being `named`.
    pub fn holds(&self, subnet: Ipv4Network, named: &[Ipv4Network]) -> bool {
        match self {
            Scope::Default => !named.iter().any(|n| overlaps((*n).into(), subnet.into())),
            Scope::Named(net) => overlaps((*net).into(), subnet.into()),
        }
    }
}

/// The IPv4 networks of the records under `<prefix>/networks/` (all that
/// parse, usable or not: a subnet of a network some agent may serve is
/// never released as stale by the default network's lease).
pub async fn named_networks(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<Ipv4Network>, LeaseError> {
    let resp = client
        .get(keys.networks(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = keys.network_name_of(kv.key_str().ok()?)?;
            let record = NetworkRecord::parse(name, kv.value()).ok()?;
            Some(record.config.network)
        })
        .collect())
}

/// Of the subnet keys naming `node` that `in_scope` holds, the one it
/// keeps: `preferred` if it is among them, else the first that fits the
/// network. The others are to be released.
pub fn own_subnet<'a>(
    config: &ClusterConfig,
    listing: &'a [LeasedSubnet],
    node: &str,
    preferred: Option<Ipv4Network>,
    in_scope: impl Fn(Ipv4Network) -> bool,
) -> (Option<&'a LeasedSubnet>, Vec<&'a LeasedSubnet>) {
    let mut mine: Vec<&LeasedSubnet> = listing
        .iter()
        .filter(|s| s.owner.as_deref() == Some(node) && in_scope(s.subnet))
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
    list_claims(client, keys.subnets(), |k| keys.subnet_of(k)).await
}

/// Every subnet grace key.
pub async fn list_graces(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<LeasedSubnet>, LeaseError> {
    list_claims(client, keys.subnet_graces(), |k| keys.subnet_grace_of(k)).await
}

/// The subnets held under `prefix` (subnet or grace keys).
async fn list_claims(
    client: &mut Client,
    prefix: String,
    subnet_of: impl Fn(&str) -> Option<Ipv4Network>,
) -> Result<Vec<LeasedSubnet>, LeaseError> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let subnet = subnet_of(kv.key_str().ok()?)?;
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

/// The TTLs of a node's subnet lease and of its grace key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// Seconds the subnet key and record outlive a silent agent.
    pub ttl: i64,
    /// Seconds the grace key outlives the subnet key (0: no grace key).
    pub grace: i64,
}

/// The subnets no other node than `node` may lease now: every subnet key,
/// and the grace keys of other nodes (or unreadable ones).
pub fn taken_for(
    node: &str,
    subnets: &[LeasedSubnet],
    graces: &[LeasedSubnet],
) -> HashSet<Ipv4Network> {
    subnets
        .iter()
        .map(|s| s.subnet)
        .chain(
            graces
                .iter()
                .filter(|g| g.owner.as_deref() != Some(node))
                .map(|g| g.subnet),
        )
        .collect()
}

/// Lease a subnet for `node`: its own when it has one (keeping the etcd lease
/// it is bound to), else `preferred` when free, else any free one (a subnet
/// in another node's grace is not free).
/// `require` demands exactly that subnet (after a lost lease: the pods have
/// its addresses).
#[allow(clippy::too_many_arguments)]
pub async fn acquire(
    client: &mut Client,
    keys: &Keys,
    config: &ClusterConfig,
    scope: Scope,
    node: &str,
    preferred: Option<Ipv4Network>,
    require: bool,
    times: LeaseTimes,
) -> Result<Leased, LeaseError> {
    let mut attempt = Acquisition {
        client,
        keys,
        config,
        scope,
        node,
        times,
        granted: None,
        granted_grace: None,
    };
    let result = attempt.run(preferred, require).await;
    // A lease granted for a lost race (or an error) holds nothing: give it back.
    let kept = result.as_ref().ok().map(|l| [l.lease_id, l.grace_lease_id]);
    for id in [attempt.granted, attempt.granted_grace]
        .into_iter()
        .flatten()
    {
        if !kept.is_some_and(|k| k.contains(&id)) {
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
    scope: Scope,
    node: &'a str,
    times: LeaseTimes,
    granted: Option<i64>,
    granted_grace: Option<i64>,
}

impl Acquisition<'_> {
    async fn run(
        &mut self,
        preferred: Option<Ipv4Network>,
        require: bool,
    ) -> Result<Leased, LeaseError> {
        let (keys, config, node, scope) = (self.keys, self.config, self.node, self.scope);
        let named = match scope {
            Scope::Default => named_networks(self.client, keys).await?,
            Scope::Named(_) => Vec::new(),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let listing = list_subnets(self.client, keys).await?;
            let graces = list_graces(self.client, keys).await?;
            // The revision of `subnet`'s grace key as listed (0: none).
            let grace_seen = |subnet: Ipv4Network| {
                graces
                    .iter()
                    .find(|g| g.subnet == subnet)
                    .map_or(0, |g| g.mod_revision)
            };
            let (own, stale) = own_subnet(config, &listing, node, preferred, |s| {
                scope.holds(s, &named)
            });
            for s in stale {
                log::info!("releasing {} (no longer this node's subnet)", s.subnet);
                let key = keys.subnet(s.subnet);
                let grace = keys.subnet_grace(s.subnet);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        s.mod_revision,
                    )])
                    .and_then([
                        TxnOp::delete(key.as_str(), None),
                        TxnOp::delete(grace.as_str(), None),
                    ]);
                self.client.txn(txn).await?;
            }
            if let Some(own) = own.filter(|o| !require || Some(o.subnet) == preferred) {
                let unchanged = Compare::mod_revision(
                    keys.subnet(own.subnet),
                    CompareOp::Equal,
                    own.mod_revision,
                );
                let own_grace = graces
                    .iter()
                    .find(|g| g.subnet == own.subnet && g.owner.as_deref() == Some(node));
                let grace_kept = self.times.grace == 0 || own_grace.is_some_and(|g| g.lease != 0);
                if own.lease != 0 && grace_kept {
                    return Ok(Leased {
                        subnet: own.subnet,
                        lease_id: own.lease,
                        grace_lease_id: own_grace.map_or(0, |g| g.lease),
                        reused: true,
                    });
                }
                // Ours but bound to no lease (written by hand?) or without
                // its grace key (an older agent): bind both to new leases.
                if let Some(leased) = self
                    .claim(own.subnet, unchanged, grace_seen(own.subnet))
                    .await?
                {
                    return Ok(Leased {
                        reused: true,
                        ..leased
                    });
                }
                continue;
            }
            let taken = taken_for(node, &listing, &graces);
            if require {
                let wanted = preferred.expect("require comes with a preferred subnet");
                if taken.contains(&wanted) {
                    let holder = listing
                        .iter()
                        .chain(&graces)
                        .find(|s| s.subnet == wanted)
                        .and_then(|s| s.owner.clone());
                    return Err(LeaseError::SubnetTaken {
                        wanted,
                        owner: holder.unwrap_or_else(|| "?".into()),
                    });
                }
            }
            let candidate = choose_subnet(config, &taken, preferred, seed(node, attempt)).ok_or(
                LeaseError::Exhausted {
                    network: config.network,
                    subnet_len: config.subnet_len,
                    count: config.subnet_count(),
                },
            )?;
            let absent = Compare::create_revision(keys.subnet(candidate), CompareOp::Equal, 0);
            if let Some(leased) = self.claim(candidate, absent, grace_seen(candidate)).await? {
                return Ok(leased);
            }
            log::debug!("{candidate} was taken by another agent first; trying again");
        }
        Err(LeaseError::Contention)
    }

    /// Write this node's claim on `subnet` bound to the lease of this call,
    /// and its grace key bound to the grace lease of this call, if `when`
    /// holds and the grace key is still at revision `grace_seen` (0: none,
    /// else this node's: see [`taken_for`]); what it leased when it did.
    async fn claim(
        &mut self,
        subnet: Ipv4Network,
        when: Compare,
        grace_seen: i64,
    ) -> Result<Option<Leased>, LeaseError> {
        let lease = match self.granted {
            Some(id) => id,
            None => {
                let id = self.client.lease_grant(self.times.ttl, None).await?.id();
                self.granted = Some(id);
                id
            }
        };
        let claim = serde_json::to_string(&SubnetClaim {
            node: self.node.to_string(),
        })
        .expect("claim serializes");
        let grace_key = self.keys.subnet_grace(subnet);
        let mut puts = vec![TxnOp::put(
            self.keys.subnet(subnet),
            claim.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let mut grace_lease = 0;
        if self.times.grace > 0 {
            grace_lease = match self.granted_grace {
                Some(id) => id,
                None => {
                    let ttl = self.times.ttl + self.times.grace;
                    let id = self.client.lease_grant(ttl, None).await?.id();
                    self.granted_grace = Some(id);
                    id
                }
            };
            puts.push(TxnOp::put(
                grace_key.as_str(),
                claim,
                Some(PutOptions::new().with_lease(grace_lease)),
            ));
        }
        let txn = Txn::new()
            .when([
                when,
                Compare::mod_revision(grace_key.as_str(), CompareOp::Equal, grace_seen),
            ])
            .and_then(puts);
        let done = self.client.txn(txn).await?.succeeded();
        Ok(done.then_some(Leased {
            subnet,
            lease_id: lease,
            grace_lease_id: grace_lease,
            reused: false,
        }))
    }
}

/// Write this node's record at `key` (`<prefix>/nodes/<node>`, or a named
/// network's `<prefix>/network-nodes/<network>/<node>`) under its lease.
pub async fn publish_record(
    client: &mut Client,
    key: &str,
    record: &NodeRecord,
    lease_id: i64,
) -> Result<(), LeaseError> {
    let json = serde_json::to_string(record).expect("node record serializes");
    client
        .put(key, json, Some(PutOptions::new().with_lease(lease_id)))
        .await?;
    Ok(())
}

/// Whether the etcd lease still exists (keys bound to it are still there).
pub async fn lease_alive(client: &mut Client, lease_id: i64) -> Result<bool, LeaseError> {
    let resp = client.lease_time_to_live(lease_id, None).await?;
    Ok(resp.ttl() > 0)
}

/// Delete this node's record, subnet and grace keys and revoke their leases
/// (the node leaves the cluster: its subnet is free at once).
pub async fn release(
    client: &mut Client,
    keys: &Keys,
    node: &str,
) -> Result<Vec<Ipv4Network>, LeaseError> {
    release_where(client, keys, node, |_| true, &keys.node(node)).await
}

/// Take this node out of named network `network` (the network was
/// removed): its subnet there is free at once, its record there is gone.
pub async fn release_named(
    client: &mut Client,
    keys: &Keys,
    node: &str,
    network: Ipv4Network,
    record_key: &str,
) -> Result<Vec<Ipv4Network>, LeaseError> {
    let scope = Scope::Named(network);
    release_where(client, keys, node, |s| scope.holds(s, &[]), record_key).await
}

/// Delete `node`'s subnet and grace keys that `in_scope` holds, revoke
/// their leases, and delete the record at `record_key`.
async fn release_where(
    client: &mut Client,
    keys: &Keys,
    node: &str,
    in_scope: impl Fn(Ipv4Network) -> bool,
    record_key: &str,
) -> Result<Vec<Ipv4Network>, LeaseError> {
    let listing = list_subnets(client, keys).await?;
    let mut released = Vec::new();
    let mine = |owner: &Option<String>, subnet| owner.as_deref() == Some(node) && in_scope(subnet);
    for s in listing.iter().filter(|s| mine(&s.owner, s.subnet)) {
        client.delete(keys.subnet(s.subnet), None).await?;
        if s.lease != 0 {
            let _ = client.lease_revoke(s.lease).await;
        }
        released.push(s.subnet);
    }
    for g in list_graces(client, keys).await? {
        if mine(&g.owner, g.subnet) {
            client.delete(keys.subnet_grace(g.subnet), None).await?;
            if g.lease != 0 {
                let _ = client.lease_revoke(g.lease).await;
            }
        }
    }
    client.delete(record_key, None).await?;
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
            ipv6_network: None,
            ipv6_subnet_len: 64,
            direct_routing: false,
            mtu: None,
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
    fn a_subnet_in_another_nodes_grace_is_taken_but_not_for_its_owner() {
        let held = |s: &str, owner: Option<&str>| LeasedSubnet {
            subnet: net(s),
            owner: owner.map(str::to_owned),
            lease: 5,
            mod_revision: 1,
        };
        let subnets = [held("10.244.1.0/24", Some("a"))];
        let graces = [
            held("10.244.1.0/24", Some("a")),
            held("10.244.2.0/24", Some("dead")),
            held("10.244.3.0/24", None),
        ];
        let for_b = taken_for("b", &subnets, &graces);
        let want: HashSet<_> = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
            .into_iter()
            .map(net)
            .collect();
        assert_eq!(for_b, want);
        // The dead node itself may take its subnet back.
        let for_dead = taken_for("dead", &subnets, &graces);
        assert!(!for_dead.contains(&net("10.244.2.0/24")));
        assert!(for_dead.contains(&net("10.244.3.0/24")));
        let c = config("10.244.0.0/16", 24);
        assert_eq!(
            choose_subnet(&c, &for_dead, Some(net("10.244.2.0/24")), 0),
            Some(net("10.244.2.0/24"))
        );
        assert_ne!(
            choose_subnet(&c, &for_b, Some(net("10.244.2.0/24")), 0),
            Some(net("10.244.2.0/24"))
        );
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
        let all = |_| true;
        let listing = vec![
            l("10.244.1.0/24", "a"),
            l("10.244.2.0/24", "b"),
            l("10.244.3.0/24", "a"),
            l("10.99.0.0/24", "a"),
        ];
        let (own, stale) = own_subnet(&c, &listing, "a", Some(net("10.244.3.0/24")), all);
        assert_eq!(own.unwrap().subnet, net("10.244.3.0/24"));
        let mut stale: Vec<_> = stale.iter().map(|s| s.subnet).collect();
        stale.sort();
        assert_eq!(stale, vec![net("10.99.0.0/24"), net("10.244.1.0/24")]);
        let (own, _) = own_subnet(&c, &listing, "a", None, all);
        assert_eq!(own.unwrap().subnet, net("10.244.1.0/24"));
        let (own, stale) = own_subnet(&c, &listing, "c", None, all);
        assert!(own.is_none() && stale.is_empty());
        // A subnet outside the (changed) network is not kept.
        let (own, stale) = own_subnet(&c, &listing[3..], "a", None, all);
        assert!(own.is_none());
        assert_eq!(stale.len(), 1);
    }

    #[test]
    fn each_network_keeps_and_releases_only_its_own_subnets() {
        let l = |s: &str| LeasedSubnet {
            subnet: net(s),
            owner: Some("a".into()),
            lease: 5,
            mod_revision: 1,
        };
        let listing = vec![
            l("10.244.1.0/24"),
            l("10.0.3.0/24"),
            l("10.0.4.0/26"),
            l("10.99.0.0/24"),
        ];
        let named = [net("10.0.0.0/16")];
        // The default network keeps its own and releases the subnet of an
        // earlier default network, never a named network's.
        let default = config("10.244.0.0/16", 24);
        let (own, stale) = own_subnet(&default, &listing, "a", None, |s| {
            Scope::Default.holds(s, &named)
        });
        assert_eq!(own.unwrap().subnet, net("10.244.1.0/24"));
        let stale: Vec<_> = stale.iter().map(|s| s.subnet).collect();
        assert_eq!(stale, [net("10.99.0.0/24")]);
        // The named network keeps its own and releases one of a length it
        // no longer has, never the default network's.
        let multihost = config("10.0.0.0/16", 24);
        let scope = Scope::Named(multihost.network);
        let (own, stale) = own_subnet(&multihost, &listing, "a", None, |s| scope.holds(s, &[]));
        assert_eq!(own.unwrap().subnet, net("10.0.3.0/24"));
        let stale: Vec<_> = stale.iter().map(|s| s.subnet).collect();
        assert_eq!(stale, [net("10.0.4.0/26")]);
    }
}
