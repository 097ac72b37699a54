//! The difference between the desired overlay and what the kernel holds:
//! which entries to remove (unwanted, stale, left over) and which to set
//! (missing or different). Pure, so that every case is unit-tested.

use super::desired::DesiredOverlay;
use super::paths::{nexthop_id, overlay_nexthop, style_of, Hop, Paths, RouteStyle};
use ipnetwork::IpNetwork;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use trellis_kernel::fdb::FdbEntry;
use trellis_kernel::neigh::NeighbourEntry;
use trellis_kernel::{MacAddr, Nexthop, Route};

/// What the kernel holds for the remote nodes, from one dump of each kind:
/// the VXLAN device's FDB entries, neighbours and nexthop objects, and the
/// routes to remote subnets on it and on the underlay device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualOverlay {
    pub fdb: Vec<FdbEntry>,
    pub neighbours: Vec<NeighbourEntry>,
    pub routes: Vec<Route>,
    pub nexthops: Vec<Nexthop>,
}

impl ActualOverlay {
    /// What the kernel holds once a plan for `desired` over `paths` went
    /// through in full: the state the next change is planned against,
    /// without a dump.
    pub fn after(desired: &DesiredOverlay, paths: &Paths) -> ActualOverlay {
        let mut a = ActualOverlay::default();
        for node in desired.nodes.values() {
            if paths.needs_overlay(node) {
                a.fdb.push(FdbEntry {
                    mac: node.vtep_mac,
                    dst: Some(node.public_ip),
                });
            }
            for (dst, hop) in paths.hops(node) {
                if let Hop::Overlay(via) = hop {
                    a.neighbours.push(NeighbourEntry {
                        ip: via,
                        mac: Some(node.vtep_mac),
                        permanent: true,
                    });
                    if let (RouteStyle::Nexthop, IpAddr::V4(via)) =
                        (style_of(paths.style, via), via)
                    {
                        a.nexthops.push(overlay_nexthop(paths.vxlan, via));
                    }
                }
                a.routes.push(paths.route(dst, hop));
            }
        }
        a
    }
}

impl ActualOverlay {
    /// What the kernel does with `op` over `paths`: a Set replaces what the
    /// kernel keys the same way (the FDB entry of the MAC, the neighbour of
    /// the address, the nexthop of the id, the route of the destination at
    /// metric 0, whatever its device); a deleted nexthop takes its routes.
    /// The model that the fake dataplane and the plan's tests apply plans
    /// with.
    pub fn apply(&mut self, op: &Op, paths: &Paths) {
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
                if let (RouteStyle::Nexthop, IpAddr::V4(via)) = (style_of(paths.style, via), via) {
                    let nh = overlay_nexthop(paths.vxlan, via);
                    self.nexthops.retain(|x| x.id != nh.id);
                    self.nexthops.push(nh);
                }
                self.set_route(paths.route(dst, Hop::Overlay(via)));
            }
            Op::SetDirectRoute { dst, via } => self.set_route(paths.route(dst, Hop::Direct(via))),
        }
    }

    fn set_route(&mut self, route: Route) {
        self.routes
            .retain(|x| !(x.dst == route.dst && at_default_metric(x)));
        self.routes.push(route);
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
    /// The route to `dst` through the remote node's public address `via`
    /// on the underlay device, replacing what the table held for `dst` at
    /// metric 0 (an overlay route: no moment without a route).
    SetDirectRoute {
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

/// Direct routes go first: each replaces an overlay route to its subnet
/// in place, before the neighbour and the nexthop object that route went
/// through are removed (a deleted nexthop takes its routes along). Then
/// removals before additions, so that a node whose MAC, address or subnet
/// changed never has old and new entries fighting; nexthop objects go in
/// between, once the routes through them are gone: the kernel deletes a
/// nexthop still in use by flushing every routing table, once per nexthop
/// (10,000 departing nodes took a second that way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub direct: Vec<Op>,
    pub removals: Vec<Op>,
    pub nexthop_removals: Vec<Op>,
    pub additions: Vec<Op>,
}

impl Plan {
    /// The ops in the order they must be applied: each phase after the one
    /// before has gone through, the ops of one phase in any order.
    pub fn phases(&self) -> [&[Op]; 4] {
        [
            &self.direct,
            &self.removals,
            &self.nexthop_removals,
            &self.additions,
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.phases().iter().map(|p| p.len()).sum()
    }

    /// The writes that set an entry (rather than remove one).
    pub fn sets(&self) -> usize {
        self.direct.len() + self.additions.len()
    }
}

/// The plan that turns `actual` into `desired`, routes leaving by `paths`.
pub fn plan(desired: &DesiredOverlay, actual: &ActualOverlay, paths: &Paths) -> Plan {
    let style = paths.style;
    let mut out = Plan::default();
    let mut want_fdb: HashMap<MacAddr, IpAddr> = HashMap::with_capacity(desired.len());
    let mut want_neigh: HashMap<IpAddr, MacAddr> = HashMap::with_capacity(desired.len());
    let mut want_route: HashMap<IpNetwork, Hop> = HashMap::with_capacity(desired.len());
    for node in desired.nodes.values() {
        if paths.needs_overlay(node) {
            want_fdb.insert(node.vtep_mac, node.public_ip);
        }
        for (dst, hop) in paths.hops(node) {
            if let Hop::Overlay(via) = hop {
                want_neigh.insert(via, node.vtep_mac);
            }
            want_route.insert(dst, hop);
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
    // Routes: exactly the wanted one at metric 0, once, on either device.
    // A wrong route to a wanted subnet at metric 0 is replaced in place (no
    // moment without a route, also when it moves between the devices);
    // others go.
    let mut route_ok = HashSet::new();
    for r in &actual.routes {
        let metric0 = at_default_metric(r);
        let want = want_route.get(&r.dst);
        let exact = want.is_some_and(|hop| {
            metric0
                && paths.is_route(r, *hop)
                && match (hop, r.nexthop) {
                    (Hop::Overlay(_), Some(id)) => nexthop_ok.contains(&id),
                    _ => true,
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
        if want_fdb.contains_key(&node.vtep_mac) && !fdb_ok.contains(&node.vtep_mac) {
            out.additions.push(Op::SetFdb {
                mac: node.vtep_mac,
                dst: node.public_ip,
            });
        }
        for (dst, hop) in paths.hops(node) {
            match hop {
                Hop::Overlay(via) => {
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
                Hop::Direct(via) => {
                    if !route_ok.contains(&dst) {
                        out.direct.push(Op::SetDirectRoute { dst, via });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
