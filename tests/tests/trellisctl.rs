//! `trellisctl` against a simulated cluster (two nodes with their agents,
//! etcd in the underlay namespace), run as an operator runs it: what it
//! prints, as tables and as JSON, and its exit status.

use serde_json::{json, Value};
use std::time::Duration;
use trellis_tests::cluster::{Cluster, ClusterSpec};
use trellis_tests::ctl::{ctl, ctl_at, ctl_json, ctl_json_any, stderr, stdout};
use trellis_tests::wait::wait_until;

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
    // A prefix of the ID (IDs are short where process IDs are).
    let id_prefix = &b.container_id[..b.container_id.len() - 1];
    let by_id = ctl_json(&cluster, &["ipam", "show", id_prefix]);
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

fn findings_of(report: &Value, kind: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ipam_check_finds_a_leak_and_release_frees_exactly_what_the_report_names() {
    let spec = ClusterSpec {
        // The agents report every second and never reclaim on their own:
        // the operator's check and release are what is tested.
        agent_args: [
            "--ipam-gc-interval",
            "0",
            "--attachment-report-interval",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ClusterSpec::default().nodes(2)
    };
    let cluster = Cluster::start(spec).unwrap();
    let prefix = cluster.key_prefix();
    let kept = cluster.add_pod(0, "kept").unwrap();
    let leaked = cluster.add_pod(0, "leaked").unwrap();
    let other = cluster.add_pod(1, "other").unwrap();

    // A clean cluster passes, once both agents have reported.
    wait_until(Duration::from_secs(15), "a clean check", || {
        let (code, report) = ctl_json_any(&cluster, &["ipam", "check"]);
        Ok(code == 0 && report["unreportedNodes"] == json!([]) && report["unchecked"] == json!([]))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    // A quiet node's report is not written again on every pass.
    let report_key = format!("{prefix}/attachments/{}", cluster.nodes[0].name);
    let report_rev = || -> i64 {
        let out = cluster
            .etcdctl(&["get", &report_key, "-w", "json"])
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["mod_revision"].as_i64().unwrap()
    };
    let before = report_rev();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(report_rev(), before, "the unchanged report was rewritten");
    let table = ctl(&cluster, &["ipam", "check"]);
    assert!(table.status.success());
    assert!(
        stdout(&table).contains("3 allocations checked: 0 findings, 0 newer than their node's last report, 0 fence markers"),
        "{}",
        stdout(&table)
    );

    // Planted: a handle naming an address nobody holds, an allocation of a
    // node that does not exist; then the pod dies without a DEL.
    let stray = format!("{prefix}/ipam/handles/stray/eth0");
    cluster
        .etcdctl(&[
            "put",
            &stray,
            r#"{"ip":"10.244.250.1","node":"n","network":"trellis"}"#,
        ])
        .unwrap();
    let ghost_key = format!("{prefix}/ipam/ips/10.244.251.9");
    cluster
        .etcdctl(&[
            "put",
            &ghost_key,
            r#"{"containerID":"g","ifname":"eth0","node":"ghost","network":"trellis","plugin":"trellis"}"#,
        ])
        .unwrap();
    // An IPv6 address key left without its IPv4 twin and handle (none is
    // ever written alone; an operator's or a failed restore's).
    let lone_key = format!("{prefix}/ipam/ips/fd10:244:0:1::9");
    let lone_owner = format!(
        r#"{{"containerID":"lone","ifname":"eth0","node":"{}","network":"trellis","plugin":"trellis"}}"#,
        cluster.nodes[0].name
    );
    cluster.etcdctl(&["put", &lone_key, &lone_owner]).unwrap();
    let leaked_key = format!("{prefix}/ipam/ips/{}", leaked.ip);
    let leaked_handle = format!("{prefix}/ipam/handles/{}/eth0", leaked.container_id);
    drop(leaked);

    let mut report = Value::Null;
    wait_until(Duration::from_secs(15), "the leak reported", || {
        let (code, r) = ctl_json_any(&cluster, &["ipam", "check", "--leak-after", "2"]);
        report = r;
        Ok(code == 1 && findings_of(&report, "leaked") == [leaked_key.as_str()])
    })
    .unwrap_or_else(|e| panic!("{e}: {report}\n{}", cluster.agent_logs()));
    assert_eq!(
        findings_of(&report, "orphaned-handle"),
        [stray.as_str()],
        "{report}"
    );
    assert_eq!(
        findings_of(&report, "unknown-node"),
        [ghost_key.as_str()],
        "{report}"
    );
    assert_eq!(
        findings_of(&report, "lone-ipv6"),
        [lone_key.as_str()],
        "{report}"
    );
    let table = stdout(&ctl(&cluster, &["ipam", "check", "--leak-after", "2"]));
    assert!(
        table.contains("leaked") && table.contains("no host veth on"),
        "{table}"
    );

    // The stray handle changes after the report: the release leaves it.
    cluster
        .etcdctl(&[
            "put",
            &stray,
            r#"{"ip":"10.244.250.2","node":"n","network":"trellis"}"#,
        ])
        .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), report.to_string()).unwrap();
    let path = file.path().display().to_string();
    let (code, released) = ctl_json_any(&cluster, &["ipam", "release", "--from-report", &path]);
    assert_eq!(code, 1, "one release was skipped: {released}");
    let keys = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| f["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        keys(&released["released"]),
        [leaked_key.as_str(), lone_key.as_str()]
    );
    assert_eq!(keys(&released["skipped"]), [stray.as_str()]);

    // The leaked address and its handle are gone; live pods, the ghost
    // node's address and the changed handle stay.
    let left = cluster.allocations().unwrap();
    assert!(
        !left.iter().any(|ip| leaked_key.ends_with(&ip.to_string())),
        "{left:?}"
    );
    assert!(
        left.contains(&kept.ip) && left.contains(&other.ip),
        "{left:?}"
    );
    assert!(cluster
        .etcd_entries("ipam/handles/")
        .unwrap()
        .iter()
        .all(|(k, _)| *k != leaked_handle));
    assert_eq!(
        cluster.etcd_entries("ipam/ips/10.244.251.9").unwrap().len(),
        1
    );
    assert!(cluster.etcd_entries("ipam/ips/fd10").unwrap().is_empty());
    assert_eq!(
        cluster.etcd_entries("ipam/handles/stray/").unwrap().len(),
        1
    );
    // A second release of the same report frees nothing more.
    let again = ctl(&cluster, &["ipam", "release", "--from-report", &path]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stdout(&again).contains("0 released, 3 skipped"),
        "{}",
        stdout(&again)
    );
    // And the live pods still reach each other.
    trellis_tests::cluster::ping(&kept.netns, other.ip).unwrap();
}

#[test]
fn nodes_show_each_agents_health_and_a_hung_agent_fails_the_listing() {
    let spec = ClusterSpec {
        agent_args: vec!["--metrics-addr".into(), "0.0.0.0:9464".into()],
        ..ClusterSpec::default().nodes(2)
    };
    let cluster = Cluster::start(spec).unwrap();
    let health_of = |nodes: &Value, name: &str| -> Value {
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {nodes}"))["health"]
            .clone()
    };
    let nodes = ctl_json(&cluster, &["nodes"]);
    for node in &cluster.nodes {
        let h = health_of(&nodes, &node.name);
        assert_eq!(h["status"], "ok", "{nodes}");
        assert_eq!(h["addr"], format!("{}:9464", node.underlay_ip), "{nodes}");
    }
    let table = stdout(&ctl(&cluster, &["nodes"]));
    assert!(table.lines().next().unwrap().ends_with("HEALTH"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.ends_with(" ok")).count(),
        2,
        "{table}"
    );

    // One agent hangs: its node is named unreachable, the listing exits 1.
    let frozen = cluster.nodes[1].freeze_agent().unwrap();
    let (code, nodes) = ctl_json_any(&cluster, &["nodes"]);
    assert_eq!(code, 1, "{nodes}");
    assert_eq!(health_of(&nodes, &cluster.nodes[0].name)["status"], "ok");
    let hung = health_of(&nodes, &cluster.nodes[1].name);
    assert_eq!(hung["status"], "unreachable", "{nodes}");
    drop(frozen);
    assert_eq!(
        health_of(&ctl_json(&cluster, &["nodes"]), &cluster.nodes[1].name)["status"],
        "ok"
    );
}

/// `network create|ls|inspect|rm` as an operator runs them against a
/// running cluster: records written as the agents read them, every refusal
/// with its reason, a record written around trellisctl named as ignored,
/// and `rm` refused while addresses are allocated in the network.
#[test]
fn networks_are_created_checked_listed_and_removed() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let default = ctl_json(&cluster, &["config", "get"])["config"].clone();
    let default_net = default["network"].as_str().unwrap().to_string();

    let made = ctl_json(
        &cluster,
        &["network", "create", "multihost", "--subnet", "10.0.0.0/16"],
    );
    assert_eq!(made["network"]["vni"], 2, "{made}");
    let stored: Value =
        serde_json::from_str(&cluster.etcd_entries("networks/multihost").unwrap()[0].1).unwrap();
    assert_eq!(stored["network"], "10.0.0.0/16");
    assert_eq!(stored["subnetLen"], 24);
    assert_eq!(stored["port"], default["port"].as_u64().unwrap_or(8472));
    let table = stdout(&ctl(
        &cluster,
        &[
            "network",
            "create",
            "back",
            "--subnet",
            "10.1.0.0/16",
            "--internal",
            "--subnet-len",
            "26",
        ],
    ));
    assert!(
        table.contains("network back created: 10.1.0.0/16, VNI 3"),
        "{table}"
    );

    // Refused, each with its reason, and nothing written.
    for (args, reason) in [
        (
            vec!["multihost", "--subnet", "10.9.0.0/16"],
            "network multihost exists".to_string(),
        ),
        (
            vec!["onto", "--subnet", "10.244.128.0/17"],
            format!("overlaps {default_net} of the default network"),
        ),
        (
            vec!["inside", "--subnet", "10.0.64.0/18"],
            "10.0.64.0/18 overlaps 10.0.0.0/16 of network multihost".into(),
        ),
        (
            vec!["twin", "--subnet", "10.9.0.0/16", "--vni", "2"],
            "VNI 2 is taken by network multihost".into(),
        ),
        (vec!["Upper", "--subnet", "10.9.0.0/16"], "lowercase".into()),
        (
            vec!["bits", "--subnet", "10.9.0.1/16"],
            "host bits set".into(),
        ),
        (
            vec!["short", "--subnet", "10.9.0.0/16", "--subnet-len", "8"],
            "subnetLen 8 must be longer".into(),
        ),
    ] {
        let mut argv = vec!["network", "create"];
        argv.extend(&args);
        let out = ctl(&cluster, &argv);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(&reason), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(cluster.etcd_entries("networks/").unwrap().len(), 2);

    // ls: the default first, then by age.
    let listed = ctl_json(&cluster, &["network", "ls"]);
    let nets = listed["networks"].as_array().unwrap();
    let names: Vec<&Value> = nets.iter().map(|n| &n["name"]).collect();
    assert_eq!(
        names,
        [&Value::Null, &json!("multihost"), &json!("back")],
        "{listed}"
    );
    assert_eq!(nets[0]["default"], true);
    assert_eq!(nets[0]["config"]["network"], default_net.as_str());
    assert_eq!(nets[2]["internal"], true);
    assert_eq!(nets[2]["config"]["subnetLen"], 26);
    assert_eq!(listed["ignored"], json!([]));
    let table = stdout(&ctl(&cluster, &["network", "ls"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("(default)") && table.contains("back"),
        "{table}"
    );

    // A record written around trellisctl that the agents would ignore:
    // listed as ignored, exit 1.
    let prefix = cluster.key_prefix();
    cluster
        .etcdctl(&[
            "put",
            &format!("{prefix}/networks/clash"),
            r#"{"network":"10.0.5.0/24","subnetLen":26,"vni":9}"#,
        ])
        .unwrap();
    let (code, listed) = ctl_json_any(&cluster, &["network", "ls"]);
    assert_eq!(code, 1);
    assert_eq!(
        listed["ignored"],
        json!(["network clash: 10.0.5.0/24 overlaps 10.0.0.0/16 of network multihost"])
    );
    // Every agent judges the records as trellisctl does, and says so.
    for node in &cluster.nodes {
        wait_until(
            Duration::from_secs(5),
            "the agent sees the networks",
            || {
                let log = node.agent_log();
                Ok(log.contains("network multihost: 10.0.0.0/16, VNI 2")
                && log.contains("network back: 10.1.0.0/16, VNI 3, internal")
                && log.contains(
                    "ignoring network clash: 10.0.5.0/24 overlaps 10.0.0.0/16 of network multihost",
                ))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", node.agent_log()));
    }
    let (code, seen) = ctl_json_any(&cluster, &["network", "inspect", "clash"]);
    assert_eq!(code, 1);
    assert!(
        seen["ignored"].as_str().unwrap().contains("overlaps"),
        "{seen}"
    );
    assert!(ctl(&cluster, &["network", "rm", "clash"]).status.success());

    // Every agent serves it: a subnet of it per node, no address yet.
    wait_until(Duration::from_secs(20), "both nodes in multihost", || {
        let seen = ctl_json(&cluster, &["network", "inspect", "multihost"]);
        assert_eq!(seen["network"]["network"], "10.0.0.0/16");
        assert_eq!(seen["addresses"], 0, "{seen}");
        let mut nodes: Vec<String> = seen["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap().to_string())
            .collect();
        nodes.sort();
        Ok(nodes == [cluster.nodes[0].name.clone(), cluster.nodes[1].name.clone()])
    })
    .unwrap();
    let missing = ctl(&cluster, &["network", "inspect", "nosuch"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(stderr(&missing).contains("no network nosuch"));

    // rm: refused while an address of the network is allocated, naming
    // its node; forced, it goes and the allocation stays for its DEL.
    let node1 = cluster.nodes[0].name.clone();
    let held = format!("{prefix}/ipam/ips/10.0.3.7");
    let owner =
        json!({"containerID": "c-held", "ifname": "eth0", "node": node1, "network": "multihost"});
    cluster
        .etcdctl(&["put", &held, &owner.to_string()])
        .unwrap();
    let refused = ctl(&cluster, &["network", "rm", "multihost"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(&format!("still has 1 attached addresses, on {node1} (1)")),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        ctl_json(&cluster, &["network", "inspect", "multihost"])["addresses"],
        1
    );
    let forced = ctl_json(&cluster, &["network", "rm", "multihost", "--force"]);
    assert_eq!(
        (forced["removed"].clone(), forced["addresses"].clone()),
        (json!(true), json!(1))
    );
    assert!(cluster
        .etcd_entries("networks/multihost")
        .unwrap()
        .is_empty());
    assert_eq!(cluster.etcd_entries("ipam/ips/10.0.3.7").unwrap().len(), 1);
    cluster.etcdctl(&["del", &held]).unwrap();
    assert!(ctl(&cluster, &["network", "rm", "back"]).status.success());
    assert_eq!(
        ctl(&cluster, &["network", "rm", "back"]).status.code(),
        Some(3)
    );
    // Its VNI is free again.
    let again = ctl_json(
        &cluster,
        &["network", "create", "again", "--subnet", "10.0.0.0/16"],
    );
    assert_eq!(again["network"]["vni"], 2);

    // Eight operators at once, each taking the smallest free VNI: the
    // transaction that compares every network record makes them differ.
    let vnis: Vec<u64> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|i| {
                let cluster = &cluster;
                s.spawn(move || {
                    let (name, subnet) = (format!("racer{i}"), format!("10.{}.0.0/16", 20 + i));
                    ctl_json(cluster, &["network", "create", &name, "--subnet", &subnet])["network"]
                        ["vni"]
                        .as_u64()
                        .unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut sorted = vnis.clone();
    sorted.sort();
    assert_eq!(sorted, (3..11).collect::<Vec<u64>>(), "{vnis:?}");
}
