//! The conflist of the shipped ConfigMap is one the plugins accept: on a
//! simulated two-node cluster (namespaces, real etcd, real agents) the
//! DaemonSet's install-cni container is replayed inside each node, replacing
//! the harness's conflist with the installed one, and pods attached through
//! the real libcni with it reach each other across the nodes, then detach
//! leaving no allocation behind.

mod manifests_common;

use manifests_common::{describe, install_cni_command, report_lines, run, Host, Replay, Shipped};
use trellis_tests::bins::bin;
use trellis_tests::cluster::{ping, Cluster, ClusterSpec};

#[test]
fn pods_attached_with_the_shipped_conflist_reach_each_other_across_nodes() {
    let shipped = Shipped::load();
    let template = shipped.conflist();
    let spec = ClusterSpec {
        config: shipped.cluster_config(),
        etcd_prefix: shipped.data("etcd_prefix").to_owned(),
        cni_version: template["cniVersion"].as_str().unwrap().to_owned(),
        ..ClusterSpec::default().nodes(2)
    };
    let cluster = Cluster::start(spec).unwrap();

    let hosts: Vec<Host> = cluster.nodes.iter().map(|_| Host::new()).collect();
    for (node, host) in cluster.nodes.iter().zip(&hosts) {
        let replay = Replay {
            cni_conf_dir: node.conf_dir.clone(),
            state_dir: node.state_dir.clone(),
            ..Replay::on(host, cluster.etcd_endpoint())
        };
        assert_eq!(
            node.conflist,
            node.conf_dir.join("10-trellis.conflist"),
            "the installer replaces the node's conflist"
        );
        let cmd = install_cni_command(
            &shipped,
            &replay,
            node.netns.command(&[bin("trellis-agent")]),
        );
        let out = run(cmd);
        assert!(out.status.success(), "{}: {}", node.name, describe(&out));
        let report = report_lines(&out);
        // The harness wrote the ConfigMap's cluster config before the agents
        // started: the installer finds the same one.
        let key = format!("etcd {}/config", shipped.data("etcd_prefix"));
        assert!(
            report.contains(&("unchanged".to_owned(), key)),
            "{}",
            describe(&out)
        );
        assert!(
            report.contains(&("updated".to_owned(), node.conflist.display().to_string())),
            "{}",
            describe(&out)
        );
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&node.conflist).unwrap()).unwrap();
        assert_eq!(written["name"], template["name"]);
        assert_eq!(
            written["plugins"][0]["ipam"]["etcdEndpoints"][0],
            cluster.etcd_endpoint().as_str()
        );
    }

    let a = cluster.add_pod(0, "mfa").unwrap();
    let b = cluster.add_pod(1, "mfb").unwrap();
    let network = shipped.cluster_config().network.unwrap();
    for pod in [&a, &b] {
        match pod.ip {
            std::net::IpAddr::V4(ip) => assert!(network.contains(ip), "{ip} not in {network}"),
            other => panic!("unexpected address {other}"),
        }
    }
    assert_ne!(
        cluster.nodes[0].subnet().unwrap(),
        cluster.nodes[1].subnet().unwrap()
    );
    ping(&a.netns, b.ip).unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    ping(&b.netns, a.ip).unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));

    cluster.del_pod(a).unwrap();
    cluster.del_pod(b).unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}
