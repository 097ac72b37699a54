//! The verbs, and what they share: the runtime, the error mapping.

use crate::config::{Config, Mode};
use std::net::IpAddr;
use trellis_common::cni::delegate::delegate;
use trellis_common::cni::result::Route as CniRoute;
use trellis_common::cni::{code, CniError, CniResult, Command, Plugin, Request};
use trellis_kernel::route::MAIN_TABLE;
use trellis_kernel::{KernelError, Route};

pub struct Trellis;

impl Plugin for Trellis {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        crate::add::add(req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        crate::del::del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        crate::check::check(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        crate::gc::gc(req)
    }

    /// Ready when the node has what ADD needs: in cluster mode the agent's
    /// node record, then whatever the IPAM plugin needs (its STATUS).
    fn status(&self, req: &Request) -> Result<(), CniError> {
        let cfg = Config::from_request(req)?;
        if cfg.ipam_subnet.is_none() && cfg.node_record().ok().flatten().is_none() {
            return Err(CniError::not_ready(format!(
                "no node record in {}: trellis-agent has not published this node yet",
                cfg.state_dir.display()
            )));
        }
        delegate(&cfg.ipam_type, Command::Status, &req.env, &req.stdin)?;
        Ok(())
    }
}

/// The runtime every verb runs on: one thread, no worker ever changes
/// namespace (that happens on the dedicated threads of `kernel::netns`).
pub fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("starting the runtime: {e}")))
}

/// A kernel failure as a CNI error: a name taken by a device of another
/// kind is a configuration problem (7), anything else is ours (100).
pub fn kernel_error(e: KernelError) -> CniError {
    match e {
        KernelError::WrongKind { .. } => CniError::invalid_config(e.to_string()),
        e => CniError::kernel(e.to_string()),
    }
}

/// The gateway of `mode` for an address: the node's (cluster) or the
/// first address of the single-host subnet, when it holds the address.
pub fn mode_gateway(mode: &Mode, address: ipnetwork::IpNetwork) -> Option<std::net::IpAddr> {
    let subnet = match mode {
        Mode::Cluster { record } => ipnetwork::IpNetwork::V4(record.subnet),
        Mode::SingleHost { subnet } => *subnet,
    };
    if !subnet.contains(address.ip()) {
        return None;
    }
    match subnet {
        ipnetwork::IpNetwork::V4(n) => Some(trellis_common::node::gateway_of(n).into()),
        ipnetwork::IpNetwork::V6(n) => {
            Some(std::net::Ipv6Addr::from(u128::from(n.network()) + 1).into())
        }
    }
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

    #[test]
    fn gateways_are_the_first_address_of_the_subnet() {
        let single = Mode::SingleHost {
            subnet: "10.88.0.0/16".parse().unwrap(),
        };
        assert_eq!(
            mode_gateway(&single, "10.88.3.7/16".parse().unwrap()),
            Some("10.88.0.1".parse().unwrap())
        );
        assert_eq!(mode_gateway(&single, "10.99.0.7/16".parse().unwrap()), None);
        let v6 = Mode::SingleHost {
            subnet: "fd00:88::/64".parse().unwrap(),
        };
        assert_eq!(
            mode_gateway(&v6, "fd00:88::9/64".parse().unwrap()),
            Some("fd00:88::1".parse().unwrap())
        );
        let cluster = Mode::Cluster {
            record: serde_json::from_str(
                r#"{"subnet":"10.244.3.0/24","publicIP":"192.0.2.3","vtepMAC":"02:00:00:00:00:03"}"#,
            )
            .unwrap(),
        };
        assert_eq!(
            mode_gateway(&cluster, "10.244.3.9/24".parse().unwrap()),
            Some("10.244.3.1".parse().unwrap())
        );
    }

    #[test]
    fn wrong_device_kinds_are_configuration_errors() {
        let e = kernel_error(KernelError::WrongKind {
            name: "trellis0".into(),
            expected: "bridge",
            found: "veth".into(),
        });
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("trellis0") && e.msg.contains("veth"),
            "{}",
            e.msg
        );
        assert_eq!(kernel_error(KernelError::NotFound("x".into())).code, 100);
    }
}
