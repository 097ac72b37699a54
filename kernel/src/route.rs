//! Routes: the one [`Route`] type (to and from netlink messages), add,
//! list, and the interface of the default route. The overlay's replace
//! and delete are in `overlay_route`.

use crate::error::{KernelError, Result};
use crate::handle::Netlink;
use crate::link::Link;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The main routing table.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A unicast route, as trellis installs and reads them (the container's
/// routes, the overlay's routes to remote subnets, the default route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// The gateway is reachable on `oif` even though no address of `oif`
    /// covers it (VXLAN routes towards remote node subnets).
    pub onlink: bool,
    pub table: u32,
    pub metric: Option<u32>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// The nexthop object the route goes through (`nhid`). The kernel
    /// takes a route with it in place of gateway and device, and (with
    /// `net.ipv4.nexthop_compat_mode`, on by default) reports both again
    /// beside it.
    pub nexthop: Option<u32>,
}

impl Route {
    /// A route to `dst` in the main table.
    pub fn to(dst: IpNetwork) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            table: MAIN_TABLE,
            metric: None,
            src: None,
            nexthop: None,
        }
    }

    /// The default route of `gateway`'s family.
    pub fn default_via(gateway: IpAddr) -> Route {
        let dst = match gateway {
            IpAddr::V4(_) => IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            IpAddr::V6(_) => IpNetwork::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        }
        .expect("/0 is a valid prefix");
        Route::to(dst).via(gateway)
    }

    pub fn via(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }

    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// Through nexthop object `id` (`nhid`).
    pub fn nexthop(mut self, id: u32) -> Route {
        self.nexthop = Some(id);
        self
    }

    pub fn is_default(&self) -> bool {
        self.dst.prefix() == 0
    }

    /// The netlink message for this route (static protocol; link scope
    /// without a gateway, universe scope with one). A route through a
    /// nexthop object names only its id: the kernel refuses a gateway or
    /// device beside it.
    pub fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = family_of(self.dst.ip());
        h.destination_prefix_length = self.dst.prefix();
        h.protocol = RouteProtocol::Static;
        h.kind = RouteType::Unicast;
        let nexthop = self.nexthop.is_some();
        h.scope = if self.gateway.is_some() || nexthop {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if self.onlink && !nexthop {
            h.flags |= RouteFlags::Onlink;
        }
        if self.table < 256 {
            h.table = self.table as u8;
        } else {
            h.table = RouteHeader::RT_TABLE_UNSPEC;
        }
        let a = &mut msg.attributes;
        if self.table >= 256 {
            a.push(RouteAttribute::Table(self.table));
        }
        if self.dst.prefix() > 0 {
            a.push(RouteAttribute::Destination(self.dst.network().into()));
        }
        if let Some(id) = self.nexthop {
            a.push(RouteAttribute::NhId(id));
        } else {
            if let Some(gw) = self.gateway {
                a.push(RouteAttribute::Gateway(gw.into()));
            }
            if let Some(oif) = self.oif {
                a.push(RouteAttribute::Oif(oif));
            }
        }
        if let Some(metric) = self.metric {
            a.push(RouteAttribute::Priority(metric));
        }
        if let Some(src) = self.src {
            a.push(RouteAttribute::PrefSource(src.into()));
        }
        msg
    }

    /// Read a route from a kernel message; `None` for what trellis does not
    /// model (multicast, non-IP families).
    pub fn from_message(msg: &RouteMessage) -> Option<Route> {
        let h = &msg.header;
        let unspecified: IpAddr = match h.address_family {
            AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
            AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
            _ => return None,
        };
        let mut route = Route::to(IpNetwork::new(unspecified, 0).ok()?);
        route.table = h.table as u32;
        route.onlink = h.flags.contains(RouteFlags::Onlink);
        let mut dst = unspecified;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = ip_of(a)?,
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::PrefSource(a) => route.src = ip_of(a),
                RouteAttribute::NhId(id) => route.nexthop = Some(*id),
                _ => {}
            }
        }
        route.dst = IpNetwork::new(dst, h.destination_prefix_length).ok()?;
        Some(route)
    }

    /// Same destination, gateway and device (what CHECK compares).
    pub fn same_path(&self, other: &Route) -> bool {
        self.dst == other.dst
            && self.gateway == other.gateway
            && (self.oif.is_none() || other.oif.is_none() || self.oif == other.oif)
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

impl Netlink {
    /// Add `route`; EEXIST when the table already has one to that
    /// destination with the same metric.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        self.handle()
            .route()
            .add(route.message())
            .execute()
            .await
            .map_err(KernelError::netlink(format!("adding route {route:?}")))
    }

    /// The unicast routes of `table` for the family of `family` (one dump).
    pub async fn routes(&self, family: IpAddr, table: u32) -> Result<Vec<Route>> {
        let _turn = self.dump_turn().await;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(family);
        let msgs: Vec<RouteMessage> = self
            .handle()
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing routes"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.kind == RouteType::Unicast)
            .filter_map(Route::from_message)
            .filter(|r| r.table == table)
            .collect())
    }
}

impl Netlink {
    /// The route the kernel picks for `dst` (what `ip route get` shows, the
    /// destination the host address itself): one request, no dump. `None`
    /// when `dst` is unreachable.
    pub async fn route_get(&self, dst: IpAddr) -> Result<Option<Route>> {
        let mut req = self.handle().route().get(RouteMessage::default());
        let msg = req.message_mut();
        msg.header.address_family = family_of(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(dst.into()));
        let answer: std::result::Result<Vec<RouteMessage>, _> = req.execute().try_collect().await;
        match answer {
            Ok(msgs) => Ok(msgs.iter().find_map(Route::from_message)),
            Err(rtnetlink::Error::NetlinkError(e))
                if [
                    nix::errno::Errno::ENETUNREACH,
                    nix::errno::Errno::EHOSTUNREACH,
                ]
                .contains(&nix::errno::Errno::from_raw(e.raw_code().abs())) =>
            {
                Ok(None)
            }
            Err(e) => Err(KernelError::netlink(format!(
                "looking up the route to {dst}"
            ))(e)),
        }
    }
}

impl Netlink {
    /// The link of the IPv4 default route of the main table (the one with
    /// the lowest metric when there are several), if there is one.
    pub async fn default_route_link(&self) -> Result<Option<Link>> {
        let routes = self
            .routes(Ipv4Addr::UNSPECIFIED.into(), MAIN_TABLE)
            .await?;
        let best = routes
            .iter()
            .filter(|r| r.is_default())
            .filter_map(|r| Some((r.metric.unwrap_or(0), r.oif?)))
            .min();
        match best {
            Some((_, oif)) => self.link_by_index(oif).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_routes() {
        let routes = [
            Route::default_via("10.88.0.1".parse().unwrap()).dev(3),
            Route::to("10.244.3.0/24".parse().unwrap())
                .via("10.244.3.0".parse().unwrap())
                .dev(9)
                .onlink(),
            Route::to("10.88.0.0/16".parse().unwrap()).dev(2),
            Route::default_via("fd00::1".parse().unwrap()),
            Route {
                table: 1000,
                metric: Some(100),
                src: Some("10.0.0.2".parse().unwrap()),
                ..Route::to("192.0.2.0/24".parse().unwrap()).dev(4)
            },
        ];
        for r in routes {
            let back = Route::from_message(&r.message()).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn a_route_through_a_nexthop_names_only_its_id() {
        let r = Route::to("10.244.3.0/24".parse().unwrap())
            .via("10.244.3.0".parse().unwrap())
            .dev(9)
            .onlink()
            .nexthop(42);
        let m = r.message();
        assert!(m.attributes.contains(&RouteAttribute::NhId(42)));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_))));
        assert!(!m.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(m.header.scope, RouteScope::Universe);
        let back = Route::from_message(&m).unwrap();
        assert_eq!((back.dst, back.nexthop), (r.dst, Some(42)));
    }

    #[test]
    fn scope_and_flags_follow_the_route() {
        let m = Route::to("10.244.3.0/24".parse().unwrap())
            .via("10.244.3.0".parse().unwrap())
            .onlink()
            .message();
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        let m = Route::to("10.88.0.0/16".parse().unwrap()).dev(2).message();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(Route::default_via("10.0.0.1".parse().unwrap()).is_default());
    }

    #[test]
    fn same_path_ignores_an_unknown_device() {
        let a = Route::default_via("10.88.0.1".parse().unwrap());
        assert!(a.same_path(&a.dev(3)));
        assert!(!a.same_path(&Route::default_via("10.88.0.2".parse().unwrap())));
    }
}
