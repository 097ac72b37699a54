//! The cluster configuration's checks and subnet arithmetic, per family.

use super::*;

#[test]
fn defaults_and_subnets() {
    let c = ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap();
    assert_eq!((c.subnet_len, c.vni, c.port), (24, 1, 8472));
    assert_eq!(c.subnet_count(), 256);
    assert_eq!(c.subnet_at(3).unwrap().to_string(), "10.244.3.0/24");
    assert_eq!(c.subnet_at(255).unwrap().to_string(), "10.244.255.0/24");
    assert!(c.subnet_at(256).is_none());
    assert!(c.fits("10.244.9.0/24".parse().unwrap()));
    for other in ["10.245.9.0/24", "10.244.9.0/25", "10.244.9.1/24"] {
        assert!(!c.fits(other.parse().unwrap()), "{other}");
    }
}

#[test]
fn dual_stack_pairs_each_node_subnet_with_its_ipv6_twin() {
    let c = ClusterConfig::parse(br#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/56"}"#)
        .unwrap();
    assert_eq!(c.ipv6_subnet_len, 64);
    let twin = |s: &str| c.ipv6_subnet_for(s.parse().unwrap()).map(|n| n.to_string());
    assert_eq!(twin("10.244.0.0/24").as_deref(), Some("fd10:244::/64"));
    assert_eq!(twin("10.244.3.0/24").as_deref(), Some("fd10:244:0:3::/64"));
    assert_eq!(
        twin("10.244.255.0/24").as_deref(),
        Some("fd10:244:0:ff::/64")
    );
    assert_eq!(twin("10.245.3.0/24"), None);
    let nets: Vec<String> = c.pod_networks().iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.244.0.0/16", "fd10:244::/56"]);
    assert!(c.holds("10.244.9.9".parse().unwrap()));
    assert!(c.holds("fd10:244:0:9::9".parse().unwrap()));
    assert!(!c.holds("10.245.0.1".parse().unwrap()));
    assert!(!c.holds("fd10:245::1".parse().unwrap()));
    // Written back without the default length; IPv4-only stays as it was.
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["ipv6Network"], "fd10:244::/56");
    assert!(v.get("ipv6SubnetLen").is_none());
    let v4 = ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap();
    assert!(!v4.direct_routing);
    assert!(serde_json::to_value(&v4)
        .unwrap()
        .get("directRouting")
        .is_none());
    let direct =
        ClusterConfig::parse(br#"{"network":"10.244.0.0/16","directRouting":true}"#).unwrap();
    assert!(direct.direct_routing);
    assert_eq!(
        serde_json::to_value(&direct).unwrap()["directRouting"],
        true
    );
    assert!(serde_json::to_value(&v4)
        .unwrap()
        .get("ipv6Network")
        .is_none());
    assert_eq!(v4.ipv6_subnet_for("10.244.3.0/24".parse().unwrap()), None);
    let c = ClusterConfig::parse(
        br#"{"network":"10.0.0.0/8","subnetLen":24,"ipv6Network":"fd00::/40","ipv6SubnetLen":64}"#,
    )
    .unwrap();
    assert_eq!(
        c.ipv6_subnet_for("10.255.255.0/24".parse().unwrap())
            .unwrap()
            .to_string(),
        "fd00:0:0:ffff::/64"
    );
}

#[test]
fn an_ipv6_only_network_is_cut_into_ipv6_lease_subnets() {
    let c = ClusterConfig {
        network: None,
        ipv6_network: Some("fd10:244::/56".parse().unwrap()),
        ..ClusterConfig::parse(br#"{"network":"10.244.0.0/16"}"#).unwrap()
    };
    assert_eq!(c.lease_network().to_string(), "fd10:244::/56");
    assert_eq!(c.lease_subnet_len(), 64);
    assert_eq!(c.subnet_count(), 256);
    let third = c.subnet_at(3).unwrap();
    assert_eq!(third.to_string(), "fd10:244:0:3::/64");
    assert_eq!(c.subnet_at(255).unwrap().to_string(), "fd10:244:0:ff::/64");
    assert_eq!(c.subnet_at(256), None);
    assert!(c.fits(third));
    for other in [
        "fd10:245::/64",
        "fd10:244:0:3::/65",
        "fd10:244:0:3::1/64",
        "10.244.3.0/24",
    ] {
        assert!(!c.fits(other.parse().unwrap()), "{other}");
    }
    assert_eq!(c.ipv4_subnet_for(third), None);
    assert_eq!(c.ipv6_subnet_for(third).map(IpNetwork::V6), Some(third));
    let nets: Vec<String> = c.pod_networks().iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["fd10:244::/56"]);
    assert!(c.holds("fd10:244:0:9::9".parse().unwrap()));
    assert!(!c.holds("10.244.9.9".parse().unwrap()));
    // A /32 of /64s: more subnets than a u64 walk needs, and the last
    // one still in the network.
    let wide = ClusterConfig {
        ipv6_network: Some("fd00::/8".parse().unwrap()),
        ipv6_subnet_len: 120,
        ..c.clone()
    };
    assert_eq!(wide.subnet_count(), 1 << 63);
    assert!(wide.fits(wide.subnet_at((1 << 63) - 1).unwrap()));
    // As stored: no "network", and the checks of an IPv6 network.
    let parsed = ClusterConfig::parse(br#"{"ipv6Network":"fd10:244::/56"}"#).unwrap();
    assert_eq!(parsed, c);
    assert!(serde_json::to_value(&parsed)
        .unwrap()
        .get("network")
        .is_none());
    for (bad, why) in [
        (r#"{"ipv6Network":"fd10:244::1/56"}"#, "host bits set"),
        (
            r#"{"ipv6Network":"fd10:244::/56","ipv6SubnetLen":56}"#,
            "ipv6SubnetLen 56 must be longer",
        ),
        (
            r#"{"ipv6Network":"fd10:244::/56","mtu":1200}"#,
            "(IPv6 needs 1280)",
        ),
    ] {
        let e = ClusterConfig::parse(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}

#[test]
fn impossible_configurations_are_refused_with_a_reason() {
    for (bad, reason) in [
        (
            r#"{"network":"10.244.0.0/16","subnetLen":16}"#,
            "subnetLen 16",
        ),
        (
            r#"{"network":"10.244.0.0/16","subnetLen":31}"#,
            "subnetLen 31",
        ),
        (r#"{"network":"10.244.0.0/16","vni":0}"#, "vni 0"),
        (
            r#"{"network":"10.244.0.0/16","vni":16777216}"#,
            "vni 16777216",
        ),
        (r#"{"network":"10.244.0.0/16","port":0}"#, "port"),
        (r#"{"subnetLen":24}"#, "missing field `network`"),
        (
            r#"{"network":"10.244.0.0/16","mtu":67}"#,
            "mtu 67 must be between 68 and 65535",
        ),
        (
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/56","mtu":1200}"#,
            "mtu 1200 must be between 1280 and 65535 (IPv6 needs 1280)",
        ),
        (
            r#"{"network":"10.244.1.0/16"}"#,
            "host bits set (did you mean 10.244.0.0/16?)",
        ),
        (r#"{"network":"nope"}"#, "invalid"),
        (
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/60"}"#,
            "holds 16 /64 subnets, fewer than the 256 /24 subnets",
        ),
        (
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::1/56"}"#,
            "ipv6Network fd10:244::1/56 has host bits set",
        ),
        (
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/56","ipv6SubnetLen":56}"#,
            "ipv6SubnetLen 56 must be longer",
        ),
        (
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd10:244::/56","ipv6SubnetLen":124}"#,
            "ipv6SubnetLen 124 must be longer",
        ),
        (
            r#"{"network":"10.0.0.0/8","subnetLen":16,"ipv6Network":"fd10:244::/56","ipv6SubnetLen":120}"#,
            "leaves fewer pod addresses than subnetLen 16",
        ),
        (
            r#"{"network":"10.244.0.0/16","ipv6Network":"10.0.0.0/8"}"#,
            "invalid",
        ),
        ("not json", "expected"),
    ] {
        let e = ClusterConfig::parse(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(reason), "{bad}: {e}");
    }
}
