//! The overlay entries for remote nodes, kept in step with etcd the way
//! Calico's vxlan manager does it: a desired state computed from the node
//! records, the actual state dumped from the kernel, a plan that is their
//! difference, and a reconciler that applies plans until nothing is left.

pub mod admission;
pub mod dataplane;
pub mod desired;
pub mod paths;
pub mod plan;
pub mod reconciler;

pub use admission::LocalView;
pub use dataplane::{Dataplane, KernelDataplane};
pub use desired::{DesiredOverlay, OverlayUpdate, Remote6, RemoteNode};
pub use paths::{Hop, Paths, RouteStyle, Underlay};
pub use plan::{plan, ActualOverlay, Op, Plan};
pub use reconciler::{ReconcileOutcome, Reconciler};
