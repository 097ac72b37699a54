use super::snapshot::Held6;
use super::*;
use trellis_common::attachment_report::AttachmentReport;
use trellis_common::attachment_report::CheckedAllocation;
use trellis_ipam::allocation::Owner;

fn owner(cid: &str, node: &str) -> Owner {
    Owner {
        container_id: cid.into(),
        ifname: "eth0".into(),
        node: node.into(),
        network: "trellis".into(),
        plugin: "trellis".into(),
        name: String::new(),
    }
}

fn held(last: u8, owner: Owner, rev: i64) -> Held {
    Held {
        ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, last)),
        key: format!("/trellis/ipam/ips/10.244.1.{last}"),
        owner: Ok(owner),
        mod_revision: rev,
    }
}

fn handle(cid: &str, last: u8, rev: i64) -> ((String, String), HandleRead) {
    (
        (cid.into(), "eth0".into()),
        HandleRead {
            key: format!("/trellis/ipam/handles/{cid}/eth0"),
            ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, last)),
            ip6_key: None,
            mod_revision: rev,
        },
    )
}

fn checked(last: u8, cid: &str, rev: i64, missing: Option<u64>) -> CheckedAllocation {
    CheckedAllocation {
        ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, last)),
        revision: rev,
        container_id: cid.into(),
        ifname: "eth0".into(),
        missing_veth_for: missing,
    }
}

fn kinds(r: &Report) -> Vec<(Kind, String, bool)> {
    r.findings
        .iter()
        .map(|f| (f.kind, f.key.clone(), f.releasable))
        .collect()
}

#[test]
fn each_kind_of_finding_is_named_and_live_ones_are_not() {
    let mut macvlan = owner("mv", "n1");
    macvlan.plugin = "macvlan".into();
    let s = Snapshot {
        held: vec![
            held(2, owner("live", "n1"), 10),
            held(3, owner("dead", "n1"), 11),
            held(4, owner("young", "n1"), 12),
            held(5, owner("new", "n1"), 30),
            held(6, owner("gone-node", "n9"), 13),
            held(7, macvlan, 14),
            held(8, owner("twice", "n1"), 15),
            held(9, owner("twice", "n1"), 16),
            Held {
                ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, 10)),
                key: "/trellis/ipam/ips/10.244.1.10".into(),
                owner: Err("expected value".into()),
                mod_revision: 17,
            },
        ],
        held6: vec![],
        handles: [
            handle("live", 2, 10),
            handle("dead", 3, 11),
            handle("twice", 8, 15),
            handle("stray", 44, 20),
        ]
        .into_iter()
        .collect(),
        nodes: ["n1".to_string()].into_iter().collect(),
        fences: vec!["/trellis/ipam/handles/fenced/eth0".into()],
        reports: [(
            "n1".to_string(),
            Ok(AttachmentReport {
                interval_seconds: 10,
                checked: vec![
                    checked(2, "live", 10, None),
                    checked(3, "dead", 11, Some(40)),
                    checked(4, "young", 12, Some(5)),
                    checked(8, "twice", 15, None),
                    checked(9, "twice", 16, None),
                ],
            }),
        )]
        .into_iter()
        .collect(),
    };
    let r = check(&s, 30);
    assert_eq!(
        kinds(&r),
        [
            (Kind::Leaked, "/trellis/ipam/ips/10.244.1.3".into(), true),
            (Kind::Duplicate, "/trellis/ipam/ips/10.244.1.9".into(), true),
            (
                Kind::OrphanedHandle,
                "/trellis/ipam/handles/stray/eth0".into(),
                true
            ),
            (
                Kind::UnknownNode,
                "/trellis/ipam/ips/10.244.1.6".into(),
                false
            ),
            (
                Kind::Unreadable,
                "/trellis/ipam/ips/10.244.1.10".into(),
                false
            ),
        ]
    );
    // The leak is freed with its handle, each at the revision read.
    let leak = &r.findings[0];
    assert_eq!(
        (leak.handle_key.as_deref(), leak.handle_mod_revision),
        (Some("/trellis/ipam/handles/dead/eth0"), 11)
    );
    assert_eq!(
        r.unchecked,
        [IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, 5))]
    );
    assert_eq!(r.fence_markers, ["/trellis/ipam/handles/fenced/eth0"]);
    assert!(r.unreported_nodes.is_empty());
    // A shorter threshold takes the young one too; a report of another
    // revision of the same address judges nothing.
    assert_eq!(
        check(&s, 5)
            .findings
            .iter()
            .filter(|f| f.kind == Kind::Leaked)
            .count(),
        2
    );
    let mut s = s;
    s.held[1].mod_revision = 99;
    let r = check(&s, 30);
    assert!(!r.findings.iter().any(|f| f.kind == Kind::Leaked));
    assert!(r
        .unchecked
        .contains(&IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, 3))));
    // No report from n1: nothing of it is judged, and n1 is named.
    s.reports.clear();
    let r = check(&s, 30);
    assert!(!r.findings.iter().any(|f| f.kind == Kind::Leaked));
    assert_eq!(r.unreported_nodes, ["n1"]);
}

#[test]
fn a_report_reads_back_for_the_release() {
    let s = Snapshot {
        held: vec![held(3, owner("dead", "n1"), 11)],
        held6: vec![],
        handles: [handle("dead", 3, 11)].into_iter().collect(),
        nodes: ["n1".to_string()].into_iter().collect(),
        fences: vec!["/trellis/ipam/handles/fenced/eth0".into()],
        reports: [(
            "n1".to_string(),
            Ok(AttachmentReport {
                interval_seconds: 10,
                checked: vec![checked(3, "dead", 11, Some(60))],
            }),
        )]
        .into_iter()
        .collect(),
    };
    let r = check(&s, 30);
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains(r#""kind":"leaked""#), "{text}");
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back.findings, r.findings);
}

fn held6(last: u8, owner: Owner, rev: i64) -> Held6 {
    Held6 {
        ip: format!("fd10:244:0:1::{last:x}").parse().unwrap(),
        key: format!("/trellis/ipam/ips/fd10:244:0:1::{last:x}"),
        owner: Ok(owner),
        mod_revision: rev,
    }
}

#[test]
fn an_ipv6_key_without_its_handle_or_ipv4_twin_is_named_and_twins_are_not() {
    let mut named = handle("named", 2, 10);
    named.1.ip6_key = Some("/trellis/ipam/ips/fd10:244:0:1::2".into());
    let s = Snapshot {
        held: vec![
            held(2, owner("named", "n1"), 10),
            held(3, owner("twin", "n1"), 11),
        ],
        held6: vec![
            held6(2, owner("named", "n1"), 10),
            // Its handle is gone, its IPv4 twin is there: the IPv4 key's
            // findings cover the attachment.
            held6(3, owner("twin", "n1"), 11),
            held6(4, owner("lone", "n1"), 12),
            Held6 {
                owner: Err("expected value".into()),
                ..held6(5, owner("x", "n1"), 13)
            },
        ],
        handles: [named].into_iter().collect(),
        nodes: ["n1".to_string()].into_iter().collect(),
        reports: BTreeMap::new(),
        fences: vec![],
    };
    let r = check(&s, 60);
    let lone: Vec<_> = kinds(&r)
        .into_iter()
        .filter(|(_, key, _)| key.contains("fd10"))
        .collect();
    assert_eq!(
        lone,
        vec![
            (
                Kind::Unreadable,
                "/trellis/ipam/ips/fd10:244:0:1::5".to_string(),
                false
            ),
            (
                Kind::LoneIpv6,
                "/trellis/ipam/ips/fd10:244:0:1::4".to_string(),
                true
            ),
        ]
    );
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == Kind::LoneIpv6)
        .unwrap();
    assert_eq!((f.container_id.as_str(), f.mod_revision), ("lone", 12));
    assert!(f.detail.contains("fd10:244:0:1::4"), "{}", f.detail);
}
