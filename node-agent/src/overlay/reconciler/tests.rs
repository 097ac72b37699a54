use super::*;
use crate::overlay::dataplane::fake::FakeDataplane;
use crate::overlay::desired::Remote4;
use crate::overlay::paths::{Paths, RouteStyle};
use crate::overlay::plan::Op;
use std::net::Ipv4Addr;
use trellis_kernel::MacAddr;

fn desired(ids: &[u8]) -> DesiredOverlay {
    DesiredOverlay {
        nodes: ids
            .iter()
            .map(|i| {
                let subnet = format!("10.244.{i}.0/24").parse().unwrap();
                (
                    format!("n{i}"),
                    RemoteNode {
                        ipv4: Some(Remote4::of(subnet)),
                        vtep_mac: MacAddr([2, 0, 0, 0, 0, *i]),
                        public_ip: std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, *i)),
                        ipv6: None,
                    },
                )
            })
            .collect(),
    }
}

impl<D: Dataplane> Reconciler<D> {
    /// Replace the desired state with `d` and make one pass.
    async fn pass(&mut self, d: &DesiredOverlay, full: bool) -> ReconcileOutcome {
        self.update(OverlayUpdate::Replace(d.clone()));
        self.reconcile_once(full).await.unwrap()
    }
}

#[tokio::test]
async fn converges_and_then_does_nothing() {
    let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
    let o = r.pass(&desired(&[1, 2, 3]), true).await;
    assert_eq!((o.added, o.removed, o.failed), (9, 0, 0));
    let o = r.pass(&desired(&[1, 2, 3]), true).await;
    assert_eq!((o.added, o.removed), (0, 0));
    // FDB entry, neighbour, route, then the nexthop.
    let o = r.pass(&desired(&[1, 3]), true).await;
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
    record(
        &m,
        &o,
        &desired(&[1, 2]),
        &Paths::overlay(RouteStyle::Nexthop, 1),
    );
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
    let o = r.pass(&desired(&[1, 2]), false).await;
    assert!(o.dumped, "the first pass knows nothing yet");
    assert_eq!(r.dataplane().dumps, 1);
    // A node joins, another leaves: no dump, exactly their entries.
    let o = r.pass(&desired(&[2, 3]), false).await;
    assert!(!o.dumped);
    assert_eq!((o.added, o.removed), (3, 4));
    assert_eq!(r.dataplane().dumps, 1);
    let kernel = r.dataplane().state.clone();
    assert_eq!(kernel.fdb.len(), 2);
    assert!(plan(
        &desired(&[2, 3]),
        &kernel,
        &Paths::overlay(RouteStyle::Nexthop, 1)
    )
    .is_empty());
    // Someone deletes an entry behind the agent's back: a change does
    // not see it, the resync does.
    r.dataplane.state.fdb.clear();
    let o = r.pass(&desired(&[2, 3]), false).await;
    assert_eq!((o.added, o.removed), (0, 0));
    let o = r.pass(&desired(&[2, 3]), true).await;
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
    let o = r.pass(&d, false).await;
    assert_eq!(o.failed, 1);
    let o = r.pass(&d, false).await;
    assert!(o.dumped);
    assert_eq!((o.added, o.failed), (1, 0));
}

#[tokio::test]
async fn a_vanished_device_is_remade_and_refilled() {
    let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
    r.pass(&desired(&[1, 2]), true).await;
    r.dataplane.device_missing = true;
    let o = r.pass(&desired(&[1, 2]), true).await;
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
    let (tx, rx) = mpsc::unbounded_channel();
    let r = Reconciler::new(dp, metrics.clone());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        r.run(rx, Duration::from_secs(3600), Arc::default()).await;
        let _ = done_tx.send(());
    });
    // Nothing known yet: nothing happens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metrics.reconciles.get(), 0);
    tx.send(OverlayUpdate::Replace(d)).unwrap();
    // First pass: one failure; the retry (100 ms later) completes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metrics.reconciles.get(), 2, "first pass and one retry");
    assert_eq!(metrics.entries_programmed.get(), 6);
    assert_eq!(metrics.failed_writes.get(), 1);
    // A node leaves: its entries go at once.
    tx.send(OverlayUpdate::Remove("n1".into())).unwrap();
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
    r.pass(&desired(&ids), true).await;
    r.dataplane.applied.clear();
    // Node 7 gets another public IP: its FDB entry alone is rewritten
    // (the old destination removed, the new one set).
    let mut moved = desired(&ids);
    moved.nodes.get_mut("n7").unwrap().public_ip = Ipv4Addr::new(198, 51, 100, 7).into();
    let o = r.pass(&moved, false).await;
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
                dst: Ipv4Addr::new(198, 51, 100, 7).into()
            }
        ]
    );
    assert!(plan(
        &moved,
        &r.dataplane().state,
        &Paths::overlay(RouteStyle::Nexthop, 1)
    )
    .is_empty());
    // Node 8 leaves and node 201 joins in one change.
    r.dataplane.applied.clear();
    moved.nodes.remove("n8");
    let ids: Vec<u8> = (1..=201).filter(|i| *i != 8).collect();
    let mut joined = desired(&ids);
    joined.nodes.get_mut("n7").unwrap().public_ip = Ipv4Addr::new(198, 51, 100, 7).into();
    let o = r.pass(&joined, false).await;
    assert_eq!((o.added, o.removed), (3, 4));
    assert_eq!(r.dataplane().applied.len(), 7);
    assert!(plan(
        &joined,
        &r.dataplane().state,
        &Paths::overlay(RouteStyle::Nexthop, 1)
    )
    .is_empty());
}

#[tokio::test]
async fn single_node_updates_write_that_node_only() {
    let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
    // Before the first listing nothing is known and nothing touched.
    r.update(OverlayUpdate::Remove("n1".into()));
    assert_eq!(
        r.reconcile_once(true).await.unwrap(),
        ReconcileOutcome::default()
    );
    assert_eq!(r.dataplane().dumps, 0);
    let ids: Vec<u8> = (1..=50).collect();
    r.pass(&desired(&ids), false).await;
    r.dataplane.applied.clear();
    // n51 joins, n3 leaves, n4 is set to what it already is, n9 joins
    // and leaves again before the pass: one pass, their entries only.
    let n51 = desired(&[51]).nodes["n51"];
    r.update(OverlayUpdate::Set("n51".into(), n51));
    r.update(OverlayUpdate::Remove("n3".into()));
    r.update(OverlayUpdate::Set("n4".into(), desired(&[4]).nodes["n4"]));
    r.update(OverlayUpdate::Set(
        "n9x".into(),
        desired(&[99]).nodes["n99"],
    ));
    r.update(OverlayUpdate::Remove("n9x".into()));
    let o = r.reconcile_once(false).await.unwrap();
    assert!(!o.dumped);
    assert_eq!((o.added, o.removed), (3, 4));
    assert_eq!(r.dataplane().dumps, 1);
    let mut want: Vec<u8> = (1..=51).filter(|i| *i != 3).collect();
    assert!(plan(
        &desired(&want),
        &r.dataplane().state,
        &Paths::overlay(RouteStyle::Nexthop, 1)
    )
    .is_empty());
    // A listing after a reconnect that finds one more node: its
    // entries only, still without a dump.
    want.push(60);
    r.dataplane.applied.clear();
    let o = r.pass(&desired(&want), false).await;
    assert_eq!((o.added, o.removed, o.dumped), (3, 0, false));
    assert!(plan(
        &desired(&want),
        &r.dataplane().state,
        &Paths::overlay(RouteStyle::Nexthop, 1)
    )
    .is_empty());
}

#[tokio::test]
async fn switching_direct_routing_moves_the_routes_without_a_full_resync_asked() {
    let mut r = Reconciler::new(FakeDataplane::default(), Arc::new(Metrics::default()));
    let all = desired(&[1, 2, 3]);
    r.pass(&all, true).await;
    assert_eq!(r.dataplane().state.fdb.len(), 3);
    // The underlay is on 192.0.2.0/24, where every node's public address is.
    r.dataplane.paths.underlay = Some(crate::overlay::Underlay {
        ifindex: 2,
        direct: vec!["192.0.2.0/24".parse().unwrap()],
    });
    let before = r.dataplane().applied.len();
    let o = r.reconcile_once(false).await.unwrap();
    assert!(o.dumped, "changed paths need the kernel read");
    // Three routes replaced in place, first; then FDB, neighbours, nexthops.
    assert_eq!((o.added, o.removed), (3, 9));
    assert!(r.dataplane().applied[before..before + 3]
        .iter()
        .all(|op| matches!(op, Op::SetDirectRoute { .. })));
    let state = &r.dataplane().state;
    assert!(state.fdb.is_empty() && state.neighbours.is_empty() && state.nexthops.is_empty());
    assert!(state.routes.iter().all(|route| route.oif == Some(2)));
    assert_eq!(r.metrics.direct_routes.get(), 3);
    assert_eq!(r.metrics.entries_programmed.get(), 3);
    // Nothing left to do on the next change.
    let o = r.reconcile_once(false).await.unwrap();
    assert_eq!((o.added, o.removed, o.dumped), (0, 0, false));
    // Off again: back over VXLAN.
    r.dataplane.paths.underlay.as_mut().unwrap().direct.clear();
    let o = r.reconcile_once(false).await.unwrap();
    assert_eq!((o.added, o.removed, o.dumped), (9, 0, true));
    assert_eq!(r.metrics.direct_routes.get(), 0);
    assert!(r
        .dataplane()
        .state
        .routes
        .iter()
        .all(|route| route.oif == Some(1)));
    assert_eq!(r.dataplane().state.fdb.len(), 3);
}
