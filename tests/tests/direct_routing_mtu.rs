//! Direct routing (issue 17) and the paths' MTU: over an IPv6 underlay
//! the IPv6 pod subnets are the ones routed directly; with the cluster
//! config's `mtu` above the overlay's, the pods get it, the nodes of one
//! subnet carry it unencapsulated, a node behind the router is reached over
//! VXLAN (path MTU discovery), the doctor probes each path at its size,
//! and without direct routing the agent refuses it, saying why.

mod direct_common;

use direct_common::*;
use serde_json::Value;
use std::time::Duration;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec};
use trellis_tests::ctl::ctl_json;
use trellis_tests::wait::wait_until;

/// Over an IPv6 underlay the IPv6 pod subnets are the ones routed directly
/// (via the nodes' IPv6 addresses) and the IPv4 ones go over VXLAN.
#[test]
fn an_ipv6_underlay_routes_the_ipv6_pod_subnets_directly() {
    let mut spec = ClusterSpec {
        underlay6: true,
        tunnel6: true,
        agent_args: ["--resync-interval", "3600"].map(String::from).to_vec(),
        ..ClusterSpec::default().nodes(2)
    };
    spec.config.ipv6_network = Some("fd10:244::/56".parse().unwrap());
    spec.config.direct_routing = true;
    let cluster = Cluster::start(spec).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let b6 = b.record().unwrap().ipv6_subnet.unwrap().to_string();
    let out = a
        .netns
        .ok(&["ip", "-j", "-6", "route", "show", &b6])
        .unwrap();
    let routes: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(routes.len(), 1, "{out}");
    assert_eq!(routes[0]["dev"], "eth0", "{out}");
    assert_eq!(
        routes[0]["gateway"],
        b.underlay_ip6.unwrap().to_string(),
        "{out}"
    );
    assert_eq!(route(a, &subnet(b)).0, "trellis.1");

    let p0 = cluster.add_pod(0, "v0").unwrap();
    let p1 = cluster.add_pod(1, "v1").unwrap();
    let ip6 = trellis_tests::cluster::result_ip6(&p1.result).unwrap();
    ping(&p0.netns, p1.ip).unwrap();
    ping(&p0.netns, ip6).unwrap();
    // The IPv6 pings left unencapsulated, the IPv4 ones through the tunnel.
    let (tx, _) = vxlan_packets(a);
    assert!(ping_with(&p0, ip6, &["-c", "20", "-i", "0.02"]));
    assert_eq!(
        vxlan_packets(a).0,
        tx,
        "IPv6 pod traffic went through the tunnel"
    );
    pings(&p0, &p1);
    assert!(vxlan_packets(a).0 >= tx + 20);
}

/// The agent's log once it has stopped by itself (within `TIMEOUT`).
fn exited_log(node: &mut trellis_tests::cluster::Node) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while node.agent_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent keeps running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.agent_log()
}

fn ping_df(from: &trellis_tests::cluster::Pod, to: std::net::IpAddr, payload: u32) -> bool {
    let size = payload.to_string();
    ping_with(from, to, &["-c", "3", "-i", "0.2", "-M", "do", "-s", &size])
}

#[test]
fn an_mtu_above_the_overlay_is_carried_by_direct_routing_only() {
    // Without direct routing the agent refuses it before it leases or
    // makes anything.
    let mut refused = ClusterSpec {
        agents: false,
        ..ClusterSpec::default().nodes(1)
    };
    refused.config.mtu = Some(1500);
    let mut cluster = Cluster::start(refused).unwrap();
    cluster.nodes[0].start_agent().unwrap();
    let log = exited_log(&mut cluster.nodes[0]);
    assert!(
        log.contains("cluster config mtu 1500 is larger than the overlay MTU 1450 (the underlay eth0's 1500 minus the VXLAN header): only direct routing carries it"),
        "{log}"
    );
    assert!(!cluster.nodes[0]
        .netns
        .links()
        .unwrap()
        .iter()
        .any(|l| l == "trellis.1"));
    assert!(cluster.etcd_entries("subnets/").unwrap().is_empty());
    drop(cluster);

    // With it: node1 and node2 share a subnet, node3 is behind the router.
    let mut spec = spec(true);
    spec.config.mtu = Some(1500);
    let cluster = Cluster::start(spec).unwrap();
    let mtu_of = |ns: &trellis_tests::netns::Netns, dev: &str| {
        let out = ns.ok(&["ip", "-j", "link", "show", dev]).unwrap();
        let link: Vec<Value> = serde_json::from_str(&out).unwrap();
        link[0]["mtu"].as_u64().unwrap()
    };
    for node in &cluster.nodes {
        assert_eq!(node.record().unwrap().mtu, Some(1500), "{}", node.name);
        assert_eq!(mtu_of(&node.netns, "trellis0"), 1500);
        assert_eq!(
            mtu_of(&node.netns, "trellis.1"),
            1450,
            "the tunnel keeps the overlay's"
        );
    }
    let pods: Vec<_> = (0..3)
        .map(|i| cluster.add_pod(i, &format!("j{i}")).unwrap())
        .collect();
    assert_eq!(mtu_of(&pods[0].netns, "eth0"), 1500);
    // 1500 bytes unfragmented to the pod on the same subnet, and back.
    assert!(ping_df(&pods[0], pods[1].ip, 1472));
    assert!(ping_df(&pods[1], pods[0].ip, 1472));
    // Over VXLAN to node3 only the overlay's 1450 pass with DF; TCP finds
    // that by path MTU discovery.
    assert!(!ping_df(&pods[0], pods[2].ip, 1472));
    assert!(ping_df(&pods[0], pods[2].ip, 1422));
    let server = pods[2].ip.to_string();
    let mut cmd = pods[2]
        .netns
        .command(&["iperf3", "-s", "-1", "-B", &server, "-p", "5302"]);
    cmd.stdout(std::process::Stdio::null());
    let mut listening = pods[2].netns.spawn_command(cmd).unwrap();
    wait_until(TIMEOUT, "iperf3 listens", || {
        Ok(!pods[2]
            .netns
            .ok(&["ss", "-Hltn", "sport = :5302"])?
            .trim()
            .is_empty())
    })
    .unwrap();
    let out = pods[0]
        .netns
        .exec(&["iperf3", "-c", &server, "-p", "5302", "-t", "2", "-J"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert!(
        report["end"]["sum_received"]["bytes"].as_u64().unwrap() > 1_000_000,
        "{report}"
    );
    assert!(listening.wait().unwrap().success());

    // The doctor probes the direct peer at the pods' 1500 bytes, the
    // tunnel's peer at the tunnel's 1450 (and the underlay to it at 1500),
    // all don't-fragment, and finds nothing.
    let report = ctl_json(&cluster, &["doctor", "--node", &cluster.nodes[0].name]);
    assert_eq!(report["findings"], serde_json::json!([]), "{report}");
    let peers = report["reports"][0]["peers"].as_array().unwrap();
    let peer = |name: &str| peers.iter().find(|p| p["node"] == name).unwrap();
    let direct = peer(&cluster.nodes[1].name);
    assert_eq!(direct["direct"], true, "{direct}");
    assert_eq!(direct["overlayFull"]["size"], 1500, "{direct}");
    assert!(direct.get("underlayFull").is_none(), "{direct}");
    let tunnel = peer(&cluster.nodes[2].name);
    assert_eq!(tunnel["overlayFull"]["size"], 1450, "{tunnel}");
    assert_eq!(tunnel["underlayFull"]["size"], 1500, "{tunnel}");
}
