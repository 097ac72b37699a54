//! Properties of the overlay plan (`overlay::plan`): for any desired set of
//! remote nodes and any state the kernel may hold on the VXLAN device
//! (entries of departed nodes, stale MACs and addresses, ARP leftovers,
//! routes with other gateways or metrics, entries missing), applying the
//! plan the way the kernel applies it yields exactly the desired entries,
//! a second plan is empty, and no entry that is already right is touched;
//! with routes through nexthop objects and with gateway routes alike, for
//! IPv4-only and dual-stack nodes mixed, with direct routing off and on
//! (some nodes on the underlay's subnets, routes on both devices).

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use trellis_agent::overlay::desired::Remote4;
use trellis_agent::overlay::paths::{nexthop_id, overlay_nexthop, style_of};
use trellis_agent::overlay::{
    plan, ActualOverlay, DesiredOverlay, Hop, Op, Paths, Plan, Remote6, RemoteNode, RouteStyle,
    Underlay,
};
use trellis_kernel::fdb::FdbEntry;
use trellis_kernel::neigh::NeighbourEntry;
use trellis_kernel::{MacAddr, Nexthop, Route};

/// The VXLAN device's index in these states.
const IFINDEX: u32 = 7;
/// The underlay device's.
const UNDERLAY: u32 = 2;

/// Node `i`'s subnet, 10.244.i.0/24.
fn subnet(i: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap()
}

/// Node `i`'s IPv6 subnet, fd10:244:0:i::/64.
fn subnet6(i: u8) -> Ipv6Network {
    format!("fd10:244:0:{i:x}::/64").parse().unwrap()
}

/// A remote node per index, as `DesiredOverlay::from_records` admits them:
/// subnets, MACs and public IPs all distinct; two in three dual-stack, and
/// a quarter of those IPv6-only.
fn desired_strategy() -> impl Strategy<Value = DesiredOverlay> {
    prop::collection::btree_map(1u8..40, (any::<[u8; 4]>(), 2u8..5), 0..12).prop_map(|picks| {
        DesiredOverlay {
            nodes: picks
                .into_iter()
                .map(|(i, (mac, net))| {
                    let node = RemoteNode {
                        ipv4: (i % 3 == 0 || i % 4 != 1).then(|| Remote4::of(subnet(i))),
                        vtep_mac: MacAddr([2, mac[0], mac[1], mac[2], mac[3], i]),
                        public_ip: IpAddr::V4(Ipv4Addr::new(192, 0, net, i)),
                        ipv6: (i % 3 != 0).then(|| Remote6::of(subnet6(i))),
                    };
                    (format!("node{i}"), node)
                })
                .collect(),
        }
    })
}

/// Values an actual entry is drawn from: mostly those of the desired nodes
/// (right, or mixed up between nodes), some from nowhere.
#[derive(Debug, Clone)]
struct Palette {
    macs: Vec<MacAddr>,
    /// IPv4 addresses (FDB destinations, nexthop gateways).
    ips: Vec<Ipv4Addr>,
    /// Addresses of both families (neighbours, route gateways).
    addrs: Vec<IpAddr>,
    subnets: Vec<IpNetwork>,
}

impl Palette {
    fn of(desired: &DesiredOverlay) -> Palette {
        let mut p = Palette {
            macs: vec![MacAddr([2, 9, 9, 9, 9, 9]), MacAddr([0; 6])],
            ips: vec![Ipv4Addr::new(203, 0, 113, 5), Ipv4Addr::new(10, 244, 50, 0)],
            addrs: vec!["fd10:244:0:50::".parse().unwrap()],
            subnets: vec![
                IpNetwork::V4(subnet(50)),
                IpNetwork::V4(subnet(51)),
                IpNetwork::V6(subnet6(50)),
            ],
        };
        for n in desired.nodes.values() {
            p.macs.push(n.vtep_mac);
            if let IpAddr::V4(public) = n.public_ip {
                p.ips.push(public);
            }
            if let Some(v4) = n.ipv4 {
                p.ips.push(v4.vtep_ip);
                p.subnets.push(IpNetwork::V4(v4.subnet));
            }
            if let Some(v6) = n.ipv6 {
                p.addrs.push(IpAddr::V6(v6.vtep_ip));
                p.subnets.push(IpNetwork::V6(v6.subnet));
            }
        }
        p.addrs.extend(p.ips.iter().map(|ip| IpAddr::V4(*ip)));
        p
    }
}

/// What the kernel may hold: FDB entries unique by (MAC, destination),
/// neighbours unique by address, routes unique by (destination, metric),
/// nexthops by id, as the kernel keys them; routes through a nexthop of
/// the state or through one gone.
fn actual_strategy(palette: Palette) -> impl Strategy<Value = ActualOverlay> {
    let (macs, ips, addrs, subnets) = (palette.macs, palette.ips, palette.addrs, palette.subnets);
    let nexthops = prop::collection::vec(
        (
            prop::sample::select(ips.clone()),
            prop::sample::select(ips.clone()),
            any::<bool>(),
        ),
        0..12,
    );
    let fdb = prop::collection::vec(
        (
            prop::sample::select(macs.clone()),
            prop::option::weighted(0.9, prop::sample::select(ips.clone())),
        ),
        0..16,
    );
    let neighbours = prop::collection::vec(
        (
            prop::sample::select(addrs.clone()),
            prop::option::weighted(0.8, prop::sample::select(macs)),
            any::<bool>(),
        ),
        0..16,
    );
    let routes = prop::collection::vec(
        (
            prop::sample::select(subnets),
            prop::option::weighted(0.9, prop::sample::select(addrs)),
            any::<bool>(),
            prop::sample::select(vec![None, Some(0), Some(100)]),
            prop::option::weighted(0.5, prop::sample::select(ips.clone())),
            any::<bool>(),
        ),
        0..16,
    );
    (fdb, neighbours, routes, nexthops).prop_map(|(fdb, neighbours, routes, nexthops)| {
        let mut a = ActualOverlay::default();
        let mut seen = BTreeSet::new();
        for (mac, dst) in fdb {
            if seen.insert((mac, dst)) {
                a.fdb.push(FdbEntry {
                    mac,
                    dst: dst.map(IpAddr::V4),
                });
            }
        }
        let mut seen = BTreeSet::new();
        for (ip, mac, permanent) in neighbours {
            if seen.insert(ip) {
                a.neighbours.push(NeighbourEntry { ip, mac, permanent });
            }
        }
        let mut seen = BTreeSet::new();
        for (dst, via, onlink, metric, nexthop, on_underlay) in routes {
            if seen.insert((dst, metric.unwrap_or(0))) {
                // A route on the underlay device is a direct one (no nexthop).
                let mut r = Route::to(dst).dev(if on_underlay { UNDERLAY } else { IFINDEX });
                r.gateway = via;
                r.onlink = onlink;
                r.metric = metric;
                r.nexthop = nexthop.filter(|_| !on_underlay).map(nexthop_id);
                a.routes.push(r);
            }
        }
        let mut seen = BTreeSet::new();
        for (id_of, gateway, onlink) in nexthops {
            if seen.insert(id_of) {
                a.nexthops.push(Nexthop {
                    id: nexthop_id(id_of),
                    gateway: IpAddr::V4(gateway),
                    oif: IFINDEX,
                    onlink,
                });
            }
        }
        // The kernel reports a route through a nexthop with the nexthop's
        // gateway and flags, and has none through a nexthop it lacks.
        let nexthops = a.nexthops.clone();
        a.routes.retain_mut(|r| match r.nexthop {
            None => true,
            Some(id) => match nexthops.iter().find(|n| n.id == id) {
                Some(n) => {
                    r.gateway = Some(n.gateway);
                    r.onlink = n.onlink;
                    true
                }
                None => false,
            },
        });
        a
    })
}

/// Both route styles; direct routing off, or on with the underlay on one
/// or two of the subnets the nodes' public addresses are drawn from.
fn paths_strategy() -> impl Strategy<Value = Paths> {
    let direct: Vec<Vec<IpNetwork>> = vec![
        vec![],
        vec!["192.0.2.0/24".parse().unwrap()],
        vec![
            "192.0.2.0/24".parse().unwrap(),
            "192.0.3.0/24".parse().unwrap(),
        ],
    ];
    (
        prop::sample::select(vec![RouteStyle::Nexthop, RouteStyle::Gateway]),
        prop::sample::select(direct),
    )
        .prop_map(|(style, direct)| Paths {
            style,
            vxlan: IFINDEX,
            underlay: Some(Underlay {
                ifindex: UNDERLAY,
                direct,
            }),
        })
}

fn case() -> impl Strategy<Value = (DesiredOverlay, ActualOverlay, Paths)> {
    desired_strategy().prop_flat_map(|d| {
        let palette = Palette::of(&d);
        (Just(d), actual_strategy(palette), paths_strategy())
    })
}

/// The state after the kernel applied `plan` to `actual`, phase by phase
/// (the kernel model is `ActualOverlay::apply`).
fn apply(actual: &ActualOverlay, plan: &Plan, paths: &Paths) -> ActualOverlay {
    let mut a = actual.clone();
    for op in plan.phases().into_iter().flatten() {
        a.apply(op, paths);
    }
    a
}

/// A route as compared: destination, gateway, device, onlink, metric,
/// nexthop.
type RouteKey = (
    IpNetwork,
    Option<IpAddr>,
    Option<u32>,
    bool,
    u32,
    Option<u32>,
);

/// The entries of the desired state, and of a kernel state, compared as
/// sets of what matters: FDB (MAC, destination), neighbours (address, MAC,
/// permanent), routes, nexthops.
type Entries = (
    BTreeSet<(MacAddr, Option<IpAddr>)>,
    BTreeMap<IpAddr, (Option<MacAddr>, bool)>,
    Vec<RouteKey>,
    BTreeSet<Nexthop>,
);

fn route_key(r: &Route) -> RouteKey {
    (
        r.dst,
        r.gateway,
        r.oif,
        r.onlink,
        r.metric.unwrap_or(0),
        r.nexthop,
    )
}

fn entries_of(a: &ActualOverlay) -> Entries {
    let mut routes: Vec<_> = a.routes.iter().map(route_key).collect();
    routes.sort();
    (
        a.fdb.iter().map(|e| (e.mac, e.dst)).collect(),
        a.neighbours
            .iter()
            .map(|n| (n.ip, (n.mac, n.permanent)))
            .collect(),
        routes,
        a.nexthops.iter().copied().collect(),
    )
}

fn wanted(d: &DesiredOverlay, paths: &Paths) -> Entries {
    entries_of(&ActualOverlay::after(d, paths))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn applying_the_plan_to_any_state_yields_the_desired_one((desired, actual, paths) in case()) {
        let p = plan(&desired, &actual, &paths);
        let after = apply(&actual, &p, &paths);
        prop_assert_eq!(entries_of(&after), wanted(&desired, &paths), "plan {:#?}", p);
        let again = plan(&desired, &after, &paths);
        prop_assert!(again.is_empty(), "second plan {:#?}", again);
    }

    /// A subnet reached directly has its route on the underlay device and
    /// never anything on the VXLAN device; a node reached only directly
    /// has no FDB entry either.
    #[test]
    fn direct_nodes_leave_the_vxlan_device_alone((desired, _actual, paths) in case()) {
        let after = ActualOverlay::after(&desired, &paths);
        for node in desired.nodes.values() {
            let hops: Vec<(IpNetwork, Hop)> = paths.hops(node).collect();
            for (dst, hop) in &hops {
                let route = after.routes.iter().find(|r| r.dst == *dst).unwrap();
                match hop {
                    Hop::Direct(via) => {
                        prop_assert_eq!((route.oif, route.gateway), (Some(UNDERLAY), Some(*via)));
                        prop_assert_eq!(*via, node.public_ip);
                    }
                    Hop::Overlay(via) => {
                        prop_assert_eq!(route.gateway, Some(*via));
                        prop_assert!(after.neighbours.iter().any(|n| n.ip == *via));
                    }
                }
            }
            let fdb = after.fdb.iter().any(|e| e.mac == node.vtep_mac);
            // The IPv4 subnet (of the underlay's family) is direct exactly
            // when the public IP is on a direct prefix.
            if let Some((_, hop)) = hops.iter().find(|(dst, _)| dst.is_ipv4()) {
                let direct_v4 = matches!(hop, Hop::Direct(_));
                prop_assert_eq!(direct_v4, paths.underlay.as_ref().unwrap().direct.iter().any(|s| s.contains(node.public_ip)));
            }
            prop_assert_eq!(fdb, hops.iter().any(|(_, h)| matches!(h, Hop::Overlay(_))));
        }
    }

    #[test]
    fn entries_already_right_are_left_alone((desired, actual, paths) in case()) {
        let style = paths.style;
        let p = plan(&desired, &actual, &paths);
        let want = wanted(&desired, &paths);
        // The right entries of `actual`, each counted once (a duplicate
        // route of the same path may go).
        for op in p.removals.iter().chain(&p.nexthop_removals) {
            match op {
                Op::DelFdb(e) => prop_assert!(!want.0.contains(&(e.mac, e.dst)), "{:?}", op),
                Op::DelNeighbour(ip) => prop_assert!(
                    !want.1.contains_key(ip)
                        || actual.neighbours.iter().all(|n| n.ip != *ip
                            || want.1[ip] != (n.mac, n.permanent)),
                    "{:?}", op
                ),
                Op::DelRoute(r) => prop_assert!(!want.2.contains(&route_key(r)), "{:?}", op),
                Op::DelNexthop(id) => prop_assert!(
                    !want.3.iter().any(|n| n.id == *id), "{:?}", op
                ),
                other => prop_assert!(false, "a removal that is not one: {:?}", other),
            }
        }
        let before = entries_of(&actual);
        for op in p.direct.iter().chain(&p.additions) {
            let already = match op {
                Op::SetFdb { mac, dst } => before.0.contains(&(*mac, Some(*dst))),
                Op::SetNeighbour { ip, mac } => before.1.get(ip) == Some(&(Some(*mac), true)),
                Op::SetDirectRoute { dst, via } => {
                        before.2.contains(&route_key(&paths.route(*dst, Hop::Direct(*via))))
                }
                Op::SetRoute { dst, via } => {
                    let route = paths.route(*dst, Hop::Overlay(*via));
                    before.2.contains(&route_key(&route))
                        && match (style_of(style, *via), via) {
                            (RouteStyle::Nexthop, IpAddr::V4(v4)) => {
                                before.3.contains(&overlay_nexthop(IFINDEX, *v4))
                            }
                            _ => true,
                        }
                }
                other => {
                    prop_assert!(false, "an addition that is not one: {:?}", other);
                    false
                }
            };
            prop_assert!(!already, "{:?} rewrites an entry that is right", op);
        }
    }

    /// A change planned for the changed nodes only (as the reconciler does
    /// between dumps), applied to the whole kernel state, yields the new
    /// desired state exactly.
    #[test]
    fn a_delta_plan_yields_the_new_state(
        old in desired_strategy(),
        new in desired_strategy(),
        paths in paths_strategy(),
    ) {
        let (was, now) = old.delta(&new);
        let p = plan(&now, &ActualOverlay::after(&was, &paths), &paths);
        let after = apply(&ActualOverlay::after(&old, &paths), &p, &paths);
        prop_assert_eq!(entries_of(&after), wanted(&new, &paths), "plan {:#?}", p);
    }
}
