//! Dual-stack in the simulated three-node cluster (network namespaces, a
//! real etcd, pods through the libcni driver and the real plugins): with
//! `ipv6Network` in the cluster config every node holds an IPv6 subnet
//! beside its IPv4 one, every pod one address of each family, and the
//! overlay carries IPv6 between nodes as it carries IPv4.

mod ipv6_common;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipv6_common::{ipv6_of, result_ips, tamper_vxlan_routes6, tcp6_source, vxlan_routes6};
use serde_json::Value;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec, Pod};
use trellis_tests::wait::wait_for;

fn dual_stack_spec() -> ClusterSpec {
    let mut spec = ClusterSpec {
        underlay6: true,
        ..ClusterSpec::default()
    };
    spec.config.ipv6_network = Some("fd10:244::/56".parse().expect("valid network"));
    spec
}

/// A subnet index (the third octet of 10.244.i.0/24) that no node of
/// `cluster` holds: agents lease at random, so a planted entry must avoid
/// theirs.
fn unheld_index(cluster: &Cluster) -> Result<u8> {
    let held: Vec<u8> = cluster
        .nodes
        .iter()
        .map(|n| Ok(n.subnet()?.network().octets()[2]))
        .collect::<Result<_>>()?;
    (200..=255)
        .find(|i| !held.contains(i))
        .context("every index of 200-255 held")
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6_and_del_frees_both() -> Result<()> {
    let cluster = Cluster::start(dual_stack_spec())?;
    cluster.wait_converged(Duration::from_secs(60))?;

    // Each record holds the IPv6 twin of its IPv4 subnet.
    for node in &cluster.nodes {
        let rec = node.record()?;
        let index = node.subnet()?.network().octets()[2];
        let want: ipnetwork::Ipv6Network = format!("fd10:244:0:{index:x}::/64").parse()?;
        assert_eq!(rec.ipv6_subnet, Some(want), "{}", node.name);
        assert_eq!(rec.ipv6_network, cluster.spec().config.ipv6_network);
    }

    let p0 = cluster.add_pod(0, "p0")?;
    let p1 = cluster.add_pod(1, "p1")?;
    let p1b = cluster.add_pod(1, "p1b")?;

    // One address of each family, each with its gateway, and both defaults.
    let rec0 = cluster.nodes[0].record()?;
    let ips = result_ips(&p0.result);
    assert_eq!(ips.len(), 2, "{}", p0.result);
    assert!(ips[0].0.is_ipv4() && ips[1].0.is_ipv6(), "{}", p0.result);
    let subnet6 = rec0.ipv6_subnet.expect("dual-stack record");
    assert!(
        matches!(ips[1].0.ip(), IpAddr::V6(v6) if subnet6.contains(v6)),
        "{} in {subnet6}",
        ips[1].0
    );
    assert_eq!(ips[1].0.prefix(), 64);
    assert_eq!(ips[1].1, rec0.gateway6().map(IpAddr::V6));
    let routes: Vec<&str> = p0.result["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert!(
        routes.contains(&"0.0.0.0/0") && routes.contains(&"::/0"),
        "{routes:?}"
    );

    // The address is usable at once (no duplicate address detection), and
    // IPv6 crosses the overlay both ways, and stays on the node's bridge.
    let addrs: Vec<Value> = serde_json::from_str(
        &p0.netns
            .ok(&["ip", "-6", "-j", "addr", "show", "dev", &p0.ifname])?,
    )?;
    let v6_text = ipv6_of(&p0)?.to_string();
    let info = addrs[0]["addr_info"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["local"] == v6_text.as_str()))
        .with_context(|| format!("{v6_text} not on the interface: {addrs:?}"))?;
    assert!(info.get("tentative").is_none(), "{info}");
    ping(&p0.netns, ipv6_of(&p1)?)?;
    ping(&p1.netns, ipv6_of(&p0)?)?;
    ping(&p1.netns, ipv6_of(&p1b)?)?;
    ping(&p0.netns, IpAddr::V6(rec0.gateway6().expect("gateway")))?;
    // TCP keeps the pod's own address inside the cluster network.
    assert_eq!(tcp6_source(&p1, &p0.netns)?, ipv6_of(&p0)?);
    // The node reaches its pods over IPv6 too.
    ping(&cluster.nodes[1].netns, ipv6_of(&p1)?)?;

    // Egress to a host outside the cluster network leaves with the node's
    // underlay address, over IPv6 as over IPv4 (the outside host has no
    // route to the pod networks: unmasqueraded, no answer would come back).
    assert_eq!(
        cluster.source_seen_outside6(&p0.netns)?,
        IpAddr::V6(cluster.nodes[0].underlay_ip6.expect("an IPv6 underlay"))
    );
    assert_eq!(
        cluster.source_seen_outside(&p0.netns)?,
        IpAddr::V4(cluster.nodes[0].underlay_ip)
    );
    // Masquerade for IPv6 egress lives in the agent's ip6 table.
    let table = cluster.nodes[0]
        .netns
        .ok(&["nft", "list", "table", "ip6", "trellis-agent"])?;
    assert!(
        table.contains(&format!("ip6 saddr {subnet6}")) && table.contains("masquerade"),
        "{table}"
    );

    // Both addresses have their etcd key; DEL frees both.
    let v6_0 = ipv6_of(&p0)?;
    let held = cluster.allocations()?;
    assert!(held.contains(&p0.ip) && held.contains(&v6_0), "{held:?}");
    assert_eq!(held.len(), 6, "{held:?}");
    cluster.del_pod(p0).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let held = cluster.allocations()?;
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(!held.contains(&v6_0), "{held:?}");
    cluster.del_pod(p1).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    cluster.del_pod(p1b).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(cluster.allocations()?.is_empty());
    Ok(())
}

#[test]
fn a_restarted_agent_removes_stale_ipv6_entries_and_keeps_the_right_ones() -> Result<()> {
    let mut cluster = Cluster::start(dual_stack_spec().nodes(2))?;
    cluster.wait_converged(Duration::from_secs(60))?;
    let peer6 = cluster.nodes[1].record()?.ipv6_subnet.expect("dual-stack");
    let want = (peer6.to_string(), peer6.network().to_string());
    let node = cluster.nodes[0].netns.name().to_string();
    wait_for(
        Duration::from_secs(10),
        "the IPv6 route to the peer",
        || {
            Ok(vxlan_routes6(&cluster.nodes[0].netns)?
                .contains(&want)
                .then_some(()))
        },
    )
    .with_context(|| format!("{node} has no IPv6 route to {peer6}"))?;

    let gone = format!("fd10:244:0:{:x}::", unheld_index(&cluster)?);
    let gone_net = format!("{gone}/64");
    cluster.nodes[0].kill_agent()?;
    let ns = &cluster.nodes[0].netns;
    // A departed node's IPv6 route and neighbour, and the peer's route
    // deleted, all while the agent was down.
    ns.ok(&[
        "ip",
        "-6",
        "neigh",
        "replace",
        &gone,
        "lladdr",
        "02:77:77:77:77:77",
        "dev",
        "trellis.1",
        "nud",
        "permanent",
    ])?;
    tamper_vxlan_routes6(ns, &gone_net, &gone, &want.0)?;
    cluster.nodes[0].start_agent()?;

    let converged = wait_for(Duration::from_secs(20), "stale IPv6 entries gone", || {
        let routes = vxlan_routes6(&cluster.nodes[0].netns)?;
        let neigh =
            cluster.nodes[0]
                .netns
                .ok(&["ip", "-6", "neigh", "show", "dev", "trellis.1"])?;
        Ok((routes == vec![want.clone()] && !neigh.contains(&gone)).then_some(()))
    });
    if converged.is_err() {
        bail!(
            "stale IPv6 entries not removed: routes {:?}\n{}",
            vxlan_routes6(&cluster.nodes[0].netns)?,
            cluster.agent_logs()
        );
    }
    // And the overlay works again over IPv6.
    let p0 = cluster.add_pod(0, "q0")?;
    let p1 = cluster.add_pod(1, "q1")?;
    ping(&p0.netns, ipv6_of(&p1)?)?;
    cluster.del_pod(p0).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    cluster.del_pod(p1).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

#[test]
fn a_full_dual_stack_subnet_refuses_with_102_and_keeps_no_half_allocation() -> Result<()> {
    let mut spec = dual_stack_spec().nodes(1);
    // /29: five pod addresses of each family (and an IPv6 network with a
    // /64 for each of the 8192 /29s).
    spec.config.subnet_len = 29;
    spec.config.ipv6_network = Some("fd10:244::/48".parse()?);
    let cluster = Cluster::start(spec)?;
    let pods: Vec<Pod> = (0..5)
        .map(|i| cluster.add_pod(0, &format!("f{i}")))
        .collect::<Result<_>>()?;
    let v6: std::collections::BTreeSet<IpAddr> = pods.iter().map(ipv6_of).collect::<Result<_>>()?;
    assert_eq!(v6.len(), 5, "{v6:?}");
    let failed = match cluster.try_add_pod(0, "f5")? {
        Ok(pod) => bail!("a sixth pod got {}", pod.result),
        Err(failed) => failed,
    };
    assert_eq!(failed.failure.code, 102, "{}", failed.failure);
    assert_eq!(cluster.allocations()?.len(), 10);
    cluster
        .del_failed(&failed)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // A DEL frees both families; the next ADD gets an address of each.
    let mut pods = pods.into_iter();
    let first = pods.next().expect("five pods");
    let freed6 = ipv6_of(&first)?;
    cluster.del_pod(first).map_err(|e| anyhow::anyhow!("{e}"))?;
    let again = cluster.add_pod(0, "f6")?;
    assert_eq!(ipv6_of(&again)?, freed6);
    assert_eq!(cluster.allocations()?.len(), 10);
    for pod in pods.chain([again]) {
        cluster.del_pod(pod).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    assert!(cluster.allocations()?.is_empty());
    Ok(())
}

#[test]
fn vxlan_over_an_ipv6_underlay_carries_both_families_and_refuses_a_mixed_node() -> Result<()> {
    let spec = ClusterSpec {
        tunnel6: true,
        ..dual_stack_spec()
    };
    let cluster = Cluster::start(spec)?;
    // Each node publishes its IPv6 underlay address; the overlay MTU is the
    // underlay's minus 70.
    for node in &cluster.nodes {
        let rec = node.record()?;
        let ip6 = node.underlay_ip6.expect("an IPv6 underlay");
        assert_eq!(rec.public_ip, IpAddr::V6(ip6), "{}", node.name);
        assert_eq!(rec.mtu, Some(1430), "{}", node.name);
        let link = node
            .netns
            .ok(&["ip", "-j", "-d", "link", "show", "trellis.1"])?;
        assert!(link.contains(&ip6.to_string()), "{link}");
    }
    // The FDB sends to the peers' IPv6 addresses.
    let fdb = cluster.nodes[0]
        .netns
        .ok(&["bridge", "fdb", "show", "dev", "trellis.1"])?;
    for peer in &cluster.nodes[1..] {
        let want = format!("dst {}", peer.underlay_ip6.expect("IPv6"));
        assert!(fdb.contains(&want), "{want} missing:\n{fdb}");
    }
    let p0 = cluster.add_pod(0, "u0")?;
    let p2 = cluster.add_pod(2, "u2")?;
    let mtu = p0
        .netns
        .ok(&["cat", &format!("/sys/class/net/{}/mtu", p0.ifname)])?;
    assert_eq!(mtu.trim(), "1430");
    ping(&p0.netns, p2.ip)?;
    ping(&p0.netns, ipv6_of(&p2)?)?;
    assert_eq!(tcp6_source(&p2, &p0.netns)?, ipv6_of(&p0)?);

    // A node whose record has an IPv4 public IP cannot join this overlay:
    // left out with a warning naming it, and no entry is made for it.
    let key = format!("{}/nodes/x-v4", cluster.key_prefix());
    let record = format!(
        r#"{{"subnet":"10.244.{}.0/24","publicIP":"192.0.2.99","vtepMAC":"02:99:99:99:99:99"}}"#,
        unheld_index(&cluster)?
    );
    cluster.etcdctl(&["put", &key, &record])?;
    wait_for(
        Duration::from_secs(10),
        "the mixed underlay refused",
        || {
            Ok(cluster.nodes[0]
            .agent_log()
            .contains("node x-v4: public IP 192.0.2.99 is IPv4, but this node node1 has an IPv6 underlay")
            .then_some(()))
        },
    )?;
    let fdb = cluster.nodes[0]
        .netns
        .ok(&["bridge", "fdb", "show", "dev", "trellis.1"])?;
    assert!(!fdb.contains("02:99:99:99:99:99"), "{fdb}");
    ping(&p0.netns, ipv6_of(&p2)?)?;
    cluster.etcdctl(&["del", &key])?;
    cluster.del_pod(p0).map_err(|e| anyhow::anyhow!("{e}"))?;
    cluster.del_pod(p2).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[test]
fn leak_reclaim_and_a_node_leaving_free_the_ipv6_twins_too() -> Result<()> {
    let mut spec = dual_stack_spec().nodes(2);
    spec.agent_args = vec!["--ipam-gc-interval".into(), "1".into()];
    let mut cluster = Cluster::start(spec)?;
    let kept = cluster.add_pod(0, "kept")?;
    let leaked = cluster.add_pod(0, "leaked")?;
    let gone = cluster.add_pod(1, "gone")?;
    let (kept6, leaked6, gone6) = (ipv6_of(&kept)?, ipv6_of(&leaked)?, ipv6_of(&gone)?);
    let leaked_ip = leaked.ip;
    assert_eq!(cluster.allocations()?.len(), 6);

    // The container dies without a CNI DEL: both its addresses are
    // reclaimed, the live pods keep theirs.
    drop(leaked);
    wait_for(Duration::from_secs(15), "the leaked pair released", || {
        let held = cluster.allocations()?;
        Ok((!held.contains(&leaked_ip) && !held.contains(&leaked6)).then_some(()))
    })
    .with_context(|| cluster.agent_logs())?;
    let held = cluster.allocations()?;
    assert!(held.contains(&kept6) && held.contains(&gone6), "{held:?}");

    // Node 2 leaves (cleanup --release): its pod's addresses of both
    // families go, and node 1 drops its IPv6 route.
    let gone_subnet6 = cluster.nodes[1].record()?.ipv6_subnet.expect("dual-stack");
    cluster.leave(1)?;
    let mut held = cluster.allocations()?;
    held.sort();
    let mut want = vec![kept.ip, kept6];
    want.sort();
    assert_eq!(held, want);
    wait_for(
        Duration::from_secs(5),
        "the IPv6 route to node2 removed",
        || {
            let routes = vxlan_routes6(&cluster.nodes[0].netns)?;
            Ok((!routes
                .iter()
                .any(|(dst, _)| *dst == gone_subnet6.to_string()))
            .then_some(()))
        },
    )?;
    drop(gone);
    cluster.del_pod(kept).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(cluster.allocations()?.is_empty());
    Ok(())
}

#[test]
fn resyncs_of_a_converged_dual_stack_overlay_change_no_kernel_entry() -> Result<()> {
    let mut spec = dual_stack_spec();
    spec.agent_args = vec!["--resync-interval".into(), "1".into()];
    let cluster = Cluster::start(spec)?;
    // Converged: every node has its peers' IPv6 routes.
    for node in &cluster.nodes {
        wait_for(Duration::from_secs(10), "the IPv6 routes", || {
            Ok((vxlan_routes6(&node.netns)?.len() == 2).then_some(()))
        })?;
    }
    // Three resyncs of every agent while the kernel is watched: an IPv6
    // route the kernel reports at metric 1024 is the one written.
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
        let events = String::from_utf8_lossy(&out?.stdout).into_owned();
        let on_vxlan: Vec<&str> = events
            .lines()
            .filter(|l| l.contains("trellis.1") && !l.contains("proto kernel"))
            .filter(|l| !l.contains("ff02::") && !l.contains("fe80::"))
            .collect();
        assert!(
            on_vxlan.is_empty(),
            "{}: resyncs rewrote overlay entries:\n{}",
            node.name,
            on_vxlan.join("\n")
        );
    }
    Ok(())
}
