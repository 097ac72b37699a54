//! Root tests of the agent's untracked tunnel packets (`--vxlan-notrack`,
//! on by default): the outer VXLAN packets stay out of conntrack, the pods'
//! own connections stay in it (and masqueraded), the chains come back when
//! someone flushes the ruleset and go with `trellis-agent cleanup`.

use std::net::IpAddr;
use std::time::Duration;

use trellis_tests::bins;
use trellis_tests::cluster::{Cluster, ClusterSpec, Node, Pod};
use trellis_tests::wait::wait_until;

fn spec(args: &[&str]) -> ClusterSpec {
    ClusterSpec {
        agent_args: args.iter().map(|s| s.to_string()).collect(),
        ..ClusterSpec::default().nodes(2)
    }
}

/// One TCP connection from `from` to `to` (the peer answers with the
/// source address it saw); returns that address.
fn tcp_exchange(from: &Pod, to: &Pod) -> String {
    let peer = bins::bin("trl-peer-addr").display().to_string();
    let addr = format!("{}:7777", to.ip);
    let mut server = to
        .netns
        .spawn(&[peer.clone(), "serve".into(), addr.clone()])
        .unwrap();
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(a) = from.netns.ok(&[peer.clone(), "ask".into(), addr.clone()]) {
            answer = a.trim().to_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    answer
}

/// The node's conntrack table, one entry a line.
fn conntrack(node: &Node) -> Vec<String> {
    node.netns
        .ok(&["cat", "/proc/net/nf_conntrack"])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn tunnel_entries(node: &Node) -> Vec<String> {
    conntrack(node)
        .into_iter()
        .filter(|l| l.contains("dport=8472"))
        .collect()
}

fn agent_table(node: &Node) -> String {
    node.netns
        .ok(&["nft", "list", "table", "ip", "trellis-agent"])
        .unwrap_or_default()
}

#[test]
fn tunnel_packets_are_untracked_and_pod_connections_still_tracked() {
    let mut cluster = Cluster::start(spec(&["--resync-interval", "1"])).unwrap();
    let p1 = cluster.add_pod(0, "nt1").unwrap();
    let p2 = cluster.add_pod(1, "nt2").unwrap();

    for node in &cluster.nodes {
        let table = agent_table(node);
        let ip = node.underlay_ip;
        for want in [
            "hook prerouting priority raw".to_owned(),
            "hook output priority raw".to_owned(),
            format!("ip daddr {ip} udp dport 8472 notrack"),
            format!("ip saddr {ip} udp dport 8472 notrack"),
            "masquerade".to_owned(),
        ] {
            assert!(
                table.contains(&want),
                "{want:?} missing on {}:\n{table}",
                node.name
            );
        }
    }

    // Pod to pod across nodes, its own address kept.
    assert_eq!(tcp_exchange(&p1, &p2), p1.ip.to_string());
    // The pods' connection is in both nodes' conntrack; no tunnel packet is.
    let inner = format!("src={} dst={} ", p1.ip, p2.ip);
    for node in &cluster.nodes {
        let table = conntrack(node);
        assert!(
            table
                .iter()
                .any(|l| l.contains(&inner) && l.contains("dport=7777")),
            "pod connection not tracked on {}:\n{}",
            node.name,
            table.join("\n")
        );
        let tunnel = tunnel_entries(node);
        assert!(
            tunnel.is_empty(),
            "tunnel packets tracked on {}: {tunnel:?}",
            node.name
        );
    }
    // Masquerade (which needs conntrack) still works for the pods.
    assert_eq!(
        cluster.source_seen_outside(&p1.netns).unwrap(),
        IpAddr::V4(cluster.nodes[0].underlay_ip)
    );

    // The agent reads back what it wrote: a few resyncs change nothing.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !cluster.nodes[0].agent_log().contains("re-installed"),
        "{}",
        cluster.nodes[0].agent_log()
    );
    // Someone flushes the ruleset: the next resync puts the chains back.
    cluster.nodes[0]
        .netns
        .ok(&["nft", "flush", "ruleset"])
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "notrack chains re-installed",
        || Ok(agent_table(&cluster.nodes[0]).contains("udp dport 8472 notrack")),
    )
    .unwrap();

    // `cleanup` removes them with the agent's table.
    cluster.nodes[0].stop_agent(Duration::from_secs(5)).unwrap();
    let node = &cluster.nodes[0];
    node.agent_cleanup(&[]).unwrap();
    let tables = node.netns.ok(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("trellis-agent"), "{tables}");
}

#[test]
fn with_notrack_off_every_connection_adds_tunnel_entries() {
    let cluster = Cluster::start(spec(&["--vxlan-notrack=false"])).unwrap();
    let p1 = cluster.add_pod(0, "nt3").unwrap();
    let p2 = cluster.add_pod(1, "nt4").unwrap();
    let table = agent_table(&cluster.nodes[0]);
    assert!(table.contains("masquerade"), "{table}");
    assert!(!table.contains("notrack"), "{table}");
    assert_eq!(tcp_exchange(&p1, &p2), p1.ip.to_string());
    for node in &cluster.nodes {
        let tunnel = tunnel_entries(node);
        assert!(
            !tunnel.is_empty(),
            "no tracked tunnel packets on {}:\n{}",
            node.name,
            conntrack(node).join("\n")
        );
    }
}
