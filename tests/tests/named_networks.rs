//! Named networks served by the agents (issue 14), on three nodes: a
//! network made with `trellisctl network create` appears on every node (its own subnet,
//! VXLAN device, bridge, record file and etcd record), containers whose
//! conflist names it reach each other across nodes and by name (the
//! network's DNS on its gateways), and `network rm --force` takes all of it
//! down again on every node. Nothing passes between two networks; an
//! internal network has no egress.

use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use trellis_common::node::NodeRecord;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec, Node, Pod};
use trellis_tests::ctl::{ctl, ctl_json, stderr};
use trellis_tests::dig::{dig, result_dns, status};
use trellis_tests::wait::wait_until;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The agents' `--metrics-addr`, inside their nodes.
const METRICS: &str = "127.0.0.1:9464";

fn links(node: &Node) -> Vec<String> {
    let out = node.netns.ok(&["ip", "-j", "link", "show"]).unwrap();
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    all.iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Once every node serves `network`, one pod on it per node
/// (`<prefix><node index>`), through the agents' conflists.
fn pods_on(cluster: &Cluster, network: &str, prefix: &str) -> Vec<Pod> {
    wait_until(TIMEOUT, &format!("every node serves {network}"), || {
        Ok(cluster
            .nodes
            .iter()
            .all(|n| n.network_record(network).is_some() && n.network_conflist(network).exists()))
    })
    .unwrap();
    (0..cluster.nodes.len())
        .map(|i| {
            let conflist = cluster.nodes[i].network_conflist(network);
            let name = format!("{prefix}{i}");
            let pod = cluster.try_add_pod_with(i, &name, &conflist).unwrap();
            pod.unwrap_or_else(|f| panic!("ADD {name}: {}", f.failure))
        })
        .collect()
}

/// `to` does not answer `from`: two pings, a second each.
fn blocked(from: &trellis_tests::netns::Netns, to: IpAddr) {
    let to = to.to_string();
    let out = from.exec(&["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", &to]);
    assert!(
        !out.status.success(),
        "{to} answers:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn mtu_in(pod: &Pod) -> String {
    pod.netns
        .ok(&["cat", "/sys/class/net/eth0/mtu"])
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_named_network_appears_on_every_node_carries_traffic_and_goes() {
    let spec = ClusterSpec {
        agent_args: ["--resync-interval", "1", "--metrics-addr", METRICS]
            .map(String::from)
            .to_vec(),
        ..ClusterSpec::default().nodes(3)
    };
    let cluster = Cluster::start(spec).unwrap();
    cluster.wait_converged(TIMEOUT).unwrap();
    let made = ctl_json(
        &cluster,
        &["network", "create", "multihost", "--subnet", "10.0.0.0/16"],
    );
    let vni = made["network"]["vni"].as_u64().unwrap();
    let (vxlan, bridge) = (format!("trellis.{vni}"), format!("trbr.{vni}"));

    wait_until(TIMEOUT, "every node serves multihost", || {
        Ok(cluster.nodes.iter().all(|n| {
            n.network_record("multihost").is_some()
                && links(n).contains(&vxlan)
                && links(n).contains(&bridge)
        }) && cluster.etcd_entries("network-nodes/multihost/")?.len() == cluster.nodes.len())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    let records: Vec<NodeRecord> = cluster
        .nodes
        .iter()
        .map(|n| n.network_record("multihost").unwrap())
        .collect();
    for (node, record) in cluster.nodes.iter().zip(&records) {
        let net: ipnetwork::Ipv4Network = "10.0.0.0/16".parse().unwrap();
        assert!(net.contains(record.subnet.unwrap().network()), "{record:?}");
        assert_eq!(record.bridge.as_deref(), Some(bridge.as_str()));
        assert_ne!(
            record.vtep_mac,
            node.record().unwrap().vtep_mac,
            "each network's VTEP has a MAC of its own"
        );
    }
    let subnets: std::collections::HashSet<_> = records.iter().map(|r| r.subnet).collect();
    assert_eq!(subnets.len(), records.len(), "{records:?}");
    // Each node routes every other's subnet in the network over its VXLAN.
    let pairs: Vec<(usize, usize)> = (0..3)
        .flat_map(|i| (0..3).filter(move |j| *j != i).map(move |j| (i, j)))
        .collect();
    wait_until(TIMEOUT, "routes between the network's subnets", || {
        Ok(pairs.iter().all(|&(i, j)| {
            let other = records[j].subnet.unwrap().to_string();
            let routes = cluster.nodes[i]
                .netns
                .ok(&["ip", "route", "show", &other])
                .unwrap_or_default();
            routes.contains(&format!("dev {vxlan}"))
        }))
    })
    .unwrap();

    // Each network's figures are on /metrics under its name.
    let figure = |name: &str| {
        let labelled = format!("trellis_agent_network_{name}{{network=\"multihost\"}}");
        cluster.nodes[0].agent_counter(METRICS, &labelled)
    };
    wait_until(TIMEOUT, "multihost's figures", || {
        Ok(figure("remote_nodes")? == 2 && figure("subnet_leased")? == 1)
    })
    .unwrap();
    assert_eq!(
        cluster.nodes[0]
            .agent_counter(METRICS, "trellis_agent_networks_served")
            .unwrap(),
        1
    );

    // Containers attached through the conflist each agent wrote for the
    // network (beside the node's own, after it in the runtime's order).
    let conflists: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.network_conflist("multihost"))
        .collect();
    wait_until(TIMEOUT, "the agents write the network's conflists", || {
        Ok(conflists.iter().all(|c| c.exists()))
    })
    .unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&conflists[0]).unwrap()).unwrap();
    assert_eq!(
        (&written["name"], &written["plugins"][0]["network"]),
        (&Value::from("multihost"), &Value::from("multihost"))
    );
    let host1 = cluster
        .try_add_pod_with(0, "host1", &conflists[0])
        .unwrap()
        .unwrap_or_else(|f| panic!("ADD host1: {}", f.failure));
    let host2 = cluster
        .try_add_pod_with(1, "host2", &conflists[1])
        .unwrap()
        .unwrap_or_else(|f| panic!("ADD host2: {}", f.failure));
    assert!(records[0].subnet.unwrap().contains(match host1.ip {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("{other}"),
    }));
    assert_eq!(mtu_in(&host1), "1450");
    ping(&host1.netns, host2.ip).unwrap();
    ping(&host2.netns, host1.ip).unwrap();
    // The third node: its container reaches both others.
    let host3 = cluster
        .try_add_pod_with(2, "host3", &conflists[2])
        .unwrap()
        .unwrap_or_else(|f| panic!("ADD host3: {}", f.failure));
    ping(&host3.netns, host1.ip).unwrap();
    ping(&host3.netns, host2.ip).unwrap();
    cluster.del_pod(host3).unwrap();
    cluster.check_pod(&host1).unwrap();
    let gateway = host1.result["ips"][0]["gateway"].as_str().unwrap();
    assert_eq!(gateway, records[0].gateway().unwrap().to_string());

    // Names across hosts: each container's name answers on the network's
    // DNS (its gateway on each node), bare and in the network's domain;
    // a default-network container's name does not.
    assert_eq!(
        result_dns(&host1),
        (vec![gateway.to_string()], vec!["multihost".to_string()])
    );
    let plain = cluster.add_pod(1, "plain").unwrap();
    let gw = |i: usize| IpAddr::V4(records[i].gateway().unwrap());
    wait_until(TIMEOUT, "host2 resolves from host1", || {
        Ok(dig(&host1.netns, gw(0), "host2", &[])? == vec![host2.ip])
    })
    .unwrap();
    assert_eq!(
        dig(&host1.netns, gw(0), "host2.multihost", &[]).unwrap(),
        vec![host2.ip]
    );
    assert_eq!(
        dig(&host2.netns, gw(1), "host1", &[]).unwrap(),
        vec![host1.ip]
    );
    assert_eq!(
        status(&host1.netns, gw(0), "nosuch.multihost").unwrap(),
        "NXDOMAIN"
    );
    assert!(
        !dig(&host1.netns, gw(0), "plain", &[])
            .unwrap_or_default()
            .contains(&plain.ip),
        "a name of the default network resolves in multihost"
    );
    // Isolation: nothing passes between multihost and the default network,
    // on one node or across nodes, either way; egress leaves masqueraded.
    let plain0 = cluster.add_pod(0, "plain0").unwrap();
    ping(&plain0.netns, plain.ip).unwrap();
    for (from, to) in [
        (&host1, &plain0),
        (&host1, &plain),
        (&plain0, &host1),
        (&plain, &host2),
    ] {
        blocked(&from.netns, to.ip);
    }
    assert_eq!(
        cluster.source_seen_outside(&host1.netns).unwrap(),
        IpAddr::V4(cluster.nodes[0].underlay_ip)
    );
    // A container on both networks (eth0 default, eth1 multihost) reaches
    // either network's containers on the other node, and is reached back.
    let both = cluster
        .add_interface(&plain0, &conflists[0], "eth1")
        .unwrap();
    let eth1 = trellis_tests::cluster::result_ip(&both).unwrap();
    ping(&plain0.netns, plain.ip).unwrap();
    ping(&plain0.netns, host2.ip).unwrap();
    ping(&host2.netns, eth1).unwrap();
    cluster
        .del_interface(&plain0, &conflists[0], "eth1")
        .unwrap();
    blocked(&plain0.netns, host2.ip);

    // The agents read back what they wrote (resyncs change nothing), and
    // put it back when someone flushes the ruleset.
    std::thread::sleep(Duration::from_millis(2500));
    let log = cluster.nodes[0].agent_log();
    assert!(!log.contains("re-installed"), "{log}");
    cluster.nodes[0]
        .netns
        .ok(&["nft", "flush", "ruleset"])
        .unwrap();
    wait_until(TIMEOUT, "the networks' table is back", || {
        Ok(cluster.nodes[0]
            .agent_log()
            .contains("nftables table trellis-networks was missing or changed; re-installed"))
    })
    .unwrap();
    blocked(&host1.netns, plain0.ip);

    // An internal network: its containers reach each other, nothing else.
    ctl_json(
        &cluster,
        &[
            "network",
            "create",
            "quiet",
            "--subnet",
            "10.9.0.0/16",
            "--internal",
        ],
    );
    let q = pods_on(&cluster, "quiet", "q");
    ping(&q[0].netns, q[1].ip).unwrap();
    blocked(
        &q[0].netns,
        std::net::IpAddr::V4(trellis_tests::cluster::OUTSIDE_IP),
    );
    blocked(&q[0].netns, host1.ip);
    blocked(&host2.netns, q[0].ip);
    for pod in q {
        cluster.del_pod(pod).unwrap();
    }
    assert!(ctl(&cluster, &["network", "rm", "quiet"]).status.success());

    // Two named networks: nothing passes between them either, both ways,
    // on one node and across nodes.
    ctl_json(
        &cluster,
        &["network", "create", "back", "--subnet", "10.1.0.0/16"],
    );
    let b = pods_on(&cluster, "back", "b");
    ping(&b[0].netns, b[2].ip).unwrap();
    for (from, to) in [
        (&host1, &b[0]),
        (&host1, &b[1]),
        (&b[1], &host2),
        (&b[0], &host2),
        (&b[2], &host1),
    ] {
        blocked(&from.netns, to.ip);
    }
    for pod in b {
        cluster.del_pod(pod).unwrap();
    }
    assert!(ctl(&cluster, &["network", "rm", "back"]).status.success());

    // A removed container stops resolving within 2 s on every node.
    cluster.del_pod(host2).unwrap();
    wait_until(Duration::from_secs(2), "host2 stops resolving", || {
        Ok(status(&host1.netns, gw(0), "host2.multihost")? == "NXDOMAIN")
    })
    .unwrap();

    // Forced removal takes it down everywhere; ADDs then fail, DELs pass.
    let refused = ctl(&cluster, &["network", "rm", "multihost"]);
    assert!(!refused.status.success(), "{}", stderr(&refused));
    ctl_json(&cluster, &["network", "rm", "multihost", "--force"]);
    wait_until(TIMEOUT, "multihost is gone from every node", || {
        Ok(cluster.nodes.iter().all(|n| {
            n.network_record("multihost").is_none()
                && !n.network_conflist("multihost").exists()
                && !links(n).contains(&vxlan)
                && !links(n).contains(&bridge)
        }) && cluster.etcd_entries("network-nodes/multihost/")?.is_empty()
            && cluster
                .etcd_entries("subnets/")?
                .iter()
                .all(|(k, _)| !k.contains("/10.0.")))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    assert!(
        figure("remote_nodes").is_err(),
        "a gone network's figures go"
    );
    // The user's own conflist naming the network, as a runtime keeps it.
    let kept = cluster.named_conflist(0, "multihost").unwrap();
    let failed = cluster
        .try_add_pod_with(0, "late", &kept)
        .unwrap()
        .expect_err("an ADD on a removed network");
    assert_eq!(failed.failure.code, 11, "{}", failed.failure);
    assert!(
        failed
            .failure
            .msg
            .starts_with("network multihost is not set up on this node"),
        "{}",
        failed.failure
    );
    cluster.del_failed(&failed).unwrap();
    // The agent's conflist went with the network; the runtime DELs with
    // the configuration it kept.
    let host1 = Pod {
        conflist: kept,
        ..host1
    };
    cluster.del_pod(host1).unwrap();
    cluster.del_pod(plain).unwrap();
    cluster.del_pod(plain0).unwrap();
    // The default network was left alone.
    cluster.wait_converged(TIMEOUT).unwrap();
}

/// An agent that was down comes back as desired against actual: the
/// network it still serves keeps its subnet, the one removed meanwhile is
/// taken down on its node too; `cleanup` then removes every network's
/// devices, files and table.
#[test]
fn a_restarted_agent_keeps_its_networks_and_takes_down_one_removed_meanwhile() {
    let mut cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    cluster.wait_converged(TIMEOUT).unwrap();
    let mut vnis = Vec::new();
    for (name, subnet) in [("alpha", "10.0.0.0/16"), ("beta", "10.1.0.0/16")] {
        let made = ctl_json(&cluster, &["network", "create", name, "--subnet", subnet]);
        vnis.push(made["network"]["vni"].as_u64().unwrap());
    }
    wait_until(TIMEOUT, "both networks on both nodes", || {
        Ok(cluster.etcd_entries("network-nodes/")?.len() == 4)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    let alpha = cluster.nodes[0].network_record("alpha").unwrap().subnet;
    let a = pods_on(&cluster, "alpha", "a");
    wait_until(TIMEOUT, "a1 resolves on node 1", || {
        let gw = IpAddr::V4(
            cluster.nodes[0]
                .network_record("alpha")
                .unwrap()
                .gateway()
                .unwrap(),
        );
        Ok(dig(&a[0].netns, gw, "a1.alpha", &[])? == vec![a[1].ip])
    })
    .unwrap();

    cluster.nodes[0].stop_agent(Duration::from_secs(5)).unwrap();
    assert!(ctl(&cluster, &["network", "rm", "beta"]).status.success());
    let beta_bridge = format!("trbr.{}", vnis[1]);
    wait_until(TIMEOUT, "node2 takes beta down", || {
        Ok(!links(&cluster.nodes[1]).contains(&beta_bridge))
    })
    .unwrap();
    assert!(
        links(&cluster.nodes[0]).contains(&beta_bridge),
        "a stopped agent leaves the data path as it is"
    );
    cluster.nodes[0].start_agent().unwrap();
    let started = std::time::Instant::now();
    // Its network's DNS answers again within a second of its start.
    let gw = IpAddr::V4(
        cluster.nodes[0]
            .network_record("alpha")
            .unwrap()
            .gateway()
            .unwrap(),
    );
    wait_until(Duration::from_secs(1), "alpha's DNS answers again", || {
        Ok(dig(&a[0].netns, gw, "a1.alpha", &[])? == vec![a[1].ip])
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.nodes[0].agent_log()));
    eprintln!(
        "alpha's DNS answered {:?} after the agent's start",
        started.elapsed()
    );
    let node0 = &cluster.nodes[0];
    wait_until(TIMEOUT, "node1 takes beta down after its restart", || {
        Ok(!links(node0).contains(&beta_bridge)
            && !links(node0).contains(&format!("trellis.{}", vnis[1]))
            && node0.network_record("beta").is_none()
            && cluster.etcd_entries("network-nodes/beta/")?.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node0.agent_log()));
    assert_eq!(node0.network_record("alpha").unwrap().subnet, alpha);
    assert!(links(node0).contains(&format!("trbr.{}", vnis[0])));

    for pod in a {
        cluster.del_pod(pod).unwrap();
    }
    cluster.nodes[0].stop_agent(Duration::from_secs(5)).unwrap();
    let node0 = &cluster.nodes[0];
    node0.agent_cleanup(&[]).unwrap();
    let left: Vec<String> = links(node0)
        .into_iter()
        .filter(|l| l.starts_with("trbr.") || l.starts_with("trellis"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!node0.state_dir.join("networks").exists());
    let tables = node0.netns.ok(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("trellis-networks"), "{tables}");
}

/// A dual-stack named network on an IPv4 cluster: each container gets an
/// address of each family from its node's subnets in the network, and both
/// families carry traffic and names across nodes.
#[test]
fn a_dual_stack_named_network_carries_both_families_across_nodes() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    cluster.wait_converged(TIMEOUT).unwrap();
    ctl_json(
        &cluster,
        &[
            "network",
            "create",
            "six",
            "--subnet",
            "10.2.0.0/16",
            "--ipv6-subnet",
            "fd20::/56",
        ],
    );
    let pods = pods_on(&cluster, "six", "s");
    let ip6: Vec<IpAddr> = pods
        .iter()
        .map(|p| trellis_tests::cluster::result_ip6(&p.result).expect("an IPv6 address"))
        .collect();
    let net6: ipnetwork::Ipv6Network = "fd20::/56".parse().unwrap();
    for (pod, ip) in pods.iter().zip(&ip6) {
        assert!(
            matches!(ip, IpAddr::V6(v6) if net6.contains(*v6)),
            "{}",
            pod.result
        );
    }
    ping(&pods[0].netns, ip6[1]).unwrap();
    ping(&pods[1].netns, ip6[0]).unwrap();
    ping(&pods[0].netns, pods[1].ip).unwrap();
    let gw = IpAddr::V4(
        cluster.nodes[0]
            .network_record("six")
            .unwrap()
            .gateway()
            .unwrap(),
    );
    wait_until(TIMEOUT, "s1 answers AAAA", || {
        Ok(dig(&pods[0].netns, gw, "s1.six", &["AAAA"])? == vec![ip6[1]])
    })
    .unwrap();
    for pod in pods {
        cluster.del_pod(pod).unwrap();
    }
}

/// An IPv6-only named network (`--subnet` an IPv6 network) on an IPv4
/// cluster: each container gets one IPv6 address, reaches the others over
/// IPv6 and finds them by name from the IPv6 gateway.
#[test]
fn an_ipv6_only_named_network_carries_ipv6_and_names_across_nodes() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    cluster.wait_converged(TIMEOUT).unwrap();
    let refused = trellis_tests::ctl::ctl(
        &cluster,
        &[
            "network",
            "create",
            "bad6",
            "--subnet",
            "fd30::/56",
            "--ipv6-subnet",
            "fd31::/56",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        trellis_tests::ctl::stderr(&refused).contains("the network is IPv6-only"),
        "{refused:?}"
    );
    ctl_json(
        &cluster,
        &["network", "create", "six6", "--subnet", "fd30::/56"],
    );
    let pods = pods_on(&cluster, "six6", "o");
    let net6: ipnetwork::Ipv6Network = "fd30::/56".parse().unwrap();
    for pod in &pods {
        let ips = pod.result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "{}", pod.result);
        assert!(
            matches!(pod.ip, IpAddr::V6(v6) if net6.contains(v6)),
            "{}",
            pod.result
        );
    }
    let record = cluster.nodes[0].network_record("six6").unwrap();
    assert_eq!(record.subnet, None, "{record:?}");
    ping(&pods[0].netns, pods[1].ip).unwrap();
    ping(&pods[1].netns, pods[0].ip).unwrap();
    let gw6 = IpAddr::V6(record.gateway6().unwrap());
    wait_until(TIMEOUT, "o1 answers AAAA", || {
        Ok(dig(&pods[0].netns, gw6, "o1.six6", &["AAAA"])? == vec![pods[1].ip])
    })
    .unwrap();
    for pod in pods {
        cluster.del_pod(pod).unwrap();
    }
    let out = trellis_tests::ctl::ctl(&cluster, &["network", "rm", "six6"]);
    assert!(out.status.success(), "{out:?}");
}
