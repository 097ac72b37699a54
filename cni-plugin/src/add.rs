//! ADD: bridge, IPAM, veth, container addresses and routes, forwarding,
//! masquerade, result. Everything is checked before anything is changed;
//! every change that would outlive a failure registers its undo in one
//! [`Rollback`], committed when the ADD succeeds.

use crate::ipam;
use crate::masq;
use crate::netns::open_netns;
use crate::rollback::{Rollback, Step};
use crate::routes::{container_route, container_routes, network_routes};
use crate::runtime::{kernel_error, runtime};
use ipnetwork::IpNetwork;
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::thread::JoinHandle;
use trellis_common::cni::delegate::Delegation;
use trellis_common::cni::result::{Dns, Interface, IpConfig};
use trellis_common::cni::{code, CniError, CniResult, Command, Request};
use trellis_common::naming::host_veth_name;
use trellis_common::node::vxlan_overhead;
use trellis_kernel::netns::NetnsFile;
use trellis_kernel::{sysctl, Link, Netlink, VethPair};
use trellis_plugin::config::{Config, Mode};

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

struct Add<'a> {
    req: &'a Request,
    cfg: &'a Config,
    mode: &'a Mode,
    netns: &'a NetnsFile,
}

/// The sockets and names of one ADD.
struct Wiring {
    node: Netlink,
    pod: Netlink,
    host_name: String,
}

/// The IPAM ADD, running while the bridge and the veth are made: collected
/// once by the ADD, or by its rollback when the ADD fails first.
type RunningIpam = Rc<RefCell<Option<Delegation>>>;

/// The masquerade check, running on its own thread (it waits for `nft`):
/// joined by the ADD, or by its rollback.
type MasqueradeCheck = Rc<RefCell<Option<JoinHandle<Result<(), CniError>>>>>;

impl Add<'_> {
    async fn run(&self) -> Result<CniResult, CniError> {
        let env = &self.req.env;
        let w = Wiring {
            node: Netlink::current().map_err(kernel_error)?,
            pod: Netlink::in_netns(self.netns).map_err(kernel_error)?,
            host_name: host_veth_name(&env.container_id, &env.ifname),
        };

        // Nothing is changed until every check has passed.
        let (in_pod, on_node) = tokio::join!(
            w.pod.link_by_name(&env.ifname),
            w.node.link_by_name(&w.host_name)
        );
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
                 (host veth {}): DEL it first",
                env.container_id, env.ifname, w.host_name
            )));
        }

        let mut rollback = Rollback::new();
        // The IPAM plugin allocates while the bridge and the veth are made.
        let ipam: RunningIpam = Rc::new(RefCell::new(Some(ipam::start(
            self.cfg,
            Command::Add,
            env,
            &self.req.stdin,
        )?)));
        let release = {
            let ipam = ipam.clone();
            rollback.push("releasing the address (IPAM DEL)", move || async move {
                let running = ipam.borrow_mut().take();
                self.release(running)
            })
        };
        let masquerade: MasqueradeCheck = Rc::default();
        if let Mode::SingleHost { subnets } = self.mode {
            // Runs after the veth is gone (steps run newest first): the
            // rules go with the last container.
            let (check, node) = (masquerade.clone(), &w.node);
            rollback.push("masquerade", move || async move {
                if let Some(running) = check.borrow_mut().take() {
                    // It holds the lock: let it finish first.
                    let _ = running.join();
                }
                masq::reconcile(node, self.cfg, subnets).await
            });
        }
        match self
            .wire(&w, &mut rollback, (&ipam, release), &masquerade)
            .await
        {
            Ok(result) => {
                rollback.commit();
                Ok(result)
            }
            Err(e) => Err(rollback.run(e).await),
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
        let underlay = node
            .default_route_link()
            .await
            .map_err(kernel_error)?
            .map_or(ETHERNET_MTU, |l| l.mtu);
        Ok(match self.mode {
            Mode::Cluster { record } => underlay - vxlan_overhead(record.public_ip),
            Mode::SingleHost { .. } => underlay,
        })
    }

    /// The bridge the container joins: the configured one, or a named
    /// network's from its record (which [`Config::mode`] found naming one).
    fn bridge(&self) -> &str {
        let record = match self.mode {
            Mode::Cluster { record } => Some(record),
            Mode::SingleHost { .. } => None,
        };
        self.cfg.bridge_for(record).unwrap_or(&self.cfg.bridge)
    }

    async fn wire<'w>(
        &self,
        w: &'w Wiring,
        rollback: &mut Rollback<'w>,
        (ipam, release): (&RunningIpam, Step),
        masquerade: &MasqueradeCheck,
    ) -> Result<CniResult, CniError> {
        let env = &self.req.env;
        let (node, pod) = (&w.node, &w.pod);
        let mtu = self.mtu(node).await?;
        let bridge = node
            .ensure_bridge(self.bridge(), Some(mtu))
            .await
            .map_err(kernel_error)?;
        node.create_veth(&VethPair {
            name: &w.host_name,
            peer_name: &env.ifname,
            peer_netns: self.netns,
            mtu: Some(mtu),
            master: Some(bridge.index),
            peer_mac: None,
        })
        .await
        .map_err(kernel_error)?;
        // Both ends go together.
        rollback.push(
            format!("removing veth {}", w.host_name),
            move || async move {
                node.delete_link_by_name(&w.host_name)
                    .await
                    .map(drop)
                    .map_err(kernel_error)
            },
        );
        // With the veth on the bridge, a concurrent DEL no longer takes
        // this node for empty: the rule can be checked (a read by `nft`,
        // a write only when missing) while the container is configured.
        if let (Mode::SingleHost { subnets }, true) = (self.mode, self.cfg.ip_masq) {
            let (cfg, subnets) = (self.cfg.clone(), subnets.clone());
            *masquerade.borrow_mut() =
                Some(std::thread::spawn(move || masq::install(&cfg, &subnets)));
        }

        let (host, container) = tokio::join!(
            node.link_by_name(&w.host_name),
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

        let running = ipam
            .borrow_mut()
            .take()
            .expect("IPAM ADD is collected once");
        let ipam = match running.finish_add() {
            Ok(result) => result?,
            Err(failed) => {
                // By the specification a failed ADD kept nothing.
                rollback.forget(release);
                return Err(failed);
            }
        };
        let ips = self.addresses(&ipam)?;

        // The gateways live on the bridge (EEXIST from a concurrent ADD is fine).
        for (ip, gateway) in &ips {
            let on_bridge =
                IpNetwork::new(*gateway, ip.prefix()).expect("prefix of a valid network");
            node.ensure_address(bridge.index, on_bridge)
                .await
                .map_err(kernel_error)?;
        }
        for (ip, _) in &ips {
            pod.add_address(container.index, *ip)
                .await
                .map_err(kernel_error)?;
        }
        let mut routes = container_routes(&ipam.routes, &ips);
        routes.extend(network_routes(&self.named_ranges(), &routes, &ips));
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
        let check = masquerade.borrow_mut().take();
        if let Some(check) = check {
            // A panic there is a failure like any other: the rollback runs.
            check
                .join()
                .map_err(|_| CniError::kernel("the masquerade check panicked"))??;
        }
        Ok(self.result(&bridge, &host, &container, &ips, routes, ipam))
    }

    /// The result: bridge, host veth, container interface (with its
    /// sandbox), and the addresses on the container interface.
    fn result(
        &self,
        bridge: &Link,
        host: &Link,
        container: &Link,
        ips: &[(IpNetwork, IpAddr)],
        routes: Vec<trellis_common::cni::Route>,
        ipam: CniResult,
    ) -> CniResult {
        let interfaces = vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac.map(|m| m.to_string()),
                ..Default::default()
            },
            Interface {
                name: host.name.clone(),
                mac: host.mac.map(|m| m.to_string()),
                mtu: Some(host.mtu),
                ..Default::default()
            },
            Interface {
                name: self.req.env.ifname.clone(),
                mac: container.mac.map(|m| m.to_string()),
                mtu: Some(container.mtu),
                sandbox: Some(self.netns.path.display().to_string()),
                ..Default::default()
            },
        ];
        let container_index = interfaces.len() - 1;
        CniResult {
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
            dns: self.dns(ipam.dns),
        }
    }

    /// A named network's ranges (its record's), for [`network_routes`].
    fn named_ranges(&self) -> Vec<IpNetwork> {
        match (self.mode, &self.cfg.network) {
            (Mode::Cluster { record }, Some(_)) => [
                record.network.map(IpNetwork::V4),
                record.ipv6_network.map(IpNetwork::V6),
            ]
            .into_iter()
            .flatten()
            .collect(),
            _ => Vec::new(),
        }
    }

    /// The IPAM's DNS settings if it gave any, else, where the node's agent
    /// serves DNS, its gateways as nameservers and the network's name as
    /// the search domain (the agent answers `NAME` and `NAME.<network>`).
    fn dns(&self, ipam: Dns) -> Dns {
        match self.mode {
            Mode::Cluster { record } if ipam.is_empty() && record.dns => Dns {
                nameservers: record
                    .gateway_networks()
                    .iter()
                    .map(|n| n.ip().to_string())
                    .collect(),
                // A named network's domain is its own name, whatever the
                // conflist's.
                search: vec![trellis_common::container_name::domain_of(
                    self.cfg.network.as_deref().unwrap_or(&self.req.conf.name),
                )],
                ..Dns::default()
            },
            _ => ipam,
        }
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
                    .or_else(|| self.mode.gateway_for(ip.address))
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

    /// Give back what IPAM ADD allocated: wait for it first when it still
    /// runs (a failed one kept nothing), then IPAM DEL.
    fn release(&self, running: Option<Delegation>) -> Result<(), CniError> {
        if let Some(running) = running {
            if running.finish_add().is_err() {
                return Ok(());
            }
        }
        ipam::call(self.cfg, Command::Del, &self.req.env, &self.req.stdin).map(drop)
    }
}
