//! Root tests of `trellis-agent` in a simulated three-node cluster (network
//! namespaces, a real etcd in the underlay namespace, pods through the CNI
//! plugins): the overlay carries pod traffic between every pair of nodes,
//! and the kernel entries follow etcd.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec, Node};
use trellis_tests::netns::Netns;
use trellis_tests::wait::wait_for;

/// What the kernel of a node holds on its VXLAN device.
#[derive(Debug, Default, PartialEq, Eq)]
struct OverlayEntries {
    /// (MAC, dst)
    fdb: BTreeSet<(String, String)>,
    /// (IP, MAC) of permanent entries
    neigh: BTreeSet<(String, String)>,
    /// (dst, gateway, nexthop id)
    routes: BTreeSet<(String, String, u64)>,
    /// (id, gateway) of the nexthop objects on the device
    nexthops: BTreeSet<(u64, String)>,
}

fn json(ns: &Netns, argv: &[&str]) -> Result<Vec<Value>> {
    let out = ns.ok(argv)?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_str(&out)?)
}

fn entries(node: &Node) -> Result<OverlayEntries> {
    let dev = "trellis.1";
    let ns = &node.netns;
    let mut e = OverlayEntries::default();
    for f in json(ns, &["bridge", "-j", "fdb", "show", "dev", dev])? {
        if let (Some(mac), Some(dst)) = (f["mac"].as_str(), f["dst"].as_str()) {
            e.fdb.insert((mac.to_owned(), dst.to_owned()));
        }
    }
    for n in json(ns, &["ip", "-j", "neigh", "show", "dev", dev])? {
        let permanent = n["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "PERMANENT"));
        if let (Some(ip), Some(mac), true) = (n["dst"].as_str(), n["lladdr"].as_str(), permanent) {
            e.neigh.insert((ip.to_owned(), mac.to_owned()));
        }
    }
    for r in json(ns, &["ip", "-j", "route", "show", "dev", dev])? {
        if let (Some(dst), Some(gw)) = (r["dst"].as_str(), r["gateway"].as_str()) {
            let nhid = r["nhid"].as_u64().unwrap_or(0);
            e.routes.insert((dst.to_owned(), gw.to_owned(), nhid));
        }
    }
    for n in json(ns, &["ip", "-j", "nexthop", "show", "dev", dev])? {
        if let (Some(id), Some(gw)) = (n["id"].as_u64(), n["gateway"].as_str()) {
            e.nexthops.insert((id, gw.to_owned()));
        }
    }
    Ok(e)
}

/// The entries `node` should hold for the other nodes of `cluster`.
fn expected(cluster: &Cluster, node: usize) -> Result<OverlayEntries> {
    let mut e = OverlayEntries::default();
    for (i, other) in cluster.nodes.iter().enumerate() {
        if i == node {
            continue;
        }
        let rec = other.record()?;
        let subnet = other.subnet()?;
        let vtep = subnet.network().to_string();
        e.fdb
            .insert((rec.vtep_mac.clone(), rec.public_ip.to_string()));
        e.neigh.insert((vtep.clone(), rec.vtep_mac.clone()));
        // Through a nexthop object whose id is the VTEP address as a number.
        let id = u64::from(u32::from(subnet.network()));
        e.routes.insert((subnet.to_string(), vtep.clone(), id));
        e.nexthops.insert((id, vtep));
    }
    Ok(e)
}

fn full_mesh_ping(pods: &[trellis_tests::cluster::Pod]) {
    for a in pods {
        for b in pods {
            if a.node != b.node {
                ping(&a.netns, b.ip).unwrap();
            }
        }
    }
}

#[test]
fn three_nodes_full_mesh_and_exact_entries() {
    let cluster = Cluster::start(ClusterSpec::default()).unwrap();
    let pods: Vec<_> = (0..3)
        .map(|n| cluster.add_pod(n, &format!("p{n}")).unwrap())
        .collect();
    // Distinct subnets, the pods inside their node's.
    let subnets: BTreeSet<_> = cluster.nodes.iter().map(|n| n.subnet().unwrap()).collect();
    assert_eq!(subnets.len(), 3);
    for p in &pods {
        let subnet = cluster.nodes[p.node].subnet().unwrap();
        assert!(
            matches!(p.ip, IpAddr::V4(v4) if subnet.contains(v4)),
            "{} not in {subnet}",
            p.ip
        );
    }
    full_mesh_ping(&pods);
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(
            entries(node).unwrap(),
            expected(&cluster, i).unwrap(),
            "{}",
            node.name
        );
        // The record: MAC of the VXLAN device, MTU underlay - 50.
        let rec = node.record().unwrap();
        let link = json(
            &node.netns,
            &["ip", "-j", "-d", "link", "show", "trellis.1"],
        )
        .unwrap();
        assert_eq!(link[0]["address"], rec.vtep_mac.as_str());
        assert_eq!(link[0]["mtu"], 1450);
        assert_eq!(rec.mtu, Some(1450));
        let info = &link[0]["linkinfo"]["info_data"];
        assert_eq!(info["id"], 1);
        assert_eq!(info["port"], 8472);
        assert_eq!(info["local"], node.underlay_ip.to_string());
        assert_eq!(info["learning"], false);
    }
}

/// A converged node's resyncs find nothing to change: they write nothing to
/// the kernel (before, every FDB entry was deleted and re-added on every
/// pass, its destination unread from the bridge dump).
#[test]
fn resyncs_of_a_converged_overlay_change_no_kernel_entry() {
    let spec = ClusterSpec {
        agent_args: vec!["--resync-interval".into(), "1".into()],
        ..ClusterSpec::default()
    };
    let cluster = Cluster::start(spec).unwrap();
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(entries(node).unwrap(), expected(&cluster, i).unwrap());
    }
    // Three resyncs of every agent while the kernel is watched.
    let watch: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.netns
                .command(&["timeout", "3.5", "ip", "monitor", "neigh", "route"])
                .output()
        })
        .collect();
    for (node, out) in cluster.nodes.iter().zip(watch) {
        let out = out.unwrap();
        let events = String::from_utf8_lossy(&out.stdout);
        // The kernel's own (the device's IPv6 link-local route) aside.
        let on_vxlan: Vec<&str> = events
            .lines()
            .filter(|l| l.contains("trellis.1") && !l.contains("proto kernel"))
            .collect();
        assert!(
            on_vxlan.is_empty(),
            "{}: resyncs rewrote overlay entries:\n{}",
            node.name,
            on_vxlan.join("\n")
        );
    }
}

/// Packets sent and received by a finished `ping` run.
fn ping_counts(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {output:?}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

fn ifindex(node: &Node, dev: &str) -> u64 {
    json(&node.netns, &["ip", "-j", "link", "show", dev]).unwrap()[0]["ifindex"]
        .as_u64()
        .unwrap()
}

#[test]
fn sigkilled_agent_restarts_with_same_mac_and_subnet_without_interrupting_pods() {
    let mut cluster = Cluster::start(ClusterSpec::default()).unwrap();
    let p1 = cluster.add_pod(0, "p1").unwrap();
    let p2 = cluster.add_pod(1, "p2").unwrap();
    ping(&p2.netns, p1.ip).unwrap();
    let before = cluster.nodes[0].record().unwrap();
    let vxlan_index = ifindex(&cluster.nodes[0], "trellis.1");
    // Every remote node programmed before the kill, so that the count of
    // planted entries below is exact (the third node may join later).
    let want = expected(&cluster, 0).unwrap();
    wait_for(
        Duration::from_secs(10),
        "all remote nodes programmed",
        || Ok((entries(&cluster.nodes[0])? == want).then_some(())),
    )
    .unwrap();

    // 200 echoes, 25 ms apart (5 s), across the restart.
    let pinger = p2
        .netns
        .command(&[
            "ping",
            "-n",
            "-i",
            "0.025",
            "-c",
            "200",
            "-W",
            "1",
            &p1.ip.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.nodes[0].kill_agent().unwrap();

    // Leftovers of a departed node and a stale MAC, planted while it is down.
    let n1 = &cluster.nodes[0].netns;
    // A departed node's subnet: one no live node holds (agents lease at random).
    let held: Vec<u8> = cluster
        .nodes
        .iter()
        .map(|n| n.subnet().unwrap().network().octets()[2])
        .collect();
    let free: Vec<u8> = (222..=254).filter(|i| !held.contains(i)).take(2).collect();
    let (gone, gone2) = (free[0], free[1]);
    for cmd in [
        "bridge fdb add 02:de:ad:be:ef:01 dev trellis.1 dst 192.0.2.99 self permanent".to_string(),
        "bridge fdb add 02:de:ad:be:ef:02 dev trellis.1 dst 192.0.2.2 self permanent".to_string(),
        format!(
            "ip neigh add 10.244.{gone}.0 lladdr 02:de:ad:be:ef:01 dev trellis.1 nud permanent"
        ),
        // A route as agents before nexthop objects wrote it.
        format!("ip route add 10.244.{gone}.0/24 via 10.244.{gone}.0 dev trellis.1 onlink"),
        // And a departed node's nexthop with its route.
        format!("ip nexthop add id 4242 via 10.244.{gone2}.0 dev trellis.1 onlink"),
        format!("ip route add 10.244.{gone2}.0/24 nhid 4242"),
    ] {
        n1.sh_ok(&cmd).unwrap();
    }
    let planted = entries(&cluster.nodes[0]).unwrap();
    assert_eq!((planted.fdb.len(), planted.nexthops.len()), (4, 3));
    std::thread::sleep(Duration::from_millis(500));
    cluster.nodes[0].start_agent().unwrap();

    wait_for(Duration::from_secs(10), "stale entries removed", || {
        Ok((entries(&cluster.nodes[0])? == want).then_some(()))
    })
    .unwrap();
    let out = pinger.wait_with_output().unwrap();
    let (sent, received) = ping_counts(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sent, 200);
    assert_eq!(received, sent, "echoes lost across the agent restart");

    let node = &cluster.nodes[0];
    let after = node.record().unwrap();
    assert_eq!(after, before, "node.json changed across the restart");
    let in_etcd = cluster
        .etcdctl(&["get", "--print-value-only", "/trellis/nodes/node1"])
        .unwrap();
    let in_etcd: trellis_common::node::NodeRecord = serde_json::from_str(in_etcd.trim()).unwrap();
    assert_eq!(in_etcd, before);
    assert_eq!(
        ifindex(node, "trellis.1"),
        vxlan_index,
        "VXLAN device was re-created"
    );
    assert!(
        node.agent_log().contains("kept from before"),
        "{}",
        node.agent_log()
    );
    ping(&p1.netns, p2.ip).unwrap();
}

#[test]
fn sigterm_leaves_the_data_path_and_a_deleted_record_goes_within_a_second() {
    let mut cluster = Cluster::start(ClusterSpec::default()).unwrap();
    let p1 = cluster.add_pod(0, "p1").unwrap();
    let p3 = cluster.add_pod(2, "p3").unwrap();
    ping(&p1.netns, p3.ip).unwrap();

    // A graceful stop keeps everything in place.
    cluster.nodes[2].stop_agent(Duration::from_secs(5)).unwrap();
    assert!(cluster.nodes[2].agent_log().contains("SIGTERM"));
    ping(&p1.netns, p3.ip).unwrap();
    ping(&p3.netns, p1.ip).unwrap();
    assert_eq!(
        entries(&cluster.nodes[2]).unwrap(),
        expected(&cluster, 2).unwrap()
    );

    // The node leaves: its record goes, the others drop its entries.
    let gone = cluster.nodes[2].record().unwrap();
    let gone_subnet = cluster.nodes[2].subnet().unwrap();
    cluster.etcdctl(&["del", "/trellis/nodes/node3"]).unwrap();
    let started = Instant::now();
    let vtep = gone_subnet.network().to_string();
    for node in &cluster.nodes[..2] {
        wait_for(Duration::from_secs(5), "entries of node3 removed", || {
            let e = entries(node)?;
            let left = e.fdb.iter().any(|(mac, _)| *mac == gone.vtep_mac)
                || e.neigh.iter().any(|(ip, _)| *ip == vtep)
                || e.routes
                    .iter()
                    .any(|(dst, _, _)| *dst == gone_subnet.to_string());
            Ok((!left).then_some(()))
        })
        .unwrap();
    }
    let took = started.elapsed();
    eprintln!("node3's entries gone from the other nodes {took:?} after the delete");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The two remaining nodes still reach each other.
    let p2 = cluster.add_pod(1, "p2").unwrap();
    ping(&p1.netns, p2.ip).unwrap();
}

#[test]
fn a_vxlan_device_set_down_with_another_mtu_is_fixed_in_place_on_resync() {
    let cluster = Cluster::start(ClusterSpec {
        agent_args: vec!["--resync-interval".into(), "1".into()],
        ..ClusterSpec::default()
    })
    .unwrap();
    let p0 = cluster.add_pod(0, "p0").unwrap();
    let p1 = cluster.add_pod(1, "p1").unwrap();
    ping(&p1.netns, p0.ip).unwrap();
    let node = &cluster.nodes[0];
    let index = ifindex(node, "trellis.1");
    let want = expected(&cluster, 0).unwrap();
    node.netns
        .sh_ok("ip link set trellis.1 down mtu 1400")
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "trellis.1 up with MTU 1450",
        || {
            let link = json(&node.netns, &["ip", "-j", "link", "show", "trellis.1"])?;
            let up = link[0]["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "UP"));
            Ok((up && link[0]["mtu"] == 1450).then_some(()))
        },
    )
    .unwrap();
    // Fixed in place: the same device; what going down flushed is set again.
    assert_eq!(ifindex(node, "trellis.1"), index);
    wait_for(Duration::from_secs(10), "entries back", || {
        Ok((entries(node)? == want).then_some(()))
    })
    .unwrap();
    ping(&p1.netns, p0.ip).unwrap();
}

#[test]
fn a_vxlan_device_with_other_tunnel_settings_is_replaced_at_start() {
    let mut cluster = Cluster::start(ClusterSpec::default()).unwrap();
    let p0 = cluster.add_pod(0, "p0").unwrap();
    let p1 = cluster.add_pod(1, "p1").unwrap();
    let before = ifindex(&cluster.nodes[0], "trellis.1");
    cluster.nodes[0].kill_agent().unwrap();
    cluster.nodes[0]
        .netns
        .sh_ok("ip link set trellis.1 type vxlan learning")
        .unwrap();
    cluster.nodes[0].start_agent().unwrap();
    let node = &cluster.nodes[0];
    let want = expected(&cluster, 0).unwrap();
    wait_for(
        Duration::from_secs(10),
        "device replaced and refilled",
        || {
            let link = json(
                &node.netns,
                &["ip", "-j", "-d", "link", "show", "trellis.1"],
            )?;
            let replaced = link[0]["ifindex"] != before
                && link[0]["linkinfo"]["info_data"]["learning"] == false;
            Ok((replaced && entries(node)? == want).then_some(()))
        },
    )
    .unwrap();
    assert!(
        node.agent_log().contains("re-created VXLAN device"),
        "{}",
        node.agent_log()
    );
    ping(&p1.netns, p0.ip).unwrap();
}
