//! An IPv6-only cluster in the simulated three-node cluster (network
//! namespaces, a real etcd, pods through the libcni driver and the real
//! plugins): a cluster config with `ipv6Network` and no `network`. Every
//! node leases an IPv6 subnet alone (its record has `ipv6Subnet` and no
//! `subnet`), every pod gets one IPv6 address, and the overlay carries
//! IPv6 between nodes over an IPv4 or an IPv6 underlay.

mod ipv6_common;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipv6_common::{result_ips, tamper_vxlan_routes6, tcp6_source, vxlan_routes6};
use serde_json::Value;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec, Pod};
use trellis_tests::ctl::ctl_json;
use trellis_tests::wait::wait_for;

fn ipv6_only_spec() -> ClusterSpec {
    let mut spec = ClusterSpec {
        underlay6: true,
        // Probes for `trellisctl doctor`.
        agent_args: vec!["--metrics-addr".into(), "0.0.0.0:9464".into()],
        ..ClusterSpec::default()
    };
    spec.config.network = None;
    spec.config.ipv6_network = Some("fd10:244::/56".parse().expect("valid network"));
    spec
}

/// The IPv6 subnet of node `i`.
fn subnet6_of(cluster: &Cluster, i: usize) -> Result<ipnetwork::Ipv6Network> {
    cluster.nodes[i]
        .record()?
        .ipv6_subnet
        .with_context(|| format!("{} has no ipv6Subnet", cluster.nodes[i].name))
}

/// The container interface's IPv4 addresses (there must be none).
fn ipv4_addresses(pod: &Pod) -> Result<Vec<Value>> {
    let out = pod
        .netns
        .ok(&["ip", "-4", "-j", "addr", "show", "dev", &pod.ifname])?;
    let links: Vec<Value> = serde_json::from_str(&out)?;
    Ok(links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .collect())
}

#[test]
fn an_ipv6_only_cluster_gives_pods_one_ipv6_address_reaching_each_other_and_the_outside(
) -> Result<()> {
    let cluster = Cluster::start(ipv6_only_spec())?;
    cluster.wait_converged(Duration::from_secs(60))?;

    // Each record holds an IPv6 subnet and no IPv4 one; each subnet key is
    // named by its IPv6 subnet.
    let leases: Vec<String> = cluster
        .etcd_entries("subnets/")?
        .into_iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(leases.len(), 3, "{leases:?}");
    for i in 0..3 {
        let rec = cluster.nodes[i].record()?;
        assert_eq!((rec.subnet, rec.network), (None, None), "{rec:?}");
        let subnet6 = subnet6_of(&cluster, i)?;
        assert_eq!(subnet6.prefix(), 64);
        let key = format!("{}-64", subnet6.network());
        assert!(leases.contains(&key), "{key} not in {leases:?}");
    }

    let p0 = cluster.add_pod(0, "v0")?;
    let p1 = cluster.add_pod(1, "v1")?;
    let p2 = cluster.add_pod(2, "v2")?;
    // One IPv6 address with its gateway and ::/0, nothing of IPv4.
    let rec0 = cluster.nodes[0].record()?;
    let ips = result_ips(&p0.result);
    assert_eq!(ips.len(), 1, "{}", p0.result);
    let subnet6 = subnet6_of(&cluster, 0)?;
    assert!(
        matches!(ips[0].0.ip(), IpAddr::V6(v6) if subnet6.contains(v6)),
        "{} in {subnet6}",
        ips[0].0
    );
    assert_eq!(ips[0].1, rec0.gateway6().map(IpAddr::V6));
    let routes: Vec<&str> = p0.result["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(routes, ["::/0"], "{}", p0.result);
    assert!(ipv4_addresses(&p0)?.is_empty(), "{:?}", ipv4_addresses(&p0));
    // The bridge holds the IPv6 gateway alone.
    let bridge = cluster.nodes[0]
        .netns
        .ok(&["ip", "-4", "addr", "show", "dev", "trellis0"])?;
    assert!(
        bridge.trim().is_empty() || !bridge.contains("inet "),
        "{bridge}"
    );

    // IPv6 crosses the overlay both ways, to the gateway and to the node.
    ping(&p0.netns, p1.ip)?;
    ping(&p1.netns, p0.ip)?;
    ping(&p2.netns, p0.ip)?;
    ping(&p0.netns, IpAddr::V6(rec0.gateway6().expect("a gateway")))?;
    ping(&cluster.nodes[1].netns, p1.ip)?;
    // TCP keeps the pod's own address inside the cluster network.
    assert_eq!(tcp6_source(&p1, &p0.netns)?, p0.ip);
    // Egress leaves with the node's underlay address (the outside host has
    // no route to the pod network: unmasqueraded, no answer would come).
    assert_eq!(
        cluster.source_seen_outside6(&p0.netns)?,
        IpAddr::V6(cluster.nodes[0].underlay_ip6.expect("an IPv6 underlay"))
    );
    // No IPv4 masquerade: there is no IPv4 pod network.
    let nat4 = cluster.nodes[0]
        .netns
        .ok(&["nft", "list", "table", "ip", "trellis-agent"])
        .unwrap_or_default();
    assert!(!nat4.contains("masquerade"), "{nat4}");

    // The doctor probes every pair through the tunnel, to the IPv6 VTEPs.
    let report = ctl_json(&cluster, &["doctor"]);
    assert_eq!(report["findings"], serde_json::json!([]), "{report}");
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    for from in &names {
        for to in names.iter().filter(|t| *t != from) {
            assert_eq!(report["matrix"][from][to], "ok", "{from} -> {to}: {report}");
        }
    }
    // Every peer's VTEP is its IPv6 one (there is no IPv4 one).
    let text = report.to_string();
    assert!(text.contains("\"vtepIP\":\"fd10:244:"), "{report}");
    assert!(!text.contains("\"vtepIP\":\"10."), "{report}");

    // One key per address; DEL frees it and leaves no veth.
    let held = cluster.allocations()?;
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held.iter().all(IpAddr::is_ipv6), "{held:?}");
    for pod in [p0, p1, p2] {
        cluster.del_pod(pod).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    assert!(cluster.allocations()?.is_empty());
    for node in &cluster.nodes {
        assert!(node.host_veths()?.is_empty(), "{}", node.name);
    }
    Ok(())
}

#[test]
fn an_ipv6_only_cluster_over_an_ipv6_underlay_survives_an_agent_sigkill() -> Result<()> {
    let spec = ClusterSpec {
        tunnel6: true,
        ..ipv6_only_spec()
    }
    .nodes(2);
    let mut cluster = Cluster::start(spec)?;
    cluster.wait_converged(Duration::from_secs(60))?;
    for node in &cluster.nodes {
        let rec = node.record()?;
        let ip6 = node.underlay_ip6.expect("an IPv6 underlay");
        assert_eq!(rec.public_ip, IpAddr::V6(ip6), "{}", node.name);
        assert_eq!(rec.mtu, Some(1430), "{}", node.name);
    }
    let peer6 = subnet6_of(&cluster, 1)?;
    let want = (peer6.to_string(), peer6.network().to_string());
    wait_for(Duration::from_secs(10), "the route to the peer", || {
        Ok(vxlan_routes6(&cluster.nodes[0].netns)?
            .contains(&want)
            .then_some(()))
    })?;
    let p0 = cluster.add_pod(0, "k0")?;
    let p1 = cluster.add_pod(1, "k1")?;
    ping(&p0.netns, p1.ip)?;

    // SIGKILL; while the agent is down a departed node's route is planted
    // and the peer's deleted. The restarted agent keeps its subnet (from
    // node.json), puts the peer's route back and removes the stale one,
    // and the pods never lose their addresses.
    let own6 = subnet6_of(&cluster, 0)?;
    cluster.nodes[0].kill_agent()?;
    let ns = &cluster.nodes[0].netns;
    tamper_vxlan_routes6(ns, "fd10:244:0:ee::/64", "fd10:244:0:ee::", &want.0)?;
    cluster.nodes[0].start_agent()?;
    let converged = wait_for(Duration::from_secs(20), "stale routes gone", || {
        let routes = vxlan_routes6(&cluster.nodes[0].netns)?;
        Ok((routes == vec![want.clone()]).then_some(()))
    });
    if converged.is_err() {
        bail!(
            "routes not converged: {:?}\n{}",
            vxlan_routes6(&cluster.nodes[0].netns)?,
            cluster.agent_logs()
        );
    }
    assert_eq!(subnet6_of(&cluster, 0)?, own6, "the subnet was kept");
    ping(&p0.netns, p1.ip)?;
    ping(&p1.netns, p0.ip)?;
    cluster.del_pod(p0).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    cluster.del_pod(p1).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(cluster.allocations()?.is_empty());
    Ok(())
}

#[test]
fn leak_reclaim_and_a_node_leaving_free_ipv6_only_addresses() -> Result<()> {
    let mut spec = ipv6_only_spec().nodes(2);
    spec.agent_args = vec!["--ipam-gc-interval".into(), "1".into()];
    let mut cluster = Cluster::start(spec)?;
    cluster.wait_converged(Duration::from_secs(60))?;
    let kept = cluster.add_pod(0, "kept")?;
    let leaked = cluster.add_pod(0, "leaked")?;
    let gone = cluster.add_pod(1, "gone")?;
    let leaked_ip = leaked.ip;
    assert_eq!(cluster.allocations()?.len(), 3);

    // The container dies without a CNI DEL: its address is reclaimed.
    drop(leaked);
    wait_for(
        Duration::from_secs(15),
        "the leaked address released",
        || Ok((!cluster.allocations()?.contains(&leaked_ip)).then_some(())),
    )
    .with_context(|| cluster.agent_logs())?;

    // node2 leaves (cleanup --release): its subnet key, its pod's address
    // and node1's route to it go.
    let gone_subnet6 = subnet6_of(&cluster, 1)?;
    cluster.leave(1)?;
    assert_eq!(cluster.allocations()?, vec![kept.ip]);
    let key = format!("{}-64", gone_subnet6.network());
    assert!(
        !cluster
            .etcd_entries("subnets/")?
            .iter()
            .any(|(k, _)| k.ends_with(&key)),
        "{key} still leased"
    );
    wait_for(Duration::from_secs(5), "the route to node2 removed", || {
        let routes = vxlan_routes6(&cluster.nodes[0].netns)?;
        Ok((!routes
            .iter()
            .any(|(dst, _)| *dst == gone_subnet6.to_string()))
        .then_some(()))
    })?;
    drop(gone);
    cluster.del_pod(kept).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(cluster.allocations()?.is_empty());
    Ok(())
}
