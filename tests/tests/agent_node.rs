//! Root tests of what `trellis-agent` does on its own node: masquerade,
//! leaked-IP reclaim, /healthz and /metrics, `cleanup`, and a lease that
//! expired under a frozen agent.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use trellis_tests::bins;
use trellis_tests::cluster::{ping, result_ip, Cluster, ClusterSpec};
use trellis_tests::libcni::{write_conflist, Attachment};
use trellis_tests::netns::Netns;
use trellis_tests::wait::wait_until;

fn spec(args: &[&str]) -> ClusterSpec {
    ClusterSpec {
        agent_args: args.iter().map(|s| s.to_string()).collect(),
        ..ClusterSpec::default().nodes(2)
    }
}

#[test]
fn pods_leave_the_cluster_masqueraded_but_keep_their_address_inside() {
    let cluster = Cluster::start(spec(&[])).unwrap();
    let p1 = cluster.add_pod(0, "p1").unwrap();
    let p2 = cluster.add_pod(1, "p2").unwrap();
    // To the outside host: the node's underlay address.
    let seen = cluster.source_seen_outside(&p1.netns).unwrap();
    assert_eq!(seen, IpAddr::V4(cluster.nodes[0].underlay_ip));
    // Pod to pod across nodes: the pod's own address.
    let peer = bins::bin("trl-peer-addr").display().to_string();
    let addr = format!("{}:7777", p2.ip);
    let mut server = p2
        .netns
        .spawn(&[peer.clone(), "serve".into(), addr.clone()])
        .unwrap();
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(a) = p1.netns.ok(&[peer.clone(), "ask".into(), addr.clone()]) {
            answer = a;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(answer.trim(), p1.ip.to_string());
    // One node-level table, owned by the agent.
    let table = cluster.nodes[0]
        .netns
        .ok(&["nft", "list", "table", "ip", "trellis-agent"])
        .unwrap();
    let subnet = cluster.nodes[0].subnet().unwrap();
    assert!(table.contains(&format!("ip saddr {subnet}")), "{table}");
    assert!(
        table.contains("10.244.0.0/16") && table.contains("masquerade"),
        "{table}"
    );
}

#[test]
fn a_leaked_address_is_released_after_a_full_interval() {
    let cluster = Cluster::start(spec(&["--ipam-gc-interval", "1"])).unwrap();
    let kept = cluster.add_pod(0, "kept").unwrap();
    let leaked = cluster.add_pod(0, "leaked").unwrap();
    assert!(cluster.allocations().unwrap().contains(&leaked.ip));
    // The container dies without a CNI DEL: its namespace (and veth) go.
    let leaked_ip = leaked.ip;
    drop(leaked);
    wait_until(Duration::from_secs(10), "leaked address released", || {
        Ok(!cluster.allocations()?.contains(&leaked_ip))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    assert!(
        cluster.allocations().unwrap().contains(&kept.ip),
        "a live pod lost its address"
    );
    assert!(cluster.nodes[0]
        .agent_log()
        .contains(&format!("released leaked address {leaked_ip}")));
    ping(&kept.netns, IpAddr::V4(cluster.nodes[1].underlay_ip)).unwrap();
}

#[test]
fn a_macvlan_pod_allocating_from_trellis_ipam_keeps_its_address() {
    let cluster = Cluster::start(spec(&["--ipam-gc-interval", "1"])).unwrap();
    let node = &cluster.nodes[0];
    // The reference macvlan plugin on the node's underlay, delegating to
    // trellis-ipam (README: any CNI plugin may use it).
    let macvlan = json!({"cniVersion": "1.0.0", "name": "macnet", "plugins": [{
        "type": "macvlan", "master": "eth0", "mode": "bridge",
        "stateDir": node.state_dir,
        "ipam": {"type": "trellis-ipam", "etcdEndpoints": [cluster.etcd_endpoint()],
                 "etcdPrefix": cluster.spec().etcd_prefix}}]});
    let macvlan = write_conflist(&node.conf_dir, "30-macnet", &macvlan).unwrap();
    let mac_ns = Netns::new("macpod").unwrap();
    let mac_att = Attachment::new("macvlan-pod", mac_ns.path(), "eth0");
    let result = node.driver.add(&macvlan, &mac_att).unwrap();
    let mac_ip = result_ip(&result).unwrap();
    assert!(cluster.allocations().unwrap().contains(&mac_ip));

    // A trellis pod that dies without a DEL: the reclaim runs and takes it.
    let leaked = cluster.add_pod(0, "leaked").unwrap();
    let leaked_ip = leaked.ip;
    drop(leaked);
    wait_until(Duration::from_secs(10), "leaked address released", || {
        Ok(!cluster.allocations()?.contains(&leaked_ip))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    // Three more intervals: the macvlan pod has no trl veth, and it is not
    // trellis's to reclaim.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        cluster.allocations().unwrap().contains(&mac_ip),
        "the macvlan pod lost {mac_ip}\n{}",
        cluster.agent_logs()
    );
    assert!(!node.agent_log().contains(&format!("address {mac_ip}")));
    node.driver.check(&macvlan, &mac_att).unwrap();
    node.driver.del(&macvlan, &mac_att).unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}

#[test]
fn healthz_and_metrics() {
    let cluster = Cluster::start(spec(&["--metrics-addr", "127.0.0.1:9464"])).unwrap();
    let node = &cluster.nodes[0];
    let get = |path: &str| {
        node.netns.ok(&[
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://127.0.0.1:9464{path}"),
        ])
    };
    assert_eq!(get("/healthz").unwrap().trim(), "ok");
    let metrics = get("/metrics").unwrap();
    for want in [
        "trellis_agent_remote_nodes 1\n",
        "trellis_agent_overlay_entries 3\n",
        "trellis_agent_subnet_leased 1\n",
        "trellis_agent_etcd_errors_total 0\n",
        "# TYPE trellis_agent_reconcile_duration_seconds_sum counter\n",
        "trellis_agent_ipam_gc_releases_total 0\n",
    ] {
        assert!(metrics.contains(want), "{want:?} missing in\n{metrics}");
    }
}

#[test]
fn cleanup_removes_everything_the_agent_made() {
    let mut cluster = Cluster::start(spec(&[])).unwrap();
    let gone_subnet = cluster.nodes[1].subnet().unwrap();
    let kept = cluster.add_pod(0, "kept").unwrap();
    let gone = cluster.add_pod(1, "gone").unwrap();
    let mut both = cluster.allocations().unwrap();
    both.sort();
    let mut want = vec![kept.ip, gone.ip];
    want.sort();
    assert_eq!(both, want);
    cluster.leave(1).unwrap();
    let node = &cluster.nodes[1];
    let links = node.netns.links().unwrap();
    assert!(
        !links.iter().any(|l| l == "trellis.1" || l == "trellis0"),
        "{links:?}"
    );
    let tables = node.netns.ok(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("trellis-agent"), "{tables}");
    assert!(node.record().is_err(), "node.json left behind");
    assert!(cluster.etcd_entries("nodes/node2").unwrap().is_empty());
    assert!(cluster.etcd_entries("subnets/").unwrap().len() == 1);
    // Its pods' addresses are released, the other node's kept.
    assert_eq!(cluster.allocations().unwrap(), vec![kept.ip]);
    // The other node dropped node2's route.
    wait_until(Duration::from_secs(5), "route to node2 removed", || {
        let routes = cluster.nodes[0]
            .netns
            .ok(&["ip", "route", "show", "dev", "trellis.1"])?;
        Ok(!routes.contains(&gone_subnet.to_string()))
    })
    .unwrap();
    // Cleaning a clean node is fine.
    node.agent_cleanup(&[]).unwrap();
}

#[test]
fn an_expired_lease_is_taken_again_for_the_same_subnet() {
    let cluster = Cluster::start(spec(&["--lease-ttl", "5"])).unwrap();
    let node = &cluster.nodes[1];
    let subnet = node.subnet().unwrap();
    // Frozen longer than the TTL: etcd drops its subnet and record.
    let thawed = node.freeze_agent().unwrap();
    wait_until(Duration::from_secs(20), "node2's record expired", || {
        Ok(cluster.etcd_entries("nodes/node2")?.is_empty())
    })
    .unwrap();
    drop(thawed);
    wait_until(
        Duration::from_secs(20),
        "node2 back with its subnet",
        || {
            let entries = cluster.etcd_entries("nodes/node2")?;
            Ok(entries.len() == 1 && entries[0].1.contains(&subnet.to_string()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    assert!(cluster
        .etcd_entries("subnets/")
        .unwrap()
        .iter()
        .any(
            |(k, v)| k.ends_with(&format!("{}-{}", subnet.network(), subnet.prefix()))
                && v.contains("node2")
        ));
    cluster.wait_converged(Duration::from_secs(10)).unwrap();
}

#[test]
fn tx_checksum_offload_can_be_turned_off_on_the_vxlan_device() {
    use trellis_kernel::ethtool::{set_tx_checksum, tx_checksum};
    use trellis_kernel::netns::{run_in_netns, NetnsFile};
    let cluster = Cluster::start(spec(&["--vxlan-tx-checksum-offload=false"])).unwrap();
    let offload = |node: usize| {
        let file = NetnsFile::open(&cluster.nodes[node].netns.path()).unwrap();
        run_in_netns(&file, || tx_checksum("trellis.1"))
            .unwrap()
            .unwrap()
    };
    assert!(!offload(0) && !offload(1), "offload still on");
    // Pods reach each other across the nodes, and so does TCP (the
    // checksums are the kernel's own now).
    let a = cluster.add_pod(0, "a").unwrap();
    let b = cluster.add_pod(1, "b").unwrap();
    ping(&a.netns, b.ip).unwrap();
    // Someone turns it on again: the next pass (a node joining here) turns
    // it off.
    let file = NetnsFile::open(&cluster.nodes[0].netns.path()).unwrap();
    run_in_netns(&file, || set_tx_checksum("trellis.1", true))
        .unwrap()
        .unwrap();
    assert!(offload(0));
    cluster
        .etcdctl(&[
            "put",
            &format!("{}/nodes/extra", cluster.key_prefix()),
            r#"{"subnet":"10.244.200.0/24","publicIP":"192.0.2.200","vtepMAC":"02:00:00:00:00:c8"}"#,
        ])
        .unwrap();
    trellis_tests::wait::wait_until(Duration::from_secs(5), "offload off again", || {
        Ok(!offload(0))
    })
    .unwrap();
    assert!(cluster.nodes[0]
        .agent_log()
        .contains("turned transmit checksum offload off on trellis.1"));
}
