//! Spec 1.1.0: the full result (MTUs), GC of attachments the runtime no
//! longer knows (host veths, addresses, the masquerade rule with the last
//! container) and STATUS. Debian's libcni 1.1 cannot read 1.1.0 results, so
//! ADD/CHECK/DEL at 1.1.0 are invoked directly, as libcni 1.2 would; GC
//! and STATUS go through the driver's libcni-1.2-style implementation.

mod plugin_common;

use plugin_common::*;
use serde_json::{json, Value};
use std::ffi::OsString;
use trellis_tests::libcni::Attachment;

#[test]
fn version_1_1_0_add_check_del_with_mtus_in_the_result() {
    let node = Node::new("v11-node");
    let pod = node.pod("v11-pod");
    let plugin = node.trellis(ONE_ADDRESS, json!({"mtu": 1400}));
    let config = network_config("net", "1.1.0", &plugin);
    let netns = pod.path().to_str().unwrap().to_string();

    let add = node.invoke(&node.cni_env("ADD", "v11-1", &netns, "eth0"), &config);
    assert!(add.success, "{add:?}");
    let result = add.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][1]["mtu"], 1400, "{result}");
    assert_eq!(result["interfaces"][2]["mtu"], 1400, "{result}");
    assert_eq!(result["ips"][0]["address"], ONE_ADDRESS_IP);

    // CHECK with the result as prevResult, as the runtime sends it.
    let mut with_prev: Value = serde_json::from_slice(&config).unwrap();
    with_prev["prevResult"] = result.clone();
    let with_prev = serde_json::to_vec(&with_prev).unwrap();
    let check = node.invoke(&node.cni_env("CHECK", "v11-1", &netns, "eth0"), &with_prev);
    assert!(check.success, "{check:?}");
    assert_eq!(check.stdout, "");

    // CHECK without prevResult is refused: there is nothing to compare.
    let check = node.invoke(&node.cni_env("CHECK", "v11-1", &netns, "eth0"), &config);
    assert_eq!(check.error_code(), 7);

    // A prevResult that says another MTU no longer matches the container.
    let mut stale: Value = serde_json::from_slice(&with_prev).unwrap();
    stale["prevResult"]["interfaces"][2]["mtu"] = json!(1500);
    let check = node.invoke(
        &node.cni_env("CHECK", "v11-1", &netns, "eth0"),
        &serde_json::to_vec(&stale).unwrap(),
    );
    assert_eq!(check.error_code(), 104);

    let del = node.invoke(&node.cni_env("DEL", "v11-1", &netns, "eth0"), &with_prev);
    assert!(del.success, "{del:?}");
    node.assert_no_attachment_left();
    assert!(pod.links().unwrap().is_empty());
}

fn gc(node: &Node, list: &std::path::Path, valid: &[(&str, &str)]) {
    let valid: Vec<Value> = valid
        .iter()
        .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
        .collect();
    let flags: Vec<OsString> = vec![
        "--valid-attachments".into(),
        Value::Array(valid).to_string().into(),
        "--plugin-gc-only".into(),
        "--cni-version".into(),
        "1.1.0".into(),
    ];
    node.driver.run("gc", list, &flags).unwrap();
}

#[test]
fn gc_removes_what_the_runtime_no_longer_knows() {
    let node = Node::new("gc-node");
    // Attachments made at 1.0.0 (what this libcni can ADD), collected at
    // 1.1.0 by the plugins' own GC.
    let list = node.conflist(
        "net",
        "1.0.0",
        vec![node.trellis("10.88.0.0/29", json!({}))],
    );
    let pods: Vec<_> = (0..3).map(|i| node.pod(&format!("gc-pod{i}"))).collect();
    let atts: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment::new(format!("gc-{i}"), p.path(), "eth0"))
        .collect();
    for att in &atts {
        node.driver.add(&list, att).unwrap();
    }
    assert_eq!(node.host_veths().len(), 3);

    // The runtime only knows the first container any more.
    gc(&node, &list, &[("gc-0", "eth0")]);
    assert_eq!(node.host_veths().len(), 1);
    for pod in &pods[1..] {
        assert!(pod.links().unwrap().is_empty(), "{:?}", pod.links());
    }
    node.driver.check(&list, &atts[0]).unwrap();
    assert!(
        node.has_masquerade("trellis0"),
        "one container is still there"
    );
    // Their addresses are free again: the /29 has five for containers and
    // one is held; four more fit only because GC released two.
    let fresh: Vec<_> = (0..4).map(|i| node.pod(&format!("gc-new{i}"))).collect();
    let fresh_atts: Vec<_> = fresh
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment::new(format!("gc-new-{i}"), p.path(), "eth0"))
        .collect();
    for att in &fresh_atts {
        node.driver.add(&list, att).unwrap();
    }
    for att in &fresh_atts {
        node.driver.del(&list, att).unwrap();
    }

    // Nothing is valid: the last veth and the masquerade rule go.
    gc(&node, &list, &[]);
    node.assert_no_attachment_left();
    assert!(pods[0].links().unwrap().is_empty());
}

#[test]
fn gc_without_valid_attachments_is_refused_and_removes_nothing() {
    let node = Node::new("gc-nolist");
    let plugin = node.trellis(ONE_ADDRESS, json!({}));
    let list = node.conflist("net", "1.0.0", vec![plugin.clone()]);
    let pod = node.pod("gc-nolist-pod");
    let att = Attachment::new("gc-nolist-1", pod.path(), "eth0");
    node.driver.add(&list, &att).unwrap();
    let veths = node.host_veths();
    assert_eq!(veths.len(), 1);

    // A GC that names no valid attachments: nobody can tell what is in use.
    let config = network_config("net", "1.1.0", &plugin);
    let env = [
        ("CNI_COMMAND", "GC"),
        ("CNI_PATH", node.bins.path().to_str().unwrap()),
    ];
    let gc = node.invoke(&env, &config);
    assert_eq!(gc.error_code(), 7, "{gc:?}");
    assert!(gc.json()["msg"]
        .as_str()
        .unwrap()
        .contains("cni.dev/valid-attachments"));
    // Nothing was deleted: the veth, the address, the masquerade rule.
    assert_eq!(node.host_veths(), veths);
    assert_eq!(pod.links().unwrap(), vec!["eth0".to_string()]);
    assert!(node.has_masquerade("trellis0"));
    node.driver.check(&list, &att).unwrap();
    node.driver.del(&list, &att).unwrap();
    node.assert_address_free(&list);
    node.assert_no_attachment_left();
}

#[test]
fn status_is_ready_in_single_host_mode_and_waits_for_the_agent_otherwise() {
    let node = Node::new("st-node");
    let single = node.conflist("net", "1.1.0", vec![node.trellis(ONE_ADDRESS, json!({}))]);
    node.driver.status(&single).unwrap();

    // The IPAM plugin cannot store anything: not ready, its reason passed on.
    let blocked = node.dir.path().join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let broken = node.conflist_file(
        "broken",
        "net",
        "1.1.0",
        vec![node.trellis(ONE_ADDRESS, json!({"ipam": {"dataDir": blocked}}))],
    );
    let err = node.driver.status(&broken).unwrap_err();
    assert_eq!(err.code, 50, "{err}");

    // Cluster mode before the agent published the node: not ready.
    let cluster = node.conflist_file(
        "cluster",
        "net",
        "1.1.0",
        vec![json!({"type": "trellis", "stateDir": node.state_dir(),
                    "ipam": {"type": "trellis-ipam", "etcdEndpoints": ["http://127.0.0.1:9"]}})],
    );
    let err = node.driver.status(&cluster).unwrap_err();
    assert_eq!(err.code, 50, "{err}");
    assert!(err.msg.contains("trellis-agent"), "{err}");
}
