//! Where plans are applied: the kernel (one rtnetlink socket, many requests
//! in flight) or, in unit tests, a fake.

use super::plan::{overlay_nexthop, overlay_route, style_of, ActualOverlay, Op, RouteStyle};
use crate::node_network::NodeNetwork;
use futures::StreamExt;
use std::future::Future;
use std::net::IpAddr;
use trellis_kernel::{KernelError, Netlink};

/// Requests kept in flight on the netlink socket while applying a plan.
pub const IN_FLIGHT: usize = 128;

/// The overlay's kernel state, as the reconciler needs it.
pub trait Dataplane: Send {
    /// Make sure the VXLAN device is there (re-creating it when it vanished
    /// or changed); `true` when it had to be made.
    fn ensure_device(&mut self) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// The entries on the VXLAN device, one dump per kind.
    fn dump(&mut self) -> impl Future<Output = Result<ActualOverlay, KernelError>> + Send;

    /// Apply `ops` (in any order among themselves); the ones that failed.
    fn apply(&mut self, ops: &[Op]) -> impl Future<Output = Vec<(Op, KernelError)>> + Send;

    /// The VXLAN device's index, as the last `ensure_device` found it.
    fn device_index(&self) -> u32;

    /// How routes are written: through nexthop objects unless the last
    /// dump found the kernel without them.
    fn route_style(&self) -> RouteStyle;
}

/// The real dataplane: this node's VXLAN device.
pub struct KernelDataplane {
    nl: Netlink,
    /// What the device must look like (it makes it again when it vanished).
    node: NodeNetwork,
    /// The VXLAN device's index, as `ensure_device` (which every pass
    /// starts with) last found it.
    ifindex: u32,
    style: RouteStyle,
}

impl KernelDataplane {
    pub fn new(nl: Netlink, node: NodeNetwork) -> Self {
        KernelDataplane {
            nl,
            node,
            ifindex: 0,
            style: RouteStyle::Nexthop,
        }
    }
}

/// What the VXLAN device `ifindex` holds, one dump of each kind (nothing
/// is written), and how the kernel can take routes: through nexthop
/// objects, or (EOPNOTSUPP before Linux 5.3) with gateways.
pub async fn read_overlay(
    nl: &Netlink,
    ifindex: u32,
) -> Result<(ActualOverlay, RouteStyle), KernelError> {
    let (nexthops, style) = match nl.nexthops_on_device(ifindex).await {
        Ok(found) => (found, RouteStyle::Nexthop),
        Err(e) if e.is_unsupported() => (Vec::new(), RouteStyle::Gateway),
        Err(e) => return Err(e),
    };
    let ids: std::collections::HashSet<u32> = nexthops.iter().map(|n| n.id).collect();
    let (fdb, neighbours, routes) = futures::try_join!(
        nl.fdb_entries(ifindex),
        nl.neighbours_on(ifindex),
        nl.routes_on_device(ifindex, &ids),
    )?;
    let actual = ActualOverlay {
        fdb,
        neighbours,
        routes,
        nexthops,
    };
    Ok((actual, style))
}

async fn execute(
    nl: &Netlink,
    ifindex: u32,
    style: RouteStyle,
    op: &Op,
) -> Result<(), KernelError> {
    match *op {
        Op::DelFdb(e) => nl.fdb_delete(ifindex, e).await,
        Op::DelNeighbour(ip) => nl.neighbour_delete(ifindex, ip).await,
        Op::DelRoute(ref r) => nl.delete_route(r).await,
        Op::DelNexthop(id) => nl.delete_nexthop(id).await,
        Op::SetFdb { mac, dst } => nl.fdb_replace(ifindex, mac, dst).await,
        Op::SetNeighbour { ip, mac } => nl.neighbour_replace(ifindex, ip, mac).await,
        Op::SetRoute { dst, via } => {
            if let (RouteStyle::Nexthop, IpAddr::V4(via)) = (style_of(style, via), via) {
                nl.replace_nexthop(&overlay_nexthop(ifindex, via)).await?;
            }
            nl.replace_route(&overlay_route(style, ifindex, dst, via))
                .await
        }
    }
}

impl Dataplane for KernelDataplane {
    async fn ensure_device(&mut self) -> Result<bool, KernelError> {
        let (ifindex, made) = self.node.ensure_vxlan(&self.nl).await?;
        self.ifindex = ifindex;
        Ok(made)
    }

    async fn dump(&mut self) -> Result<ActualOverlay, KernelError> {
        let (actual, style) = read_overlay(&self.nl, self.ifindex).await?;
        if style == RouteStyle::Gateway && self.style == RouteStyle::Nexthop {
            log::warn!(
                "overlay: the kernel has no nexthop objects; routes carry their gateways, which is slower with thousands of nodes"
            );
            self.style = RouteStyle::Gateway;
        }
        Ok(actual)
    }

    fn device_index(&self) -> u32 {
        self.ifindex
    }

    fn route_style(&self) -> RouteStyle {
        self.style
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<(Op, KernelError)> {
        let nl = &self.nl;
        let ifindex = self.ifindex;
        let style = self.style;
        futures::stream::iter(ops.iter().cloned())
            .map(|op| async move {
                let done = execute(nl, ifindex, style, &op).await;
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
        pub style: RouteStyle,
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
                style: RouteStyle::Nexthop,
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

        fn device_index(&self) -> u32 {
            1
        }

        fn route_style(&self) -> RouteStyle {
            self.style
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
                self.state.apply(op, self.style, 1);
            }
            failed
        }
    }
}
