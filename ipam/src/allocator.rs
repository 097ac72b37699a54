//! Choosing an address: one store round trip in the common case.
//!
//! The candidate is reserved from the node's cursor (the last address handed
//! out, advanced under a short lock), so concurrent ADDs of one node pick
//! different addresses and their claims run in parallel instead of queueing
//! or colliding. The candidate is then claimed directly; only if it turns
//! out taken (addresses freed out of order, a lost cursor) is the subnet's
//! used set read and the first free candidate after the cursor reserved and
//! claimed. The claim itself is atomic in the store, so even writers that
//! share no cursor can never produce a duplicate.

use crate::allocation::{Allocation, Claim, Owner};
use crate::cursor::Cursor;
use crate::error::IpamError;
use crate::pool::Pool;
use crate::request::Requested;
use crate::store::Store;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

/// How many times the used set is re-read when claims keep losing races
/// (only possible with writers that do not share our cursor): at most
/// `ROUNDS + 1` claims per allocation.
const ROUNDS: usize = 4;

/// How the address was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allocation: Allocation,
    /// False when the attachment already held it (a repeated ADD).
    pub fresh: bool,
}

/// Allocate an address of `pool` for `owner`: `requested` if given, else the
/// next free one after the cursor; in a dual-stack pool with its IPv6 twin,
/// or the IPv6 address requested. In an IPv6-only pool the IPv6 address is
/// the pool's own, requested or not.
pub async fn allocate<S: Store, C: Cursor>(
    store: &mut S,
    cursor: &mut C,
    pool: &Pool,
    owner: &Owner,
    requested: Requested,
) -> Result<Outcome, IpamError> {
    let requested = match pool.subnet4() {
        Some(_) => requested,
        None => {
            if let Some(ip) = requested.v4 {
                return Err(IpamError::AddressUnavailable(format!(
                    "requested address {ip} cannot be allocated: {}",
                    pool.why_unusable(IpAddr::V4(ip)).unwrap_or_default()
                )));
            }
            // The IPv6 address is the pool's own: no twin.
            return match requested.v6 {
                Some(ip6) => allocate_static(store, pool, owner, IpAddr::V6(ip6), None).await,
                None => allocate_next(store, cursor, pool, owner, None).await,
            };
        }
    };
    if let Some(ip6) = requested.v6 {
        if let Some(why) = pool.why_unusable6(ip6) {
            return Err(IpamError::AddressUnavailable(format!(
                "requested address {ip6} cannot be allocated: {why}"
            )));
        }
    }
    match requested.v4 {
        Some(ip) => allocate_static(store, pool, owner, IpAddr::V4(ip), requested.v6).await,
        None => allocate_next(store, cursor, pool, owner, requested.v6).await,
    }
}

/// The next free address after the cursor, with the twin `want6` (else
/// the pool's twin of it).
async fn allocate_next<S: Store, C: Cursor>(
    store: &mut S,
    cursor: &mut C,
    pool: &Pool,
    owner: &Owner,
    want6: Option<Ipv6Addr>,
) -> Result<Outcome, IpamError> {
    // The first candidate is the cursor's next; only after a lost race is
    // the used set read, and then re-read before every further candidate.
    let mut used: Option<HashSet<IpAddr>> = None;
    for round in 0..=ROUNDS {
        if round > 0 {
            used = Some(store.used_in(pool.subnet()).await?);
        }
        let free = cursor.reserve(&mut |c| {
            pool.candidates_after(c)
                .find(|ip| used.as_ref().is_none_or(|u| !u.contains(ip)))
        })?;
        let Some(ip) = free else {
            return held_or_exhausted(store, pool, owner).await;
        };
        let ip6 = want6.or_else(|| pool.ipv6_of(ip));
        match store.claim(ip, ip6, owner).await? {
            Claim::Claimed(a) => return Ok(fresh(a)),
            Claim::AlreadyHeld(a) => return Ok(held(a)),
            // The requested IPv6 address is someone else's: no other IPv4
            // candidate changes that.
            Claim::Taken {
                ip: IpAddr::V6(taken),
                owner: other,
            } if want6 == Some(taken) => {
                return Err(taken_error(IpAddr::V6(taken), other));
            }
            Claim::Taken { .. } => {}
        }
    }
    Err(IpamError::Contended(format!(
        "every free address of {pool} was taken by a concurrent writer"
    )))
}

/// The requested address `ip` of the pool's family, with the requested
/// twin `want6` (else the pool's twin of it).
async fn allocate_static<S: Store>(
    store: &mut S,
    pool: &Pool,
    owner: &Owner,
    ip: IpAddr,
    want6: Option<Ipv6Addr>,
) -> Result<Outcome, IpamError> {
    if let Some(why) = pool.why_unusable(ip) {
        return Err(IpamError::AddressUnavailable(format!(
            "requested address {ip} cannot be allocated: {why}"
        )));
    }
    let ip6 = want6.or_else(|| pool.ipv6_of(ip));
    match store.claim(ip, ip6, owner).await? {
        Claim::Claimed(a) => Ok(fresh(a)),
        Claim::AlreadyHeld(a) if a.ip == ip && (want6.is_none() || a.ip6 == ip6) => Ok(held(a)),
        Claim::AlreadyHeld(a) => Err(IpamError::AddressUnavailable(format!(
            "requested address {ip}{}, but container {} interface {} already holds {}{}",
            ip6.map(|v6| format!(" and {v6}")).unwrap_or_default(),
            owner.container_id,
            owner.ifname,
            a.ip,
            a.ip6.map(|v6| format!(" and {v6}")).unwrap_or_default(),
        ))),
        Claim::Taken {
            ip: taken,
            owner: other,
        } => Err(taken_error(taken, other)),
    }
}

/// A requested address held by someone else, named in the error.
fn taken_error(ip: IpAddr, other: Option<Owner>) -> IpamError {
    IpamError::AddressUnavailable(match other {
        Some(o) => format!(
            "requested address {ip} is already allocated to container {} interface {}{}",
            o.container_id,
            o.ifname,
            if o.node.is_empty() {
                String::new()
            } else {
                format!(" on node {}", o.node)
            }
        ),
        None => format!("requested address {ip} is already allocated"),
    })
}

/// A full pool: still answer a repeated ADD with the address it holds.
async fn held_or_exhausted<S: Store>(
    store: &mut S,
    pool: &Pool,
    owner: &Owner,
) -> Result<Outcome, IpamError> {
    match store.lookup(&owner.handle()).await? {
        Some(a) => Ok(held(a)),
        None => Err(IpamError::Exhausted {
            pool: pool.to_string(),
        }),
    }
}

fn fresh(allocation: Allocation) -> Outcome {
    Outcome {
        allocation,
        fresh: true,
    }
}

fn held(allocation: Allocation) -> Outcome {
    Outcome {
        allocation,
        fresh: false,
    }
}

#[cfg(test)]
mod tests;
