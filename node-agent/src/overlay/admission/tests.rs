//! Which records the admission lets in, and why it leaves the others out.

use super::*;

/// Node "a" holding 10.244.1.0/24 of 10.244.0.0/16, IPv4 only.
pub(crate) fn view_of_a() -> LocalView {
    LocalView {
        node: "a".into(),
        subnet: Some("10.244.1.0/24".parse().unwrap()),
        network: Some("10.244.0.0/16".parse().unwrap()),
        subnet6: None,
        network6: None,
        underlay_v6: false,
    }
}

fn rec(subnet: &str, ip: &str, mac: &str) -> NodeRecord {
    NodeRecord {
        subnet: Some(subnet.parse().unwrap()),
        public_ip: ip.parse().unwrap(),
        vtep_mac: mac.into(),
        network: None,
        mtu: None,
        node_name: None,
        kubernetes: false,
        status_addr: None,
        dns: false,
        ipv6_subnet: None,
        ipv6_network: None,
        bridge: None,
    }
}

#[test]
fn a_removed_node_frees_its_subnet_and_mac() {
    let mut a = Admission::new(&view_of_a());
    let b = rec("10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02");
    assert!(a.admit("b", &b).unwrap().is_some());
    let err = a.admit("c", &b).unwrap_err();
    assert!(err.contains("overlaps 10.244.2.0/24 of node b"), "{err}");
    assert_eq!(
        a.remove("b").unwrap().ipv4.unwrap().subnet,
        b.subnet.unwrap()
    );
    assert!(a.remove("b").is_none());
    assert!(a.admit("c", &b).unwrap().is_some());
    assert_eq!(a.desired().nodes.keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(a.admit("a", &b), Ok(None), "this node is never an entry");
}

/// Each of `wanted` is in one of the admission's `warnings`.
#[track_caller]
fn assert_warned(warnings: &[String], wanted: &[&str]) {
    for want in wanted {
        assert!(
            warnings.iter().any(|w| w.contains(want)),
            "{want}: {warnings:#?}"
        );
    }
}

/// Node records by name, from (name, subnet, public IP, VTEP MAC) rows.
fn records(rows: &[(&str, &str, &str, &str)]) -> BTreeMap<String, NodeRecord> {
    rows.iter()
        .map(|(name, subnet, ip, mac)| {
            let record = NodeRecord {
                subnet: Some(subnet.parse().unwrap()),
                public_ip: ip.parse().unwrap(),
                vtep_mac: (*mac).into(),
                network: None,
                mtu: None,
                node_name: None,
                kubernetes: false,
                status_addr: None,
                dns: false,
                ipv6_subnet: None,
                ipv6_network: None,
                bridge: None,
            };
            (name.to_string(), record)
        })
        .collect()
}

#[test]
fn remote_nodes_become_entries_and_self_is_skipped() {
    let records = records(&[
        ("a", "10.244.1.0/24", "192.0.2.1", "02:00:00:00:00:01"),
        ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
    ]);
    let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &records);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(d.len(), 1);
    let b = d.nodes["b"];
    assert_eq!(b.first_vtep_ip().to_string(), "10.244.2.0");
    assert_eq!(b.public_ip.to_string(), "192.0.2.2");
    assert_eq!(b.vtep_mac.to_string(), "02:00:00:00:00:02");
}

#[test]
fn records_that_would_break_the_overlay_are_left_out() {
    let records = records(&[
        ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
        (
            "c-outside",
            "10.99.0.0/24",
            "192.0.2.3",
            "02:00:00:00:00:03",
        ),
        ("d-mine", "10.244.1.0/24", "192.0.2.4", "02:00:00:00:00:04"),
        (
            "e-dup-subnet",
            "10.244.2.0/24",
            "192.0.2.5",
            "02:00:00:00:00:05",
        ),
        (
            "f-dup-mac",
            "10.244.6.0/24",
            "192.0.2.6",
            "02:00:00:00:00:02",
        ),
        ("g-bad-mac", "10.244.7.0/24", "192.0.2.7", "nope"),
        ("h-v6", "10.244.8.0/24", "2001:db8::8", "02:00:00:00:00:08"),
        ("i-ok", "10.244.9.0/24", "192.0.2.9", "02:00:00:00:00:09"),
    ]);
    let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &records);
    assert_eq!(d.nodes.keys().collect::<Vec<_>>(), vec!["b", "i-ok"]);
    assert_eq!(warnings.len(), 6, "{warnings:#?}");
    assert!(warnings
        .iter()
        .any(|w| w.contains("overlaps this node's 10.244.1.0/24")));
    assert!(warnings.iter().any(|w| w.contains("already node b's")));
}

#[test]
fn overlaps_of_other_sizes_are_caught() {
    let records = records(&[
        ("b", "10.244.4.0/24", "192.0.2.2", "02:00:00:00:00:02"),
        ("c-wide", "10.244.4.0/22", "192.0.2.3", "02:00:00:00:00:03"),
        (
            "d-inside",
            "10.244.4.128/25",
            "192.0.2.4",
            "02:00:00:00:00:04",
        ),
        ("e", "10.244.5.0/24", "192.0.2.5", "02:00:00:00:00:05"),
    ]);
    let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &records);
    assert_eq!(
        d.nodes.keys().collect::<Vec<_>>(),
        vec!["b", "e"],
        "{warnings:?}"
    );
}

#[test]
fn ipv6_subnets_are_admitted_when_they_fit_and_are_distinct() {
    let view = LocalView {
        subnet6: Some("fd10:244:0:1::/64".parse().unwrap()),
        network6: Some("fd10:244::/56".parse().unwrap()),
        ..view_of_a()
    };
    let mut rows = records(&[
        ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
        ("c-dup6", "10.244.3.0/24", "192.0.2.3", "02:00:00:00:00:03"),
        ("d-mine6", "10.244.4.0/24", "192.0.2.4", "02:00:00:00:00:04"),
        (
            "e-outside6",
            "10.244.5.0/24",
            "192.0.2.5",
            "02:00:00:00:00:05",
        ),
        ("f-len", "10.244.6.0/24", "192.0.2.6", "02:00:00:00:00:06"),
        (
            "g-v4only",
            "10.244.7.0/24",
            "192.0.2.7",
            "02:00:00:00:00:07",
        ),
    ]);
    for (name, subnet6) in [
        ("b", "fd10:244:0:2::/64"),
        ("c-dup6", "fd10:244:0:2::/64"),
        ("d-mine6", "fd10:244:0:1::/64"),
        ("e-outside6", "fd99::/64"),
        ("f-len", "fd10:244:0:6::/80"),
    ] {
        rows.get_mut(name).unwrap().ipv6_subnet = Some(subnet6.parse().unwrap());
    }
    let (d, warnings) = DesiredOverlay::from_records(&view, &rows);
    assert_eq!(
        d.nodes.keys().collect::<Vec<_>>(),
        ["b", "g-v4only"],
        "{warnings:#?}"
    );
    let b6 = d.nodes["b"].ipv6.unwrap();
    assert_eq!(b6.vtep_ip.to_string(), "fd10:244:0:2::");
    assert_eq!(d.nodes["g-v4only"].ipv6, None);
    assert_warned(
        &warnings,
        &[
            "ipv6Subnet fd10:244:0:2::/64 is already node b's",
            "ipv6Subnet fd10:244:0:1::/64 is this node's",
            "ipv6Subnet fd99::/64 is not a /64 subnet",
            "ipv6Subnet fd10:244:0:6::/80 is not a /64 subnet",
        ],
    );
    // An IPv4-only node (not yet restarted with the new ipv6Network)
    // keeps every node's IPv4 entries.
    let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &rows);
    assert_eq!(d.len(), 6, "{warnings:#?}");
    assert!(d.nodes.values().all(|n| n.ipv6.is_none()));
}

#[test]
fn an_ipv6_underlay_admits_ipv6_public_ips_only() {
    let view = LocalView {
        underlay_v6: true,
        ..view_of_a()
    };
    let rows = records(&[
        ("b", "10.244.2.0/24", "2001:db8:2::2", "02:00:00:00:00:02"),
        ("c-v4", "10.244.3.0/24", "192.0.2.3", "02:00:00:00:00:03"),
    ]);
    let (d, warnings) = DesiredOverlay::from_records(&view, &rows);
    assert_eq!(d.nodes.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(d.nodes["b"].public_ip.to_string(), "2001:db8:2::2");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains(
            "node c-v4: public IP 192.0.2.3 is IPv4, but this node a has an IPv6 underlay"
        ),
        "{warnings:?}"
    );
}

#[test]
fn an_ipv6_only_view_admits_ipv6_subnets_and_needs_them() {
    let view = LocalView {
        subnet: None,
        network: None,
        subnet6: Some("fd10:244:0:1::/64".parse().unwrap()),
        network6: Some("fd10:244::/56".parse().unwrap()),
        ..view_of_a()
    };
    let mut rows = records(&[
        ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
        ("c-none", "10.244.3.0/24", "192.0.2.3", "02:00:00:00:00:03"),
        ("d-dup", "10.244.4.0/24", "192.0.2.4", "02:00:00:00:00:04"),
    ]);
    for row in rows.values_mut() {
        row.subnet = None;
    }
    rows.get_mut("b").unwrap().ipv6_subnet = Some("fd10:244:0:2::/64".parse().unwrap());
    rows.get_mut("d-dup").unwrap().ipv6_subnet = Some("fd10:244:0:2::/64".parse().unwrap());
    let (d, warnings) = DesiredOverlay::from_records(&view, &rows);
    assert_eq!(d.nodes.keys().collect::<Vec<_>>(), ["b"], "{warnings:#?}");
    let b = d.nodes["b"];
    assert_eq!(b.ipv4, None);
    assert_eq!(b.first_vtep_ip().to_string(), "fd10:244:0:2::");
    assert_warned(
        &warnings,
        &[
            "node c-none: no ipv6Subnet, but the cluster network fd10:244::/56 is IPv6-only",
            "ipv6Subnet fd10:244:0:2::/64 is already node b's",
        ],
    );
    // A record of an IPv4 subnet alone cannot join a dual-stack view
    // without its IPv4 side, nor an IPv6-only record an IPv4 view.
    let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &rows);
    assert!(d.is_empty());
    assert!(
        warnings
            .iter()
            .any(|w| w
                .contains("node b: no IPv4 subnet, but the cluster network 10.244.0.0/16 is IPv4")),
        "{warnings:#?}"
    );
}
