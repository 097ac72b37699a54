//! Direct routing (issue 17), on three nodes: node1 and node2 share the
//! underlay subnet 192.0.2.0/24, node3 sits behind a router on a subnet of
//! its own. With `"directRouting": true` the first two route each other's
//! pod subnets straight over the underlay (nothing is encapsulated between
//! them) and reach node3 over VXLAN; switching the option off and on
//! converges without a restart and without breaking a TCP connection;
//! stale direct routes planted while an agent is down are gone after its
//! restart, and the doctor sees a direct route lost and an underlay that
//! drops pod addresses (more in `direct_routing_mtu.rs`).

use serde_json::Value;
use std::time::{Duration, Instant};
use trellis_tests::cluster::{ping, routed_ip, Cluster, Pod};
use trellis_tests::ctl::{ctl, ctl_json, ctl_json_any, findings, of_kind, stderr, stdout};
use trellis_tests::wait::wait_until;

mod direct_common;

use direct_common::*;

#[test]
fn nodes_on_one_subnet_route_directly_and_the_one_behind_the_router_over_vxlan() {
    let mut cluster = Cluster::start(spec(true)).unwrap();
    let [a, b, c] = [0, 1, 2].map(|i| &cluster.nodes[i]);
    assert_eq!(c.underlay_ip, routed_ip(2));
    let pods: Vec<Pod> = (0..3)
        .map(|i| cluster.add_pod(i, &format!("d{i}")).unwrap())
        .collect();

    // The kernel entries: a and b straight to each other's public
    // address; node3 through the tunnel, and it to them.
    assert_eq!(
        route(a, &subnet(b)),
        ("eth0".into(), b.underlay_ip.to_string())
    );
    assert_eq!(
        route(b, &subnet(a)),
        ("eth0".into(), a.underlay_ip.to_string())
    );
    for (x, y) in [(a, c), (b, c), (c, a), (c, b)] {
        assert_eq!(
            route(x, &subnet(y)).0,
            "trellis.1",
            "{} -> {}",
            x.name,
            y.name
        );
    }
    let fdb = a
        .netns
        .ok(&["bridge", "fdb", "show", "dev", "trellis.1"])
        .unwrap();
    assert!(!fdb.contains(&b.underlay_ip.to_string()), "{fdb}");
    assert!(fdb.contains(&c.underlay_ip.to_string()), "{fdb}");
    assert_eq!(
        a.agent_counter(METRICS, "trellis_agent_direct_routes")
            .unwrap(),
        1
    );
    assert_eq!(
        c.agent_counter(METRICS, "trellis_agent_direct_routes")
            .unwrap(),
        0
    );

    // Every pod reaches every other.
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                ping(&from.netns, to.ip).unwrap();
            }
        }
    }
    // Between a and b nothing is encapsulated; to node3 everything is.
    // Not masqueraded either: b forwards what comes from a's pod.
    let (from, to) = (pods[0].ip, pods[1].ip);
    b.netns
        .sh_ok(&format!(
            "nft add table ip dr-test && \
             nft add chain ip dr-test counted '{{ type filter hook forward priority -10; }}' && \
             nft add rule ip dr-test counted ip saddr {from} ip daddr {to} counter"
        ))
        .unwrap();
    let (a_tx, _) = vxlan_packets(a);
    let (_, b_rx) = vxlan_packets(b);
    pings(&pods[0], &pods[1]);
    let counted = b
        .netns
        .ok(&["nft", "list", "chain", "ip", "dr-test", "counted"])
        .unwrap();
    assert!(counted.contains("counter packets 20 "), "{counted}");
    assert_eq!(
        vxlan_packets(a).0,
        a_tx,
        "pod a -> pod b went through the tunnel"
    );
    assert_eq!(
        vxlan_packets(b).1,
        b_rx,
        "pod b got pod a's pings from the tunnel"
    );
    pings(&pods[0], &pods[2]);
    assert!(vxlan_packets(a).0 >= a_tx + 20);

    // The doctor agrees with the agents, and sees a direct route lost.
    let (code, clean) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(
        (code, &clean["findings"]),
        (0, &serde_json::json!([])),
        "{clean}"
    );
    let marked = |report: &Value, from: &str, to: &str| {
        report["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == from)
            .and_then(|r| {
                r["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["node"] == to)
            })
            .map(|p| p["direct"] == true)
            .unwrap()
    };
    assert!(marked(&clean, &a.name, &b.name) && !marked(&clean, &a.name, &c.name));
    // An underlay that does not carry pod addresses (anti-spoofing, a
    // cloud's source/destination check) into node2: the direct pairs fail,
    // node3's tunnel passes.
    b.netns
        .sh_ok(
            "nft add table inet dr-drop && \
             nft add chain inet dr-drop in '{ type filter hook prerouting priority -10; }' && \
             nft add rule inet dr-drop in iifname eth0 ip daddr 10.244.0.0/16 drop",
        )
        .unwrap();
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(code, 1, "{report}");
    let blocked = of_kind(&report, "direct-route-blocked");
    let pairs: Vec<(&str, &str)> = blocked
        .iter()
        .map(|(from, to, _)| (from.as_str(), to.as_str()))
        .collect();
    assert_eq!(pairs, [("node1", "node2"), ("node2", "node1")], "{report}");
    for (_, _, remedy) in &blocked {
        // Only node1 and node2 share the subnet: nothing tells them apart.
        assert!(
            remedy.starts_with("the underlay on node1 and on node2 must carry"),
            "{remedy}"
        );
    }
    assert_eq!(report["matrix"]["node1"]["node2"], "direct", "{report}");
    assert_eq!(report["matrix"]["node1"]["node3"], "ok", "{report}");
    assert_eq!(report["matrix"]["node3"]["node2"], "ok", "{report}");
    b.netns
        .ok(&["nft", "delete", "table", "inet", "dr-drop"])
        .unwrap();
    {
        let _frozen = a.freeze_agent().unwrap();
        a.netns.ok(&["ip", "route", "del", &subnet(b)]).unwrap();
    }
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(code, 1, "{report}");
    // The route is lost, and with it the path through the tunnel's
    // address; the drift says why.
    let drift = findings(&report, "kernel-drift");
    assert_eq!(drift.len(), 1, "{report}");
    assert_eq!(drift[0]["from"], a.name.as_str());
    let message = drift[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "direct route to {} via {} on the underlay missing",
            subnet(b),
            b.underlay_ip
        )),
        "{report}"
    );
    let (code, fixed) = ctl_json_any(&cluster, &["doctor", "--fix"]);
    assert_eq!(code, 0, "{fixed}");
    assert_eq!(route(a, &subnet(b)).0, "eth0");

    // node2 leaves: its direct routes go with it, and node1's to it.
    let gone = subnet(b);
    cluster.leave(1).unwrap();
    let node = &cluster.nodes[1];
    let left = node
        .netns
        .ok(&["ip", "route", "show", "dev", "eth0"])
        .unwrap();
    assert!(!left.contains("10.244."), "{left}");
    wait_until(TIMEOUT, "node1 drops its route to node2", || {
        Ok(route(&cluster.nodes[0], &gone).0.is_empty())
    })
    .unwrap();
    ping(&pods[0].netns, pods[2].ip).unwrap();
}

#[test]
fn switching_direct_routing_converges_under_a_live_tcp_connection() {
    let cluster = Cluster::start(spec(false)).unwrap();
    let [a, b] = [0, 1].map(|i| &cluster.nodes[i]);
    let p0 = cluster.add_pod(0, "t0").unwrap();
    let p1 = cluster.add_pod(1, "t1").unwrap();
    assert_eq!(route(a, &subnet(b)).0, "trellis.1");

    // One TCP connection from a's pod to b's for the whole test.
    let server_ip = p1.ip.to_string();
    let mut cmd = p1
        .netns
        .command(&["iperf3", "-s", "-1", "-B", &server_ip, "-p", "5301"]);
    cmd.stdout(std::process::Stdio::null());
    let mut server = p1.netns.spawn_command(cmd).unwrap();
    wait_until(TIMEOUT, "iperf3 listens", || {
        let out = p1.netns.ok(&["ss", "-Hltn", "sport = :5301"])?;
        Ok(!out.trim().is_empty())
    })
    .unwrap();
    let mut cmd = p0.netns.command(&[
        "iperf3", "-c", &server_ip, "-p", "5301", "-t", "14", "-i", "1", "-b", "200M", "-J",
    ]);
    cmd.stdout(std::process::Stdio::piped());
    let client = p0.netns.spawn_command(cmd).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    set_direct(&cluster, true);
    wait_route(&cluster, 0, 1, "eth0");
    wait_route(&cluster, 1, 0, "eth0");
    let on_took = started.elapsed();
    assert_eq!(route(a, &subnet(cluster.node(2).unwrap())).0, "trellis.1");
    let (tx, _) = vxlan_packets(a);
    std::thread::sleep(Duration::from_secs(3));
    let (tx_direct, _) = vxlan_packets(a);
    // The connection's segments leave unencapsulated (a stray packet of
    // the kernel's own may still use the tunnel).
    assert!(
        tx_direct - tx < 10,
        "{} packets through the tunnel",
        tx_direct - tx
    );

    let started = Instant::now();
    set_direct(&cluster, false);
    wait_route(&cluster, 0, 1, "trellis.1");
    wait_route(&cluster, 1, 0, "trellis.1");
    let off_took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        vxlan_packets(a).0 > tx_direct + 1000,
        "the connection is not back in the tunnel"
    );
    assert!(a
        .agent_log()
        .contains("direct routes to the nodes on 192.0.2.0/24"));
    eprintln!("switched on in {on_took:?}, off in {off_took:?} (both nodes' routes)");
    assert!(
        on_took < Duration::from_secs(5) && off_took < Duration::from_secs(5),
        "on in {on_took:?}, off in {off_took:?}"
    );

    let out = client.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "iperf3 failed: {report}");
    let intervals = report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 13, "{report}");
    for (i, interval) in intervals.iter().enumerate() {
        let bytes = interval["sum"]["bytes"].as_u64().unwrap();
        assert!(bytes > 0, "second {i} carried nothing: {report}");
    }
    assert!(server.wait().unwrap().success(), "the iperf3 server failed");
    ping(&p0.netns, p1.ip).unwrap();
}

#[test]
fn stale_direct_routes_go_when_the_agent_starts_and_a_named_network_routes_directly() {
    let mut cluster = Cluster::start(spec(true)).unwrap();
    let (sa, sb, sc) = (
        subnet(&cluster.nodes[0]),
        subnet(&cluster.nodes[1]),
        subnet(&cluster.nodes[2]),
    );
    let b_ip = cluster.nodes[1].underlay_ip.to_string();
    // A subnet no node holds (subnets are leased at random).
    let nobody = (240..256)
        .map(|i| format!("10.244.{i}.0/24"))
        .find(|n| ![&sa, &sb, &sc].contains(&n))
        .unwrap();
    cluster.nodes[0].stop_agent(Duration::from_secs(5)).unwrap();
    let a = &cluster.nodes[0];
    for planted in [
        // node3 is behind the router: no direct route to it.
        vec!["replace", &sc, "via", &b_ip, "dev", "eth0"],
        // node2 through the wrong gateway.
        vec!["replace", &sb, "via", "192.0.2.3", "dev", "eth0"],
        // A subnet nobody holds.
        vec!["add", &nobody, "via", "192.0.2.3", "dev", "eth0"],
        // Not the overlay's: stays.
        vec!["add", "203.0.113.0/24", "via", "192.0.2.254", "dev", "eth0"],
    ] {
        let mut argv = vec!["ip", "route"];
        argv.extend(planted);
        a.netns.ok(&argv).unwrap();
    }
    cluster.nodes[0].start_agent().unwrap();
    let a = &cluster.nodes[0];
    wait_until(TIMEOUT, "node1's routes are right again", || {
        Ok(route(a, &sc).0 == "trellis.1"
            && route(a, &sb) == ("eth0".into(), b_ip.clone())
            && route(a, &nobody).0.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    assert_eq!(route(a, "203.0.113.0/24").0, "eth0");
    assert_eq!(route(&cluster.nodes[2], &sa).0, "trellis.1");

    // A named network made with --direct-routing does the same on its own
    // devices; the default network's routes stay as they are.
    let made = ctl_json(
        &cluster,
        &[
            "network",
            "create",
            "multihost",
            "--subnet",
            "10.0.0.0/16",
            "--direct-routing",
        ],
    );
    assert_eq!(made["network"]["directRouting"], true, "{made}");
    let vni = made["network"]["vni"].as_u64().unwrap();
    let vxlan = format!("trellis.{vni}");
    wait_until(TIMEOUT, "every node serves multihost", || {
        Ok(cluster.nodes.iter().all(|n| {
            n.network_record("multihost").is_some() && n.network_conflist("multihost").exists()
        }))
    })
    .unwrap();
    let named: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.network_record("multihost")
                .unwrap()
                .subnet
                .unwrap()
                .to_string()
        })
        .collect();
    wait_until(TIMEOUT, "multihost routed", || {
        Ok(route(a, &named[1]) == ("eth0".into(), b_ip.clone())
            && route(a, &named[2]).0 == vxlan
            && route(&cluster.nodes[2], &named[0]).0 == vxlan)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            let conflist = cluster.nodes[i].network_conflist("multihost");
            let pod = cluster
                .try_add_pod_with(i, &format!("m{i}"), &conflist)
                .unwrap();
            pod.unwrap_or_else(|f| panic!("ADD m{i}: {}", f.failure))
        })
        .collect();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                ping(&from.netns, to.ip).unwrap();
            }
        }
    }
    let shown = stdout(&ctl(&cluster, &["network", "inspect", "multihost"]));
    assert!(shown.contains(r#""directRouting": true"#), "{shown}");
    // Taken down, it leaves no direct route behind; the default network's stay.
    drop(pods);
    let rm = ctl(&cluster, &["network", "rm", "multihost", "--force"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    wait_until(TIMEOUT, "multihost's routes gone", || {
        Ok(route(a, &named[1]).0.is_empty())
    })
    .unwrap();
    assert_eq!(route(a, &sb), ("eth0".into(), b_ip.clone()));
}
