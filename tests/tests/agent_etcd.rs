//! Root tests of `trellis-agent` against etcd trouble and contention: etcd
//! stopped or restarted under running agents, and many agents leasing
//! subnets at the same moment.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use trellis_common::cluster_config::ClusterConfig;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec, Node};
use trellis_tests::wait::wait_until;

fn routes_on_vxlan(node: &Node) -> Result<BTreeSet<String>> {
    let out = node
        .netns
        .ok(&["ip", "-j", "route", "show", "dev", "trellis.1"])?;
    let routes: Vec<Value> = serde_json::from_str(&out)?;
    Ok(routes
        .iter()
        .filter_map(|r| r["dst"].as_str().map(str::to_owned))
        .collect())
}

/// The overlay routes of every node, in node order.
fn routes_of_every_node(cluster: &Cluster) -> Vec<BTreeSet<String>> {
    cluster
        .nodes
        .iter()
        .map(|n| routes_on_vxlan(n).unwrap())
        .collect()
}

/// Every agent still runs and every node keeps the routes it had in `before`.
#[track_caller]
fn agents_kept_running_and_routes_stayed(cluster: &mut Cluster, before: &[BTreeSet<String>]) {
    for (node, routes) in cluster.nodes.iter_mut().zip(before) {
        assert!(
            node.agent_running(),
            "{} exited:\n{}",
            node.name,
            node.agent_log()
        );
        assert_eq!(&routes_on_vxlan(node).unwrap(), routes, "{}", node.name);
    }
}

/// A record for a node that exists only in etcd.
/// Third octets `i` of 10.244.i.0/24 that no node of `cluster` holds (agents
/// lease at random: a ghost on a node's own subnet would be ignored).
fn free_indices(cluster: &Cluster, from: u8) -> Vec<u8> {
    let held: Vec<u8> = cluster
        .nodes
        .iter()
        .map(|n| n.subnet().unwrap().network().octets()[2])
        .collect();
    (from..=254).filter(|i| !held.contains(i)).collect()
}

fn ghost_subnet(i: u8) -> String {
    format!("10.244.{i}.0/24")
}

fn ghost_record(i: u8) -> String {
    format!(
        r#"{{"subnet":"10.244.{i}.0/24","publicIP":"192.0.2.{i}","vtepMAC":"02:00:00:00:aa:{i:02x}"}}"#
    )
}

/// Publish the record of ghost node `g` and wait until every node routes
/// its subnet over the overlay: the agents' watches work.
fn put_ghost_and_wait_for_its_route(cluster: &Cluster, g: u8, what: &str) {
    cluster
        .etcdctl(&["put", "/trellis/nodes/ghost", &ghost_record(g)])
        .unwrap();
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(20), what, || {
            Ok(routes_on_vxlan(node)?.contains(&ghost_subnet(g)))
        })
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", node.name, node.agent_log()));
    }
}

#[test]
fn etcd_down_leaves_the_data_path_and_watches_recover_after_a_restart() {
    let mut cluster = Cluster::start(ClusterSpec::default()).unwrap();
    let p1 = cluster.add_pod(0, "p1").unwrap();
    let p2 = cluster.add_pod(1, "p2").unwrap();
    let before = routes_of_every_node(&cluster);

    // etcd gone for a while: agents keep running, nothing is removed.
    cluster.etcd_mut().stop().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    ping(&p1.netns, p2.ip).unwrap();
    agents_kept_running_and_routes_stayed(&mut cluster, &before);

    // Back, with its data: the watches follow new changes again.
    cluster.etcd_mut().restart().unwrap();
    let g = free_indices(&cluster, 200)[0];
    put_ghost_and_wait_for_its_route(&cluster, g, "ghost route after etcd restart");
    cluster.etcdctl(&["del", "/trellis/nodes/ghost"]).unwrap();
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(5), "ghost route removed", || {
            Ok(!routes_on_vxlan(node)?.contains(&ghost_subnet(g)))
        })
        .unwrap();
    }
    // The agents' own records and leases survived.
    let nodes = cluster.etcd_entries("nodes/").unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    ping(&p2.netns, p1.ip).unwrap();
}

#[test]
fn restarted_agent_lists_the_latest_records_after_compaction() {
    let mut cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    // While node2's agent is stopped, history moves on and is compacted.
    cluster.nodes[1].kill_agent().unwrap();
    let ghosts: Vec<u8> = free_indices(&cluster, 100)[..20].to_vec();
    let (previous, latest) = (ghosts[18], ghosts[19]);
    for &i in &ghosts {
        cluster
            .etcdctl(&["put", "/trellis/nodes/ghost", &ghost_record(i)])
            .unwrap();
    }
    let rev: Value = serde_json::from_str(
        &cluster
            .etcdctl(&["get", "-w", "json", "/trellis/nodes/ghost"])
            .unwrap(),
    )
    .unwrap();
    let rev = rev["header"]["revision"].as_i64().unwrap();
    cluster.etcdctl(&["compact", &rev.to_string()]).unwrap();
    cluster.nodes[1].start_agent().unwrap();
    let node1 = &cluster.nodes[0];
    wait_until(
        Duration::from_secs(10),
        "latest ghost subnet on node1",
        || {
            let r = routes_on_vxlan(node1)?;
            Ok(r.contains(&ghost_subnet(latest)) && !r.contains(&ghost_subnet(previous)))
        },
    )
    .unwrap();
    let node2 = &cluster.nodes[1];
    wait_until(
        Duration::from_secs(10),
        "latest ghost subnet on node2",
        || Ok(routes_on_vxlan(node2)?.contains(&ghost_subnet(latest))),
    )
    .unwrap();
}

#[test]
fn many_agents_starting_at_once_get_distinct_subnets_and_the_extra_one_waits() {
    // 8 subnets for 9 nodes: 8 agents must each find one of their own, the
    // ninth must say the network is exhausted (and keep trying).
    let spec = ClusterSpec {
        nodes: 9,
        config: ClusterConfig {
            network: Some("10.244.0.0/26".parse().unwrap()),
            subnet_len: 29,
            vni: 1,
            port: 8472,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            direct_routing: false,
            mtu: None,
        },
        agents: false,
        ..ClusterSpec::default()
    };
    let mut cluster = Cluster::start(spec).unwrap();
    for node in &mut cluster.nodes {
        node.start_agent().unwrap();
    }
    wait_until(Duration::from_secs(30), "8 subnets leased", || {
        Ok(cluster.etcd_entries("subnets/")?.len() == 8
            && cluster.etcd_entries("nodes/")?.len() == 8)
    })
    .unwrap();
    let with_record: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|n| n.record().is_ok())
        .collect();
    assert_eq!(with_record.len(), 8);
    let subnets: BTreeSet<_> = with_record.iter().map(|n| n.subnet().unwrap()).collect();
    assert_eq!(subnets.len(), 8, "{subnets:?}");
    let waiting: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|n| n.record().is_err())
        .collect();
    assert_eq!(waiting.len(), 1);
    let extra = waiting[0];
    wait_until(Duration::from_secs(10), "exhaustion reported", || {
        Ok(extra
            .agent_log()
            .contains("network 10.244.0.0/26 has no free /29 subnet left: all 8 are leased"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", extra.agent_log()));
    // The leased nodes reach each other.
    let (a, b) = (with_record[0], with_record[7]);
    ping(&a.netns, b.subnet().unwrap().network().into()).unwrap();
    let name = extra.name.clone();
    let extra = cluster.nodes.iter_mut().find(|n| n.name == name).unwrap();
    assert!(
        extra.agent_running(),
        "the agent of a full network must keep waiting"
    );
}

#[test]
fn a_hung_etcd_leaves_the_data_path_and_changes_flow_again_after_it() {
    let mut cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let p1 = cluster.add_pod(0, "p1").unwrap();
    let p2 = cluster.add_pod(1, "p2").unwrap();
    let before = routes_of_every_node(&cluster);
    // SIGSTOP: connections stay open, nothing answers (keep-alives notice).
    cluster.etcd_mut().pause().unwrap();
    std::thread::sleep(Duration::from_secs(10));
    ping(&p1.netns, p2.ip).unwrap();
    agents_kept_running_and_routes_stayed(&mut cluster, &before);
    cluster.etcd_mut().resume().unwrap();
    let g = free_indices(&cluster, 201)[0];
    put_ghost_and_wait_for_its_route(&cluster, g, "ghost route after etcd resumed");
}
