//! `trellis` first in a conflist, the reference `portmap`, `bandwidth` and
//! `tuning` plugins after it: they find what they need in its result (the
//! host veth without sandbox, the container interface with its sandbox,
//! IPs pointing at it), and DEL through the whole list leaves nothing.

mod plugin_common;

use plugin_common::*;
use serde_json::json;
use trellis_tests::libcni::Attachment;

#[test]
fn portmap_bandwidth_and_tuning_chain_after_trellis() {
    let node = Node::new("chain-node");
    let pod = node.pod("chain-pod");
    let trellis = node.trellis(ONE_ADDRESS, json!({}));
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let bandwidth = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
    let tuning = json!({"type": "tuning", "mac": "02:aa:bb:cc:dd:01",
                        "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}});
    let list = node.conflist(
        "chain",
        "1.0.0",
        vec![trellis.clone(), portmap, bandwidth.clone(), tuning.clone()],
    );
    let att = Attachment::new("chain-1", pod.path(), "eth0").capability_args(json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 100_000,
                      "egressRate": 1_000_000, "egressBurst": 100_000},
    }));

    let result = node.driver.add(&list, &att).unwrap();

    // tuning found the container interface through the result.
    let eth0 = link_json(&pod, "eth0");
    assert_eq!(eth0["address"], "02:aa:bb:cc:dd:01");
    assert_eq!(
        pod.ok(&["sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore"])
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(result["interfaces"][2]["mac"], "02:aa:bb:cc:dd:01");

    // bandwidth found the host veth (shaping on it and on its ifb).
    let host = result["interfaces"][1]["name"].as_str().unwrap();
    let qdiscs = node.ns.ok(&["tc", "qdisc", "show", "dev", host]).unwrap();
    assert!(qdiscs.contains("tbf"), "no shaping on {host}: {qdiscs}");
    let ifbs: Vec<String> = node
        .ns
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with("bwp"))
        .collect();
    assert_eq!(ifbs.len(), 1, "{:?}", node.ns.links());

    // portmap found the container address.
    let nat = node
        .ns
        .sh_ok("iptables-save -t nat 2>/dev/null || nft list ruleset")
        .unwrap();
    assert!(nat.contains("18080"), "no port mapping: {nat}");
    assert!(
        nat.contains("10.88.0.2"),
        "no port mapping to the container: {nat}"
    );

    // CHECK through the chain. Debian's portmap 1.1.1 cannot take part: its
    // CHECK looks for an IPv6 DNAT chain whenever ip6tables exists, so it
    // fails after any IPv4-only plugin (the reference `bridge` as well). The
    // same network without it checks the same cached result.
    let without_portmap = node.conflist_file(
        "chain-check",
        "chain",
        "1.0.0",
        vec![trellis, bandwidth, tuning],
    );
    node.driver.check(&without_portmap, &att).unwrap();

    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
    assert!(
        !node
            .ns
            .links()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("bwp")),
        "{:?}",
        node.ns.links()
    );
    assert!(pod.links().unwrap().is_empty());
    node.assert_address_free(&list);
}
