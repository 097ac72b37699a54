//! Properties of the overlay plan (`overlay::plan`): for any desired set of
//! remote nodes and any state the kernel may hold on the VXLAN device
//! (entries of departed nodes, stale MACs and addresses, ARP leftovers,
//! routes with other gateways or metrics, entries missing), applying the
//! plan the way the kernel applies it yields exactly the desired entries,
//! a second plan is empty, and no entry that is already right is touched;
//! with routes through nexthop objects and with gateway routes alike, for
//! IPv4-only and dual-stack nodes mixed.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use trellis_agent::overlay::desired::vtep_ip_of;
use trellis_agent::overlay::plan::{nexthop_id, overlay_nexthop};
use trellis_agent::overlay::{
    plan, ActualOverlay, DesiredOverlay, Op, Plan, Remote6, RemoteNode, RouteStyle,
};
use trellis_kernel::fdb::FdbEntry;
use trellis_kernel::neigh::NeighbourEntry;
use trellis_kernel::{MacAddr, Nexthop, Route};

/// The VXLAN device's index in these states.
const IFINDEX: u32 = 7;

/// Node `i`'s subnet, 10.244.i.0/24.
fn subnet(i: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap()
}

/// Node `i`'s IPv6 subnet, fd10:244:0:i::/64.
fn subnet6(i: u8) -> Ipv6Network {
    format!("fd10:244:0:{i:x}::/64").parse().unwrap()
}

/// A remote node per index, as `DesiredOverlay::from_records` admits them:
/// subnets, MACs and public IPs all distinct; two in three dual-stack.
fn desired_strategy() -> impl Strategy<Value = DesiredOverlay> {
    prop::collection::btree_map(1u8..40, (any::<[u8; 4]>(), 2u8..5), 0..12).prop_map(|picks| {
        DesiredOverlay {
            nodes: picks
                .into_iter()
                .map(|(i, (mac, net))| {
                    let node = RemoteNode {
                        subnet: subnet(i),
                        vtep_ip: vtep_ip_of(subnet(i)),
                        vtep_mac: MacAddr([2, mac[0], mac[1], mac[2], mac[3], i]),
                        public_ip: IpAddr::V4(Ipv4Addr::new(192, 0, net, i)),
                        ipv6: (i % 3 != 0).then(|| Remote6 {
                            subnet: subnet6(i),
                            vtep_ip: subnet6(i).network(),
                        }),
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
            p.ips.push(n.vtep_ip);
            p.subnets.push(IpNetwork::V4(n.subnet));
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
        for (dst, via, onlink, metric, nexthop) in routes {
            if seen.insert((dst, metric.unwrap_or(0))) {
                let mut r = Route::to(dst).dev(IFINDEX);
                r.gateway = via;
                r.onlink = onlink;
                r.metric = metric;
                r.nexthop = nexthop.map(nexthop_id);
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

fn case() -> impl Strategy<Value = (DesiredOverlay, ActualOverlay, RouteStyle)> {
    desired_strategy().prop_flat_map(|d| {
        let palette = Palette::of(&d);
        (
            Just(d),
            actual_strategy(palette),
            prop::sample::select(vec![RouteStyle::Nexthop, RouteStyle::Gateway]),
        )
    })
}

/// The state after the kernel applied `plan` to `actual`: removals first
/// (the kernel model is `ActualOverlay::apply`).
fn apply(actual: &ActualOverlay, plan: &Plan, style: RouteStyle) -> ActualOverlay {
    let mut a = actual.clone();
    for op in plan.phases().into_iter().flatten() {
        a.apply(op, style, IFINDEX);
    }
    a
}

/// A route as compared: destination, gateway, onlink, metric, nexthop.
type RouteKey = (IpNetwork, Option<IpAddr>, bool, u32, Option<u32>);

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
    (r.dst, r.gateway, r.onlink, r.metric.unwrap_or(0), r.nexthop)
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

fn wanted(d: &DesiredOverlay, style: RouteStyle) -> Entries {
    entries_of(&ActualOverlay::after(d, IFINDEX, style))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn applying_the_plan_to_any_state_yields_the_desired_one((desired, actual, style) in case()) {
        let p = plan(&desired, &actual, style);
        let after = apply(&actual, &p, style);
        prop_assert_eq!(entries_of(&after), wanted(&desired, style), "plan {:#?}", p);
        let again = plan(&desired, &after, style);
        prop_assert!(again.is_empty(), "second plan {:#?}", again);
    }

    #[test]
    fn entries_already_right_are_left_alone((desired, actual, style) in case()) {
        let p = plan(&desired, &actual, style);
        let want = wanted(&desired, style);
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
        for op in &p.additions {
            let already = match op {
                Op::SetFdb { mac, dst } => before.0.contains(&(*mac, Some(*dst))),
                Op::SetNeighbour { ip, mac } => before.1.get(ip) == Some(&(Some(*mac), true)),
                Op::SetRoute { dst, via } => {
                    let route = trellis_agent::overlay::plan::overlay_route(style, IFINDEX, *dst, *via);
                    before.2.contains(&route_key(&route))
                        && match (style, via) {
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
        style in prop::sample::select(vec![RouteStyle::Nexthop, RouteStyle::Gateway]),
    ) {
        let (was, now) = old.delta(&new);
        let p = plan(&now, &ActualOverlay::after(&was, IFINDEX, style), style);
        let after = apply(&ActualOverlay::after(&old, IFINDEX, style), &p, style);
        prop_assert_eq!(entries_of(&after), wanted(&new, style), "plan {:#?}", p);
    }
}
