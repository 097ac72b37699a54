//! Direct routing (issue 17) when a node moves: node3, behind the router
//! and reached over VXLAN, is moved onto the other nodes' underlay subnet
//! and its agent restarted with its new address; the others route it
//! directly from then on (and it them), its pods keep their addresses and
//! reach every other pod, and nothing of its tunnel entries is left.

mod direct_common;

use direct_common::*;
use std::time::Duration;
use trellis_tests::cluster::{ping, Pod};
use trellis_tests::netns::attach_to_bridge;
use trellis_tests::wait::wait_until;

#[test]
fn a_node_moving_onto_the_subnet_is_routed_directly_without_touching_the_others() {
    let mut cluster = trellis_tests::cluster::Cluster::start(spec(true)).unwrap();
    let pods: Vec<Pod> = (0..3)
        .map(|i| cluster.add_pod(i, &format!("mv{i}")).unwrap())
        .collect();
    let moved = subnet(&cluster.nodes[2]);
    assert_eq!(route(&cluster.nodes[0], &moved).0, "trellis.1");

    // node3 leaves its routed link for the shared subnet, as 192.0.2.3.
    cluster.nodes[2].stop_agent(Duration::from_secs(5)).unwrap();
    let node3 = &cluster.nodes[2];
    node3.netns.ok(&["ip", "link", "del", "eth0"]).unwrap();
    let address = "192.0.2.3/24".parse().unwrap();
    attach_to_bridge(
        cluster.underlay(),
        "br0",
        "m3",
        &node3.netns,
        "eth0",
        Some(address),
    )
    .unwrap();
    node3
        .netns
        .ok(&["ip", "route", "add", "default", "via", "192.0.2.254"])
        .unwrap();
    cluster.nodes[2].start_agent().unwrap();

    let (a, c) = (&cluster.nodes[0], &cluster.nodes[2]);
    wait_until(TIMEOUT, "node1 and node3 route each other directly", || {
        Ok(route(a, &moved) == ("eth0".into(), "192.0.2.3".into())
            && route(c, &subnet(a)) == ("eth0".into(), a.underlay_ip.to_string()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    assert_eq!(c.subnet().unwrap().to_string(), moved, "the subnet is kept");
    assert_eq!(c.record().unwrap().public_ip.to_string(), "192.0.2.3");
    let fdb = a
        .netns
        .ok(&["bridge", "fdb", "show", "dev", "trellis.1"])
        .unwrap();
    assert!(!fdb.contains("198.18."), "{fdb}");
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                ping(&from.netns, to.ip).unwrap();
            }
        }
    }
    let (tx, _) = vxlan_packets(a);
    pings(&pods[0], &pods[2]);
    assert_eq!(
        vxlan_packets(a).0,
        tx,
        "node3 is still reached through the tunnel"
    );
}
