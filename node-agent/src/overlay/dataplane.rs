//! Where plans are applied: the kernel (one rtnetlink socket, many requests
//! in flight) or, in unit tests, a fake.

use super::paths::{overlay_nexthop, style_of, Hop, Paths, RouteStyle, Underlay};
use super::plan::{ActualOverlay, Op};
use crate::node_network::NodeNetwork;
use futures::StreamExt;
use ipnetwork::IpNetwork;
use std::future::Future;
use std::net::IpAddr;
use tokio::sync::watch;
use trellis_kernel::{KernelError, Netlink};

/// Requests kept in flight on the netlink socket while applying a plan.
pub const IN_FLIGHT: usize = 128;

/// The overlay's kernel state, as the reconciler needs it.
pub trait Dataplane: Send {
    /// Make sure the VXLAN device is there (re-creating it when it vanished
    /// or changed), and read what the routes depend on (the underlay's
    /// subnets, with direct routing); `true` when the device had to be made.
    fn ensure_device(&mut self) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// The entries for remote nodes, one dump per kind.
    fn dump(&mut self) -> impl Future<Output = Result<ActualOverlay, KernelError>> + Send;

    /// Apply `ops` (in any order among themselves); the ones that failed.
    fn apply(&mut self, ops: &[Op]) -> impl Future<Output = Vec<(Op, KernelError)>> + Send;

    /// Where routes leave, as the last `ensure_device` and `dump` found
    /// it: the devices, the route style (through nexthop objects unless
    /// the last dump found the kernel without them), the direct subnets.
    fn paths(&self) -> &Paths;
}

/// The real dataplane: this node's VXLAN device and its underlay device.
pub struct KernelDataplane {
    nl: Netlink,
    /// What the device must look like (it makes it again when it vanished).
    node: NodeNetwork,
    /// Direct routing on or off, as the cluster config says now.
    direct: watch::Receiver<bool>,
    paths: Paths,
}

impl KernelDataplane {
    pub fn new(nl: Netlink, node: NodeNetwork, direct: watch::Receiver<bool>) -> Self {
        KernelDataplane {
            nl,
            node,
            direct,
            paths: Paths::overlay(RouteStyle::Nexthop, 0),
        }
    }
}

/// The underlay device `ifindex` as the plan needs it: with `direct`
/// routing on, the subnets of its addresses (IPv6 link-local ones left
/// out: no node's public address is link-local).
pub async fn read_underlay(
    nl: &Netlink,
    ifindex: u32,
    direct: bool,
) -> Result<Underlay, KernelError> {
    let mut subnets = Vec::new();
    if direct {
        for a in nl.addresses(ifindex).await? {
            if matches!(a, IpNetwork::V6(v6) if v6.ip().is_unicast_link_local()) {
                continue;
            }
            subnets.extend(IpNetwork::new(a.network(), a.prefix()).ok());
        }
        subnets.sort();
        subnets.dedup();
    }
    Ok(Underlay {
        ifindex,
        direct: subnets,
    })
}

/// What the kernel holds for the remote nodes, one dump of each kind
/// (nothing is written): the VXLAN device `vxlan`'s entries and routes,
/// and the routes on the `underlay` device into `pod_networks` (direct
/// ones, wanted or stale; its other routes are not the overlay's); and how
/// the kernel can take routes: through nexthop objects, or (EOPNOTSUPP
/// before Linux 5.3) with gateways.
pub async fn read_overlay(
    nl: &Netlink,
    vxlan: u32,
    underlay: Option<u32>,
    pod_networks: &[IpNetwork],
) -> Result<(ActualOverlay, RouteStyle), KernelError> {
    let (nexthops, style) = match nl.nexthops_on_device(vxlan).await {
        Ok(found) => (found, RouteStyle::Nexthop),
        Err(e) if e.is_unsupported() => (Vec::new(), RouteStyle::Gateway),
        Err(e) => return Err(e),
    };
    let ids: std::collections::HashSet<u32> = nexthops.iter().map(|n| n.id).collect();
    let devices: Vec<u32> = std::iter::once(vxlan).chain(underlay).collect();
    let (fdb, neighbours, mut routes) = futures::try_join!(
        nl.fdb_entries(vxlan),
        nl.neighbours_on(vxlan),
        nl.routes_on_devices(&devices, &ids),
    )?;
    routes.retain(|r| underlay.is_none() || r.oif != underlay || within(pod_networks, r.dst));
    let actual = ActualOverlay {
        fdb,
        neighbours,
        routes,
        nexthops,
    };
    Ok((actual, style))
}

/// Whether `dst` lies inside one of `networks`.
fn within(networks: &[IpNetwork], dst: IpNetwork) -> bool {
    networks
        .iter()
        .any(|n| n.prefix() <= dst.prefix() && n.contains(dst.network()))
}

/// Remove the direct routes into `networks` (a network taken down, the
/// node cleaned up): the main table's routes into them through a gateway
/// that is not `onlink` (the overlay's own routes are, and go with their
/// VXLAN device). How many went.
pub async fn remove_direct_routes(
    nl: &Netlink,
    networks: &[IpNetwork],
) -> Result<usize, KernelError> {
    let mut removed = 0;
    for family in [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])] {
        for r in nl.routes(family, trellis_kernel::route::MAIN_TABLE).await? {
            if r.gateway.is_some() && !r.onlink && within(networks, r.dst) {
                nl.delete_route(&r).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

async fn execute(nl: &Netlink, paths: &Paths, op: &Op) -> Result<(), KernelError> {
    let ifindex = paths.vxlan;
    match *op {
        Op::DelFdb(e) => nl.fdb_delete(ifindex, e).await,
        Op::DelNeighbour(ip) => nl.neighbour_delete(ifindex, ip).await,
        Op::DelRoute(ref r) => nl.delete_route(r).await,
        Op::DelNexthop(id) => nl.delete_nexthop(id).await,
        Op::SetFdb { mac, dst } => nl.fdb_replace(ifindex, mac, dst).await,
        Op::SetNeighbour { ip, mac } => nl.neighbour_replace(ifindex, ip, mac).await,
        Op::SetRoute { dst, via } => {
            if let (RouteStyle::Nexthop, IpAddr::V4(via)) = (style_of(paths.style, via), via) {
                nl.replace_nexthop(&overlay_nexthop(ifindex, via)).await?;
            }
            nl.replace_route(&paths.route(dst, Hop::Overlay(via))).await
        }
        Op::SetDirectRoute { dst, via } => {
            nl.replace_route(&paths.route(dst, Hop::Direct(via))).await
        }
    }
}

impl Dataplane for KernelDataplane {
    async fn ensure_device(&mut self) -> Result<bool, KernelError> {
        let (ifindex, made) = self.node.ensure_vxlan(&self.nl).await?;
        self.paths.vxlan = ifindex;
        let direct = *self.direct.borrow();
        let underlay = read_underlay(&self.nl, self.node.vxlan.underlay_index, direct).await?;
        if self.paths.underlay.as_ref() != Some(&underlay) {
            if underlay.direct.is_empty() {
                log::info!("overlay: every remote node over VXLAN");
            } else {
                let subnets: Vec<String> = underlay.direct.iter().map(|s| s.to_string()).collect();
                log::info!(
                    "overlay: direct routes to the nodes on {}, VXLAN to the others",
                    subnets.join(", ")
                );
            }
        }
        self.paths.underlay = Some(underlay);
        Ok(made)
    }

    async fn dump(&mut self) -> Result<ActualOverlay, KernelError> {
        let underlay = self.paths.underlay.as_ref().map(|u| u.ifindex);
        let networks = self.node.cluster_networks();
        let (actual, style) = read_overlay(&self.nl, self.paths.vxlan, underlay, &networks).await?;
        if style == RouteStyle::Gateway && self.paths.style == RouteStyle::Nexthop {
            log::warn!(
                "overlay: the kernel has no nexthop objects; routes carry their gateways, which is slower with thousands of nodes"
            );
            self.paths.style = RouteStyle::Gateway;
        }
        Ok(actual)
    }

    fn paths(&self) -> &Paths {
        &self.paths
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<(Op, KernelError)> {
        let nl = &self.nl;
        let paths = &self.paths;
        futures::stream::iter(ops.iter().cloned())
            .map(|op| async move {
                let done = execute(nl, paths, &op).await;
                (op, done)
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|(op, r)| async move { r.err().map(|e| (op, e)) })
            .collect()
            .await
    }
}

/// A dataplane in memory, for unit tests: applies ops like the kernel
/// would ([`ActualOverlay::apply`]), and fails the ones it is told to.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::HashSet;

    pub struct FakeDataplane {
        pub state: ActualOverlay,
        /// Ops that fail (each once, then succeed) with ENOBUFS-like errors.
        pub fail_once: HashSet<Op>,
        pub dumps: usize,
        pub applied: Vec<Op>,
        pub device_missing: bool,
        pub devices_made: usize,
        pub paths: Paths,
    }

    impl Default for FakeDataplane {
        fn default() -> Self {
            FakeDataplane {
                state: ActualOverlay::default(),
                fail_once: HashSet::new(),
                dumps: 0,
                applied: Vec::new(),
                device_missing: false,
                devices_made: 0,
                paths: Paths::overlay(RouteStyle::Nexthop, 1),
            }
        }
    }

    impl Dataplane for FakeDataplane {
        async fn ensure_device(&mut self) -> Result<bool, KernelError> {
            if self.device_missing {
                self.device_missing = false;
                self.devices_made += 1;
                self.state = ActualOverlay::default();
                return Ok(true);
            }
            Ok(false)
        }

        async fn dump(&mut self) -> Result<ActualOverlay, KernelError> {
            self.dumps += 1;
            Ok(self.state.clone())
        }

        fn paths(&self) -> &Paths {
            &self.paths
        }

        async fn apply(&mut self, ops: &[Op]) -> Vec<(Op, KernelError)> {
            let mut failed = Vec::new();
            for op in ops {
                if self.fail_once.remove(op) {
                    failed.push((
                        op.clone(),
                        KernelError::Io {
                            op: format!("{op:?}"),
                            source: std::io::Error::from_raw_os_error(105),
                        },
                    ));
                    continue;
                }
                self.applied.push(op.clone());
                self.state.apply(op, &self.paths);
            }
            failed
        }
    }
}
