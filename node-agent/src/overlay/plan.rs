//! The difference between the desired overlay and what the kernel holds:
//! which entries to remove (unwanted, stale, left over) and which to set
//! (missing or different). Pure, so that every case is unit-tested.

use super::desired::DesiredOverlay;
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use trellis_kernel::fdb::FdbEntry;
use trellis_kernel::neigh::NeighbourEntry;
use trellis_kernel::MacAddr;
use trellis_kernel::Route;

/// What the kernel holds on the VXLAN device, from one dump of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualOverlay {
    pub fdb: Vec<FdbEntry>,
    pub neighbours: Vec<NeighbourEntry>,
    pub routes: Vec<Route>,
}

impl ActualOverlay {
    /// What the device on `ifindex` holds once a plan for `desired` went
    /// through in full: the state the next change is planned against,
    /// without a dump.
    pub fn after(desired: &DesiredOverlay, ifindex: u32) -> ActualOverlay {
        let mut a = ActualOverlay::default();
        for node in desired.nodes.values() {
            a.fdb.push(FdbEntry {
                mac: node.vtep_mac,
                dst: Some(IpAddr::V4(node.public_ip)),
            });
            a.neighbours.push(NeighbourEntry {
                ip: node.vtep_ip,
                mac: Some(node.vtep_mac),
                permanent: true,
            });
            a.routes
                .push(overlay_route(ifindex, node.subnet, node.vtep_ip));
        }
        a
    }
}

/// One kernel write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    DelFdb(FdbEntry),
    DelNeighbour(Ipv4Addr),
    /// Boxed: a `Route` is four times the size of the other ops, and a
    /// plan holds one op per entry (15,000 for 5,000 nodes).
    DelRoute(Box<Route>),
    /// Permanent FDB entry `mac -> dst` (replacing `mac`'s destination).
    SetFdb {
        mac: MacAddr,
        dst: Ipv4Addr,
    },
    /// Permanent neighbour `ip -> mac`.
    SetNeighbour {
        ip: Ipv4Addr,
        mac: MacAddr,
    },
    /// `dst via via onlink` on the VXLAN device.
    SetRoute {
        dst: Ipv4Network,
        via: Ipv4Addr,
    },
}

/// `dst via via dev <VXLAN device> onlink`: how a remote subnet is reached.
pub fn overlay_route(ifindex: u32, dst: Ipv4Network, via: Ipv4Addr) -> Route {
    Route::to(IpNetwork::V4(dst))
        .via(IpAddr::V4(via))
        .dev(ifindex)
        .onlink()
}

/// Removals run before additions, so that a node whose MAC, address or
/// subnet changed never has old and new entries fighting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub removals: Vec<Op>,
    pub additions: Vec<Op>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.additions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.removals.len() + self.additions.len()
    }
}

/// The plan that turns `actual` into `desired`.
pub fn plan(desired: &DesiredOverlay, actual: &ActualOverlay) -> Plan {
    let mut out = Plan::default();
    let mut want_fdb: HashMap<MacAddr, Ipv4Addr> = HashMap::with_capacity(desired.len());
    let mut want_neigh: HashMap<Ipv4Addr, MacAddr> = HashMap::with_capacity(desired.len());
    let mut want_route: HashMap<IpNetwork, IpAddr> = HashMap::with_capacity(desired.len());
    for node in desired.nodes.values() {
        want_fdb.insert(node.vtep_mac, node.public_ip);
        want_neigh.insert(node.vtep_ip, node.vtep_mac);
        want_route.insert(IpNetwork::V4(node.subnet), IpAddr::V4(node.vtep_ip));
    }

    // FDB: keep an entry only when it is exactly the wanted one.
    let mut fdb_ok = std::collections::HashSet::new();
    for e in &actual.fdb {
        match (want_fdb.get(&e.mac), e.dst) {
            (Some(want), Some(IpAddr::V4(dst))) if *want == dst && fdb_ok.insert(e.mac) => {}
            _ => out.removals.push(Op::DelFdb(*e)),
        }
    }
    // Neighbours: a permanent entry with the wanted MAC; anything else on
    // the device goes (stale MACs, departed nodes, ARP leftovers).
    let mut neigh_ok = std::collections::HashSet::new();
    for e in &actual.neighbours {
        let wanted = want_neigh.get(&e.ip);
        match wanted {
            Some(mac) if e.permanent && e.mac == Some(*mac) => {
                neigh_ok.insert(e.ip);
            }
            // A wanted address with a wrong entry is fixed by replacing it.
            Some(_) => {}
            None => out.removals.push(Op::DelNeighbour(e.ip)),
        }
    }
    // Routes: exactly `subnet via vtep onlink`, metric 0, once.
    let mut route_ok = std::collections::HashSet::new();
    for r in &actual.routes {
        let exact = want_route
            .get(&r.dst)
            .is_some_and(|via| r.gateway == Some(*via) && r.onlink && r.metric.unwrap_or(0) == 0);
        if exact && route_ok.insert(r.dst) {
            continue;
        }
        out.removals.push(Op::DelRoute(Box::new(*r)));
    }

    for node in desired.nodes.values() {
        if !fdb_ok.contains(&node.vtep_mac) {
            out.additions.push(Op::SetFdb {
                mac: node.vtep_mac,
                dst: node.public_ip,
            });
        }
        if !neigh_ok.contains(&node.vtep_ip) {
            out.additions.push(Op::SetNeighbour {
                ip: node.vtep_ip,
                mac: node.vtep_mac,
            });
        }
        if !route_ok.contains(&IpNetwork::V4(node.subnet)) {
            out.additions.push(Op::SetRoute {
                dst: node.subnet,
                via: node.vtep_ip,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::desired::{vtep_ip_of, RemoteNode};

    fn node(i: u8) -> RemoteNode {
        let subnet: Ipv4Network = format!("10.244.{i}.0/24").parse().unwrap();
        RemoteNode {
            subnet,
            vtep_ip: vtep_ip_of(subnet),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, i]),
            public_ip: Ipv4Addr::new(192, 0, 2, i),
        }
    }

    fn desired(ids: &[u8]) -> DesiredOverlay {
        DesiredOverlay {
            nodes: ids.iter().map(|i| (format!("n{i}"), node(*i))).collect(),
        }
    }

    /// The kernel state after applying `plan` to `actual`, as the kernel
    /// would (replace semantics for the Set ops).
    fn apply(actual: &ActualOverlay, plan: &Plan) -> ActualOverlay {
        let mut a = actual.clone();
        for op in plan.removals.iter().chain(&plan.additions) {
            match op.clone() {
                Op::DelFdb(e) => a.fdb.retain(|x| *x != e),
                Op::DelNeighbour(ip) => a.neighbours.retain(|x| x.ip != ip),
                Op::DelRoute(r) => a.routes.retain(|x| *x != *r),
                Op::SetFdb { mac, dst } => {
                    a.fdb.retain(|x| x.mac != mac);
                    a.fdb.push(FdbEntry {
                        mac,
                        dst: Some(IpAddr::V4(dst)),
                    });
                }
                Op::SetNeighbour { ip, mac } => {
                    a.neighbours.retain(|x| x.ip != ip);
                    a.neighbours.push(NeighbourEntry {
                        ip,
                        mac: Some(mac),
                        permanent: true,
                    });
                }
                Op::SetRoute { dst, via } => {
                    a.routes
                        .retain(|x| !(x.dst == IpNetwork::V4(dst) && x.metric.unwrap_or(0) == 0));
                    a.routes.push(overlay_route(1, dst, via));
                }
            }
        }
        a
    }

    #[test]
    fn the_state_after_a_plan_needs_no_further_plan() {
        let d = desired(&[1, 2, 3]);
        assert!(plan(&d, &ActualOverlay::after(&d, 7)).is_empty());
        assert_eq!(ActualOverlay::after(&d, 7).fdb.len(), 3);
    }

    #[test]
    fn empty_kernel_gets_three_entries_per_node() {
        let p = plan(&desired(&[2, 3]), &ActualOverlay::default());
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
            dst: node(3).subnet,
            via: node(3).vtep_ip
        }));
    }

    #[test]
    fn converged_state_needs_nothing() {
        let d = desired(&[2, 3, 4]);
        let after = apply(
            &ActualOverlay::default(),
            &plan(&d, &ActualOverlay::default()),
        );
        assert!(plan(&d, &after).is_empty());
    }

    #[test]
    fn departed_node_entries_are_removed() {
        let d = desired(&[2, 3]);
        let full = apply(
            &ActualOverlay::default(),
            &plan(&d, &ActualOverlay::default()),
        );
        let p = plan(&desired(&[2]), &full);
        assert!(p.additions.is_empty());
        assert_eq!(p.removals.len(), 3);
        let after = apply(&full, &p);
        assert_eq!(
            (after.fdb.len(), after.neighbours.len(), after.routes.len()),
            (1, 1, 1)
        );
    }

    #[test]
    fn stale_mac_and_moved_node_are_fixed() {
        let d = desired(&[2]);
        let n = node(2);
        let stale = ActualOverlay {
            fdb: vec![
                FdbEntry {
                    mac: MacAddr([2, 9, 9, 9, 9, 9]),
                    dst: Some(IpAddr::V4(n.public_ip)),
                },
                FdbEntry {
                    mac: n.vtep_mac,
                    dst: Some("198.51.100.1".parse().unwrap()),
                },
            ],
            neighbours: vec![NeighbourEntry {
                ip: n.vtep_ip,
                mac: Some(MacAddr([2, 9, 9, 9, 9, 9])),
                permanent: true,
            }],
            routes: vec![overlay_route(1, n.subnet, "10.244.9.0".parse().unwrap())],
        };
        let p = plan(&d, &stale);
        assert_eq!(p.removals.len(), 3, "{p:#?}"); // both FDB entries, the wrong route
        let after = apply(&stale, &p);
        assert!(plan(&d, &after).is_empty(), "{after:#?}");
        assert_eq!(
            after.fdb,
            vec![FdbEntry {
                mac: n.vtep_mac,
                dst: Some(IpAddr::V4(n.public_ip))
            }]
        );
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
                    1,
                    "10.244.50.0/24".parse().unwrap(),
                    "10.244.50.0".parse().unwrap(),
                ),
                Route {
                    metric: Some(100),
                    ..overlay_route(
                        1,
                        "10.244.2.0/24".parse().unwrap(),
                        "10.244.2.0".parse().unwrap(),
                    )
                },
            ],
        };
        let d = desired(&[2]);
        let p = plan(&d, &junk);
        assert_eq!(p.removals.len(), 5);
        let after = apply(&junk, &p);
        assert!(plan(&d, &after).is_empty());
        assert_eq!(after.routes.len(), 1);
    }

    #[test]
    fn non_permanent_neighbour_of_a_wanted_node_is_replaced() {
        let n = node(2);
        let a = ActualOverlay {
            neighbours: vec![NeighbourEntry {
                ip: n.vtep_ip,
                mac: Some(n.vtep_mac),
                permanent: false,
            }],
            ..Default::default()
        };
        let p = plan(&desired(&[2]), &a);
        assert!(p.removals.is_empty());
        assert!(p.additions.contains(&Op::SetNeighbour {
            ip: n.vtep_ip,
            mac: n.vtep_mac
        }));
    }

    #[test]
    fn large_plans_stay_linear() {
        let ids: Vec<u8> = (1..=250).collect();
        let d = desired(&ids);
        let full = apply(
            &ActualOverlay::default(),
            &plan(&d, &ActualOverlay::default()),
        );
        assert_eq!(full.fdb.len(), 250);
        assert!(plan(&d, &full).is_empty());
    }
}
