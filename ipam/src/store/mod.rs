//! Where allocations live: etcd for clusters, a file under `dataDir` for a
//! single host. Both give the same atomic operations, so the allocator and
//! the CNI verbs are written once against this trait.

mod access;
pub mod etcd;
mod etcd_fence;
mod etcd_listing;
pub mod fence;
pub mod local;
pub mod records;

use crate::allocation::{Allocation, Claim, Handle, Owner};
use crate::error::IpamError;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

/// The atomic operations an allocation store offers, as the allocator and
/// the CNI GC call them on either store.
#[allow(async_fn_in_trait)] // used generically inside this crate only
pub trait Store {
    /// The allocation `handle` holds, if any (and only if the address record
    /// agrees that it belongs to that handle).
    async fn lookup(&mut self, handle: &Handle) -> Result<Option<Allocation>, IpamError>;

    /// Atomically give `ip` (and in a dual-stack pool its IPv6 twin `ip6`)
    /// to `owner` if neither address nor the owner's handle is taken.
    async fn claim(
        &mut self,
        ip: IpAddr,
        ip6: Option<Ipv6Addr>,
        owner: &Owner,
    ) -> Result<Claim, IpamError>;

    /// The addresses held inside `subnet`, by anyone.
    async fn used_in(&mut self, subnet: IpNetwork) -> Result<HashSet<IpAddr>, IpamError>;

    /// Free `allocation` only if it is unchanged since it was read (GC).
    async fn release_exact(&mut self, allocation: &Allocation) -> Result<bool, IpamError>;
}
