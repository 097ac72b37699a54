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

// The overlay: VXLAN device, its forwarding and neighbour entries, routes
// to remote subnets, the underlay it rides on.
pub mod fdb;
pub mod mac;
pub mod neigh;
pub mod overlay_route;
pub mod underlay;
pub mod vxlan;

pub use error::{KernelError, Result};
pub use handle::Netlink;
pub use mac::MacAddr;
