//! The reconcile loop, as Calico's vxlan manager works: at start, after a
//! failed write (on a retry timer), when the VXLAN device had to be made
//! again and on every periodic resync, it dumps the kernel once, diffs in
//! memory and applies the plan; a change of the desired state in between is
//! planned for the nodes that changed only, against what the last pass
//! left in the kernel for them, without a dump.

use super::dataplane::Dataplane;
use super::desired::DesiredOverlay;
use super::plan::{plan, ActualOverlay, RouteStyle};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
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
    /// The desired state the last pass put into the kernel in full (no
    /// failed write), and in which route style; `None` when only a dump can
    /// tell what the kernel holds.
    programmed: Option<(Arc<DesiredOverlay>, RouteStyle)>,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(dataplane: D, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            dataplane,
            metrics,
            programmed: None,
        }
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Bring the kernel to `desired` once: ensure the device, then (with
    /// `full`, or when the last pass did not go through) one dump, removals,
    /// additions. Failed writes are counted, not retried here.
    pub async fn reconcile_once(
        &mut self,
        desired: &Arc<DesiredOverlay>,
        full: bool,
    ) -> Result<ReconcileOutcome, KernelError> {
        let started = Instant::now();
        let device_made = self.dataplane.ensure_device().await?;
        let style = self.dataplane.route_style();
        let known = self
            .programmed
            .take()
            .filter(|(_, was_style)| !full && !device_made && *was_style == style);
        let dumped = known.is_none();
        let (target, actual) = match known {
            Some((last, _)) => {
                let (was, now) = last.delta(desired);
                let ifindex = self.dataplane.device_index();
                (Cow::Owned(now), ActualOverlay::after(&was, ifindex, style))
            }
            None => (Cow::Borrowed(&**desired), self.dataplane.dump().await?),
        };
        // The dump may have found the kernel without nexthop objects.
        let style = self.dataplane.route_style();
        let p = plan(&target, &actual, style);
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
        if failed.is_empty() {
            self.programmed = Some((desired.clone(), style));
        }
        let outcome = ReconcileOutcome {
            removed: p.removals.len() + p.nexthop_removals.len(),
            added: p.additions.len(),
            failed: failed.len(),
            device_made,
            dumped,
            duration: started.elapsed(),
        };
        record(&self.metrics, &outcome, desired.len());
        Ok(outcome)
    }

    /// Reconcile whenever `desired` changes (a `None` value means "not known
    /// yet": nothing is touched until the first full listing), retrying
    /// failures with backoff and resyncing every `resync`. Returns when the
    /// sender is dropped.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Option<Arc<DesiredOverlay>>>,
        resync: Duration,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut next_resync = tokio::time::Instant::now() + resync;
        loop {
            let wake = retry_at.map_or(next_resync, |r| r.min(next_resync));
            // A change is planned against the last pass; the timers (retry,
            // resync) read the kernel.
            let full = tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = tokio::time::sleep_until(wake) => true,
            };
            let Some(snapshot) = desired.borrow_and_update().clone() else {
                continue;
            };
            let outcome = self.reconcile_once(&snapshot, full).await;
            if matches!(outcome, Ok(ReconcileOutcome { dumped: true, .. })) {
                next_resync = tokio::time::Instant::now() + resync;
            }
            match outcome {
                Ok(o) if o.failed == 0 => {
                    if o.removed + o.added > 0 || o.device_made {
                        log::info!(
                            "overlay: {} remote nodes; removed {} and set {} entries in {:?}{}",
                            snapshot.len(),
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

/// What a reconcile did, in the agent's figures.
fn record(metrics: &Metrics, o: &ReconcileOutcome, desired_nodes: usize) {
    metrics.reconciles.inc();
    metrics.failed_writes.add(o.failed as u64);
    let micros = o.duration.as_micros() as u64;
    metrics.reconcile_micros_sum.add(micros);
    metrics.last_reconcile_micros.set(micros);
    metrics.remote_nodes.set(desired_nodes as u64);
    let wanted = 3 * desired_nodes as u64;
    metrics
        .entries_programmed
        .set(wanted.saturating_sub(o.failed as u64));
    metrics.converged.store(o.failed == 0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::dataplane::fake::FakeDataplane;
    use crate::overlay::desired::{vtep_ip_of, RemoteNode};
    use crate::overlay::plan::{Op, RouteStyle};
    use std::net::Ipv4Addr;
    use trellis_kernel::MacAddr;

    fn desired(ids: &[u8]) -> Arc<DesiredOverlay> {
        Arc::new(DesiredOverlay {
            nodes: ids
                .iter()
                .map(|i| {
                    let subnet = format!("10.244.{i}.0/24").parse().unwrap();
                    (
                        format!("n{i}"),
                        RemoteNode {
                            subnet,
                            vtep_ip: vtep_ip_of(subnet),
                            vtep_mac: MacAddr([2, 0, 0, 0, 0, *i]),
                            public_ip: Ipv4Addr::new(192, 0, 2, *i),
                        },
                    )
                })
                .collect(),
        })
    }

    #[tokio::test]
    async fn converges_and_then_does_nothing() {
        let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
        let o = r.reconcile_once(&desired(&[1, 2, 3]), true).await.unwrap();
        assert_eq!((o.added, o.removed, o.failed), (9, 0, 0));
        let o = r.reconcile_once(&desired(&[1, 2, 3]), true).await.unwrap();
        assert_eq!((o.added, o.removed), (0, 0));
        // FDB entry, neighbour, route, then the nexthop.
        let o = r.reconcile_once(&desired(&[1, 3]), true).await.unwrap();
        assert_eq!((o.added, o.removed), (0, 4));
        assert_eq!(r.dataplane().state.fdb.len(), 2);
        assert_eq!(r.metrics.entries_programmed.get(), 6);
    }

    #[test]
    fn a_reconcile_is_recorded_in_the_figures() {
        let m = Metrics::default();
        let o = ReconcileOutcome {
            added: 6,
            failed: 1,
            duration: Duration::from_millis(12),
            ..Default::default()
        };
        record(&m, &o, 2);
        assert_eq!(m.reconciles.get(), 1);
        assert_eq!(m.failed_writes.get(), 1);
        assert_eq!(m.entries_programmed.get(), 5);
        assert_eq!(m.remote_nodes.get(), 2);
        assert_eq!(m.last_reconcile_micros.get(), 12_000);
        assert!(!m.converged.load(Ordering::Relaxed));
        let text = m.render();
        assert!(text.contains("\ntrellis_agent_last_reconcile_duration_seconds 0.012000\n"));
    }

    #[tokio::test]
    async fn changes_are_planned_without_a_dump_and_resyncs_read_the_kernel() {
        let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
        let o = r.reconcile_once(&desired(&[1, 2]), false).await.unwrap();
        assert!(o.dumped, "the first pass knows nothing yet");
        assert_eq!(r.dataplane().dumps, 1);
        // A node joins, another leaves: no dump, exactly their entries.
        let o = r.reconcile_once(&desired(&[2, 3]), false).await.unwrap();
        assert!(!o.dumped);
        assert_eq!((o.added, o.removed), (3, 4));
        assert_eq!(r.dataplane().dumps, 1);
        let kernel = r.dataplane().state.clone();
        assert_eq!(kernel.fdb.len(), 2);
        assert!(plan(&desired(&[2, 3]), &kernel, RouteStyle::Nexthop).is_empty());
        // Someone deletes an entry behind the agent's back: a change does
        // not see it, the resync does.
        r.dataplane.state.fdb.clear();
        let o = r.reconcile_once(&desired(&[2, 3]), false).await.unwrap();
        assert_eq!((o.added, o.removed), (0, 0));
        let o = r.reconcile_once(&desired(&[2, 3]), true).await.unwrap();
        assert!(o.dumped);
        assert_eq!(o.added, 2);
        assert_eq!(r.dataplane().state.fdb.len(), 2);
    }

    #[tokio::test]
    async fn after_a_failed_write_the_next_pass_reads_the_kernel() {
        let mut dp = FakeDataplane::default();
        let d = desired(&[1]);
        let n1 = d.nodes["n1"];
        dp.fail_once.insert(Op::SetFdb {
            mac: n1.vtep_mac,
            dst: n1.public_ip,
        });
        let mut r = Reconciler::new(dp, Arc::new(Metrics::default()));
        let o = r.reconcile_once(&d, false).await.unwrap();
        assert_eq!(o.failed, 1);
        let o = r.reconcile_once(&d, false).await.unwrap();
        assert!(o.dumped);
        assert_eq!((o.added, o.failed), (1, 0));
    }

    #[tokio::test]
    async fn a_vanished_device_is_remade_and_refilled() {
        let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
        r.reconcile_once(&desired(&[1, 2]), true).await.unwrap();
        r.dataplane.device_missing = true;
        let o = r.reconcile_once(&desired(&[1, 2]), true).await.unwrap();
        assert!(o.device_made);
        assert_eq!(o.added, 6);
        assert_eq!(r.dataplane().devices_made, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_writes_are_retried_and_changes_applied_by_the_loop() {
        let mut dp = FakeDataplane::default();
        let d = desired(&[1, 2]);
        let n1 = d.nodes["n1"];
        dp.fail_once.insert(Op::SetFdb {
            mac: n1.vtep_mac,
            dst: n1.public_ip,
        });
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = watch::channel(None);
        let r = Reconciler::new(dp, metrics.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            r.run(rx, Duration::from_secs(3600)).await;
            let _ = done_tx.send(());
        });
        // Nothing known yet: nothing happens.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(metrics.reconciles.get(), 0);
        tx.send(Some(d)).unwrap();
        // First pass: one failure; the retry (100 ms later) completes it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(metrics.reconciles.get(), 2, "first pass and one retry");
        assert_eq!(metrics.entries_programmed.get(), 6);
        assert_eq!(metrics.failed_writes.get(), 1);
        // A node leaves: its entries go at once.
        tx.send(Some(desired(&[2]))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(metrics.entries_programmed.get(), 3);
        drop(tx);
        done_rx.await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_change_touches_only_the_nodes_that_changed() {
        let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
        let ids: Vec<u8> = (1..=200).collect();
        r.reconcile_once(&desired(&ids), true).await.unwrap();
        r.dataplane.applied.clear();
        // Node 7 gets another public IP: its FDB entry alone is rewritten
        // (the old destination removed, the new one set).
        let mut moved = (*desired(&ids)).clone();
        moved.nodes.get_mut("n7").unwrap().public_ip = Ipv4Addr::new(198, 51, 100, 7);
        let o = r
            .reconcile_once(&Arc::new(moved.clone()), false)
            .await
            .unwrap();
        assert!(!o.dumped);
        assert_eq!(
            r.dataplane().applied,
            vec![
                Op::DelFdb(trellis_kernel::fdb::FdbEntry {
                    mac: MacAddr([2, 0, 0, 0, 0, 7]),
                    dst: Some(Ipv4Addr::new(192, 0, 2, 7).into())
                }),
                Op::SetFdb {
                    mac: MacAddr([2, 0, 0, 0, 0, 7]),
                    dst: Ipv4Addr::new(198, 51, 100, 7)
                }
            ]
        );
        assert!(plan(&moved, &r.dataplane().state, RouteStyle::Nexthop).is_empty());
        // Node 8 leaves and node 201 joins in one change.
        r.dataplane.applied.clear();
        moved.nodes.remove("n8");
        let ids: Vec<u8> = (1..=201).filter(|i| *i != 8).collect();
        let mut joined = (*desired(&ids)).clone();
        joined.nodes.get_mut("n7").unwrap().public_ip = Ipv4Addr::new(198, 51, 100, 7);
        let o = r
            .reconcile_once(&Arc::new(joined.clone()), false)
            .await
            .unwrap();
        assert_eq!((o.added, o.removed), (3, 4));
        assert_eq!(r.dataplane().applied.len(), 7);
        assert!(plan(&joined, &r.dataplane().state, RouteStyle::Nexthop).is_empty());
    }
}
