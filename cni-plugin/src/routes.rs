//! The routes of a container: which ones ADD installs (the IPAM's, plus a
//! default route per address family without one) and the kernel route each
//! one is, which CHECK looks for again.

use ipnetwork::IpNetwork;
use std::net::IpAddr;
use trellis_common::cni::result::Route as CniRoute;
use trellis_kernel::route::MAIN_TABLE;
use trellis_kernel::Route;

/// The routes to install in the container: the IPAM's, plus a default
/// route via the gateway for each family that has none.
pub fn container_routes(ipam_routes: &[CniRoute], ips: &[(IpNetwork, IpAddr)]) -> Vec<CniRoute> {
    let mut routes: Vec<CniRoute> = ipam_routes.to_vec();
    for (ip, gateway) in ips {
        let has_default = routes
            .iter()
            .any(|r| r.dst.prefix() == 0 && r.dst.is_ipv4() == ip.is_ipv4());
        if !has_default {
            let default = Route::default_via(*gateway);
            routes.push(CniRoute::new(default.dst, Some(*gateway)));
        }
    }
    routes
}

/// A named network's whole ranges via the gateway of their family, unless
/// `routes` has them: a container on several networks has one default
/// route (its first interface's), and reaches every other network's
/// containers on other nodes through that network's own interface.
pub fn network_routes(
    ranges: &[IpNetwork],
    routes: &[CniRoute],
    ips: &[(IpNetwork, IpAddr)],
) -> Vec<CniRoute> {
    ranges
        .iter()
        .filter(|n| !routes.iter().any(|r| r.dst == **n))
        .filter_map(|n| {
            let (_, gateway) = ips.iter().find(|(ip, _)| ip.is_ipv4() == n.is_ipv4())?;
            Some(CniRoute::new(*n, Some(*gateway)))
        })
        .collect()
}

/// The kernel route ADD installs in the container for a CNI route, and
/// CHECK looks for: out of the container interface `oif`, via the route's
/// own gateway or else the first of `gateways` of the destination's family.
pub fn container_route(
    route: &CniRoute,
    oif: u32,
    gateways: impl IntoIterator<Item = IpAddr>,
) -> Route {
    let gateway = route.gw.or_else(|| {
        gateways
            .into_iter()
            .find(|g| g.is_ipv4() == route.dst.is_ipv4())
    });
    Route {
        gateway,
        oif: Some(oif),
        metric: route.priority,
        table: route.table.unwrap_or(MAIN_TABLE),
        ..Route::to(route.dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_route_is_added_per_family_unless_ipam_gave_one() {
        let ips = vec![(
            "10.88.0.5/16".parse().unwrap(),
            "10.88.0.1".parse().unwrap(),
        )];
        let routes = container_routes(&[], &ips);
        assert_eq!(
            routes,
            vec![CniRoute::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.88.0.1".parse().unwrap())
            )]
        );
        let ipam = vec![CniRoute::new("0.0.0.0/0".parse().unwrap(), None)];
        assert_eq!(container_routes(&ipam, &ips), ipam);
        let ipam = vec![CniRoute::new("192.168.0.0/16".parse().unwrap(), None)];
        assert_eq!(container_routes(&ipam, &ips).len(), 2);
    }

    #[test]
    fn a_named_networks_range_goes_via_its_gateway() {
        let ips = vec![("10.0.3.5/24".parse().unwrap(), "10.0.3.1".parse().unwrap())];
        let ranges = [
            "10.0.0.0/16".parse().unwrap(),
            "fd00:1::/56".parse().unwrap(),
        ];
        let routes = network_routes(&ranges, &[], &ips);
        assert_eq!(
            routes,
            vec![CniRoute::new(
                "10.0.0.0/16".parse().unwrap(),
                Some("10.0.3.1".parse().unwrap())
            )],
            "no IPv6 address, no IPv6 route"
        );
        assert!(network_routes(&ranges, &routes, &ips).is_empty());
    }

    #[test]
    fn container_routes_take_the_gateway_of_their_family() {
        let gateways = || ["10.88.0.1".parse::<IpAddr>().unwrap()];
        let to = |dst: &str| CniRoute::new(dst.parse().unwrap(), None);
        let r = container_route(&to("192.168.0.0/16"), 7, gateways());
        assert_eq!(r.gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!((r.oif, r.table), (Some(7), MAIN_TABLE));
        assert_eq!(
            container_route(&to("fd00::/8"), 7, gateways()).gateway,
            None
        );
        let own = CniRoute::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.88.0.254".parse().unwrap()),
        );
        assert_eq!(
            container_route(&own, 7, gateways()).gateway,
            Some("10.88.0.254".parse().unwrap())
        );
    }
}
