//! The lease's decisions, pure: which subnet to take, which of a node's
//! subnet keys it keeps, which subnets are not free for it.

use super::claims::LeasedSubnet;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::network::overlaps;

/// Pick a subnet: `preferred` when it fits and is free, else the first free
/// one from a position given by `seed` (so that agents starting together
/// rarely race for the same subnet).
pub fn choose_subnet(
    config: &ClusterConfig,
    taken: &HashSet<IpNetwork>,
    preferred: Option<IpNetwork>,
    seed: u64,
) -> Option<IpNetwork> {
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
    Named(IpNetwork),
}

impl Scope {
    /// Whether `subnet` is this scope's, the named networks being `named`.
    pub fn holds(&self, subnet: IpNetwork, named: &[IpNetwork]) -> bool {
        match self {
            Scope::Default => !named.iter().any(|n| overlaps(*n, subnet)),
            Scope::Named(net) => overlaps(*net, subnet),
        }
    }
}

/// Of the subnet keys naming `node` that `in_scope` holds, the one it
/// keeps: `preferred` if it is among them, else the first that fits the
/// network. The others are to be released.
pub fn own_subnet<'a>(
    config: &ClusterConfig,
    listing: &'a [LeasedSubnet],
    node: &str,
    preferred: Option<IpNetwork>,
    in_scope: impl Fn(IpNetwork) -> bool,
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

pub(super) fn seed(node: &str, attempt: usize) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(node.as_bytes());
    h.write_usize(attempt);
    h.write_u32(std::process::id());
    h.finish()
}

/// The subnets no other node than `node` may lease now: every subnet key,
/// and the grace keys of other nodes (or unreadable ones).
pub fn taken_for(
    node: &str,
    subnets: &[LeasedSubnet],
    graces: &[LeasedSubnet],
) -> HashSet<IpNetwork> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 cluster, or an IPv6-only one for an IPv6 `network`.
    fn config(network: &str, len: u8) -> ClusterConfig {
        let v6 = network.contains(':');
        ClusterConfig {
            network: (!v6).then(|| network.parse().unwrap()),
            subnet_len: if v6 { 24 } else { len },
            vni: 1,
            port: 8472,
            ipv6_network: v6.then(|| network.parse().unwrap()),
            ipv6_subnet_len: if v6 { len } else { 64 },
            direct_routing: false,
            mtu: None,
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
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
    fn an_ipv6_only_cluster_leases_ipv6_subnets() {
        let c = config("fd10:244::/62", 64); // 4 subnets
        let mut taken = HashSet::new();
        for seed in [0u64, 1, 2, 3] {
            let s = choose_subnet(&c, &taken, None, seed * 7919).unwrap();
            assert!(s.is_ipv6() && c.fits(s), "{s}");
            assert!(taken.insert(s), "{s} handed out twice");
        }
        assert_eq!(choose_subnet(&c, &taken, None, 5), None);
        // The preferred one (a kept node.json) when it is free; an IPv4
        // one never fits.
        let c = config("fd10:244::/56", 64);
        let want = net("fd10:244:0:9::/64");
        assert_eq!(
            choose_subnet(&c, &HashSet::new(), Some(want), 0),
            Some(want)
        );
        let got = choose_subnet(&c, &HashSet::new(), Some(net("10.244.9.0/24")), 0).unwrap();
        assert!(got.is_ipv6(), "{got}");
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
        let scope = Scope::Named(multihost.lease_network());
        let (own, stale) = own_subnet(&multihost, &listing, "a", None, |s| scope.holds(s, &[]));
        assert_eq!(own.unwrap().subnet, net("10.0.3.0/24"));
        let stale: Vec<_> = stale.iter().map(|s| s.subnet).collect();
        assert_eq!(stale, [net("10.0.4.0/26")]);
    }
}
