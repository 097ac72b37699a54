//! The connection to etcd drops while ADDs wait on a frozen etcd, after
//! their claims were sent: the ADDs fail with code 11 at once, not after
//! the timeout, and, like a timeout, leave a fence, so that the claims etcd
//! applies when it resumes are undone. Nothing is allocated for a failed
//! ADD, nothing is handed out twice.

mod ipam_common;

use ipam_common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use trellis_tests::cut_proxy::CutProxy;
use trellis_tests::etcd::Etcd;

#[test]
fn connection_dropped_while_etcd_is_frozen() {
    let p = Plugin::snapshot();
    let mut etcd = Etcd::start().unwrap();
    let proxy = CutProxy::start(etcd.client_addr()).unwrap();
    let state = node_state("10.244.6.0/24", "node-c");
    // A timeout far beyond the freeze: every failure below is the cut.
    let timeout = Duration::from_secs(20);
    let conf = with_ipam(
        cluster_conf(&proxy.endpoint(), state.path()),
        "etcdTimeoutMs",
        json!(timeout.as_millis() as u64),
    );
    let pods = ids("cut", 80);
    let calls = adds(&pods);

    let (replies, cut) = std::thread::scope(|s| {
        let burst = s.spawn(|| p.invoke_all(&calls, &conf));
        // Freeze etcd once the burst is under way, give the
        // ADDs in flight time to send their claims, then drop their
        // connections and let etcd go on a moment later.
        wait_for_allocations(&etcd, 5);
        etcd.pause().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let cut = proxy.cut_clients();
        std::thread::sleep(Duration::from_millis(1500));
        etcd.resume().unwrap();
        (burst.join().unwrap(), cut)
    });

    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (pod, r) in pods.iter().zip(&replies) {
        if r.success {
            ok.push((r.ip(), pod.clone()));
        } else {
            assert_eq!(r.code(), Some(11), "{pod}: {r:?}");
            assert!(
                r.took < timeout,
                "{pod} failed by its timeout, not the cut: {r:?}"
            );
            if failed.is_empty() {
                eprintln!("first failure: {}", r.msg());
            }
            failed.push(pod.clone());
        }
    }
    eprintln!(
        "{cut} connections cut: {} ADDs succeeded, {} failed with code 11",
        ok.len(),
        failed.len()
    );
    assert!(!failed.is_empty(), "the cut fails the ADDs caught by it");
    let distinct: HashSet<_> = ok.iter().map(|(ip, _)| ip).collect();
    assert_eq!(distinct.len(), ok.len(), "no address handed out twice");

    // The claims etcd applied after the cut are undone by their fences.
    let mut held = settled_allocations(&etcd, &ok, Duration::from_secs(10));
    held.sort();
    ok.sort();
    for (ip, pod) in &held {
        if failed.contains(pod) {
            eprintln!("LEAK {ip} for {pod}, whose ADD failed");
        }
    }
    assert_eq!(held, ok, "nothing allocated for failed ADDs, nothing lost");

    // The runtime cleans up and retries the failed ones.
    retry_failed_then_delete_all(
        &p,
        &conf,
        &etcd,
        &pods,
        &failed,
        ok.iter().map(|(ip, _)| *ip),
    );
}
