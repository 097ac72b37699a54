//! Kernel networking for trellis. Everything that talks to the kernel lives
//! here: rtnetlink for links, addresses, routes, FDB and neighbours; setns
//! (on a dedicated thread, never a tokio worker) for network namespaces;
//! nftables for masquerade and untracked tunnel packets.
//!
//! One [`Netlink`] per namespace, opened once and reused for every request
//! of an invocation. Operations are added as `impl Netlink` blocks, a module
//! per concept.

mod error;
mod handle;
pub mod netns;

// The node side of a container attachment: links, veth pairs, the bridge,
// addresses, routes, sysctls.
pub mod address;
pub mod bridge;
pub mod link;
pub mod route;
pub mod sysctl;
pub mod veth;

// nftables: one table type, rebuilt whole, holding the chains of
// masquerade and of the untracked tunnel packets.
pub mod isolation;
pub mod masquerade;
pub mod nft;
pub mod nft_table;
pub mod notrack;

// The overlay: VXLAN device, its forwarding and neighbour entries, routes
// to remote subnets.
pub mod ethtool;
pub mod fdb;
pub mod mac;
pub mod neigh;
pub mod nexthop;
mod nexthop_socket;
pub mod overlay_route;
pub mod vxlan;

// The two calls no safe API reaches (the crate's only `unsafe` code).
pub mod sys;

pub use error::{KernelError, Result};
pub use handle::Netlink;
pub use isolation::{Isolated, Isolation};
pub use link::{Link, VxlanInfo};
pub use mac::MacAddr;
pub use masquerade::Masquerade;
pub use nexthop::Nexthop;
pub use nft_table::{NftTable, TableState};
pub use notrack::TunnelNotrack;
pub use route::Route;
pub use veth::VethPair;
