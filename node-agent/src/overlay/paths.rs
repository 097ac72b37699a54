//! Where the routes to remote node subnets leave this node: through the
//! VXLAN device to the remote VTEP, or, with direct routing, straight to
//! the remote node's public address on the underlay device when that
//! address is on a subnet the underlay device is connected to (flannel's
//! DirectRouting, Calico's VXLANCrossSubnet). And how each route is
//! written.

use super::desired::RemoteNode;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr};
use trellis_kernel::{Nexthop, Route};

/// How the routes through the VXLAN device are written.
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

/// The devices routes leave through, as the plan needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub style: RouteStyle,
    /// The VXLAN device's index.
    pub vxlan: u32,
    /// The underlay device, where direct routes leave (`None`: not known,
    /// so no route is planned or kept there).
    pub underlay: Option<Underlay>,
}

/// The underlay device and, with direct routing on, the prefixes of its
/// addresses: the subnets it is directly connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub ifindex: u32,
    /// Empty with direct routing off: every remote node is reached over
    /// VXLAN, and the direct routes found on the device go.
    pub direct: Vec<IpNetwork>,
}

/// How one remote subnet is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hop {
    /// Through the remote VTEP address on the VXLAN device (pinned by a
    /// permanent neighbour entry, the MAC by an FDB entry).
    Overlay(IpAddr),
    /// Through the remote node's public address on the underlay device,
    /// unencapsulated.
    Direct(IpAddr),
}

impl Paths {
    /// Every route over VXLAN, in `style`, on the VXLAN device `vxlan`.
    pub fn overlay(style: RouteStyle, vxlan: u32) -> Paths {
        Paths {
            style,
            vxlan,
            underlay: None,
        }
    }

    /// The routes `node` needs, each with its hop: its IPv4 subnet and, in
    /// a dual-stack cluster, its IPv6 one. A subnet is routed directly
    /// when the node's public address is of the subnet's family and on a
    /// subnet of the underlay device (an IPv4 underlay carries the IPv6
    /// subnets over VXLAN).
    pub fn hops<'a>(&'a self, node: &'a RemoteNode) -> impl Iterator<Item = (IpNetwork, Hop)> + 'a {
        node_routes(node).map(move |(dst, vtep)| {
            if self.is_direct(node.public_ip, dst) {
                (dst, Hop::Direct(node.public_ip))
            } else {
                (dst, Hop::Overlay(vtep))
            }
        })
    }

    /// Whether `node` needs its VXLAN entries (FDB, neighbours): some of
    /// its subnets are reached over VXLAN.
    pub fn needs_overlay(&self, node: &RemoteNode) -> bool {
        self.hops(node)
            .any(|(_, hop)| matches!(hop, Hop::Overlay(_)))
    }

    fn is_direct(&self, public_ip: IpAddr, dst: IpNetwork) -> bool {
        self.underlay.as_ref().is_some_and(|u| {
            public_ip.is_ipv4() == dst.is_ipv4()
                && u.direct.iter().any(|prefix| prefix.contains(public_ip))
        })
    }

    /// The route to `dst` through `hop`, as the kernel reports it.
    pub fn route(&self, dst: IpNetwork, hop: Hop) -> Route {
        match hop {
            Hop::Overlay(via) => overlay_route(self.style, self.vxlan, dst, via),
            Hop::Direct(via) => {
                let ifindex = self.underlay.as_ref().map_or(0, |u| u.ifindex);
                direct_route(ifindex, dst, via)
            }
        }
    }

    /// Whether `route` is exactly the route to its destination through
    /// `hop` (its nexthop object, in the nexthop style, checked apart).
    pub fn is_route(&self, route: &Route, hop: Hop) -> bool {
        match hop {
            Hop::Overlay(via) => {
                route.oif.is_none_or(|oif| oif == self.vxlan)
                    && match (style_of(self.style, via), via) {
                        (RouteStyle::Nexthop, IpAddr::V4(v4)) => {
                            route.nexthop == Some(nexthop_id(v4))
                        }
                        _ => route.nexthop.is_none() && route.gateway == Some(via) && route.onlink,
                    }
            }
            Hop::Direct(via) => {
                route.nexthop.is_none()
                    && route.gateway == Some(via)
                    && !route.onlink
                    && route.oif.is_some()
                    && route.oif == self.underlay.as_ref().map(|u| u.ifindex)
            }
        }
    }
}

/// The routes a remote node needs, each with its VTEP address in that
/// family: its IPv4 subnet and its IPv6 one, each where it has one.
pub fn node_routes(node: &RemoteNode) -> impl Iterator<Item = (IpNetwork, IpAddr)> {
    let v4 = node
        .ipv4
        .map(|v4| (IpNetwork::V4(v4.subnet), IpAddr::V4(v4.vtep_ip)));
    let v6 = node
        .ipv6
        .map(|v6| (IpNetwork::V6(v6.subnet), IpAddr::V6(v6.vtep_ip)));
    v4.into_iter().chain(v6)
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

/// How a remote subnet is reached over VXLAN: `dst via via dev <VXLAN
/// device> onlink`, through `via`'s nexthop object in the nexthop style
/// (as the kernel reports such a route; IPv4 only).
pub fn overlay_route(style: RouteStyle, ifindex: u32, dst: IpNetwork, via: IpAddr) -> Route {
    let route = Route::to(dst).via(via).dev(ifindex).onlink();
    match (style_of(style, via), via) {
        (RouteStyle::Nexthop, IpAddr::V4(v4)) => route.nexthop(nexthop_id(v4)),
        _ => route,
    }
}

/// How a remote subnet is reached directly: `dst via <public address> dev
/// <underlay device>`, the gateway on a connected subnet (no `onlink`: the
/// kernel checks it is).
pub fn direct_route(ifindex: u32, dst: IpNetwork, via: IpAddr) -> Route {
    Route::to(dst).via(via).dev(ifindex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::desired::{Remote4, Remote6};
    use trellis_kernel::MacAddr;

    fn node(public: &str) -> RemoteNode {
        RemoteNode {
            ipv4: Some(Remote4::of("10.244.2.0/24".parse().unwrap())),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            public_ip: public.parse().unwrap(),
            ipv6: Some(Remote6::of("fd10:244:0:2::/64".parse().unwrap())),
        }
    }

    fn paths(direct: &[&str]) -> Paths {
        Paths {
            style: RouteStyle::Nexthop,
            vxlan: 5,
            underlay: Some(Underlay {
                ifindex: 2,
                direct: direct.iter().map(|p| p.parse().unwrap()).collect(),
            }),
        }
    }

    #[test]
    fn a_node_on_a_connected_subnet_is_routed_directly_in_its_family_only() {
        let on_link = paths(&["192.0.2.7/24", "fe80::1/64"]);
        let hops: Vec<(IpNetwork, Hop)> = on_link.hops(&node("192.0.2.2")).collect();
        assert_eq!(
            hops,
            [
                (
                    "10.244.2.0/24".parse().unwrap(),
                    Hop::Direct("192.0.2.2".parse().unwrap())
                ),
                // The IPv4 underlay cannot carry IPv6 unencapsulated.
                (
                    "fd10:244:0:2::/64".parse().unwrap(),
                    Hop::Overlay("fd10:244:0:2::".parse().unwrap())
                ),
            ]
        );
        assert!(on_link.needs_overlay(&node("192.0.2.2")));
        // Behind a router: everything over VXLAN.
        assert!(on_link
            .hops(&node("203.0.113.3"))
            .all(|(_, hop)| matches!(hop, Hop::Overlay(_))));
        // Direct routing off: nothing is direct, whatever the subnet.
        assert!(paths(&[])
            .hops(&node("192.0.2.2"))
            .all(|(_, hop)| matches!(hop, Hop::Overlay(_))));
        // An IPv6 underlay routes IPv6 directly and carries IPv4 over VXLAN.
        let v6 = paths(&["2001:db8:2::1/64"]);
        let hops: Vec<Hop> = v6.hops(&node("2001:db8:2::2")).map(|(_, h)| h).collect();
        assert_eq!(
            hops,
            [
                Hop::Overlay("10.244.2.0".parse().unwrap()),
                Hop::Direct("2001:db8:2::2".parse().unwrap())
            ]
        );
    }

    #[test]
    fn a_direct_route_is_its_gateway_on_the_underlay_device() {
        let p = paths(&["192.0.2.7/24"]);
        let dst: IpNetwork = "10.244.2.0/24".parse().unwrap();
        let hop = Hop::Direct("192.0.2.2".parse().unwrap());
        let route = p.route(dst, hop);
        assert_eq!(
            (route.gateway, route.oif, route.onlink, route.nexthop),
            (Some("192.0.2.2".parse().unwrap()), Some(2), false, None)
        );
        assert!(p.is_route(&route, hop));
        // The same gateway on another device, or the overlay route, is not it.
        assert!(!p.is_route(&route.dev(5), hop));
        let overlay = Hop::Overlay("10.244.2.0".parse().unwrap());
        assert!(!p.is_route(&p.route(dst, overlay), hop));
        assert!(p.is_route(&p.route(dst, overlay), overlay));
        assert!(!p.is_route(&route, overlay));
    }
}
