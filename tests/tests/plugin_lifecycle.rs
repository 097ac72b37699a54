//! The `trellis` plugin through a real libcni client, single-host mode, in
//! namespaces: ADD wires the container, CHECK sees it, DEL removes all of
//! it (also twice, also with the namespace gone), in every spec version.

mod plugin_common;

use plugin_common::*;
use serde_json::json;
use trellis_tests::libcni::Attachment;

#[test]
fn add_wires_the_container_and_del_removes_everything() {
    let node = Node::new("life-node");
    let pod = node.pod("life-pod");
    let list = node.single_host("1.0.0");
    let att = Attachment::new("life-1", pod.path(), "eth0");

    let result = node.driver.add(&list, &att).unwrap();

    // The result: bridge, host veth (no sandbox), container interface (its
    // sandbox), the address on the container interface with its gateway.
    assert_eq!(result["cniVersion"], "1.0.0");
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 3, "{result}");
    assert_eq!(ifaces[0]["name"], "trellis0");
    let host = ifaces[1]["name"].as_str().unwrap().to_string();
    assert_eq!(node.host_veths(), std::slice::from_ref(&host));
    assert!(ifaces[1].get("sandbox").is_none(), "{result}");
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], pod.path().to_str().unwrap());
    assert_eq!(result["ips"][0]["address"], ONE_ADDRESS_IP);
    assert_eq!(result["ips"][0]["gateway"], ONE_ADDRESS_GW);
    assert_eq!(result["ips"][0]["interface"], 2);
    assert!(result["ips"][0].get("version").is_none());

    // The container: eth0 up with the address and MAC of the result, the
    // default route via the gateway.
    let eth0 = link_json(&pod, "eth0");
    assert_eq!(eth0["operstate"], "UP");
    assert_eq!(eth0["address"], ifaces[2]["mac"]);
    assert_eq!(addresses(&pod, "eth0"), [ONE_ADDRESS_IP]);
    assert_eq!(
        default_route(&pod),
        Some((ONE_ADDRESS_GW.to_string(), "eth0".to_string()))
    );

    // The node: the veth is a hairpin port of the up bridge, which holds
    // the gateway; forwarding on; masquerade for the subnet.
    let veth = node.link(&host);
    assert_eq!(veth["master"], "trellis0");
    assert_eq!(veth["linkinfo"]["info_slave_kind"], "bridge");
    assert_eq!(veth["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(veth["address"], ifaces[1]["mac"]);
    let bridge = node.link("trellis0");
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    assert!(bridge["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(addresses(&node.ns, "trellis0"), ["10.88.0.1/30"]);
    assert_eq!(
        node.ns
            .ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    assert!(node.has_masquerade("trellis0"));
    // Traffic flows: the container reaches its gateway (one packet, to a
    // namespace of this test).
    pod.ok(&["ping", "-c", "1", "-W", "2", ONE_ADDRESS_GW])
        .unwrap();

    node.driver.check(&list, &att).unwrap();

    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
    assert!(pod.links().unwrap().is_empty(), "{:?}", pod.links());
    // The bridge stays for the next container; its address too.
    assert_eq!(addresses(&node.ns, "trellis0"), ["10.88.0.1/30"]);
    node.assert_address_free(&list);

    // DEL again: nothing to remove, still a success.
    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
}

#[test]
fn the_bridge_keeps_its_mac_as_containers_come_and_go() {
    let node = Node::new("mac-node");
    let list = node.conflist(
        "net",
        "1.0.0",
        vec![node.trellis("10.88.0.0/24", json!({}))],
    );
    let pods: Vec<_> = (0..3).map(|i| node.pod(&format!("mac-pod{i}"))).collect();
    let atts: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment::new(format!("mac-{i}"), p.path(), "eth0"))
        .collect();
    let first = node.driver.add(&list, &atts[0]).unwrap();
    let mac = first["interfaces"][0]["mac"].clone();
    assert_eq!(node.link("trellis0")["address"], mac);
    for att in &atts[1..] {
        node.driver.add(&list, att).unwrap();
        assert_eq!(node.link("trellis0")["address"], mac);
    }
    for att in &atts {
        node.driver.del(&list, att).unwrap();
        assert_eq!(node.link("trellis0")["address"], mac);
    }
}

#[test]
fn del_succeeds_and_releases_the_address_when_the_namespace_is_gone() {
    let node = Node::new("gone-node");
    let list = node.single_host("1.0.0");
    let pod = node.pod("gone-pod");
    let att = Attachment::new("gone-1", pod.path(), "eth0");
    node.driver.add(&list, &att).unwrap();
    assert_eq!(node.host_veths().len(), 1);

    drop(pod); // the runtime removed the sandbox before DEL
    assert!(!att.netns.exists());
    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
    node.assert_address_free(&list);
}

#[test]
fn del_of_an_unknown_container_without_netns_or_prev_result_succeeds() {
    let node = Node::new("unk-node");
    let plugin = node.trellis(ONE_ADDRESS, json!({}));
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let stdin = network_config("net", version, &plugin);
        let mut env = node.cni_env("DEL", "never-added", "", "eth0");
        env.retain(|(k, _)| *k != "CNI_NETNS");
        let out = node.invoke(&env, &stdin);
        assert!(out.success, "{version}: {out:?}");
        assert_eq!(out.stdout, "", "DEL prints nothing on success");
    }
    node.assert_no_attachment_left();
}

#[test]
fn every_spec_version_gets_its_own_result_shape() {
    let node = Node::new("ver-node");
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let list = node.single_host(version);
        let pod = node.pod("ver-pod");
        let att = Attachment::new(
            format!("ver-{}", version.replace('.', "")),
            pod.path(),
            "eth0",
        );
        let result = node
            .driver
            .add(&list, &att)
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(result["cniVersion"], version);
        let ip = &result["ips"][0];
        assert_eq!(ip["address"], ONE_ADDRESS_IP, "{version}");
        assert_eq!(ip["interface"], 2, "{version}");
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version}: {result}");
        } else {
            assert!(ip.get("version").is_none(), "{version}: {result}");
        }
        // 1.1.0 fields never leak into older results.
        assert!(result["interfaces"][2].get("mtu").is_none(), "{result}");
        if version != "0.3.0" && version != "0.3.1" {
            node.driver
                .check(&list, &att)
                .unwrap_or_else(|e| panic!("CHECK {version}: {e}"));
        }
        node.driver.del(&list, &att).unwrap();
        node.assert_no_attachment_left();
    }
}

#[test]
fn check_fails_when_the_attachment_was_tampered_with() {
    let node = Node::new("chk-node");
    let list = node.single_host("1.0.0");
    type Breakage = (&'static str, fn(&Node, &trellis_tests::netns::Netns, &str));
    let breakages: [Breakage; 5] = [
        ("address removed", |_, pod, _| {
            pod.ok(&["ip", "addr", "flush", "dev", "eth0"]).unwrap();
        }),
        ("default route removed", |_, pod, _| {
            pod.ok(&["ip", "route", "del", "default"]).unwrap();
        }),
        ("container interface down", |_, pod, _| {
            pod.ok(&["ip", "link", "set", "eth0", "down"]).unwrap();
        }),
        ("veth off the bridge", |node, _, host| {
            node.ns
                .ok(&["ip", "link", "set", host, "nomaster"])
                .unwrap();
        }),
        ("hairpin off", |node, _, host| {
            node.ns
                .ok(&[
                    "ip",
                    "link",
                    "set",
                    host,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "off",
                ])
                .unwrap();
        }),
    ];
    for (what, breakage) in breakages {
        let pod = node.pod("chk-pod");
        let att = Attachment::new("chk-1", pod.path(), "eth0");
        let result = node.driver.add(&list, &att).unwrap();
        node.driver.check(&list, &att).unwrap();
        let host = result["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string();
        breakage(&node, &pod, &host);
        let err = node
            .driver
            .check(&list, &att)
            .expect_err(&format!("CHECK passed with {what}"));
        assert_eq!(err.code, 104, "{what}: {err}");
        node.driver.del(&list, &att).unwrap();
        node.assert_no_attachment_left();
    }
}

#[test]
fn mtu_comes_from_config_else_from_the_default_route_interface() {
    let node = Node::new("mtu-node");
    // An underlay of MTU 9000 holding the node's default route (a veth
    // whose peer stays in the node: the kernel has no dummy driver).
    node.ns
        .ok(&[
            "ip",
            "link",
            "add",
            "uplink",
            "mtu",
            "9000",
            "type",
            "veth",
            "peer",
            "name",
            "uplink-peer",
            "mtu",
            "9000",
        ])
        .unwrap();
    node.ns
        .ok(&["ip", "link", "set", "uplink-peer", "up"])
        .unwrap();
    node.ns
        .add_addr("uplink", "192.0.2.10/24".parse().unwrap())
        .unwrap();
    node.ns
        .ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "uplink",
        ])
        .unwrap();

    for (bridge, extra, want) in [
        ("trlbr1", json!({"mtu": 1400}), 1400),
        ("trlbr2", json!({}), 9000),
    ] {
        let mut extra = extra;
        extra["bridge"] = json!(bridge);
        let list = node.conflist(bridge, "1.0.0", vec![node.trellis(ONE_ADDRESS, extra)]);
        let pod = node.pod("mtu-pod");
        let att = Attachment::new("mtu-1", pod.path(), "eth0");
        let result = node.driver.add(&list, &att).unwrap();
        let host = result["interfaces"][1]["name"].as_str().unwrap();
        assert_eq!(link_json(&pod, "eth0")["mtu"], want, "{bridge}");
        assert_eq!(node.link(host)["mtu"], want, "{bridge}");
        node.driver.del(&list, &att).unwrap();
    }
}

#[test]
fn cluster_mode_takes_subnet_gateway_and_mtu_from_the_node_record() {
    let node = Node::new("clu-node");
    let list = node.conflist(
        "cluster",
        "1.0.0",
        vec![json!({
            "type": "trellis",
            "stateDir": node.state_dir(),
            // No `subnet` key: cluster mode (the IPAM is told its range).
            "ipam": {"type": "host-local", "dataDir": node.ipam_dir(),
                     "ranges": [[{"subnet": "10.244.3.0/24"}]]},
        })],
    );
    let pod = node.pod("clu-pod");
    let att = Attachment::new("clu-1", pod.path(), "eth0");

    // No agent yet: try again later, and nothing was done.
    let err = node.driver.add(&list, &att).unwrap_err();
    assert_eq!(err.code, 11, "{err}");
    assert!(err.msg.contains("trellis-agent"), "{err}");
    assert!(node.ns.links().unwrap().is_empty());

    std::fs::create_dir_all(node.state_dir()).unwrap();
    std::fs::write(
        node.state_dir().join("node.json"),
        json!({"subnet": "10.244.3.0/24", "publicIP": "192.0.2.3",
               "vtepMAC": "02:00:00:00:00:03", "mtu": 1450})
        .to_string(),
    )
    .unwrap();
    let result = node.driver.add(&list, &att).unwrap();
    assert_eq!(result["ips"][0]["gateway"], "10.244.3.1");
    assert_eq!(addresses(&node.ns, "trellis0"), ["10.244.3.1/24"]);
    assert_eq!(link_json(&pod, "eth0")["mtu"], 1450);
    // The agent owns masquerade in cluster mode.
    assert!(!node.has_masquerade("trellis0"));
    node.driver.check(&list, &att).unwrap();
    node.driver.del(&list, &att).unwrap();
    node.assert_no_attachment_left();
}
