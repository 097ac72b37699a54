//! ADD: bridge, IPAM, veth, container addresses and routes, forwarding,
//! masquerade, result. Everything is checked before anything is changed, and
//! a failure after the IPAM allocation undoes what was done.

use crate::config::{Config, Mode};
use crate::masq;
use crate::plugin::{container_route, kernel_error, mode_gateway, runtime};
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr};
use trellis_common::cni::delegate::{delegate, Delegation};
use trellis_common::cni::result::{Interface, IpConfig, Route as CniRoute};
use trellis_common::cni::{code, CniError, CniResult, Command, Request};
use trellis_common::naming::host_veth_name;
use trellis_common::node::VXLAN_V4_OVERHEAD;
use trellis_kernel::netns::NetnsFile;
use trellis_kernel::route::MAIN_TABLE;
use trellis_kernel::{sysctl, Link, Netlink, Route, VethPair};

/// The MTU of an interface when nothing else says (Ethernet).
const ETHERNET_MTU: u32 = 1500;

pub fn add(req: &Request) -> Result<CniResult, CniError> {
    let cfg = Config::from_request(req)?;
    let mode = cfg.mode()?;
    let netns = open_netns(req)?;
    runtime()?.block_on(
        Add {
            req,
            cfg: &cfg,
            mode: &mode,
            netns: &netns,
        }
        .run(),
    )
}

/// The container's namespace; a path that is not one is a bad CNI_NETNS (4).
pub fn open_netns(req: &Request) -> Result<NetnsFile, CniError> {
    let path = req
        .env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::invalid_env("required env variables [CNI_NETNS] missing"))?;
    let netns = NetnsFile::open(path).map_err(|e| {
        CniError::invalid_env(format!("CNI_NETNS: cannot open {}", path.display()))
            .with_details(e.to_string())
    })?;
    match netns.is_namespace() {
        Ok(true) => Ok(netns),
        Ok(false) => Err(CniError::invalid_env(format!(
            "CNI_NETNS: {} is not a network namespace",
            path.display()
        ))),
        Err(e) => Err(CniError::invalid_env(format!(
            "CNI_NETNS: cannot inspect {}: {e}",
            path.display()
        ))),
    }
}

struct Add<'a> {
    req: &'a Request,
    cfg: &'a Config,
    mode: &'a Mode,
    netns: &'a NetnsFile,
}

/// The sockets and devices of one ADD.
struct Wiring<'a> {
    node: Netlink,
    pod: Netlink,
    bridge: Link,
    host_name: &'a str,
    mtu: u32,
}

/// Where the IPAM allocation stands, for the rollback.
enum Ipam {
    /// IPAM ADD is running: a rollback waits for it, then releases.
    Running(Delegation),
    /// IPAM ADD succeeded: a rollback releases the address.
    Allocated,
    /// IPAM ADD failed: it kept nothing.
    Failed,
}

/// A masquerade check running on its own thread (it waits for `nft`).
type MasqueradeCheck = std::thread::JoinHandle<Result<(), CniError>>;

/// What a failed ADD has to undo.
struct Undo {
    ipam: Ipam,
    veth_created: bool,
    masquerade: Option<MasqueradeCheck>,
}

impl Add<'_> {
    async fn run(self) -> Result<CniResult, CniError> {
        let env = &self.req.env;
        let node = Netlink::current().map_err(kernel_error)?;
        let pod = Netlink::in_netns(self.netns).map_err(kernel_error)?;
        let host_name = host_veth_name(&env.container_id, &env.ifname);

        // Nothing is changed until every check has passed.
        let (in_pod, on_node) =
            tokio::join!(pod.link_by_name(&env.ifname), node.link_by_name(&host_name));
        if in_pod.map_err(kernel_error)?.is_some() {
            return Err(CniError::invalid_env(format!(
                "CNI_IFNAME: {} already exists in CNI_NETNS {}",
                env.ifname,
                self.netns.path.display()
            )));
        }
        if on_node.map_err(kernel_error)?.is_some() {
            return Err(CniError::invalid_env(format!(
                "CNI_CONTAINERID {} already has an attachment {} on this node \
                 (host veth {host_name}): DEL it first",
                env.container_id, env.ifname
            )));
        }
        // The IPAM plugin allocates while the bridge and the veth are made.
        let ipam = Delegation::start(&self.cfg.ipam_type, Command::Add, env, &self.req.stdin)?;
        let mut undo = Undo {
            ipam: Ipam::Running(ipam),
            veth_created: false,
            masquerade: None,
        };
        let prepared = async {
            let mtu = self.mtu(&node).await?;
            let bridge = node
                .ensure_bridge(&self.cfg.bridge, Some(mtu))
                .await
                .map_err(kernel_error)?;
            Ok::<_, CniError>((mtu, bridge))
        }
        .await;
        let (mtu, bridge) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.release(undo.ipam);
                return Err(e);
            }
        };
        let wiring = Wiring {
            node,
            pod,
            bridge,
            host_name: &host_name,
            mtu,
        };
        match self.wire(&wiring, &mut undo).await {
            Ok(result) => Ok(result),
            Err(e) => {
                self.roll_back(&wiring, undo).await;
                Err(e)
            }
        }
    }

    /// From config, else the agent's overlay MTU, else the underlay's
    /// (minus the VXLAN overhead in cluster mode).
    async fn mtu(&self, node: &Netlink) -> Result<u32, CniError> {
        if let Some(mtu) = self.cfg.mtu {
            return Ok(mtu);
        }
        if let Mode::Cluster { record } = self.mode {
            if let Some(mtu) = record.mtu {
                return Ok(mtu);
            }
        }
        let underlay = default_route_mtu(node).await?.unwrap_or(ETHERNET_MTU);
        Ok(match self.mode {
            Mode::Cluster { .. } => underlay - VXLAN_V4_OVERHEAD,
            Mode::SingleHost { .. } => underlay,
        })
    }

    async fn wire(&self, w: &Wiring<'_>, undo: &mut Undo) -> Result<CniResult, CniError> {
        let env = &self.req.env;
        let (node, pod) = (&w.node, &w.pod);
        node.create_veth(&VethPair {
            name: w.host_name,
            peer_name: &env.ifname,
            peer_netns: self.netns,
            mtu: Some(w.mtu),
            master: Some(w.bridge.index),
            peer_mac: None,
        })
        .await
        .map_err(kernel_error)?;
        undo.veth_created = true;
        // With the veth on the bridge, a concurrent DEL no longer takes
        // this node for empty: the rule can be checked (a read by `nft`,
        // a write only when missing) while the container is configured.
        if let (Mode::SingleHost { subnet }, true) = (self.mode, self.cfg.ip_masq) {
            let (cfg, subnet) = (self.cfg.clone(), *subnet);
            undo.masquerade = Some(std::thread::spawn(move || masq::install(&cfg, subnet)));
        }

        let (host, container) = tokio::join!(
            node.link_by_name(w.host_name),
            pod.link_by_name(&env.ifname)
        );
        let host = host
            .map_err(kernel_error)?
            .ok_or_else(|| CniError::kernel(format!("host veth {} vanished", w.host_name)))?;
        let container = container.map_err(kernel_error)?.ok_or_else(|| {
            CniError::kernel(format!("{} vanished from the container", env.ifname))
        })?;
        let hairpin = async {
            if self.cfg.hairpin_mode {
                node.set_bridge_port_hairpin(host.index, true).await
            } else {
                Ok(())
            }
        };
        let (hairpin, up) = tokio::join!(hairpin, pod.set_link_up(container.index));
        hairpin.map_err(kernel_error)?;
        up.map_err(kernel_error)?;

        let ipam = match std::mem::replace(&mut undo.ipam, Ipam::Failed) {
            Ipam::Running(running) => running.finish_add()?,
            _ => unreachable!("IPAM ADD is collected once"),
        };
        // It succeeded: even an unusable result stands for an allocation.
        undo.ipam = Ipam::Allocated;
        let ipam = ipam?;
        let ips = self.addresses(&ipam)?;

        // The gateways live on the bridge (EEXIST from a concurrent ADD is fine).
        for (ip, gateway) in &ips {
            let on_bridge =
                IpNetwork::new(*gateway, ip.prefix()).expect("prefix of a valid network");
            node.ensure_address(w.bridge.index, on_bridge)
                .await
                .map_err(kernel_error)?;
        }
        for (ip, _) in &ips {
            pod.add_address(container.index, *ip)
                .await
                .map_err(kernel_error)?;
        }
        let routes = container_routes(&ipam.routes, &ips);
        for route in &routes {
            let kernel_route = container_route(route, container.index, ips.iter().map(|(_, g)| *g));
            match pod.add_route(&kernel_route).await {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(kernel_error(e)),
            }
        }

        if ips.iter().any(|(ip, _)| ip.is_ipv4()) {
            sysctl::enable_ipv4_forwarding().map_err(kernel_error)?;
        }
        if ips.iter().any(|(ip, _)| ip.is_ipv6()) {
            sysctl::enable_ipv6_forwarding().map_err(kernel_error)?;
        }
        if let Some(check) = undo.masquerade.take() {
            // A panic there is a failure like any other: the rollback runs.
            check
                .join()
                .map_err(|_| CniError::kernel("the masquerade check panicked"))??;
        }

        let interfaces = vec![
            Interface {
                name: w.bridge.name.clone(),
                mac: w.bridge.mac.map(|m| m.to_string()),
                ..Default::default()
            },
            Interface {
                name: host.name.clone(),
                mac: host.mac.map(|m| m.to_string()),
                mtu: Some(host.mtu),
                ..Default::default()
            },
            Interface {
                name: env.ifname.clone(),
                mac: container.mac.map(|m| m.to_string()),
                mtu: Some(container.mtu),
                sandbox: Some(self.netns.path.display().to_string()),
                ..Default::default()
            },
        ];
        let container_index = interfaces.len() - 1;
        Ok(CniResult {
            interfaces,
            ips: ips
                .iter()
                .map(|(address, gateway)| IpConfig {
                    address: *address,
                    gateway: Some(*gateway),
                    interface: Some(container_index),
                })
                .collect(),
            routes,
            dns: ipam.dns,
        })
    }

    /// The IPAM addresses with their gateways (the IPAM's, else the
    /// node's): an answer without addresses or gateways is unusable (101).
    fn addresses(&self, ipam: &CniResult) -> Result<Vec<(IpNetwork, IpAddr)>, CniError> {
        if ipam.ips.is_empty() {
            return Err(CniError::new(
                code::DELEGATE,
                format!("IPAM plugin {} returned no address", self.cfg.ipam_type),
            ));
        }
        ipam.ips
            .iter()
            .map(|ip| {
                let gateway = ip
                    .gateway
                    .or_else(|| mode_gateway(self.mode, ip.address))
                    .ok_or_else(|| {
                        CniError::new(
                            code::DELEGATE,
                            format!(
                                "IPAM plugin {} returned {} without a gateway, outside the node's subnet",
                                self.cfg.ipam_type, ip.address
                            ),
                        )
                    })?;
                if gateway.is_ipv4() != ip.address.is_ipv4() || gateway == ip.address.ip() {
                    return Err(CniError::new(
                        code::DELEGATE,
                        format!(
                            "IPAM plugin {} returned {} with an unusable gateway {gateway}",
                            self.cfg.ipam_type, ip.address
                        ),
                    ));
                }
                Ok((ip.address, gateway))
            })
            .collect()
    }

    /// Give back what IPAM ADD allocated (waiting for it when it still
    /// runs); nothing when it failed.
    fn release(&self, ipam: Ipam) {
        let allocated = match ipam {
            Ipam::Running(running) => running.finish_add().is_ok(),
            Ipam::Allocated => true,
            Ipam::Failed => false,
        };
        if allocated {
            if let Err(e) = delegate(
                &self.cfg.ipam_type,
                Command::Del,
                &self.req.env,
                &self.req.stdin,
            ) {
                log::error!("rollback: releasing the address through IPAM DEL: {e}");
            }
        }
    }

    /// Undo a half-done ADD: the veth (both ends go together), then the
    /// allocation (waiting for a still running IPAM ADD first), then the
    /// masquerade rule if no container is left. Failures are logged: the
    /// original error is what counts.
    async fn roll_back(&self, w: &Wiring<'_>, undo: Undo) {
        if undo.veth_created {
            if let Err(e) = w.node.delete_link_by_name(w.host_name).await {
                log::error!("rollback: removing veth {}: {e}", w.host_name);
            }
        }
        self.release(undo.ipam);
        if let Some(check) = undo.masquerade {
            // Let it finish (it holds the lock) before the reconcile below.
            let _ = check.join();
        }
        if let (Mode::SingleHost { subnet }, true) = (self.mode, undo.veth_created) {
            if let Err(e) = masq::reconcile(&w.node, self.cfg, *subnet).await {
                log::error!("rollback: masquerade: {e}");
            }
        }
    }
}

/// The routes to install in the container: the IPAM's, plus a default
/// route via the gateway for each family that has none.
fn container_routes(ipam_routes: &[CniRoute], ips: &[(IpNetwork, IpAddr)]) -> Vec<CniRoute> {
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

/// The MTU of the interface of the IPv4 default route (lowest metric), if
/// the node has one.
async fn default_route_mtu(node: &Netlink) -> Result<Option<u32>, CniError> {
    let routes = node
        .routes(Ipv4Addr::UNSPECIFIED.into(), MAIN_TABLE)
        .await
        .map_err(kernel_error)?;
    let Some(oif) = routes
        .iter()
        .filter(|r| r.is_default())
        .filter_map(|r| Some((r.metric.unwrap_or(0), r.oif?)))
        .min()
        .map(|(_, oif)| oif)
    else {
        return Ok(None);
    };
    Ok(node
        .link_by_index(oif)
        .await
        .map_err(kernel_error)?
        .map(|l| l.mtu))
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
}
