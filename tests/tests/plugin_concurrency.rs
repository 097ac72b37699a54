//! Many runtimes calling at once on one node: 20 ADDs at the same time all
//! succeed with one bridge and distinct addresses, then 20 DELs at the same
//! time leave nothing.

mod plugin_common;

use plugin_common::*;
use serde_json::json;
use std::collections::HashSet;
use trellis_tests::libcni::Attachment;

const CONTAINERS: usize = 20;

#[test]
fn twenty_concurrent_adds_share_one_bridge() {
    let node = Node::new("conc-node");
    let list = node.conflist(
        "net",
        "1.0.0",
        vec![node.trellis("10.88.0.0/24", json!({}))],
    );
    let pods: Vec<_> = (0..CONTAINERS)
        .map(|i| node.pod(&format!("conc-pod{i}")))
        .collect();
    let atts: Vec<Attachment> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment::new(format!("conc-{i}"), p.path(), "eth0"))
        .collect();

    // No bridge yet: every ADD races to create it.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|att| s.spawn(|| node.driver.add(&list, att)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("ADD {i}: {e}"));
        assert!(addresses.insert(r["ips"][0]["address"].as_str().unwrap().to_string()));
    }
    let bridges: Vec<String> = node
        .ns
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| !l.starts_with("trl"))
        .collect();
    assert_eq!(bridges, ["trellis0"]);
    assert_eq!(node.host_veths().len(), CONTAINERS);
    assert_eq!(addresses_of_bridge(&node), ["10.88.0.1/24"]);
    assert!(node.has_masquerade("trellis0"));
    // Every container reaches the gateway: one packet each.
    for (i, pod) in pods.iter().enumerate() {
        pod.ok(&["ping", "-c", "1", "-W", "2", "10.88.0.1"])
            .unwrap_or_else(|e| panic!("container {i}: {e:#}"));
    }

    let dels: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|att| s.spawn(|| node.driver.del(&list, att)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in dels.iter().enumerate() {
        r.as_ref().unwrap_or_else(|e| panic!("DEL {i}: {e}"));
    }
    node.assert_no_attachment_left();
    for pod in &pods {
        assert!(pod.links().unwrap().is_empty());
    }
}

fn addresses_of_bridge(node: &Node) -> Vec<String> {
    addresses(&node.ns, "trellis0")
}

/// A DEL killed between its two steps (its veth moved into the removal
/// group, the group not deleted yet) leaves the veth to the next removal
/// on the node: any DEL takes the whole group.
#[test]
fn a_veth_left_on_its_way_out_goes_with_the_next_del() {
    let node = Node::new("unlink-node");
    let list = node.conflist(
        "net",
        "1.0.0",
        vec![node.trellis("10.88.0.0/24", json!({}))],
    );
    let (left, next) = (node.pod("unlink-left"), node.pod("unlink-next"));
    let left_att = Attachment::new("unlink-left", left.path(), "eth0");
    let next_att = Attachment::new("unlink-next", next.path(), "eth0");
    node.driver.add(&list, &left_att).unwrap();
    node.driver.add(&list, &next_att).unwrap();
    let veths = node.host_veths();
    assert_eq!(veths.len(), 2);
    // The removal group of cni-plugin/src/unlink.rs, "trlx".
    let stray = veths
        .iter()
        .find(|v| node.link(v)["ifindex"] == link_json(&left, "eth0")["link_index"])
        .expect("the host end of the left pod's veth")
        .clone();
    node.ns
        .ok(&["ip", "link", "set", "dev", &stray, "group", "1953655928"])
        .unwrap();
    node.driver.del(&list, &next_att).unwrap();
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(left.links().unwrap().is_empty());
    assert!(next.links().unwrap().is_empty());
    // The left pod's own DEL finds nothing to remove and releases.
    node.driver.del(&list, &left_att).unwrap();
    node.assert_no_attachment_left();
}
