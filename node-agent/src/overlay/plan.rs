//! The difference between the desired overlay and what the kernel holds:
//! which entries to remove (unwanted, stale, left over) and which to set
//! (missing or different). Pure, so that every case is unit-tested.

use super::desired::{DesiredOverlay, RemoteNode};
use ipnetwork::IpNetwork;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use trellis_kernel::fdb::FdbEntry;
use trellis_kernel::neigh::NeighbourEntry;
use trellis_kernel::{MacAddr, Nexthop, Route};

/// How the routes to remote subnets are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteStyle {
    /// `<subnet> nhid <id>`, the id a nexthop object `via <vtep> dev
    /// <vxlan> onlink` (Linux 5.3 and later): the kernel inserts these in
    /// constant time, where gateway routes on one device slow down with
    /// each one already there.
    Nexthop,
    /// `<subnet> via <vtep> dev <vxlan> onlink`, for kernels without
    /// nexthop objects.
    Gateway,
}

/// What the kernel holds on the VXLAN device, from one dump of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualOverlay {
    pub fdb: Vec<FdbEntry>,
    pub neighbours: Vec<NeighbourEntry>,
    pub routes: Vec<Route>,
    pub nexthops: Vec<Nexthop>,
}

impl ActualOverlay {
    /// What the device on `ifindex` holds once a plan for `desired` went
    /// through in full: the state the next change is planned against,
    /// without a dump.
    pub fn after(desired: &DesiredOverlay, ifindex: u32, style: RouteStyle) -> ActualOverlay {
        let mut a = ActualOverlay::default();
        for node in desired.nodes.values() {
            a.fdb.push(FdbEntry {
                mac: node.vtep_mac,
                dst: Some(node.public_ip),
            });
            for (dst, via) in node_routes(node) {
                a.neighbours.push(NeighbourEntry {
                    ip: via,
                    mac: Some(node.vtep_mac),
                    permanent: true,
                });
                if let (RouteStyle::Nexthop, IpAddr::V4(via)) = (style_of(style, via), via) {
                    a.nexthops.push(overlay_nexthop(ifindex, via));
                }
                a.routes.push(overlay_route(style, ifindex, dst, via));
            }
        }
        a
    }
}

impl ActualOverlay {
    /// What the kernel does with `op` on the device `ifindex`: a Set
    /// replaces what the kernel keys the same way (the FDB entry of the MAC,
    /// the neighbour of the address, the nexthop of the id, the route of
    /// the destination at metric 0); a deleted nexthop takes its routes.
    /// The model that the fake dataplane and the plan's tests apply plans
    /// with.
    pub fn apply(&mut self, op: &Op, style: RouteStyle, ifindex: u32) {
        match op.clone() {
            Op::DelFdb(e) => self.fdb.retain(|x| *x != e),
            Op::DelNeighbour(ip) => self.neighbours.retain(|x| x.ip != ip),
            Op::DelRoute(r) => self.routes.retain(|x| *x != *r),
            Op::DelNexthop(id) => {
                self.nexthops.retain(|x| x.id != id);
                self.routes.retain(|x| x.nexthop != Some(id));
            }
            Op::SetFdb { mac, dst } => {
                self.fdb.retain(|x| x.mac != mac);
                self.fdb.push(FdbEntry {
                    mac,
                    dst: Some(dst),
                });
            }
            Op::SetNeighbour { ip, mac } => {
                self.neighbours.retain(|x| x.ip != ip);
                self.neighbours.push(NeighbourEntry {
                    ip,
                    mac: Some(mac),
                    permanent: true,
                });
            }
            Op::SetRoute { dst, via } => {
                if let (RouteStyle::Nexthop, IpAddr::V4(via)) = (style_of(style, via), via) {
                    let nh = overlay_nexthop(ifindex, via);
                    self.nexthops.retain(|x| x.id != nh.id);
                    self.nexthops.push(nh);
                }
                self.routes
                    .retain(|x| !(x.dst == dst && at_default_metric(x)));
                self.routes.push(overlay_route(style, ifindex, dst, via));
            }
        }
    }
}

/// One kernel write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    DelFdb(FdbEntry),
    DelNeighbour(IpAddr),
    /// Boxed: a `Route` is four times the size of the other ops, and a
    /// plan holds one op per entry (15,000 for 5,000 nodes).
    DelRoute(Box<Route>),
    /// A nexthop object of the device, and with it the routes using it.
    DelNexthop(u32),
    /// Permanent FDB entry `mac -> dst` (replacing `mac`'s destination).
    SetFdb {
        mac: MacAddr,
        dst: IpAddr,
    },
    /// Permanent neighbour `ip -> mac`.
    SetNeighbour {
        ip: IpAddr,
        mac: MacAddr,
    },
    /// The route to `dst` through `via` on the VXLAN device, replacing
    /// what the table held for `dst` at metric 0: in the nexthop style the
    /// nexthop object of `via` first, then the route through it.
    SetRoute {
        dst: IpNetwork,
        via: IpAddr,
    },
}

/// Whether `route` sits at the metric a route written without one gets:
/// 0 for IPv4, 1024 for IPv6 (the kernel's `IP6_RT_PRIO_USER`), which is
/// what an overlay route is written with and what `replace` replaces.
pub fn at_default_metric(route: &Route) -> bool {
    matches!(
        (route.dst, route.metric.unwrap_or(0)),
        (_, 0) | (IpNetwork::V6(_), 1024)
    )
}

/// The routes a remote node needs, each with its gateway (the VTEP address
/// in that family, pinned by a neighbour entry): its IPv4 subnet, and in a
/// dual-stack cluster its IPv6 one.
pub fn node_routes(node: &RemoteNode) -> impl Iterator<Item = (IpNetwork, IpAddr)> {
    let v4 = (IpNetwork::V4(node.subnet), IpAddr::V4(node.vtep_ip));
    let v6 = node
        .ipv6
        .map(|v6| (IpNetwork::V6(v6.subnet), IpAddr::V6(v6.vtep_ip)));
    std::iter::once(v4).chain(v6)
}

/// The style a route through `via` is written in: IPv6 routes always name
/// their gateway (nexthop ids are IPv4 VTEP addresses, see [`nexthop_id`]).
pub fn style_of(style: RouteStyle, via: IpAddr) -> RouteStyle {
    match via {
        IpAddr::V4(_) => style,
        IpAddr::V6(_) => RouteStyle::Gateway,
    }
}

/// The id of the nexthop object through which the subnet of the remote
/// VTEP `vtep` is reached: the address itself, read as a number. It is
/// unique per node (the VTEP address is its subnet's first address), never
/// 0 (the kernel's "pick one"; no cluster network holds 0.0.0.0), and the
/// same on every agent and across restarts, so no table of ids is kept.
pub fn nexthop_id(vtep: Ipv4Addr) -> u32 {
    u32::from(vtep)
}

/// The nexthop object `via dev <VXLAN device> onlink` of remote VTEP `via`.
pub fn overlay_nexthop(ifindex: u32, via: Ipv4Addr) -> Nexthop {
    Nexthop {
        id: nexthop_id(via),
        gateway: IpAddr::V4(via),
        oif: ifindex,
        onlink: true,
    }
}

/// How a remote subnet is reached: `dst via via dev <VXLAN device>
/// onlink`, through `via`'s nexthop object in the nexthop style (as the
/// kernel reports such a route; IPv4 only).
pub fn overlay_route(style: RouteStyle, ifindex: u32, dst: IpNetwork, via: IpAddr) -> Route {
    let route = Route::to(dst).via(via).dev(ifindex).onlink();
    match (style_of(style, via), via) {
        (RouteStyle::Nexthop, IpAddr::V4(v4)) => route.nexthop(nexthop_id(v4)),
        _ => route,
    }
}

/// Removals run before additions, so that a node whose MAC, address or
/// subnet changed never has old and new entries fighting; nexthop objects
/// go in between, once the routes through them are gone: the kernel deletes
/// a nexthop still in use by flushing every routing table, once per
/// nexthop (10,000 departing nodes took a second that way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub removals: Vec<Op>,
    pub nexthop_removals: Vec<Op>,
    pub additions: Vec<Op>,
}

impl Plan {
    /// The ops in the order they must be applied: each phase after the one
    /// before has gone through, the ops of one phase in any order.
    pub fn phases(&self) -> [&[Op]; 3] {
        [&self.removals, &self.nexthop_removals, &self.additions]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.removals.len() + self.nexthop_removals.len() + self.additions.len()
    }
}

/// The plan that turns `actual` into `desired`, routes written in `style`.
pub fn plan(desired: &DesiredOverlay, actual: &ActualOverlay, style: RouteStyle) -> Plan {
    let mut out = Plan::default();
    let mut want_fdb: HashMap<MacAddr, IpAddr> = HashMap::with_capacity(desired.len());
    let mut want_neigh: HashMap<IpAddr, MacAddr> = HashMap::with_capacity(desired.len());
    let mut want_route: HashMap<IpNetwork, IpAddr> = HashMap::with_capacity(desired.len());
    for node in desired.nodes.values() {
        want_fdb.insert(node.vtep_mac, node.public_ip);
        for (dst, via) in node_routes(node) {
            want_neigh.insert(via, node.vtep_mac);
            want_route.insert(dst, via);
        }
    }

    // FDB: keep an entry only when it is exactly the wanted one.
    let mut fdb_ok = HashSet::new();
    for e in &actual.fdb {
        match (want_fdb.get(&e.mac), e.dst) {
            (Some(want), Some(dst)) if *want == dst && fdb_ok.insert(e.mac) => {}
            _ => out.removals.push(Op::DelFdb(*e)),
        }
    }
    // Neighbours: a permanent entry with the wanted MAC; anything else on
    // the device goes (stale MACs, departed nodes, ARP leftovers).
    let mut neigh_ok = HashSet::new();
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
    // Nexthops (the nexthop style only): exactly `via <vtep> onlink` under
    // the VTEP's id; a wrong one of a wanted id is replaced with its route,
    // any other goes (after the routes through it).
    let want_nexthop: HashSet<u32> = match style {
        RouteStyle::Nexthop => want_neigh
            .keys()
            .filter_map(|vtep| match vtep {
                IpAddr::V4(v4) => Some(nexthop_id(*v4)),
                IpAddr::V6(_) => None,
            })
            .collect(),
        RouteStyle::Gateway => HashSet::new(),
    };
    let mut nexthop_ok = HashSet::new();
    for nh in &actual.nexthops {
        if !want_nexthop.contains(&nh.id) {
            out.nexthop_removals.push(Op::DelNexthop(nh.id));
        } else if nh.gateway == IpAddr::V4(Ipv4Addr::from(nh.id)) && nh.onlink {
            nexthop_ok.insert(nh.id);
        }
    }
    // Routes: exactly the wanted one at metric 0, once. A wrong route to a
    // wanted subnet at metric 0 is replaced in place (no moment without a
    // route); others go.
    let mut route_ok = HashSet::new();
    for r in &actual.routes {
        let metric0 = at_default_metric(r);
        let want = want_route.get(&r.dst);
        let exact = want.is_some_and(|via| {
            metric0
                && match (style_of(style, *via), via) {
                    (RouteStyle::Nexthop, IpAddr::V4(v4)) => {
                        r.nexthop == Some(nexthop_id(*v4)) && nexthop_ok.contains(&nexthop_id(*v4))
                    }
                    _ => r.nexthop.is_none() && r.gateway == Some(*via) && r.onlink,
                }
        });
        if exact && route_ok.insert(r.dst) {
            continue;
        }
        let replaced = want.is_some() && metric0 && !exact;
        if !replaced {
            out.removals.push(Op::DelRoute(Box::new(*r)));
        }
    }

    for node in desired.nodes.values() {
        if !fdb_ok.contains(&node.vtep_mac) {
            out.additions.push(Op::SetFdb {
                mac: node.vtep_mac,
                dst: node.public_ip,
            });
        }
        for (dst, via) in node_routes(node) {
            if !neigh_ok.contains(&via) {
                out.additions.push(Op::SetNeighbour {
                    ip: via,
                    mac: node.vtep_mac,
                });
            }
            if !route_ok.contains(&dst) {
                out.additions.push(Op::SetRoute { dst, via });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
