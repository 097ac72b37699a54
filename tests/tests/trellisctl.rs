//! `trellisctl` against a simulated cluster (two nodes with their agents,
//! etcd in the underlay namespace), run as an operator runs it: what it
//! prints, as tables and as JSON, and its exit status.

use serde_json::{json, Value};
use std::process::Output;
use trellis_tests::bins;
use trellis_tests::cluster::{Cluster, ClusterSpec};

/// `trellisctl <args>` from the underlay namespace, against the cluster's
/// etcd; its output.
fn ctl(cluster: &Cluster, args: &[&str]) -> Output {
    ctl_at(cluster, &cluster.etcd_endpoints().join(","), args)
}

fn ctl_at(cluster: &Cluster, endpoints: &str, args: &[&str]) -> Output {
    let bin = bins::bin("trellisctl").display().to_string();
    let mut argv = vec![bin.as_str(), "--etcd-endpoints", endpoints];
    argv.extend_from_slice(args);
    cluster.underlay().command(&argv).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON `trellisctl -o json <args>` prints, after checking it exited 0.
fn ctl_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = ctl(cluster, &all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
}

#[test]
fn an_operator_reads_nodes_allocations_and_the_config() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();

    // nodes: every record, as the agents published them, with their leases.
    let nodes = ctl_json(&cluster, &["nodes"]);
    let listed = nodes["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{nodes}");
    for node in &cluster.nodes {
        let record: Value = serde_json::from_str(
            &cluster
                .etcd_entries(&format!("nodes/{}", node.name))
                .unwrap()[0]
                .1,
        )
        .unwrap();
        let item = listed
            .iter()
            .find(|n| n["name"] == node.name.as_str())
            .unwrap_or_else(|| panic!("{} not in {nodes}", node.name));
        assert_eq!(item["record"]["subnet"], record["subnet"]);
        assert_eq!(item["record"]["publicIP"], record["publicIP"]);
        let left = item["leaseSecondsLeft"].as_i64().unwrap();
        assert!(left > 0, "{item}");
    }
    let table = stdout(&ctl(&cluster, &["nodes"]));
    assert!(table.starts_with("NAME"), "{table}");
    for node in &cluster.nodes {
        assert!(table.contains(&node.name), "{table}");
    }

    // ipam ls / show: the pods' addresses and their handles.
    let a = cluster.add_pod(0, "ctl-a").unwrap();
    let b = cluster.add_pod(1, "ctl-b").unwrap();
    let all = ctl_json(&cluster, &["ipam", "ls"]);
    let ips: Vec<&str> = all["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    let (ia, ib) = (a.ip.to_string(), b.ip.to_string());
    let mut want = vec![ia.as_str(), ib.as_str()];
    want.sort_by_key(|ip| ip.parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(ips, want, "{all}");
    let node1 = cluster.nodes[0].name.as_str();
    let only = ctl_json(&cluster, &["ipam", "ls", "--node", node1]);
    assert_eq!(only["allocations"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["allocations"][0]["ip"], ia.as_str());
    assert_eq!(
        only["allocations"][0]["owner"]["containerID"],
        a.container_id.as_str()
    );

    let by_ip = ctl_json(&cluster, &["ipam", "show", &ia]);
    let shown = &by_ip["allocations"][0];
    assert_eq!(shown["owner"]["node"], node1);
    assert_eq!(shown["handle"]["value"]["ip"], ia.as_str(), "{by_ip}");
    let by_id = ctl_json(&cluster, &["ipam", "show", &b.container_id[..12]]);
    assert_eq!(by_id["allocations"][0]["ip"], ib.as_str(), "{by_id}");
    let table = stdout(&ctl(&cluster, &["ipam", "show", &ia]));
    assert!(
        table.contains(&a.container_id) && table.contains("handle:"),
        "{table}"
    );

    let missing = ctl(&cluster, &["ipam", "show", "10.244.250.250"]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no allocation of 10.244.250.250"));
    cluster.del_pod(a).unwrap();
    cluster.del_pod(b).unwrap();
    assert_eq!(
        ctl_json(&cluster, &["ipam", "ls"])["allocations"],
        json!([])
    );

    // config get / set: checked as the agents check it, written only if
    // unchanged, refused when leased subnets would not fit.
    let got = ctl_json(&cluster, &["config", "get"]);
    let config = got["config"].clone();
    assert!(config["network"].is_string(), "{got}");

    let bad = ctl(
        &cluster,
        &["config", "set", r#"{"network":"10.244.1.0/16"}"#],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("refused, as the agents would refuse it"),
        "{}",
        stderr(&bad)
    );

    let elsewhere = json!({"network": "10.99.0.0/16", "subnetLen": 24}).to_string();
    let refused = ctl(&cluster, &["config", "set", &elsewhere]);
    assert_eq!(refused.status.code(), Some(1));
    for node in &cluster.nodes {
        assert!(
            stderr(&refused).contains(&node.name),
            "{}",
            stderr(&refused)
        );
    }
    assert_eq!(ctl_json(&cluster, &["config", "get"])["config"], config);

    let same = config.to_string();
    let written = ctl(&cluster, &["config", "set", &same]);
    assert!(written.status.success(), "{}", stderr(&written));
    let after = ctl_json(&cluster, &["config", "get"]);
    assert_eq!(after["config"], config);
    assert!(after["modRevision"].as_i64() > got["modRevision"].as_i64());

    // An etcd nobody answers on: an error naming it, status 1.
    let gone = ctl_at(&cluster, "http://192.0.2.254:2999", &["nodes"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("192.0.2.254:2999"),
        "{}",
        stderr(&gone)
    );
}
