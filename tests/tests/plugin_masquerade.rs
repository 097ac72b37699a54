//! Single-host `ipMasq`: what a server outside the pod network sees of a
//! container's connection (the node's address with masquerade, the
//! container's without), and that traffic inside the pod network keeps its
//! source. The "outside" is a namespace of this test behind the node.

mod plugin_common;

use plugin_common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use trellis_tests::bins::bin;
use trellis_tests::libcni::Attachment;
use trellis_tests::netns::{veth_pair, Netns};

/// A `trl-peer-addr serve` in a namespace, stopped and reaped on drop.
struct Server(std::process::Child);

impl Server {
    fn start(ns: &Netns, addr: &str) -> Server {
        Server(
            ns.spawn(&[bin("trl-peer-addr").to_str().unwrap(), "serve", addr])
                .unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks the `trl-peer-addr` server at `addr` from `ns` which source address
/// it saw, retrying (bounded) while the server starts.
fn seen_source(ns: &Netns, addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.exec(&[bin("trl-peer-addr").to_str().unwrap(), "ask", addr]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no answer from {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn containers_leave_the_node_masqueraded_unless_ip_masq_is_off() {
    let node = Node::new("masq-node");
    let outside = Netns::new("masq-out").unwrap();
    veth_pair(
        &node.ns,
        "uplink",
        Some("192.0.2.1/24".parse().unwrap()),
        &outside,
        "eth0",
        Some("192.0.2.2/24".parse().unwrap()),
    )
    .unwrap();
    node.ns
        .ok(&["ip", "route", "add", "default", "via", "192.0.2.2"])
        .unwrap();
    // The outside knows the way back to the unmasqueraded network only.
    outside
        .ok(&["ip", "route", "add", "10.89.0.0/24", "via", "192.0.2.1"])
        .unwrap();
    let _outside_server = Server::start(&outside, "192.0.2.2:7000");

    let masq = node.conflist(
        "masq",
        "1.0.0",
        vec![node.trellis("10.88.0.0/24", json!({}))],
    );
    let plain = node.conflist(
        "plain",
        "1.0.0",
        vec![node.trellis(
            "10.89.0.0/24",
            json!({"bridge": "trlplain", "ipMasq": false}),
        )],
    );
    let (a, b, c) = (node.pod("masq-a"), node.pod("masq-b"), node.pod("masq-c"));
    let att_a = Attachment::new("masq-a", a.path(), "eth0");
    let att_b = Attachment::new("masq-b", b.path(), "eth0");
    let att_c = Attachment::new("masq-c", c.path(), "eth0");
    let ra = node.driver.add(&masq, &att_a).unwrap();
    let rb = node.driver.add(&masq, &att_b).unwrap();
    let rc = node.driver.add(&plain, &att_c).unwrap();

    assert_eq!(seen_source(&a, "192.0.2.2:7000"), "192.0.2.1");
    let c_ip = rc["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert_eq!(seen_source(&c, "192.0.2.2:7000"), c_ip);
    assert!(!node.has_masquerade("trlplain"));

    // Inside the pod network the source is the container's own.
    let b_ip = rb["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let _b_server = Server::start(&b, &format!("{b_ip}:7000"));
    let a_ip = ra["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert_eq!(seen_source(&a, &format!("{b_ip}:7000")), a_ip);

    // The rule stays while a container is left, goes with the last one.
    node.driver.del(&masq, &att_a).unwrap();
    assert!(node.has_masquerade("trellis0"));
    // Even when the table no longer holds exactly our rule (someone added
    // one; a subnet from before): it is trellis's, and goes all the same.
    node.ns
        .ok(&[
            "nft",
            "add",
            "rule",
            "ip",
            "trellis-trellis0",
            "postrouting",
            "ip",
            "saddr",
            "10.88.0.0/24",
            "counter",
        ])
        .unwrap();
    node.driver.del(&masq, &att_b).unwrap();
    assert!(!node.has_masquerade("trellis0"));
    node.driver.del(&plain, &att_c).unwrap();
    assert_eq!(node.host_veths(), Vec::<String>::new());
}

/// An outside host `name` behind `node`: fd99::2 (and 192.0.2.2 with
/// `ipv4`) on a link to the node's fd99::1 (192.0.2.1), the node's default
/// routes through it, and no route back to any pod network.
fn outside_of(node: &Node, name: &str, ipv4: bool) -> Netns {
    let outside = Netns::new(name).unwrap();
    veth_pair(&node.ns, "uplink", None, &outside, "eth0", None).unwrap();
    let mut addrs = vec![
        (&node.ns, "uplink", "fd99::1/64"),
        (&outside, "eth0", "fd99::2/64"),
    ];
    let mut routes = vec![["-6", "fd99::2"]];
    if ipv4 {
        addrs.extend([
            (&node.ns, "uplink", "192.0.2.1/24"),
            (&outside, "eth0", "192.0.2.2/24"),
        ]);
        routes.push(["-4", "192.0.2.2"]);
    }
    for (ns, dev, addr) in addrs {
        let mut args = vec!["ip", "addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            args.push("nodad"); // usable at once
        }
        ns.ok(&args).unwrap();
    }
    for [family, via] in routes {
        node.ns
            .ok(&["ip", family, "route", "add", "default", "via", via])
            .unwrap();
    }
    outside
}

#[test]
fn an_ipv6_single_host_network_leaves_masqueraded_through_an_ip6_table() {
    let node = Node::new("masq6-node");
    let outside = outside_of(&node, "masq6-out", false);
    let _outside_server = Server::start(&outside, "[fd99::2]:7000");
    let masq = node.conflist(
        "masq6",
        "1.0.0",
        vec![node.trellis("fd00:88::/64", json!({}))],
    );
    let a = node.pod("masq6-a");
    let att = Attachment::new("masq6-a", a.path(), "eth0");
    let r = node.driver.add(&masq, &att).unwrap();
    assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["ips"][0]["address"], "fd00:88::2/64");
    assert_eq!(r["ips"][0]["gateway"], "fd00:88::1");
    // The outside has no route back to fd00:88::/64: the answer comes
    // only to the node's address.
    assert_eq!(seen_source(&a, "[fd99::2]:7000"), "fd99::1");
    let table = node
        .ns
        .ok(&["nft", "list", "table", "ip6", "trellis-trellis0"])
        .unwrap();
    assert!(
        table.contains("ip6 saddr fd00:88::/64") && table.contains("masquerade"),
        "{table}"
    );
    assert!(!node.has_masquerade("trellis0"), "no IPv4 table");
    node.driver.del(&masq, &att).unwrap();
    assert!(!node
        .ns
        .exec(&["nft", "list", "table", "ip6", "trellis-trellis0"])
        .status
        .success());
    assert_eq!(node.host_veths(), Vec::<String>::new());
}

/// `"subnet": [IPv4, IPv6]` in the trellis plugin's single-host mode: each
/// container gets an address of each family, both families leave
/// masqueraded, and both tables go with the last container.
#[test]
fn a_dual_stack_single_host_network_masquerades_both_families() {
    let node = Node::new("masq46-node");
    let outside = outside_of(&node, "masq46-out", true);
    let _server4 = Server::start(&outside, "192.0.2.2:7000");
    let _server6 = Server::start(&outside, "[fd99::2]:7000");
    let conf = node.conflist(
        "masq46",
        "1.0.0",
        vec![node.trellis(
            "10.88.0.0/24",
            json!({"ipam": {"subnet": ["10.88.0.0/24", "fd00:88::/64"]}}),
        )],
    );
    let a = node.pod("masq46-a");
    let att = Attachment::new("masq46-a", a.path(), "eth0");
    let r = node.driver.add(&conf, &att).unwrap();
    let addrs: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert_eq!(addrs, ["10.88.0.2/24", "fd00:88::2/64"], "{r}");
    assert_eq!(seen_source(&a, "192.0.2.2:7000"), "192.0.2.1");
    assert_eq!(seen_source(&a, "[fd99::2]:7000"), "fd99::1");
    let ip6_table = |ns: &Netns| {
        ns.exec(&["nft", "list", "table", "ip6", "trellis-trellis0"])
            .status
            .success()
    };
    assert!(node.has_masquerade("trellis0") && ip6_table(&node.ns));
    node.driver.del(&conf, &att).unwrap();
    assert!(!node.has_masquerade("trellis0") && !ip6_table(&node.ns));
    assert_eq!(node.host_veths(), Vec::<String>::new());
}
