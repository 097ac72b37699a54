//! `trellisctl doctor` against a simulated cluster of three nodes with
//! their agents: a clean cluster passes, and each planted fault is named
//! with the pair of nodes, the port and the remedy (an nftables drop of the
//! VXLAN port into one node, as a host firewall does; a lower MTU on one
//! node's underlay link, over IPv4 and over IPv6; a router that carries
//! the tunnel to one node only in fragments; an agent that cannot be
//! asked).

use serde_json::Value;
use trellis_tests::cluster::{Cluster, ClusterSpec};
use trellis_tests::ctl::{ctl, ctl_json, ctl_json_any, findings, of_kind, stdout};
use trellis_tests::netns::Netns;

fn cluster() -> Cluster {
    Cluster::start(ClusterSpec {
        agent_args: vec!["--metrics-addr".into(), "0.0.0.0:9464".into()],
        ..ClusterSpec::default().nodes(3)
    })
    .unwrap()
}

/// A firewall on `node`: table `table`, dropping what `rule` matches on
/// its way in.
fn drop_into(node: &trellis_tests::cluster::Node, table: &str, rule: &str) {
    for command in [
        format!("add table inet {table}"),
        format!("add chain inet {table} in {{ type filter hook input priority -10 ; }}"),
        format!("add rule inet {table} in {rule} drop"),
    ] {
        let mut argv = vec!["nft"];
        argv.extend(command.split(' '));
        node.netns.ok(&argv).unwrap();
    }
}

/// The (from, to) pairs of findings.
fn pairs(findings: &[(String, String, String)]) -> Vec<(&str, &str)> {
    findings
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect()
}

/// Every pair into and out of node `i`, sorted.
fn into_and_out_of<'a>(names: &[&'a str], i: usize) -> Vec<(&'a str, &'a str)> {
    let mut all: Vec<(&str, &str)> = (0..names.len())
        .filter(|j| *j != i)
        .flat_map(|j| [(names[j], names[i]), (names[i], names[j])])
        .collect();
    all.sort();
    all
}

/// `report` (exit 1) names `kind` for exactly the pairs into and out of
/// node `i`, each with a remedy starting with `remedy`, the matrix cell
/// from the first node to node `i` is `cell`, and the first two nodes'
/// pair is `ok`.
fn named_on(
    code: i32,
    report: &Value,
    names: &[&str],
    i: usize,
    kind: &str,
    remedy: &str,
    cell: &str,
) {
    assert_eq!(code, 1, "{report}");
    let found = of_kind(report, kind);
    assert_eq!(pairs(&found), into_and_out_of(names, i), "{report}");
    for (_, _, r) in &found {
        assert!(r.starts_with(remedy), "{r}");
    }
    assert_eq!(report["matrix"][names[0]][names[i]], cell, "{report}");
    assert_eq!(report["matrix"][names[0]][names[1]], "ok", "{report}");
}

fn set_mtu(netns: &Netns, dev: &str, mtu: &str) {
    netns
        .ok(&["ip", "link", "set", "dev", dev, "mtu", mtu])
        .unwrap();
}

/// `trellisctl doctor` while node `i`'s underlay link carries 1400 bytes
/// (1500 again after).
fn doctor_with_a_low_link(cluster: &Cluster, i: usize) -> (i32, Value) {
    set_mtu(&cluster.nodes[i].netns, "eth0", "1400");
    let found = ctl_json_any(cluster, &["doctor"]);
    set_mtu(&cluster.nodes[i].netns, "eth0", "1500");
    found
}

/// `report` (exit 1) names `path-mtu` for some pairs, each with `node`,
/// and the remedy asks its path for 1500 bytes.
fn path_mtu_on(code: i32, report: &Value, node: &str) {
    assert_eq!(code, 1, "{report}");
    let mtu = of_kind(report, "path-mtu");
    assert!(!mtu.is_empty(), "{report}");
    for (from, to, remedy) in &mtu {
        assert!(from == node || to == node, "{from} -> {to}: {report}");
        assert!(
            remedy.contains(&format!("path of {node} carries less than 1500 bytes")),
            "{remedy}"
        );
    }
}

#[test]
fn a_clean_cluster_passes_and_a_firewalled_vxlan_port_is_named() {
    let cluster = cluster();
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();

    let clean = ctl_json(&cluster, &["doctor"]);
    assert_eq!(clean["findings"], serde_json::json!([]), "{clean}");
    for from in &names {
        for to in names.iter().filter(|t| *t != from) {
            assert_eq!(clean["matrix"][from][to], "ok", "{from} -> {to}: {clean}");
        }
    }
    let table = ctl(&cluster, &["doctor"]);
    assert!(table.status.success());
    assert!(stdout(&table).contains("no findings"), "{}", stdout(&table));

    // The seed's firewall: UDP 8472 dropped on the way into the third node.
    let c = &cluster.nodes[2];
    drop_into(c, "doctor-test", "udp dport 8472");
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    let remedy = format!("allow UDP 8472 on {} ", names[2]);
    named_on(
        code,
        &report,
        &names,
        2,
        "vxlan-port-unreachable",
        &remedy,
        "vxlan",
    );
    let table = stdout(&ctl(&cluster, &["doctor"]));
    assert!(
        table.contains(&format!("remedy: allow UDP 8472 on {}", names[2])),
        "{table}"
    );
    // Asking one agent only: its own row.
    let (code, one) = ctl_json_any(&cluster, &["doctor", "--node", names[0]]);
    assert_eq!(code, 1);
    assert_eq!(one["matrix"].as_object().unwrap().len(), 1, "{one}");
    c.netns
        .ok(&["nft", "delete", "table", "inet", "doctor-test"])
        .unwrap();
    assert_eq!(
        ctl_json(&cluster, &["doctor"])["findings"],
        serde_json::json!([])
    );

    // The first node's conflist goes, then comes back on another bridge.
    let a = &cluster.nodes[0];
    let kept = std::fs::read(&a.conflist).unwrap();
    std::fs::remove_file(&a.conflist).unwrap();
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(code, 1, "{report}");
    let cni = of_kind(&report, "cni-config");
    assert_eq!(cni.len(), 1, "{report}");
    assert_eq!(cni[0].0, a.name);
    let message = report["findings"][0]["message"].as_str().unwrap();
    assert!(message.contains("no CNI config in"), "{message}");
    let mut other: Value = serde_json::from_slice(&kept).unwrap();
    other["plugins"][0]["bridge"] = "br9".into();
    std::fs::write(&a.conflist, other.to_string()).unwrap();
    let (_, report) = ctl_json_any(&cluster, &["doctor"]);
    let message = report["findings"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(r#""bridge" is "br9", this node's agent has trellis0"#),
        "{report}"
    );
    std::fs::write(&a.conflist, kept).unwrap();
    assert_eq!(
        ctl_json(&cluster, &["doctor"])["findings"],
        serde_json::json!([])
    );
}

#[test]
fn a_low_mtu_link_and_a_silent_agent_are_named() {
    let mut cluster = cluster();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    // The second node's underlay link carries 1400 bytes, the pods' MTU is
    // 1450 (VXLAN over 1500): small packets pass, full ones do not.
    let (code, report) = doctor_with_a_low_link(&cluster, 1);
    path_mtu_on(code, &report, &names[1]);
    assert!(
        of_kind(&report, "vxlan-port-unreachable").is_empty(),
        "{report}"
    );
    assert_eq!(report["matrix"][&names[0]][&names[2]], "ok", "{report}");

    // The third node's agent stops: nobody can ask it, and the others'
    // probes of it go unanswered.
    cluster.nodes[2].kill_agent().unwrap();
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(code, 1, "{report}");
    let silent = of_kind(&report, "agent-unreachable");
    assert_eq!(silent.len(), 1, "{report}");
    assert_eq!(silent[0].0, names[2]);
    let probe = of_kind(&report, "probe-port-unreachable");
    assert_eq!(probe.len(), 2, "{report}");
    assert!(probe.iter().all(|(_, to, remedy)| to == &names[2]
        && remedy.starts_with(&format!("allow UDP 8473 on {} ", names[2]))));
}

#[test]
fn a_router_that_fragments_the_tunnel_is_named() {
    // The third node behind a router whose link to it carries 1400 bytes:
    // the tunnel's packets of 1500 bytes (the pods' 1450 and VXLAN's 50)
    // reach it, but only because the router fragments them.
    let cluster = Cluster::start(ClusterSpec {
        routed: vec![2],
        agent_args: vec!["--metrics-addr".into(), "0.0.0.0:9464".into()],
        ..ClusterSpec::default().nodes(3)
    })
    .unwrap();
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        ctl_json(&cluster, &["doctor"])["findings"],
        serde_json::json!([])
    );
    let router_link = |mtu: &str| {
        set_mtu(cluster.underlay(), "n3", mtu);
        set_mtu(&cluster.nodes[2].netns, "eth0", mtu);
    };
    router_link("1400");
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    router_link("1500");
    let remedy = format!(
        "raise the MTU of the underlay path of {} to at least 1500 bytes",
        names[2]
    );
    named_on(
        code,
        &report,
        &names,
        2,
        "underlay-fragments",
        &remedy,
        "frag",
    );
    assert!(of_kind(&report, "path-mtu").is_empty(), "{report}");
}

#[test]
fn over_an_ipv6_underlay_the_probes_carry_its_overhead_and_a_low_mtu_is_named() {
    let mut spec = ClusterSpec {
        underlay6: true,
        tunnel6: true,
        agent_args: vec!["--metrics-addr".into(), "[::]:9464".into()],
        ..ClusterSpec::default().nodes(3)
    };
    spec.config.ipv6_network = Some("fd10:244::/56".parse().unwrap());
    let cluster = Cluster::start(spec).unwrap();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let clean = ctl_json(&cluster, &["doctor"]);
    assert_eq!(clean["findings"], serde_json::json!([]), "{clean}");
    // The tunnel's packets: the pods' 1430 and IPv6 VXLAN's 70 bytes.
    let probes = &clean["reports"][0]["peers"][0];
    assert_eq!(probes["overlayFull"]["size"], 1430, "{probes}");
    assert_eq!(probes["underlayFull"]["size"], 1500, "{probes}");
    assert_eq!(probes["underlayFull"]["ok"], true, "{probes}");

    let (code, report) = doctor_with_a_low_link(&cluster, 1);
    path_mtu_on(code, &report, &names[1]);
    assert_eq!(report["matrix"][&names[0]][&names[2]], "ok", "{report}");
}

#[test]
fn an_fdb_entry_lost_behind_the_agents_back_is_named_and_fixed() {
    let cluster = Cluster::start(ClusterSpec {
        // No periodic resync during the test: only --fix repairs.
        agent_args: [
            "--metrics-addr",
            "0.0.0.0:9464",
            "--resync-interval",
            "3600",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ClusterSpec::default().nodes(3)
    })
    .unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let b_mac = b.record().unwrap().vtep_mac;
    // The entry goes while a's agent is stopped (frozen), as an operator's
    // stray `bridge fdb del` or a reboot of a half-configured node would.
    {
        let _frozen = a.freeze_agent().unwrap();
        a.netns
            .ok(&[
                "bridge",
                "fdb",
                "del",
                &b_mac,
                "dev",
                "trellis.1",
                "dst",
                &b.underlay_ip.to_string(),
            ])
            .unwrap();
    }
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(code, 1, "{report}");
    let drift = findings(&report, "kernel-drift");
    assert_eq!(drift.len(), 1, "{report}");
    assert_eq!(drift[0]["from"], a.name.as_str());
    let message = drift[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("FDB entry {b_mac} -> {} missing", b.underlay_ip)),
        "{message}"
    );
    assert!(drift[0]["remedy"]
        .as_str()
        .unwrap()
        .contains("doctor --fix"));
    // The lost entry also cuts the tunnel between a and b.
    assert_eq!(report["matrix"][&a.name][&b.name], "vxlan", "{report}");

    let (code, fixed) = ctl_json_any(&cluster, &["doctor", "--fix"]);
    assert_eq!(code, 0, "{fixed}");
    assert_eq!(fixed["resynced"], serde_json::json!([a.name]), "{fixed}");
    assert_eq!(fixed["findings"], serde_json::json!([]), "{fixed}");
    assert!(a.agent_log().contains("full resync requested"));
}

/// In a dual-stack cluster the agents also probe each node's IPv6 VTEP
/// address through the tunnel: IPv6 dropped on its way into one node while
/// IPv4 passes is named, with that node as the one to fix.
#[test]
fn ipv6_lost_in_the_tunnel_while_ipv4_passes_is_named() {
    let mut spec = ClusterSpec {
        agent_args: vec!["--metrics-addr".into(), "0.0.0.0:9464".into()],
        ..ClusterSpec::default().nodes(3)
    };
    spec.config.ipv6_network = Some("fd10:244::/56".parse().unwrap());
    let cluster = Cluster::start(spec).unwrap();
    cluster
        .wait_converged(std::time::Duration::from_secs(30))
        .unwrap();
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let clean = ctl_json(&cluster, &["doctor"]);
    assert_eq!(clean["findings"], serde_json::json!([]), "{clean}");
    let probes = &clean["reports"][0]["peers"][0];
    assert!(probes["vtepIP6"].is_string(), "{probes}");
    assert_eq!(probes["overlay6"]["ok"], true, "{probes}");

    let c = &cluster.nodes[2];
    drop_into(c, "doctor-test6", "meta nfproto ipv6 udp dport 8473");
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    assert_eq!(code, 1, "{report}");
    let lost = of_kind(&report, "ipv6-tunnel");
    assert_eq!(
        pairs(&lost),
        [(names[0], names[2]), (names[1], names[2])],
        "{report}"
    );
    for (_, _, remedy) in &lost {
        assert!(
            remedy.starts_with(&format!("check IPv6 on {}:", names[2])),
            "{remedy}"
        );
    }
    assert_eq!(report["matrix"][names[0]][names[2]], "ipv6", "{report}");
    assert_eq!(report["matrix"][names[2]][names[0]], "ok", "{report}");
    assert!(
        of_kind(&report, "vxlan-port-unreachable").is_empty(),
        "{report}"
    );
}

/// The checksum-offload pattern as the probes see it: through the tunnel
/// into one node ICMP passes while UDP is lost (here UDP dropped as it
/// comes out of that node's VXLAN device, which is what a NIC that corrupts
/// offloaded checksums comes to: the receiver drops the bad segments). The doctor names it apart from a blocked
/// VXLAN port, on that node, with the offload remedy.
#[test]
fn udp_lost_in_the_tunnel_while_icmp_passes_is_the_checksum_pattern() {
    let cluster = cluster();
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let c = &cluster.nodes[2];
    drop_into(c, "doctor-udp", "iifname \"trellis.1\" meta l4proto udp");
    let (code, report) = ctl_json_any(&cluster, &["doctor"]);
    let remedy = format!(
        "run the agents of {} with --vxlan-tx-checksum-offload=false",
        names[2]
    );
    named_on(code, &report, &names, 2, "tunnel-udp-lost", &remedy, "udp");
    assert!(
        of_kind(&report, "vxlan-port-unreachable").is_empty(),
        "{report}"
    );
}
