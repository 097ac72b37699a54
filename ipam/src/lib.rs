//! `trellis-ipam`: atomic IP address allocation for the trellis CNI plugin,
//! in etcd (clusters) or in a local store (a single host).
//!
//! The binary is a CNI IPAM plugin. The library also serves the node agent,
//! which reclaims addresses leaked by containers that are gone:
//!
//! ```no_run
//! use std::time::Duration;
//! use trellis_common::etcd::EtcdSettings;
//! use trellis_common::keys::Keys;
//! use trellis_ipam::EtcdStore;
//! # async fn gc(alive: impl Fn(&trellis_ipam::Handle) -> bool) -> Result<(), trellis_ipam::IpamError> {
//! let store = EtcdStore::connect(&EtcdSettings::new(vec!["http://127.0.0.1:2379".into()])).await?;
//! // or, sharing the agent's client: EtcdStore::from_client(&client, Keys::default(), Duration::from_secs(3))
//! for a in store.list_node("node-1").await? {
//!     if !alive(&a.handle()) {
//!         // Frees the address only if nobody re-allocated it since the listing.
//!         store.release_exact(&a).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! `EtcdStore::release(&handle)` frees whatever an attachment holds
//! (idempotent, never an address owned by another attachment).

pub mod allocation;
pub mod allocator;
pub mod config;
pub mod cursor;
pub mod error;
pub mod fence_keeper;
pub mod placement;
pub mod plugin;
pub mod pool;
pub mod request;
pub mod store;

pub use allocation::{Allocation, Claim, Handle, Owner};
pub use error::IpamError;
pub use plugin::IpamPlugin;
pub use pool::Pool;
pub use store::etcd::EtcdStore;
pub use store::local::LocalStore;
pub use store::Store;
