//! What the direct-routing suites share: the three-node cluster with one
//! node behind a router, and reading routes, counters and pings.

#![allow(dead_code)] // each suite uses a part

use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use trellis_tests::cluster::{Cluster, ClusterSpec, Node, Pod};
use trellis_tests::ctl::{ctl, ctl_json, stderr};
use trellis_tests::wait::wait_until;

pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const METRICS: &str = "127.0.0.1:9464";

/// node3 behind the router; the agents' figures and probes served; no
/// periodic resync during the test (only changes and restarts resync).
pub fn spec(direct: bool) -> ClusterSpec {
    let mut spec = ClusterSpec {
        routed: vec![2],
        agent_args: [
            "--metrics-addr",
            "0.0.0.0:9464",
            "--resync-interval",
            "3600",
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterSpec::default().nodes(3)
    };
    spec.config.direct_routing = direct;
    spec
}

/// The device and gateway of `node`'s route to `dst`.
pub fn route(node: &Node, dst: &str) -> (String, String) {
    let out = node.netns.ok(&["ip", "-j", "route", "show", dst]).unwrap();
    let routes: Vec<Value> = serde_json::from_str(&out).unwrap();
    let Some(r) = routes.iter().find(|r| r["dst"] == dst) else {
        return (String::new(), String::new());
    };
    let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    (text("dev"), text("gateway"))
}

pub fn subnet(node: &Node) -> String {
    node.subnet().unwrap().to_string()
}

/// Packets the node's VXLAN device sent and received (encapsulated).
pub fn vxlan_packets(node: &Node) -> (u64, u64) {
    let out = node
        .netns
        .ok(&["ip", "-j", "-s", "link", "show", "trellis.1"])
        .unwrap();
    let link: Vec<Value> = serde_json::from_str(&out).unwrap();
    let stats = &link[0]["stats64"];
    (
        stats["tx"]["packets"].as_u64().unwrap(),
        stats["rx"]["packets"].as_u64().unwrap(),
    )
}

/// Pings from `from` to `to` with `options` (count, interval, size, DF);
/// whether every one was answered.
pub fn ping_with(from: &Pod, to: IpAddr, options: &[&str]) -> bool {
    let to = to.to_string();
    let mut argv = vec!["ping", "-n", "-q", "-W", "1"];
    argv.extend_from_slice(options);
    argv.push(&to);
    from.netns.exec(&argv).status.success()
}

/// 20 pings from `from` to `to`, all answered.
pub fn pings(from: &Pod, to: &Pod) {
    assert!(
        ping_with(from, to.ip, &["-c", "20", "-i", "0.02"]),
        "{} -> {}: pings lost",
        from.name,
        to.name
    );
}

/// Waits until node `a` routes node `b`'s subnet through `dev`.
pub fn wait_route(cluster: &Cluster, a: usize, b: usize, dev: &str) {
    let (na, nb) = (&cluster.nodes[a], &cluster.nodes[b]);
    let dst = subnet(nb);
    wait_until(
        TIMEOUT,
        &format!("{} routes {dst} on {dev}", na.name),
        || Ok(route(na, &dst).0 == dev),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
}

pub fn set_direct(cluster: &Cluster, on: bool) {
    let mut config = cluster_config(cluster);
    config.direct_routing = on;
    let json = serde_json::to_string(&config).unwrap();
    let out = ctl(cluster, &["config", "set", &json]);
    assert!(out.status.success(), "{}", stderr(&out));
}

pub fn cluster_config(cluster: &Cluster) -> trellis_common::cluster_config::ClusterConfig {
    let got = ctl_json(cluster, &["config", "get"]);
    serde_json::from_value(got["config"].clone()).unwrap()
}
