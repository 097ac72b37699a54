//! The reconcile loop, as Calico's vxlan manager works: at start, after a
//! failed write (on a retry timer), when the VXLAN device had to be made
//! again, when the paths changed (direct routing switched, the underlay's
//! subnets, the route style) and on every periodic resync (or one asked
//! for), it dumps the kernel once, diffs in
//! memory and applies the plan; a change of the desired state in between is
//! planned for the nodes that changed only, against what the last pass
//! left in the kernel for them, without a dump.

use super::dataplane::Dataplane;
use super::desired::{DesiredOverlay, OverlayUpdate, RemoteNode};
use super::paths::{Hop, Paths};
use super::plan::{plan, ActualOverlay};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use trellis_kernel::KernelError;

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOutcome {
    pub removed: usize,
    pub added: usize,
    pub failed: usize,
    /// The VXLAN device had to be (re)created first.
    pub device_made: bool,
    /// The pass read the kernel (a full resync) rather than planning
    /// against what the last pass left.
    pub dumped: bool,
    pub duration: Duration,
}

pub struct Reconciler<D: Dataplane> {
    dataplane: D,
    metrics: Arc<Metrics>,
    /// The desired state as the registry's updates made it; `None` until
    /// the first `Replace` (nothing is touched before).
    desired: Option<DesiredOverlay>,
    /// The paths over which the last pass put the state it saw into the
    /// kernel in full (no failed write); `None` when only a dump can tell
    /// what the kernel holds.
    programmed: Option<Paths>,
    /// The nodes changed since the last pass, with what that pass saw of
    /// each (`None`: absent).
    changed: BTreeMap<String, Option<RemoteNode>>,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(dataplane: D, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            dataplane,
            metrics,
            desired: None,
            programmed: None,
            changed: BTreeMap::new(),
        }
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Take one update of the desired state (applied by the next pass).
    pub fn update(&mut self, update: OverlayUpdate) {
        let Some(desired) = self.desired.as_mut() else {
            match update {
                OverlayUpdate::Replace(first) => self.desired = Some(first),
                other => log::debug!("overlay: {other:?} before the first listing; ignored"),
            }
            return;
        };
        for (name, before) in desired.apply(update) {
            self.changed.entry(name).or_insert(before);
        }
    }

    /// Bring the kernel to the desired state once: ensure the device, then
    /// (with `full`, or when the last pass did not go through) one dump,
    /// removals, additions; otherwise the changed nodes only, planned
    /// against what the last pass left. Failed writes are counted, not
    /// retried here. Nothing is done before the first listing.
    pub async fn reconcile_once(&mut self, full: bool) -> Result<ReconcileOutcome, KernelError> {
        let Some(desired) = &self.desired else {
            return Ok(ReconcileOutcome::default());
        };
        let started = Instant::now();
        let device_made = self.dataplane.ensure_device().await?;
        let changed = std::mem::take(&mut self.changed);
        // Paths that changed (the route style, direct routing switched, the
        // underlay's subnets) change routes of nodes that did not.
        let known = self
            .programmed
            .take()
            .is_some_and(|was| !full && !device_made && was == *self.dataplane.paths());
        let (target, actual) = if known {
            let (was, now) = changes(desired, changed);
            let after = ActualOverlay::after(&was, self.dataplane.paths());
            (Cow::Owned(now), after)
        } else {
            (Cow::Borrowed(desired), self.dataplane.dump().await?)
        };
        let dumped = !known;
        // The dump may have found the kernel without nexthop objects.
        let paths = self.dataplane.paths().clone();
        let p = plan(&target, &actual, &paths);
        let mut failed = Vec::new();
        for phase in p.phases() {
            failed.extend(self.dataplane.apply(phase).await);
        }
        for (op, err) in failed.iter().take(5) {
            log::warn!("overlay: {op:?} failed: {err}");
        }
        if failed.len() > 5 {
            log::warn!("overlay: and {} more writes failed", failed.len() - 5);
        }
        self.programmed = failed.is_empty().then_some(paths.clone());
        let outcome = ReconcileOutcome {
            removed: p.removals.len() + p.nexthop_removals.len(),
            added: p.sets(),
            failed: failed.len(),
            device_made,
            dumped,
            duration: started.elapsed(),
        };
        record(&self.metrics, &outcome, desired, &paths);
        Ok(outcome)
    }

    /// Reconcile on every batch of updates (the ones queued meanwhile go
    /// into the same pass; nothing is touched until the first `Replace`),
    /// retrying failures with backoff and resyncing every `resync`.
    /// `resync_now` asks for a full resync at once (`trellisctl doctor
    /// --fix`). Returns when the sender is dropped.
    pub async fn run(
        mut self,
        mut updates: mpsc::UnboundedReceiver<OverlayUpdate>,
        resync: Duration,
        resync_now: Arc<Notify>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut next_resync = tokio::time::Instant::now() + resync;
        loop {
            let wake = retry_at.map_or(next_resync, |r| r.min(next_resync));
            // A change is planned against the last pass; the timers (retry,
            // resync) read the kernel.
            let full = tokio::select! {
                got = updates.recv() => match got {
                    Some(update) => {
                        self.update(update);
                        false
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => true,
                _ = resync_now.notified() => {
                    log::info!("overlay: full resync requested");
                    true
                }
            };
            while let Ok(update) = updates.try_recv() {
                self.update(update);
            }
            let Some(nodes) = self.desired.as_ref().map(DesiredOverlay::len) else {
                // Nothing known yet, so nothing to resync either.
                next_resync = tokio::time::Instant::now() + resync;
                continue;
            };
            let outcome = self.reconcile_once(full).await;
            if matches!(outcome, Ok(ReconcileOutcome { dumped: true, .. })) {
                next_resync = tokio::time::Instant::now() + resync;
            }
            match outcome {
                Ok(o) if o.failed == 0 => {
                    if o.removed + o.added > 0 || o.device_made {
                        log::info!(
                            "overlay: {nodes} remote nodes; removed {} and set {} entries in {:?}{}",
                            o.removed,
                            o.added,
                            o.duration,
                            if o.device_made {
                                " (VXLAN device re-created)"
                            } else {
                                ""
                            }
                        );
                    }
                    backoff.reset();
                    retry_at = None;
                }
                Ok(o) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "overlay: {} of {} writes failed; retrying in {delay:?}",
                        o.failed,
                        o.removed + o.added
                    );
                    retry_at = Some(tokio::time::Instant::now() + delay);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    self.metrics.reconcile_errors.inc();
                    log::warn!("overlay: reconcile failed: {e}; retrying in {delay:?}");
                    retry_at = Some(tokio::time::Instant::now() + delay);
                }
            }
        }
    }
}

/// The nodes that really changed, as the last pass saw them (`was`) and
/// as they are now (`now`). Planning `now` against the kernel state of
/// `was` touches only those nodes; nothing else can collide with them,
/// since both states have distinct MACs, VTEP addresses and subnets.
fn changes(
    desired: &DesiredOverlay,
    changed: BTreeMap<String, Option<RemoteNode>>,
) -> (DesiredOverlay, DesiredOverlay) {
    let (mut was, mut now) = (DesiredOverlay::default(), DesiredOverlay::default());
    for (name, before) in changed {
        let after = desired.nodes.get(&name).copied();
        if before == after {
            continue;
        }
        if let Some(b) = before {
            was.nodes.insert(name.clone(), b);
        }
        if let Some(a) = after {
            now.nodes.insert(name, a);
        }
    }
    (was, now)
}

/// What a reconcile did, in the agent's figures.
fn record(metrics: &Metrics, o: &ReconcileOutcome, desired: &DesiredOverlay, paths: &Paths) {
    metrics.reconciles.inc();
    metrics.failed_writes.add(o.failed as u64);
    let micros = o.duration.as_micros() as u64;
    metrics.reconcile_micros_sum.add(micros);
    metrics.last_reconcile_micros.set(micros);
    metrics.remote_nodes.set(desired.len() as u64);
    // An FDB entry per node over VXLAN, a neighbour and a route per subnet
    // over VXLAN, a route per direct subnet.
    let (mut wanted, mut direct) = (0u64, 0u64);
    for node in desired.nodes.values() {
        wanted += u64::from(paths.needs_overlay(node));
        for (_, hop) in paths.hops(node) {
            match hop {
                Hop::Overlay(_) => wanted += 2,
                Hop::Direct(_) => {
                    wanted += 1;
                    direct += 1;
                }
            }
        }
    }
    metrics.direct_routes.set(direct);
    metrics
        .entries_programmed
        .set(wanted.saturating_sub(o.failed as u64));
    metrics.converged.store(o.failed == 0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
