//! Root tests of a node that dies without cleanup (its agent SIGKILLed and
//! not restarted, its pods left as they were) and of a node that comes
//! back after its subnet was given to another node. The cluster network
//! has room for exactly the subnets each test needs (the others are held
//! by hand-written keys of a `ghost` node), so the subnet a new node gets
//! is never left to chance.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use serde_json::Value;
use trellis_common::cluster_config::ClusterConfig;
use trellis_tests::cluster::{Cluster, ClusterSpec, Node};
use trellis_tests::wait::{wait_for, wait_until};

const TTL: &str = "5";

/// Three nodes whose agents the test starts, in 10.244.0.0/22 (four /24s).
fn spec(grace: &str) -> ClusterSpec {
    let mut spec = ClusterSpec {
        config: ClusterConfig {
            network: Some("10.244.0.0/22".parse().unwrap()),
            subnet_len: 24,
            vni: 1,
            port: 8472,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            direct_routing: false,
            mtu: None,
        },
        agent_args: [
            "--lease-ttl",
            TTL,
            "--subnet-grace",
            grace,
            "--dead-node-interval",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ClusterSpec::default()
    }
    .agents(false);
    spec.chain.clear();
    spec
}

fn subnet_key(subnet: &str) -> String {
    let net: Ipv4Network = subnet.parse().unwrap();
    format!("{}-{}", net.network(), net.prefix())
}

/// Puts a subnet key (bound to no lease: it never expires) naming `ghost`.
fn hold_by_ghost(cluster: &Cluster, subnet: &str) {
    cluster
        .etcdctl(&[
            "put",
            &format!("{}/subnets/{}", cluster.key_prefix(), subnet_key(subnet)),
            r#"{"node":"ghost"}"#,
        ])
        .unwrap();
}

/// Who holds each subnet key / grace key, by subnet key suffix.
fn holders(cluster: &Cluster, sub: &str) -> Vec<(String, String)> {
    cluster
        .etcd_entries(sub)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let owner: Value = serde_json::from_str(&v).unwrap_or_default();
            (
                k.rsplit('/').next().unwrap_or_default().to_owned(),
                owner["node"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn holder_of(cluster: &Cluster, sub: &str, subnet: &Ipv4Network) -> Option<String> {
    let key = subnet_key(&subnet.to_string());
    holders(cluster, sub)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, n)| n)
}

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

/// Starts the agent of node `i` and waits for its record.
fn start_and_wait(cluster: &mut Cluster, i: usize) -> Ipv4Network {
    cluster.nodes[i].start_agent().unwrap();
    let name = cluster.nodes[i].name.clone();
    wait_until(
        Duration::from_secs(30),
        &format!("{name} published"),
        || Ok(!cluster.etcd_entries(&format!("nodes/{name}"))?.is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    cluster.nodes[i].subnet().unwrap()
}

/// The allocations in etcd held by pods of `node`.
fn allocations_of(cluster: &Cluster, node: &str) -> Vec<String> {
    cluster
        .etcd_entries("ipam/ips/")
        .unwrap()
        .into_iter()
        .filter(|(_, v)| {
            serde_json::from_str::<Value>(v).is_ok_and(|o| o["node"].as_str() == Some(node))
        })
        .map(|(k, _)| k)
        .collect()
}

/// node1 and node2 up with the ghost holding the other two subnets; node2
/// has two pods; then node2's agent is SIGKILLed and its record waited
/// out. node2's subnet is then the only one not held by a live key.
fn kill_node2(cluster: &mut Cluster) -> Ipv4Network {
    hold_by_ghost(cluster, "10.244.2.0/24");
    hold_by_ghost(cluster, "10.244.3.0/24");
    let s1 = start_and_wait(cluster, 0);
    let s2 = start_and_wait(cluster, 1);
    assert_ne!(s1, s2);
    wait_until(Duration::from_secs(20), "node1 routes to node2", || {
        Ok(routes_on_vxlan(&cluster.nodes[0])?.contains(&s2.to_string()))
    })
    .unwrap();
    cluster.nodes[1].kill_agent().unwrap();
    wait_until(Duration::from_secs(30), "node2's record expired", || {
        Ok(cluster.etcd_entries("nodes/node2")?.is_empty())
    })
    .unwrap();
    s2
}

#[test]
fn a_dead_nodes_subnet_waits_out_the_grace_and_its_addresses_are_reclaimed() {
    let mut cluster = Cluster::start(spec("15")).unwrap();
    hold_by_ghost(&cluster, "10.244.2.0/24");
    hold_by_ghost(&cluster, "10.244.3.0/24");
    let s1 = start_and_wait(&mut cluster, 0);
    let s2 = start_and_wait(&mut cluster, 1);
    wait_until(Duration::from_secs(20), "node1 routes to node2", || {
        Ok(routes_on_vxlan(&cluster.nodes[0])?.contains(&s2.to_string()))
    })
    .unwrap();
    let pods: Vec<_> = (0..2)
        .map(|i| cluster.add_pod(1, &format!("dead{i}")).unwrap())
        .collect();
    assert_eq!(allocations_of(&cluster, "node2").len(), 2);
    let alive_pod = cluster.add_pod(0, "alive").unwrap();

    cluster.nodes[1].kill_agent().unwrap();
    wait_until(Duration::from_secs(30), "node2's record expired", || {
        Ok(cluster.etcd_entries("nodes/node2")?.is_empty())
    })
    .unwrap();
    // node1 drops node2's entries.
    wait_until(Duration::from_secs(20), "node1 drops node2's route", || {
        Ok(!routes_on_vxlan(&cluster.nodes[0])?.contains(&s2.to_string()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    let neigh = cluster.nodes[0]
        .netns
        .ok(&["bridge", "fdb", "show", "dev", "trellis.1"])
        .unwrap();
    assert!(
        !neigh.contains(&cluster.nodes[1].underlay_ip.to_string()),
        "node1 still forwards to node2: {neigh}"
    );

    // node3 comes up while node2's subnet is in its grace: the only
    // subnet without a live subnet key is node2's, and node3 must wait.
    assert_eq!(holder_of(&cluster, "subnets/", &s2), None);
    assert_eq!(
        holder_of(&cluster, "subnet-grace/", &s2).as_deref(),
        Some("node2"),
        "node2's grace key should outlive its subnet key"
    );
    cluster.nodes[2].start_agent().unwrap();
    let mut waited_in_grace = 0;
    let s3 = wait_for(Duration::from_secs(60), "node3 leases a subnet", || {
        // Subnet keys first: a grace key, once gone, never comes back.
        let subnet_holder = holder_of(&cluster, "subnets/", &s2);
        let grace_holder = holder_of(&cluster, "subnet-grace/", &s2);
        let allocations = allocations_of(&cluster, "node2");
        if grace_holder.as_deref() == Some("node2") {
            assert_eq!(
                subnet_holder, None,
                "{s2} was leased again during node2's grace"
            );
            assert_eq!(
                allocations.len(),
                2,
                "node2's addresses were reclaimed during its grace"
            );
            waited_in_grace += 1;
        }
        // The subnet key is taken before the node is set up: node.json,
        // written by the set-up, may lag it for a moment.
        if subnet_holder.as_deref() != Some("node3") {
            return Ok(None);
        }
        Ok(cluster.nodes[2].subnet().ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    assert!(waited_in_grace > 0);
    assert_eq!(s3, s2, "node3 gets the dead node's subnet after the grace");
    // node2's pod addresses were given back (by the agents, once node2's
    // record, subnet and grace keys were gone).
    wait_until(
        Duration::from_secs(20),
        "node2's addresses reclaimed",
        || Ok(allocations_of(&cluster, "node2").is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    // node1's pod keeps its address; node1 routes to node3.
    let node1_allocs = allocations_of(&cluster, "node1");
    assert_eq!(node1_allocs.len(), 1, "{node1_allocs:?}");
    assert!(node1_allocs[0].ends_with(&alive_pod.ip.to_string()));
    wait_until(Duration::from_secs(20), "node1 routes to node3", || {
        Ok(routes_on_vxlan(&cluster.nodes[0])?.contains(&s3.to_string()))
    })
    .unwrap();
    let p3 = cluster.add_pod(2, "new").unwrap();
    let IpAddr::V4(ip3) = p3.ip else { panic!() };
    assert!(s3.contains(ip3));
    assert!(!s1.contains(ip3));
    assert!(cluster.agent_logs().contains("pod addresses of dead nodes"));
    for pod in pods {
        cluster.del_pod(pod).unwrap();
    }
    cluster.del_pod(p3).unwrap();
    cluster.del_pod(alive_pod).unwrap();
    assert_eq!(cluster.allocations().unwrap(), Vec::<IpAddr>::new());
}

#[test]
fn a_node_back_after_its_subnet_went_elsewhere_takes_a_new_one() {
    let mut cluster = Cluster::start(spec("3")).unwrap();
    let s2 = kill_node2(&mut cluster);
    // After the grace, node3 gets node2's subnet (the only one free).
    let s3 = start_and_wait(&mut cluster, 2);
    assert_eq!(s3, s2);
    let node3_key = cluster
        .etcdctl(&[
            "get",
            &format!(
                "{}/subnets/{}",
                cluster.key_prefix(),
                subnet_key(&s3.to_string())
            ),
            "-w",
            "json",
        ])
        .unwrap();
    let node3_rev =
        serde_json::from_str::<Value>(&node3_key).unwrap()["kvs"][0]["mod_revision"].clone();
    // A subnet becomes free; node2 comes back (its node.json still names
    // its old subnet) and takes that one.
    cluster
        .etcdctl(&[
            "del",
            &format!(
                "{}/subnets/{}",
                cluster.key_prefix(),
                subnet_key("10.244.3.0/24")
            ),
        ])
        .unwrap();
    cluster.nodes[1].start_agent().unwrap();
    let back = wait_for(Duration::from_secs(30), "node2 back", || {
        let entries = cluster.etcd_entries("nodes/node2")?;
        Ok((!entries.is_empty()).then_some(()))
    })
    .and_then(|()| cluster.nodes[1].subnet())
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    assert_eq!(back.to_string(), "10.244.3.0/24");
    cluster
        .wait_converged(Duration::from_secs(30))
        .context("node1, node2 and node3 route to each other")
        .unwrap();
    // node3 keeps its subnet key untouched; every agent still runs.
    let again = cluster
        .etcdctl(&[
            "get",
            &format!(
                "{}/subnets/{}",
                cluster.key_prefix(),
                subnet_key(&s3.to_string())
            ),
            "-w",
            "json",
        ])
        .unwrap();
    let v: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["kvs"][0]["mod_revision"], node3_rev);
    for node in cluster.nodes.iter_mut() {
        assert!(node.agent_running(), "{}:\n{}", node.name, node.agent_log());
    }
    assert_eq!(cluster.nodes[2].subnet().unwrap(), s3);
}
