//! CHECK: the attachment is still as ADD left it (prevResult): the
//! container interface with its addresses and routes, its veth peer on the
//! bridge, and the IPAM plugin's own CHECK.

use crate::ipam;
use crate::netns::open_netns;
use crate::routes::container_route;
use crate::runtime::{kernel_error, runtime};
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use trellis_common::cni::{CniError, CniResult, Command, Request};
use trellis_common::naming::host_veth_name;
use trellis_kernel::route::MAIN_TABLE;
use trellis_kernel::{Link, Netlink, Route};
use trellis_plugin::config::Config;

pub fn check(req: &Request) -> Result<(), CniError> {
    let cfg = Config::from_request(req)?;
    let prev = req
        .conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("CHECK needs the prevResult of ADD"))?;
    ipam::call(&cfg, Command::Check, &req.env, &req.stdin)?;
    let netns = open_netns(req)?;
    runtime()?.block_on(async {
        let node = Netlink::current().map_err(kernel_error)?;
        let pod = Netlink::in_netns(&netns).map_err(kernel_error)?;
        Checker {
            req,
            cfg: &cfg,
            prev,
            netns_path: netns.path.display().to_string(),
            node,
            pod,
        }
        .run()
        .await
    })
}

fn failed(msg: impl Into<String>) -> CniError {
    CniError::check_failed(msg)
}

struct Checker<'a> {
    req: &'a Request,
    cfg: &'a Config,
    prev: &'a CniResult,
    netns_path: String,
    node: Netlink,
    pod: Netlink,
}

impl Checker<'_> {
    async fn run(&self) -> Result<(), CniError> {
        let ifname = &self.req.env.ifname;
        let host_name = host_veth_name(&self.req.env.container_id, ifname);
        let record = self.cfg.node_record()?;
        let bridge_name = self.cfg.bridge_for(record.as_ref()).ok_or_else(|| {
            failed(format!(
                "network {} is not set up on this node (no {})",
                self.cfg.network.as_deref().unwrap_or_default(),
                self.cfg.record_path().display()
            ))
        })?;
        let (container, host, bridge) = tokio::join!(
            self.pod.link_by_name(ifname),
            self.node.link_by_name(&host_name),
            self.node.link_by_name(bridge_name),
        );
        let container = container
            .map_err(kernel_error)?
            .ok_or_else(|| failed(format!("{ifname} is missing from {}", self.netns_path)))?;
        let host = host
            .map_err(kernel_error)?
            .ok_or_else(|| failed(format!("host veth {host_name} of {ifname} is missing")))?;
        let bridge = bridge
            .map_err(kernel_error)?
            .ok_or_else(|| failed(format!("bridge {bridge_name} is missing")))?;

        self.check_links(&container, &host, &bridge).await?;
        let container_index = self.check_against_prev_interface(&container)?;
        self.check_addresses(&container, container_index).await?;
        self.check_routes(&container).await
    }

    async fn check_links(
        &self,
        container: &Link,
        host: &Link,
        bridge: &Link,
    ) -> Result<(), CniError> {
        if !container.is_kind("veth") {
            return Err(failed(format!(
                "{} in the container is a {}, not a veth",
                container.name,
                container.kind.as_deref().unwrap_or("device")
            )));
        }
        if !container.up {
            return Err(failed(format!(
                "{} in the container is down",
                container.name
            )));
        }
        if container.peer_index != Some(host.index) {
            return Err(failed(format!(
                "{} in the container is not the peer of host veth {}",
                container.name, host.name
            )));
        }
        if !bridge.is_kind("bridge") || !bridge.up {
            return Err(failed(format!(
                "bridge {} is not an up bridge",
                bridge.name
            )));
        }
        if host.master != Some(bridge.index) {
            return Err(failed(format!(
                "host veth {} is not a port of bridge {}",
                host.name, bridge.name
            )));
        }
        if !host.up {
            return Err(failed(format!("host veth {} is down", host.name)));
        }
        if self.cfg.hairpin_mode {
            let hairpin = self
                .node
                .bridge_port_hairpin(host.index)
                .await
                .map_err(kernel_error)?;
            if hairpin != Some(true) {
                return Err(failed(format!("hairpin mode is off on {}", host.name)));
            }
        }
        Ok(())
    }

    /// The container interface of prevResult must be this one; its index
    /// in prevResult's list.
    fn check_against_prev_interface(&self, container: &Link) -> Result<usize, CniError> {
        let (index, iface) = self
            .prev
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| {
                i.name == container.name && i.sandbox.as_deref() == Some(&self.netns_path)
            })
            .ok_or_else(|| {
                failed(format!(
                    "prevResult has no interface {} in {}",
                    container.name, self.netns_path
                ))
            })?;
        if let (Some(want), Some(have)) = (&iface.mac, container.mac) {
            if !want.eq_ignore_ascii_case(&have.to_string()) {
                return Err(failed(format!(
                    "{} has MAC {have}, prevResult says {want}",
                    container.name
                )));
            }
        }
        if let Some(mtu) = iface.mtu {
            if mtu != container.mtu {
                return Err(failed(format!(
                    "{} has MTU {}, prevResult says {mtu}",
                    container.name, container.mtu
                )));
            }
        }
        Ok(index)
    }

    async fn check_addresses(&self, container: &Link, prev_index: usize) -> Result<(), CniError> {
        let have = self
            .pod
            .addresses(container.index)
            .await
            .map_err(kernel_error)?;
        for ip in &self.prev.ips {
            if ip.interface.is_some_and(|i| i != prev_index) {
                continue;
            }
            if !have.contains(&ip.address) {
                return Err(failed(format!(
                    "{} lacks its address {} (has {})",
                    container.name,
                    ip.address,
                    list(&have)
                )));
            }
        }
        Ok(())
    }

    async fn check_routes(&self, container: &Link) -> Result<(), CniError> {
        let mut have: Vec<Route> = Vec::new();
        for family in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let wanted = self
                .prev
                .routes
                .iter()
                .any(|r| r.dst.is_ipv4() == family.is_ipv4());
            if wanted {
                let table = self
                    .pod
                    .routes(family, MAIN_TABLE)
                    .await
                    .map_err(kernel_error)?;
                have.extend(table);
            }
        }
        for route in &self.prev.routes {
            if route.table.is_some_and(|t| t != MAIN_TABLE) {
                continue;
            }
            let gateways = self.prev.ips.iter().filter_map(|ip| ip.gateway);
            let want = container_route(route, container.index, gateways);
            if !have.iter().any(|r| r.same_path(&want)) {
                return Err(failed(format!(
                    "the container lacks its route to {}{}",
                    route.dst,
                    want.gateway
                        .map(|g| format!(" via {g}"))
                        .unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

fn list(addrs: &[IpNetwork]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
