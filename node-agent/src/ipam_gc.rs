//! Reclaiming leaked IP addresses: an allocation of one of trellis's
//! attachments on this node whose host veth is gone (the container died without a CNI DEL, the runtime crashed,
//! ...) is released once it has been seen without its veth for a whole
//! interval, so that an ADD between its IPAM call and its veth is never
//! mistaken for a leak.

use crate::metrics::Metrics;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use trellis_common::naming::host_veth_name;
use trellis_ipam::{Allocation, EtcdStore, IpamError};
use trellis_kernel::{KernelError, Netlink};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// An allocation's identity across passes: a re-allocation of the same
/// address (new owner, new revision) starts its own clock.
type Key = (Ipv4Addr, String, String, i64);

fn key_of(a: &Allocation) -> Key {
    (
        a.ip,
        a.owner.container_id.clone(),
        a.owner.ifname.clone(),
        a.revision,
    )
}

/// Which allocations are leaked, pass after pass.
#[derive(Debug, Default)]
pub struct LeakTracker {
    /// When each suspect was first seen without its veth.
    suspects: HashMap<Key, Instant>,
}

impl LeakTracker {
    /// Given this pass's allocations and which of them have their veth, the
    /// ones missing it for at least `grace`. Only the allocations of
    /// trellis's own attachments count: another plugin delegating to
    /// trellis-ipam (macvlan, ipvlan, ...) makes no `trl` veth, and its
    /// addresses are its runtime's to collect (CNI GC).
    pub fn pass<'a>(
        &mut self,
        now: Instant,
        grace: Duration,
        allocations: &'a [Allocation],
        alive: impl Fn(&Allocation) -> bool,
    ) -> Vec<&'a Allocation> {
        let mut seen = HashSet::new();
        let mut leaked = Vec::new();
        for a in allocations
            .iter()
            .filter(|a| a.owner.is_trellis_attachment())
        {
            if alive(a) {
                continue;
            }
            let key = key_of(a);
            let since = *self.suspects.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                leaked.push(a);
            }
            seen.insert(key);
        }
        self.suspects.retain(|k, _| seen.contains(k));
        leaked
    }

    pub fn forget(&mut self, a: &Allocation) {
        self.suspects.remove(&key_of(a));
    }
}

/// One reclaim pass: list, look for veths, release what leaked for
/// `grace`. Returns the released addresses.
pub async fn pass(
    store: &EtcdStore,
    nl: &Netlink,
    node: &str,
    tracker: &mut LeakTracker,
    grace: Duration,
    metrics: &Metrics,
) -> Result<Vec<Ipv4Addr>, GcError> {
    let allocations = store.list_node(node).await?;
    metrics.allocations.set(allocations.len() as u64);
    // Listed after the allocations: an ADD between the two has its address
    // and maybe no veth yet, which the grace period covers.
    let links = nl.link_names().await?;
    let leaked: Vec<Allocation> = tracker
        .pass(Instant::now(), grace, &allocations, |a| {
            links.contains(&host_veth_name(&a.owner.container_id, &a.owner.ifname))
        })
        .into_iter()
        .cloned()
        .collect();
    let mut released = Vec::new();
    for a in leaked {
        if store.release_exact(&a).await? {
            log::info!(
                "released leaked address {} of container {} ({}): no host veth for {grace:?}",
                a.ip,
                a.owner.container_id,
                a.owner.ifname
            );
            metrics.gc_releases.inc();
            released.push(a.ip);
        }
        tracker.forget(&a);
    }
    Ok(released)
}

/// Reclaim every `interval` forever.
pub async fn run(
    store: EtcdStore,
    nl: Netlink,
    node: String,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut tracker = LeakTracker::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = pass(&store, &nl, &node, &mut tracker, interval, &metrics).await {
            if matches!(e, GcError::Ipam(_)) {
                metrics.etcd_errors.inc();
            }
            log::warn!("leaked-IP reclaim: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_ipam::Owner;

    fn alloc(last: u8, cid: &str, rev: i64) -> Allocation {
        Allocation {
            ip: Ipv4Addr::new(10, 244, 1, last),
            owner: Owner {
                container_id: cid.into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                network: "trellis".into(),
                plugin: "trellis".into(),
            },
            revision: rev,
        }
    }

    #[test]
    fn released_only_after_a_full_interval_without_veth() {
        let mut t = LeakTracker::default();
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let allocs = vec![
            alloc(2, "alive", 1),
            alloc(3, "dead", 2),
            alloc(4, "adding", 3),
        ];
        let alive = |a: &Allocation| a.owner.container_id == "alive";
        assert!(t.pass(t0, grace, &allocs, alive).is_empty());
        assert!(t
            .pass(t0 + Duration::from_secs(59), grace, &allocs, alive)
            .is_empty());
        // "adding" got its veth meanwhile: its clock stops.
        let alive2 = |a: &Allocation| a.owner.container_id != "dead";
        let leaked = t.pass(t0 + grace, grace, &allocs, alive2);
        assert_eq!(
            leaked.iter().map(|a| a.ip.octets()[3]).collect::<Vec<_>>(),
            [3]
        );
        // And if it loses it again, it starts from zero.
        let leaked = t.pass(t0 + grace * 2, grace, &allocs, alive);
        assert_eq!(leaked.len(), 1);
    }

    #[test]
    fn only_trellis_attachments_are_ever_reclaimed() {
        let mut t = LeakTracker::default();
        let grace = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut macvlan = alloc(5, "macvlan-pod", 4);
        macvlan.owner.plugin = "macvlan".into();
        let mut unmarked = alloc(6, "written-before-the-marker", 5);
        unmarked.owner.plugin = String::new();
        let allocs = vec![macvlan, unmarked, alloc(7, "dead", 6)];
        t.pass(t0, grace, &allocs, |_| false);
        let leaked = t.pass(t0 + grace, grace, &allocs, |_| false);
        assert_eq!(
            leaked.iter().map(|a| a.ip.octets()[3]).collect::<Vec<_>>(),
            [7]
        );
    }

    #[test]
    fn a_reallocated_address_starts_a_new_clock() {
        let mut t = LeakTracker::default();
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        t.pass(t0, grace, &[alloc(3, "old", 1)], |_| false);
        let again = [alloc(3, "new", 9)];
        let leaked = t.pass(t0 + grace, grace, &again, |_| false);
        assert!(leaked.is_empty());
    }
}
