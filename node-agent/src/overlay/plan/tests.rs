//! The plan's cases, in both route styles.

use super::*;
use crate::overlay::desired::{Remote4, Remote6, RemoteNode};
use crate::overlay::paths::overlay_route;
use ipnetwork::Ipv4Network;

fn node(i: u8) -> RemoteNode {
    let subnet: Ipv4Network = format!("10.244.{i}.0/24").parse().unwrap();
    RemoteNode {
        ipv4: Some(Remote4::of(subnet)),
        vtep_mac: MacAddr([2, 0, 0, 0, 0, i]),
        public_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)),
        ipv6: None,
    }
}

/// Node `i` of a dual-stack cluster: fd10:244:0:<i>::/64 beside its IPv4.
fn node6(i: u8) -> RemoteNode {
    let subnet: ipnetwork::Ipv6Network = format!("fd10:244:0:{i:x}::/64").parse().unwrap();
    RemoteNode {
        ipv6: Some(Remote6 {
            subnet,
            vtep_ip: subnet.network(),
        }),
        ..node(i)
    }
}

fn v4(n: Ipv4Network) -> IpNetwork {
    IpNetwork::V4(n)
}

fn desired(ids: &[u8]) -> DesiredOverlay {
    DesiredOverlay {
        nodes: ids.iter().map(|i| (format!("n{i}"), node(*i))).collect(),
    }
}

const G: RouteStyle = RouteStyle::Gateway;
const N: RouteStyle = RouteStyle::Nexthop;

/// The kernel state after applying `plan` to `actual` (removals first).
fn apply(actual: &ActualOverlay, plan: &Plan, style: RouteStyle) -> ActualOverlay {
    let mut a = actual.clone();
    for op in plan.phases().into_iter().flatten() {
        a.apply(op, &Paths::overlay(style, 1));
    }
    a
}

#[test]
fn the_state_after_a_plan_needs_no_further_plan() {
    let d = desired(&[1, 2, 3]);
    for style in [G, N] {
        assert!(plan(
            &d,
            &ActualOverlay::after(&d, &Paths::overlay(style, 1)),
            &Paths::overlay(style, 1)
        )
        .is_empty());
    }
    assert_eq!(ActualOverlay::after(&d, &Paths::overlay(G, 7)).fdb.len(), 3);
    assert!(ActualOverlay::after(&d, &Paths::overlay(G, 7))
        .nexthops
        .is_empty());
    assert_eq!(
        ActualOverlay::after(&d, &Paths::overlay(N, 7))
            .nexthops
            .len(),
        3
    );
}

#[test]
fn empty_kernel_gets_three_writes_per_node() {
    for style in [G, N] {
        let p = plan(
            &desired(&[2, 3]),
            &ActualOverlay::default(),
            &Paths::overlay(style, 1),
        );
        assert!(p.removals.is_empty());
        assert_eq!(p.additions.len(), 6);
        assert!(p.additions.contains(&Op::SetFdb {
            mac: node(2).vtep_mac,
            dst: node(2).public_ip
        }));
        assert!(p.additions.contains(&Op::SetNeighbour {
            ip: "10.244.3.0".parse().unwrap(),
            mac: node(3).vtep_mac
        }));
        assert!(p.additions.contains(&Op::SetRoute {
            dst: v4(node(3).ipv4.unwrap().subnet),
            via: IpAddr::V4(node(3).ipv4.unwrap().vtep_ip)
        }));
    }
}

#[test]
fn a_route_goes_through_the_nexthop_of_its_vtep() {
    let d = desired(&[3]);
    let after = apply(
        &ActualOverlay::default(),
        &plan(&d, &ActualOverlay::default(), &Paths::overlay(N, 1)),
        N,
    );
    assert_eq!(
        after.nexthops,
        vec![overlay_nexthop(1, node(3).ipv4.unwrap().vtep_ip)]
    );
    assert_eq!(after.nexthops[0].id, 0x0af4_0300); // 10.244.3.0
    assert_eq!(after.routes.len(), 1);
    assert_eq!(after.routes[0].nexthop, Some(0x0af4_0300));
    assert_eq!(after, ActualOverlay::after(&d, &Paths::overlay(N, 1)));
}

#[test]
fn converged_state_needs_nothing() {
    let d = desired(&[2, 3, 4]);
    for style in [G, N] {
        let empty = ActualOverlay::default();
        let after = apply(&empty, &plan(&d, &empty, &Paths::overlay(style, 1)), style);
        assert!(plan(&d, &after, &Paths::overlay(style, 1)).is_empty());
    }
}

#[test]
fn departed_node_entries_are_removed() {
    let d = desired(&[2, 3]);
    let empty = ActualOverlay::default();
    // Gateway routes: its FDB entry, neighbour and route.
    let full = apply(&empty, &plan(&d, &empty, &Paths::overlay(G, 1)), G);
    let p = plan(&desired(&[2]), &full, &Paths::overlay(G, 1));
    assert!(p.additions.is_empty());
    assert_eq!(p.removals.len(), 3);
    let after = apply(&full, &p, G);
    assert_eq!(
        (after.fdb.len(), after.neighbours.len(), after.routes.len()),
        (1, 1, 1)
    );
    // Nexthops: the route first, then its nexthop, no longer in use.
    let full = apply(&empty, &plan(&d, &empty, &Paths::overlay(N, 1)), N);
    let p = plan(&desired(&[2]), &full, &Paths::overlay(N, 1));
    assert!(p.additions.is_empty());
    assert_eq!(p.removals.len(), 3, "{p:#?}");
    assert!(p.removals.iter().any(
        |op| matches!(op, Op::DelRoute(r) if r.dst == IpNetwork::V4(node(3).ipv4.unwrap().subnet))
    ));
    assert_eq!(
        p.nexthop_removals,
        vec![Op::DelNexthop(nexthop_id(node(3).ipv4.unwrap().vtep_ip))]
    );
    let after = apply(&full, &p, N);
    assert_eq!(
        after,
        ActualOverlay::after(&desired(&[2]), &Paths::overlay(N, 1))
    );
}

#[test]
fn gateway_routes_left_by_an_older_agent_are_replaced_in_place() {
    let d = desired(&[2, 3]);
    let old = ActualOverlay::after(&d, &Paths::overlay(G, 1));
    let p = plan(&d, &old, &Paths::overlay(N, 1));
    // No removal: each route is replaced by one through a nexthop, with
    // no moment without a route.
    assert!(p.removals.is_empty(), "{p:#?}");
    assert_eq!(p.additions.len(), 2);
    assert_eq!(
        apply(&old, &p, N),
        ActualOverlay::after(&d, &Paths::overlay(N, 1))
    );
    // And back, in the gateway style: the nexthops go, the routes are
    // set again.
    let p = plan(
        &d,
        &ActualOverlay::after(&d, &Paths::overlay(N, 1)),
        &Paths::overlay(G, 1),
    );
    assert_eq!(p.additions.len(), 2);
    assert_eq!(p.nexthop_removals.len(), 2);
    assert_eq!(
        apply(&ActualOverlay::after(&d, &Paths::overlay(N, 1)), &p, G),
        ActualOverlay::after(&d, &Paths::overlay(G, 1))
    );
}

#[test]
fn a_wrong_nexthop_of_a_wanted_node_is_replaced_with_its_route() {
    let d = desired(&[2]);
    let wrong_gateway = |nh: &mut Nexthop| nh.gateway = "10.244.9.9".parse().unwrap();
    let not_onlink = |nh: &mut Nexthop| nh.onlink = false;
    for spoil in [&wrong_gateway as &dyn Fn(&mut Nexthop), &not_onlink] {
        let mut a = ActualOverlay::after(&d, &Paths::overlay(N, 1));
        spoil(&mut a.nexthops[0]);
        let p = plan(&d, &a, &Paths::overlay(N, 1));
        assert!(p.removals.is_empty());
        assert_eq!(
            p.additions,
            vec![Op::SetRoute {
                dst: v4(node(2).ipv4.unwrap().subnet),
                via: IpAddr::V4(node(2).ipv4.unwrap().vtep_ip)
            }]
        );
        assert_eq!(
            apply(&a, &p, N),
            ActualOverlay::after(&d, &Paths::overlay(N, 1))
        );
    }
}

#[test]
fn stale_mac_and_moved_node_are_fixed() {
    let d = desired(&[2]);
    let n = node(2);
    for style in [G, N] {
        let stale = ActualOverlay {
            fdb: vec![
                FdbEntry {
                    mac: MacAddr([2, 9, 9, 9, 9, 9]),
                    dst: Some(n.public_ip),
                },
                FdbEntry {
                    mac: n.vtep_mac,
                    dst: Some("198.51.100.1".parse().unwrap()),
                },
            ],
            neighbours: vec![NeighbourEntry {
                ip: IpAddr::V4(n.ipv4.unwrap().vtep_ip),
                mac: Some(MacAddr([2, 9, 9, 9, 9, 9])),
                permanent: true,
            }],
            routes: vec![overlay_route(
                G,
                1,
                v4(n.ipv4.unwrap().subnet),
                "10.244.9.0".parse().unwrap(),
            )],
            nexthops: Vec::new(),
        };
        let p = plan(&d, &stale, &Paths::overlay(style, 1));
        // Both FDB entries go; the neighbour and the route are replaced.
        assert_eq!(p.removals.len(), 2, "{p:#?}");
        let after = apply(&stale, &p, style);
        assert!(
            plan(&d, &after, &Paths::overlay(style, 1)).is_empty(),
            "{after:#?}"
        );
        assert_eq!(
            after.fdb,
            vec![FdbEntry {
                mac: n.vtep_mac,
                dst: Some(n.public_ip)
            }]
        );
    }
}

#[test]
fn leftovers_and_arp_junk_are_removed() {
    let junk = ActualOverlay {
        fdb: vec![FdbEntry {
            mac: MacAddr([0; 6]),
            dst: Some("203.0.113.5".parse().unwrap()),
        }],
        neighbours: vec![
            NeighbourEntry {
                ip: "10.244.50.0".parse().unwrap(),
                mac: None,
                permanent: false,
            },
            NeighbourEntry {
                ip: "10.244.51.0".parse().unwrap(),
                mac: Some(MacAddr([2, 1, 1, 1, 1, 1])),
                permanent: true,
            },
        ],
        routes: vec![
            overlay_route(
                G,
                1,
                "10.244.50.0/24".parse().unwrap(),
                "10.244.50.0".parse().unwrap(),
            ),
            Route {
                metric: Some(100),
                ..overlay_route(
                    G,
                    1,
                    "10.244.2.0/24".parse().unwrap(),
                    "10.244.2.0".parse().unwrap(),
                )
            },
        ],
        nexthops: vec![overlay_nexthop(1, "10.244.60.0".parse().unwrap())],
    };
    let d = desired(&[2]);
    for style in [G, N] {
        let p = plan(&d, &junk, &Paths::overlay(style, 1));
        assert_eq!(p.removals.len(), 5, "{p:#?}");
        assert_eq!(p.nexthop_removals.len(), 1, "{p:#?}");
        let after = apply(&junk, &p, style);
        assert!(plan(&d, &after, &Paths::overlay(style, 1)).is_empty());
        assert_eq!(after.routes.len(), 1);
        assert_eq!(after, ActualOverlay::after(&d, &Paths::overlay(style, 1)));
    }
}

#[test]
fn non_permanent_neighbour_of_a_wanted_node_is_replaced() {
    let n = node(2);
    let a = ActualOverlay {
        neighbours: vec![NeighbourEntry {
            ip: IpAddr::V4(n.ipv4.unwrap().vtep_ip),
            mac: Some(n.vtep_mac),
            permanent: false,
        }],
        ..Default::default()
    };
    let p = plan(&desired(&[2]), &a, &Paths::overlay(N, 1));
    assert!(p.removals.is_empty());
    assert!(p.additions.contains(&Op::SetNeighbour {
        ip: IpAddr::V4(n.ipv4.unwrap().vtep_ip),
        mac: n.vtep_mac
    }));
}

#[test]
fn an_ipv6_route_as_the_kernel_reports_it_at_metric_1024_is_the_wanted_one() {
    // Found by `trellisctl doctor` in the Kubernetes suite: the kernel gives
    // an IPv6 route written without a metric 1024, and every resync
    // replaced it again.
    for style in [G, N] {
        let d = DesiredOverlay {
            nodes: [("n2".to_string(), node6(2))].into(),
        };
        let mut kernel = ActualOverlay::after(&d, &Paths::overlay(style, 1));
        for r in kernel.routes.iter_mut().filter(|r| r.dst.is_ipv6()) {
            r.metric = Some(1024);
        }
        assert!(
            plan(&d, &kernel, &Paths::overlay(style, 1)).is_empty(),
            "{style:?}"
        );
        // Another metric is still a route of someone else's.
        for r in kernel.routes.iter_mut().filter(|r| r.dst.is_ipv6()) {
            r.metric = Some(100);
        }
        let p = plan(&d, &kernel, &Paths::overlay(style, 1));
        assert_eq!(p.removals.len(), 1, "{p:#?}");
        assert_eq!(p.additions.len(), 1, "{p:#?}");
    }
}

#[test]
fn a_dual_stack_node_gets_a_neighbour_and_a_gateway_route_per_family() {
    for style in [G, N] {
        let d = DesiredOverlay {
            nodes: [("n2".to_string(), node6(2)), ("n3".to_string(), node(3))].into(),
        };
        let p = plan(&d, &ActualOverlay::default(), &Paths::overlay(style, 1));
        let v6_gw: IpAddr = "fd10:244:0:2::".parse().unwrap();
        assert!(p.additions.contains(&Op::SetNeighbour {
            ip: v6_gw,
            mac: node(2).vtep_mac
        }));
        assert!(p.additions.contains(&Op::SetRoute {
            dst: "fd10:244:0:2::/64".parse().unwrap(),
            via: v6_gw
        }));
        // One FDB entry per node, whatever the families.
        let fdb = p
            .additions
            .iter()
            .filter(|o| matches!(o, Op::SetFdb { .. }));
        assert_eq!(fdb.count(), 2);
        let after = apply(&ActualOverlay::default(), &p, style);
        assert_eq!(after, ActualOverlay::after(&d, &Paths::overlay(style, 1)));
        // IPv6 routes name their gateway in both styles; no IPv6 nexthop.
        let r6 = after.routes.iter().find(|r| r.dst.is_ipv6()).unwrap();
        assert_eq!(
            (r6.nexthop, r6.gateway, r6.onlink),
            (None, Some(v6_gw), true)
        );
        assert_eq!(after.nexthops.len(), if style == N { 2 } else { 0 });
        assert!(plan(&d, &after, &Paths::overlay(style, 1)).is_empty());
        // The IPv6 side leaving (an IPv4-only record again) takes its
        // neighbour and route, and nothing else.
        let v4_only = desired(&[2, 3]);
        let p = plan(&v4_only, &after, &Paths::overlay(style, 1));
        assert!(p.additions.is_empty(), "{p:#?}");
        assert_eq!(p.removals.len(), 2, "{p:#?}");
        assert!(p.removals.contains(&Op::DelNeighbour(v6_gw)));
        assert_eq!(
            apply(&after, &p, style),
            ActualOverlay::after(&v4_only, &Paths::overlay(style, 1))
        );
    }
}

#[test]
fn large_plans_stay_linear() {
    let ids: Vec<u8> = (1..=250).collect();
    let d = desired(&ids);
    let empty = ActualOverlay::default();
    let full = apply(&empty, &plan(&d, &empty, &Paths::overlay(N, 1)), N);
    assert_eq!(full.fdb.len(), 250);
    assert_eq!(full.nexthops.len(), 250);
    assert!(plan(&d, &full, &Paths::overlay(N, 1)).is_empty());
}
