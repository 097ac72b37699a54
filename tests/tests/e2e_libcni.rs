//! End to end through the real libcni (the Go driver): a simulated cluster
//! of three nodes with their agents and etcd, pods attached on every node.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::thread;

use trellis_tests::cluster::{ping, Cluster, ClusterSpec, Pod, OUTSIDE_GATEWAY};

/// Every pod reaches every other pod, on its node and across nodes.
fn assert_full_mesh(cluster: &Cluster, pods: &[Pod]) {
    for from in pods {
        for to in pods {
            if from.ip != to.ip {
                ping(&from.netns, to.ip).unwrap_or_else(|e| {
                    panic!(
                        "{} ({}) -> {} ({}): {e:#}\n{}",
                        from.name,
                        cluster.nodes[from.node].name,
                        to.name,
                        cluster.nodes[to.node].name,
                        cluster.agent_logs()
                    )
                });
            }
        }
    }
}

fn assert_nothing_left(cluster: &Cluster) {
    assert_eq!(
        cluster.allocations().unwrap(),
        Vec::<IpAddr>::new(),
        "allocations left in etcd"
    );
    for node in &cluster.nodes {
        assert_eq!(
            node.host_veths().unwrap(),
            Vec::<String>::new(),
            "host veths left on {}",
            node.name
        );
    }
}

#[test]
fn pods_on_every_node_reach_each_other_their_node_and_back() {
    let cluster = Cluster::start_default().unwrap();
    let subnets: Vec<_> = cluster.nodes.iter().map(|n| n.subnet().unwrap()).collect();
    assert_eq!(
        subnets.iter().collect::<HashSet<_>>().len(),
        3,
        "distinct node subnets: {subnets:?}"
    );
    let network = cluster.spec().config.network.unwrap();
    let mut pods = Vec::new();
    for (node, subnet) in subnets.iter().enumerate() {
        for i in 0..2 {
            let pod = cluster.add_pod(node, &format!("mesh-{node}-{i}")).unwrap();
            let IpAddr::V4(ip) = pod.ip else {
                panic!("IPv4 expected: {}", pod.ip)
            };
            assert!(subnet.contains(ip), "{ip} outside {subnet}");
            assert!(network.contains(ip));
            pods.push(pod);
        }
    }
    assert_eq!(cluster.allocations().unwrap().len(), 6);
    for pod in &pods {
        cluster.check_pod(pod).unwrap();
    }
    assert_full_mesh(&cluster, &pods);

    // Pod to its node (its gateway on the bridge and the node's underlay
    // address), and the node to its pod.
    for pod in &pods {
        let node = &cluster.nodes[pod.node];
        let gateway = node.record().unwrap().gateway().unwrap();
        ping(&pod.netns, IpAddr::V4(gateway)).unwrap();
        ping(&pod.netns, IpAddr::V4(node.underlay_ip)).unwrap();
        ping(&node.netns, pod.ip).unwrap();
    }
    // A node reaches pods on other nodes through the overlay.
    ping(&cluster.nodes[0].netns, pods[5].ip).unwrap();

    for pod in pods {
        cluster.del_pod(pod).unwrap();
    }
    assert_nothing_left(&cluster);
}

#[test]
fn egress_is_masqueraded_behind_the_node() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    for node in 0..2 {
        let pod = cluster.add_pod(node, &format!("egress-{node}")).unwrap();
        let seen = cluster.source_seen_outside(&pod.netns).unwrap();
        assert_eq!(
            seen,
            IpAddr::V4(cluster.nodes[node].underlay_ip),
            "the outside host must see the node's underlay address"
        );
        // Inside the cluster network, pod addresses are kept: the other
        // node's pod is reached from this pod's own address.
        cluster.del_pod(pod).unwrap();
    }
    assert_nothing_left(&cluster);
}

#[test]
fn without_ip_masq_the_outside_sees_the_pod() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2).ip_masq(false)).unwrap();
    // Give the outside world routes to the pod subnets (as an operator's
    // routers would) so that replies can come back unmasqueraded.
    let network = cluster.spec().config.network.unwrap().to_string();
    cluster
        .outside()
        .ok(&[
            "ip",
            "route",
            "add",
            &network,
            "via",
            &OUTSIDE_GATEWAY.to_string(),
        ])
        .unwrap();
    for node in &cluster.nodes {
        let subnet = node.subnet().unwrap().to_string();
        cluster
            .underlay()
            .ok(&[
                "ip",
                "route",
                "add",
                &subnet,
                "via",
                &node.underlay_ip.to_string(),
            ])
            .unwrap();
    }
    let pod = cluster.add_pod(1, "nomasq").unwrap();
    let seen = cluster.source_seen_outside(&pod.netns).unwrap();
    assert_eq!(seen, pod.ip, "ipMasq false: the pod's own address");
    cluster.del_pod(pod).unwrap();
    assert_nothing_left(&cluster);
}

#[test]
fn a_hundred_pods_per_node_on_three_nodes_at_once() {
    const PER_NODE: usize = 100;
    const WORKERS_PER_NODE: usize = 4;
    let cluster = Cluster::start_default().unwrap();
    let pods: Mutex<Vec<Pod>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for node in 0..3 {
            for worker in 0..WORKERS_PER_NODE {
                let (cluster, pods) = (&cluster, &pods);
                s.spawn(move || {
                    for i in (worker..PER_NODE).step_by(WORKERS_PER_NODE) {
                        let pod = cluster
                            .add_pod(node, &format!("burst-{node}-{i}"))
                            .unwrap_or_else(|e| panic!("{e:#}"));
                        pods.lock().unwrap().push(pod);
                    }
                });
            }
        }
    });
    let pods = pods.into_inner().unwrap();
    assert_eq!(pods.len(), 3 * PER_NODE);
    let ips: HashSet<IpAddr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), pods.len(), "every pod has its own address");
    let subnets: Vec<_> = cluster.nodes.iter().map(|n| n.subnet().unwrap()).collect();
    for pod in &pods {
        let IpAddr::V4(ip) = pod.ip else { panic!() };
        assert!(
            subnets[pod.node].contains(ip),
            "{ip} not in its node's subnet"
        );
    }
    let allocated: HashSet<IpAddr> = cluster.allocations().unwrap().into_iter().collect();
    assert_eq!(allocated, ips, "etcd holds exactly the pods' addresses");
    for node in &cluster.nodes {
        assert_eq!(node.host_veths().unwrap().len(), PER_NODE);
    }
    // A sample across nodes: the first pod of each node reaches the last
    // pod of every node.
    for node in 0..3 {
        let from = pods.iter().find(|p| p.node == node).unwrap();
        for to in 0..3 {
            let target = pods.iter().rev().find(|p| p.node == to).unwrap();
            ping(&from.netns, target.ip).unwrap();
        }
    }

    let queue = Mutex::new(pods);
    thread::scope(|s| {
        for _ in 0..6 {
            let (cluster, queue) = (&cluster, &queue);
            s.spawn(move || loop {
                let Some(pod) = queue.lock().unwrap().pop() else {
                    break;
                };
                let name = pod.name.clone();
                cluster
                    .del_pod(pod)
                    .unwrap_or_else(|e| panic!("DEL {name}: {e}"));
            });
        }
    });
    assert_nothing_left(&cluster);
}

#[test]
fn del_is_idempotent_and_survives_a_vanished_pod() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(1)).unwrap();
    let node = &cluster.nodes[0];
    let pod = cluster.add_pod(0, "vanish").unwrap();
    let att = pod.attachment();
    // The runtime lost the container: its namespace is gone before DEL.
    drop(pod);
    node.driver.del(&node.conflist, &att).unwrap();
    node.driver.del(&node.conflist, &att).unwrap();
    assert_nothing_left(&cluster);
}
