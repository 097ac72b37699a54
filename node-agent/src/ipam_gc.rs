//! Reclaiming leaked IP addresses: an allocation of one of trellis's
//! attachments on this node whose host veth is gone (the container died without a CNI DEL, the runtime crashed,
//! ...) is released once it has been seen without its veth for a whole
//! interval, so that an ADD between its IPAM call and its veth is never
//! mistaken for a leak. Each pass also reports what it saw to etcd
//! (`<prefix>/attachments/<node>`, for `trellisctl ipam check`).

use crate::metrics::Metrics;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use trellis_common::attachment_report::{AttachmentReport, CheckedAllocation};
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
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
type Key = (IpAddr, String, String, i64);

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

    /// For how long `a` has been seen without its veth (as of `now`).
    pub fn missing_for(&self, a: &Allocation, now: Instant) -> Option<Duration> {
        self.suspects
            .get(&key_of(a))
            .map(|since| now.duration_since(*since))
    }

    pub fn forget(&mut self, a: &Allocation) {
        self.suspects.remove(&key_of(a));
    }
}

/// How the pass runs: how long an allocation must be seen without its veth
/// before it is released (`None`: never, the reclaim is off), and whether
/// (and with what interval) the pass's findings are reported to etcd.
#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    pub grace: Option<Duration>,
    pub report_interval: Option<Duration>,
}

impl GcSettings {
    /// From the agent's flags (seconds, 0 for off); `None` when both are
    /// off. A pass runs at the shorter interval.
    pub fn from_intervals(gc: u64, report: u64) -> Option<(GcSettings, Duration)> {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let settings = GcSettings {
            grace: secs(gc),
            report_interval: secs(report),
        };
        let every = [settings.grace, settings.report_interval]
            .into_iter()
            .flatten()
            .min()?;
        Some((settings, every))
    }
}

/// One pass: list, look for veths, release what leaked for the grace
/// period, and say what was seen. Returns the released addresses and the
/// report of the allocations left.
pub async fn pass(
    store: &EtcdStore,
    nl: &Netlink,
    node: &str,
    tracker: &mut LeakTracker,
    settings: GcSettings,
    metrics: &Metrics,
) -> Result<(Vec<IpAddr>, AttachmentReport), GcError> {
    let allocations = store.list_node(node).await?;
    metrics.allocations.set(allocations.len() as u64);
    // Listed after the allocations: an ADD between the two has its address
    // and maybe no veth yet, which the grace period covers.
    let links = nl.link_names().await?;
    let alive =
        |a: &Allocation| links.contains(&host_veth_name(&a.owner.container_id, &a.owner.ifname));
    let now = Instant::now();
    let grace = settings.grace.unwrap_or(Duration::MAX);
    let leaked: Vec<Allocation> = tracker
        .pass(now, grace, &allocations, alive)
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
    let checked = allocations
        .iter()
        .filter(|a| a.owner.is_trellis_attachment() && !released.contains(&a.ip))
        .map(|a| CheckedAllocation {
            ip: a.ip,
            revision: a.revision,
            container_id: a.owner.container_id.clone(),
            ifname: a.owner.ifname.clone(),
            missing_veth_for: tracker.missing_for(a, now).map(|d| d.as_secs()),
        })
        .collect();
    let report = AttachmentReport {
        interval_seconds: settings
            .report_interval
            .or(settings.grace)
            .map_or(0, |d| d.as_secs()),
        checked,
    };
    Ok((released, report))
}

/// Publish `report` at `<prefix>/attachments/<node>` under the lease of
/// the node's record (it goes when the node goes); nothing while the node
/// has no record. A report equal to the one etcd holds is not written
/// again (one transaction that compares the value), so a quiet node adds
/// no revision to etcd's history every pass.
async fn publish(
    client: &EtcdClient,
    keys: &Keys,
    node: &str,
    report: &AttachmentReport,
) -> Result<(), etcd_client::Error> {
    let mut c = client.pick().await.client;
    let record = c.get(keys.node(node), None).await?;
    let Some(lease) = record.kvs().first().map(|kv| kv.lease()) else {
        return Ok(());
    };
    let key = keys.attachment_report(node);
    let json = report.to_json();
    let txn = Txn::new()
        .when([Compare::value(
            key.as_str(),
            CompareOp::Equal,
            json.as_str(),
        )])
        .or_else([TxnOp::put(
            key.as_str(),
            json.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    c.txn(txn).await?;
    Ok(())
}

/// What the leaked-address pass needs besides its settings.
pub struct Gc {
    pub store: EtcdStore,
    pub client: EtcdClient,
    pub keys: Keys,
    pub nl: Netlink,
    pub node: String,
    pub metrics: Arc<Metrics>,
}

/// Pass every `every` forever.
pub async fn run(gc: Gc, settings: GcSettings, every: Duration) {
    let mut tracker = LeakTracker::default();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let report = match pass(
            &gc.store,
            &gc.nl,
            &gc.node,
            &mut tracker,
            settings,
            &gc.metrics,
        )
        .await
        {
            Ok((_, report)) => report,
            Err(e) => {
                if matches!(e, GcError::Ipam(_)) {
                    gc.metrics.etcd_errors.inc();
                }
                log::warn!("leaked-IP reclaim: {e}");
                continue;
            }
        };
        if settings.report_interval.is_some() {
            if let Err(e) = publish(&gc.client, &gc.keys, &gc.node, &report).await {
                gc.metrics.etcd_errors.inc();
                log::warn!("attachment report: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_ipam::Owner;

    fn alloc(last: u8, cid: &str, rev: i64) -> Allocation {
        Allocation {
            ip: std::net::Ipv4Addr::new(10, 244, 1, last).into(),
            ip6: None,
            owner: Owner {
                container_id: cid.into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                network: "trellis".into(),
                plugin: "trellis".into(),
                name: String::new(),
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
            leaked.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>(),
            ["10.244.1.3"]
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
            leaked.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>(),
            ["10.244.1.7"]
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

    #[test]
    fn the_pass_runs_at_the_shorter_interval_and_off_means_off() {
        let (s, every) = GcSettings::from_intervals(300, 10).unwrap();
        assert_eq!(every, Duration::from_secs(10));
        assert_eq!(s.grace, Some(Duration::from_secs(300)));
        let (s, every) = GcSettings::from_intervals(0, 10).unwrap();
        assert_eq!((s.grace, every), (None, Duration::from_secs(10)));
        let (s, every) = GcSettings::from_intervals(5, 0).unwrap();
        assert_eq!((s.report_interval, every), (None, Duration::from_secs(5)));
        assert!(GcSettings::from_intervals(0, 0).is_none());
    }

    #[test]
    fn the_tracker_says_how_long_an_allocation_has_missed_its_veth() {
        let mut t = LeakTracker::default();
        let t0 = Instant::now();
        let allocs = [alloc(3, "dead", 1), alloc(4, "alive", 2)];
        let alive = |a: &Allocation| a.owner.container_id == "alive";
        t.pass(t0, Duration::MAX, &allocs, alive);
        let later = t0 + Duration::from_secs(20);
        t.pass(later, Duration::MAX, &allocs, alive);
        assert_eq!(
            t.missing_for(&allocs[0], later),
            Some(Duration::from_secs(20))
        );
        assert_eq!(t.missing_for(&allocs[1], later), None);
    }
}
