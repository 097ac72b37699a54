//! Every bad input gets its CNI error code and a message saying what is
//! wrong, and leaves nothing behind: no veth, no masquerade rule, no
//! address taken (the one address of the subnet is still free after each).

mod plugin_common;

use plugin_common::*;
use serde_json::{json, Value};
use trellis_tests::libcni::Attachment;
use trellis_tests::netns::Netns;

/// Runs ADD directly with `env` (the usual environment, edited) and
/// `stdin`, expects `code` and a message containing `needle`, then checks
/// that nothing was left.
fn expect_add_error(
    node: &Node,
    pod: &Netns,
    what: &str,
    edit_env: impl Fn(&mut Vec<(&str, String)>),
    stdin: &[u8],
    code: u64,
    needle: &str,
) {
    let netns = pod.path().to_str().unwrap().to_string();
    let mut env: Vec<(&str, String)> = node
        .cni_env("ADD", "err-1", &netns, "eth0")
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    edit_env(&mut env);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = node.invoke(&env_refs, stdin);
    assert!(!out.success, "{what}: succeeded: {out:?}");
    assert_eq!(out.error_code(), code, "{what}: {out:?}");
    let err = out.json();
    let text = format!("{} {}", err["msg"], err["details"]);
    assert!(
        text.contains(needle),
        "{what}: {text:?} should mention {needle:?}"
    );
    // stdout carries the error object alone; logs went to stderr.
    assert!(out.stdout.trim().starts_with('{') && out.stdout.trim().ends_with('}'));
    assert_eq!(
        out.stdout.trim().lines().count(),
        1,
        "{what}: {:?}",
        out.stdout
    );
    node.assert_no_attachment_left();
    assert!(
        pod.links()
            .unwrap()
            .iter()
            .all(|l| l != "eth0" || what.contains("exists")),
        "{what}: {:?}",
        pod.links()
    );
}

fn set(env: &mut Vec<(&str, String)>, key: &'static str, value: &str) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.to_string()));
}

fn unset(env: &mut Vec<(&str, String)>, key: &str) {
    env.retain(|(k, _)| *k != key);
}

#[test]
fn bad_environments_are_code_4_naming_the_variable() {
    let node = Node::new("env-node");
    let pod = node.pod("env-pod");
    let list = node.single_host("1.0.0");
    let good = network_config("net", "1.0.0", &node.trellis(ONE_ADDRESS, json!({})));
    let not_a_netns = node.dir.path().join("plain-file");
    std::fs::write(&not_a_netns, "x").unwrap();
    let not_a_netns = not_a_netns.to_str().unwrap().to_string();

    type Edit = Box<dyn Fn(&mut Vec<(&str, String)>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "no command",
            Box::new(|e| unset(e, "CNI_COMMAND")),
            "CNI_COMMAND",
        ),
        (
            "unknown command",
            Box::new(|e| set(e, "CNI_COMMAND", "FROB")),
            "FROB",
        ),
        ("no netns", Box::new(|e| unset(e, "CNI_NETNS")), "CNI_NETNS"),
        (
            "no container ID",
            Box::new(|e| unset(e, "CNI_CONTAINERID")),
            "CNI_CONTAINERID",
        ),
        (
            "no ifname",
            Box::new(|e| unset(e, "CNI_IFNAME")),
            "CNI_IFNAME",
        ),
        ("no path", Box::new(|e| unset(e, "CNI_PATH")), "CNI_PATH"),
        (
            "container ID charset",
            Box::new(|e| set(e, "CNI_CONTAINERID", "bad/id")),
            "CNI_CONTAINERID",
        ),
        (
            "ifname too long",
            Box::new(|e| set(e, "CNI_IFNAME", "sixteen-chars-xx")),
            "CNI_IFNAME",
        ),
        (
            "ifname with colon",
            Box::new(|e| set(e, "CNI_IFNAME", "eth:0")),
            "CNI_IFNAME",
        ),
        (
            "netns missing",
            Box::new(|e| set(e, "CNI_NETNS", "/run/netns/trl-no-such-ns")),
            "CNI_NETNS",
        ),
        (
            "netns not a namespace",
            Box::new(move |e| set(e, "CNI_NETNS", &not_a_netns)),
            "not a network namespace",
        ),
        (
            "malformed args",
            Box::new(|e| set(e, "CNI_ARGS", "IP=10.88.0.2;garbage")),
            "CNI_ARGS",
        ),
    ];
    for (what, edit, needle) in cases {
        expect_add_error(&node, &pod, what, edit, &good, 4, needle);
    }
    node.assert_address_free(&list);
}

#[test]
fn bad_configurations_get_their_codes() {
    let node = Node::new("conf-node");
    let pod = node.pod("conf-pod");
    let list = node.single_host("1.0.0");
    let plugin = node.trellis(ONE_ADDRESS, json!({}));
    let with = |extra: Value| {
        let mut conf: Value =
            serde_json::from_slice(&network_config("net", "1.0.0", &plugin)).unwrap();
        merge(&mut conf, extra);
        serde_json::to_vec(&conf).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "not JSON",
            b"{\"cniVersion\": \"1.0.0\",".to_vec(),
            6,
            "decode",
        ),
        ("not an object", b"[1, 2]".to_vec(), 6, "object"),
        (
            "old version",
            network_config("net", "0.2.0", &plugin),
            1,
            "0.2.0",
        ),
        ("no version", with(json!({"cniVersion": null})), 1, "0.1.0"),
        ("no name", with(json!({"name": null})), 7, "name"),
        ("no ipam", with(json!({"ipam": null})), 7, "ipam"),
        (
            "ipam without type",
            with(json!({"ipam": {"type": null}})),
            7,
            "ipam.type",
        ),
        ("mtu 0", with(json!({"mtu": 0})), 7, "mtu"),
        ("mtu too big", with(json!({"mtu": 70000})), 7, "mtu"),
        ("mtu a string", with(json!({"mtu": "big"})), 7, "mtu"),
        ("bridge name", with(json!({"bridge": "br/0"})), 7, "bridge"),
        (
            "bridge name too long",
            with(json!({"bridge": "a-very-long-bridge"})),
            7,
            "bridge",
        ),
        (
            "relative stateDir",
            with(json!({"stateDir": "run/trellis"})),
            7,
            "stateDir",
        ),
        (
            "ipMasq not a bool",
            with(json!({"ipMasq": "yes"})),
            7,
            "invalid type",
        ),
        (
            "bad subnet",
            with(json!({"ipam": {"subnet": "10.88.0.0/33"}})),
            7,
            "ipam.subnet",
        ),
        (
            "IPAM plugin not installed",
            with(json!({"ipam": {"type": "no-such-ipam"}})),
            101,
            "no-such-ipam",
        ),
    ];
    for (what, stdin, code, needle) in cases {
        expect_add_error(&node, &pod, what, |_| {}, &stdin, code, needle);
    }
    node.assert_address_free(&list);
}

#[test]
fn a_device_of_another_kind_under_the_bridge_name_is_a_config_error() {
    let node = Node::new("kind-node");
    let pod = node.pod("kind-pod");
    let list = node.single_host("1.0.0");
    node.ns
        .ok(&[
            "ip", "link", "add", "trellis0", "type", "veth", "peer", "name", "other0",
        ])
        .unwrap();
    let stdin = network_config("net", "1.0.0", &node.trellis(ONE_ADDRESS, json!({})));
    expect_add_error(
        &node,
        &pod,
        "veth named trellis0",
        |_| {},
        &stdin,
        7,
        "not a bridge",
    );
    // The squatter is untouched; once it is gone, ADD works.
    assert!(node.ns.links().unwrap().contains(&"trellis0".to_string()));
    node.ns.ok(&["ip", "link", "del", "trellis0"]).unwrap();
    node.assert_address_free(&list);
}

#[test]
fn an_interface_that_exists_in_the_container_is_refused() {
    let node = Node::new("dup-node");
    let pod = node.pod("dup-pod");
    let list = node.single_host("1.0.0");
    pod.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth9",
    ])
    .unwrap();
    let stdin = network_config("net", "1.0.0", &node.trellis(ONE_ADDRESS, json!({})));
    expect_add_error(&node, &pod, "eth0 exists", |_| {}, &stdin, 4, "CNI_IFNAME");
    let mut links = pod.links().unwrap();
    links.sort();
    assert_eq!(links, ["eth0", "eth9"], "the container's own devices stay");
    node.assert_address_free(&list);
}

#[test]
fn a_second_add_of_the_same_attachment_is_refused_and_spares_the_first() {
    let node = Node::new("twice-node");
    let pod = node.pod("twice-pod");
    let list = node.conflist(
        "net",
        "1.0.0",
        vec![node.trellis("10.88.0.0/24", json!({}))],
    );
    let att = Attachment::new("twice-1", pod.path(), "eth0");
    node.driver.add(&list, &att).unwrap();
    let veths = node.host_veths();
    let err = node.driver.add(&list, &att).unwrap_err();
    assert_eq!(err.code, 4, "{err}");
    assert_eq!(node.host_veths(), veths);
    node.driver.check(&list, &att).unwrap();
    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
}

#[test]
fn a_failure_after_allocation_rolls_back_the_veth_and_the_address() {
    let node = Node::new("roll-node");
    let pod = node.pod("roll-pod");
    let list = node.single_host("1.0.0");
    // The IPAM hands out a route whose gateway is unreachable from the
    // container: installing it fails after the veth and the address exist.
    let plugin = node.trellis(
        ONE_ADDRESS,
        json!({"ipam": {"routes": [{"dst": "10.99.0.0/16", "gw": "192.0.2.99"}]}}),
    );
    let stdin = network_config("net", "1.0.0", &plugin);
    expect_add_error(
        &node,
        &pod,
        "unreachable route",
        |_| {},
        &stdin,
        100,
        "10.99.0.0",
    );
    assert!(pod.links().unwrap().is_empty());
    node.assert_address_free(&list);
}

#[test]
fn an_exhausted_pool_fails_cleanly() {
    let node = Node::new("full-node");
    let list = node.single_host("1.0.0");
    let first_pod = node.pod("full-a");
    let second_pod = node.pod("full-b");
    let first = Attachment::new("full-1", first_pod.path(), "eth0");
    let second = Attachment::new("full-2", second_pod.path(), "eth0");
    node.driver.add(&list, &first).unwrap();
    let veths = node.host_veths();
    let err = node.driver.add(&list, &second).unwrap_err();
    assert_ne!(err.code, 0, "{err}");
    assert!(second_pod.links().unwrap().is_empty());
    assert_eq!(node.host_veths(), veths, "only the first container's veth");
    node.driver.check(&list, &first).unwrap();
    node.driver.del(&list, &first).unwrap();
    node.assert_no_attachment_left();
    node.assert_address_free(&list);
}

#[test]
fn verbs_their_version_does_not_have_are_refused_with_code_1() {
    let node = Node::new("verb-node");
    let pod = node.pod("verb-pod");
    let plugin = node.trellis(ONE_ADDRESS, json!({}));
    let netns = pod.path().to_str().unwrap().to_string();
    for (command, version) in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")] {
        let env = node.cni_env(command, "verb-1", &netns, "eth0");
        let out = node.invoke(&env, &network_config("net", version, &plugin));
        assert_eq!(out.error_code(), 1, "{command} {version}: {out:?}");
        assert_eq!(out.json()["cniVersion"], version);
    }
}

#[test]
fn del_removes_the_veth_even_when_the_ipam_plugin_is_missing() {
    let node = Node::new("delipam-node");
    let pod = node.pod("delipam-pod");
    let list = node.single_host("1.0.0");
    let att = Attachment::new("delipam-1", pod.path(), "eth0");
    node.driver.add(&list, &att).unwrap();

    let broken = network_config(
        "net",
        "1.0.0",
        &node.trellis(ONE_ADDRESS, json!({"ipam": {"type": "no-such-ipam"}})),
    );
    let netns = pod.path().to_str().unwrap().to_string();
    let out = node.invoke(&node.cni_env("DEL", "delipam-1", &netns, "eth0"), &broken);
    assert_eq!(out.error_code(), 101, "{out:?}");
    assert_eq!(node.host_veths(), Vec::<String>::new());
    assert!(pod.links().unwrap().is_empty());

    // The runtime retries with the right configuration: the address goes.
    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
    node.assert_address_free(&list);
}

#[test]
fn an_ipam_add_that_succeeds_with_an_unusable_result_gives_the_address_back() {
    let node = Node::new("garble-node");
    let pod = node.pod("garble-pod");
    let list = node.single_host("1.0.0");
    // The real IPAM plugin allocates, but its answer to ADD is garbled: the
    // address is held although trellis cannot use the result.
    let wrapper = node.bins.path().join("garbling-ipam");
    trellis_tests::bins::write_executable(
        &wrapper,
        &format!(
            "#!/bin/sh\nout=$(\"$(dirname \"$0\")/{}\") || {{ rc=$?; printf '%s' \"$out\"; exit $rc; }}\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then echo garbage; else printf '%s' \"$out\"; fi\n",
            ipam_type()
        ),
    )
    .unwrap();
    let mut plugin = node.trellis(ONE_ADDRESS, json!({}));
    plugin["ipam"]["type"] = json!("garbling-ipam");
    let stdin = network_config("net", "1.0.0", &plugin);
    expect_add_error(
        &node,
        &pod,
        "garbled IPAM result",
        |_| {},
        &stdin,
        101,
        "ADD result",
    );
    node.assert_address_free(&list);
}
