//! Where plans are applied: the kernel (one rtnetlink socket, many requests
//! in flight) or, in unit tests, a fake.

use super::plan::{overlay_route, ActualOverlay, Op};
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
}

/// The real dataplane: this node's VXLAN device.
pub struct KernelDataplane {
    nl: Netlink,
    /// What the device must look like (it makes it again when it vanished).
    node: NodeNetwork,
    /// The VXLAN device's index, as `ensure_device` (which every pass
    /// starts with) last found it.
    ifindex: u32,
}

impl KernelDataplane {
    pub fn new(nl: Netlink, node: NodeNetwork) -> Self {
        KernelDataplane {
            nl,
            node,
            ifindex: 0,
        }
    }
}

async fn execute(nl: &Netlink, ifindex: u32, op: &Op) -> Result<(), KernelError> {
    match *op {
        Op::DelFdb(e) => nl.fdb_delete(ifindex, e).await,
        Op::DelNeighbour(ip) => nl.neighbour_delete(ifindex, ip).await,
        Op::DelRoute(ref r) => nl.delete_route(r).await,
        Op::SetFdb { mac, dst } => nl.fdb_replace(ifindex, mac, IpAddr::V4(dst)).await,
        Op::SetNeighbour { ip, mac } => nl.neighbour_replace(ifindex, ip, mac).await,
        Op::SetRoute { dst, via } => nl.replace_route(&overlay_route(ifindex, dst, via)).await,
    }
}

impl Dataplane for KernelDataplane {
    async fn ensure_device(&mut self) -> Result<bool, KernelError> {
        let (ifindex, made) = self.node.ensure_vxlan(&self.nl).await?;
        self.ifindex = ifindex;
        Ok(made)
    }

    async fn dump(&mut self) -> Result<ActualOverlay, KernelError> {
        let (fdb, neighbours, routes) = futures::try_join!(
            self.nl.fdb_entries(self.ifindex),
            self.nl.neighbours_on(self.ifindex),
            self.nl.routes_on_device(self.ifindex),
        )?;
        Ok(ActualOverlay {
            fdb,
            neighbours,
            routes,
        })
    }

    fn device_index(&self) -> u32 {
        self.ifindex
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<(Op, KernelError)> {
        let nl = &self.nl;
        let ifindex = self.ifindex;
        futures::stream::iter(ops.iter().cloned())
            .map(|op| async move {
                let done = execute(nl, ifindex, &op).await;
                (op, done)
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|(op, r)| async move { r.err().map(|e| (op, e)) })
            .collect()
            .await
    }
}

/// A dataplane in memory, for unit tests: applies ops like the kernel
/// would, and fails the ones it is told to.
#[cfg(test)]
pub mod fake {
    use super::*;
    use ipnetwork::IpNetwork;
    use std::collections::HashSet;

    #[derive(Default)]
    pub struct FakeDataplane {
        pub state: ActualOverlay,
        /// Ops that fail (each once, then succeed) with ENOBUFS-like errors.
        pub fail_once: HashSet<Op>,
        pub dumps: usize,
        pub applied: Vec<Op>,
        pub device_missing: bool,
        pub devices_made: usize,
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
                let s = &mut self.state;
                match op.clone() {
                    Op::DelFdb(e) => s.fdb.retain(|x| *x != e),
                    Op::DelNeighbour(ip) => s.neighbours.retain(|x| x.ip != ip),
                    Op::DelRoute(r) => s.routes.retain(|x| *x != *r),
                    Op::SetFdb { mac, dst } => {
                        s.fdb.retain(|x| x.mac != mac);
                        s.fdb.push(trellis_kernel::fdb::FdbEntry {
                            mac,
                            dst: Some(IpAddr::V4(dst)),
                        });
                    }
                    Op::SetNeighbour { ip, mac } => {
                        s.neighbours.retain(|x| x.ip != ip);
                        s.neighbours.push(trellis_kernel::neigh::NeighbourEntry {
                            ip,
                            mac: Some(mac),
                            permanent: true,
                        });
                    }
                    Op::SetRoute { dst, via } => {
                        s.routes.retain(|x| x.dst != IpNetwork::V4(dst));
                        s.routes.push(overlay_route(1, dst, via));
                    }
                }
            }
            failed
        }
    }
}
