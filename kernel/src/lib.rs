//! Kernel networking for trellis. Everything that talks to the kernel lives
//! here: rtnetlink for links, addresses, routes, FDB and neighbours; setns
//! (on a dedicated thread, never a tokio worker) for network namespaces;
//! nftables for masquerade.
//!
//! One [`Netlink`] per namespace, opened once and reused for every request
//! of an invocation. Operations are added as `impl Netlink` blocks, a module
//! per concept.

mod error;
mod handle;
pub mod netns;

// The node side of a container attachment: links, veth pairs, the bridge,
// addresses, routes, sysctls, masquerade.
pub mod address;
pub mod bridge;
pub mod link;
pub mod masquerade;
pub mod node_table;
pub mod route;
pub mod sysctl;
pub mod veth;

// The overlay: VXLAN device, its forwarding and neighbour entries, routes
// to remote subnets, the underlay it rides on, its untracked tunnel packets.
pub mod fdb;
pub mod mac;
pub mod neigh;
pub mod notrack;
pub mod overlay_route;
pub mod underlay;
pub mod vxlan;

pub use error::{KernelError, Result};
pub use handle::Netlink;
pub use link::Link;
pub use mac::MacAddr;
pub use masquerade::{Masquerade, TableState};
pub use node_table::NodeTable;
pub use notrack::TunnelNotrack;
pub use route::Route;
pub use veth::VethPair;
