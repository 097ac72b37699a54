//! Root test of the soak's own checks (`trellis_tests::soak`): each one
//! passes on a cluster in order and fails on the breakage it is there to
//! see (an allocation no live pod holds, a live pod's allocation missing,
//! a node's overlay out of step with etcd).

use std::time::Duration;

use trellis_tests::cluster::{Cluster, ClusterSpec};
use trellis_tests::soak::{overlay_matches_etcd, settled};

#[test]
fn the_soak_checks_see_leaks_and_stale_overlays() {
    let cluster = Cluster::start(ClusterSpec {
        chain: Vec::new(),
        ..ClusterSpec::default().nodes(2)
    })
    .unwrap();
    let pod = cluster.add_pod(0, "p").unwrap();
    let live = [pod];
    settled(&cluster, &live, Duration::from_secs(10)).unwrap();
    overlay_matches_etcd(&cluster, Duration::from_secs(10)).unwrap();

    // The pod's allocation counts as a leak once the pod is not live.
    let err = settled(&cluster, &[], Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains(&live[0].ip.to_string()), "{err:#}");

    // An allocation no pod holds.
    let key = format!("{}/ipam/ips/10.244.250.9", cluster.key_prefix());
    cluster
        .etcdctl(&[
            "put",
            &key,
            r#"{"containerID":"gone","ifname":"eth0","node":"node1"}"#,
        ])
        .unwrap();
    let err = settled(&cluster, &live, Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("10.244.250.9"), "{err:#}");
    cluster.etcdctl(&["del", &key]).unwrap();
    settled(&cluster, &live, Duration::from_secs(10)).unwrap();

    // node1 loses its route to node2 (by destination: a route through a
    // nexthop object names no device).
    let subnet = cluster.nodes[1].subnet().unwrap().to_string();
    cluster.nodes[0]
        .netns
        .ok(&["ip", "route", "del", &subnet])
        .unwrap();
    let err = overlay_matches_etcd(&cluster, Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("node1"), "{err:#}");

    let [pod] = live;
    cluster.del_pod(pod).unwrap();
    settled(&cluster, &[], Duration::from_secs(10)).unwrap();
}
