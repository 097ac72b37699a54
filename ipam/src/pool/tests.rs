//! The pool's cases: what is usable, the walk from the cursor, bad ranges.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}
fn pool(subnet: &str) -> Pool {
    Pool::new(net(subnet), None, None, vec![], None).unwrap()
}

#[test]
fn never_hands_out_network_gateway_or_broadcast() {
    let p = pool("10.1.2.0/29");
    let all: Vec<_> = p.candidates_after(None).collect();
    assert_eq!(
        all,
        ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"].map(ip)
    );
    assert!(p.why_unusable(ip("10.1.2.0")).unwrap().contains("network"));
    assert!(p.why_unusable(ip("10.1.2.1")).unwrap().contains("gateway"));
    assert!(p
        .why_unusable(ip("10.1.2.7"))
        .unwrap()
        .contains("broadcast"));
    assert!(p
        .why_unusable(ip("10.1.3.2"))
        .unwrap()
        .contains("outside the subnet"));
    assert_eq!(p.gateway(), ip("10.1.2.1"));
}

#[test]
fn a_host_address_subnet_is_normalised() {
    let p = pool("10.1.2.77/24");
    assert_eq!(p.subnet(), net("10.1.2.0/24"));
    assert_eq!(p.address_of(ip("10.1.2.9")).to_string(), "10.1.2.9/24");
    assert_eq!(p.to_string(), "10.1.2.0/24");
}

#[test]
fn wraps_around_after_the_cursor() {
    let p = pool("10.1.2.0/29");
    let after_4: Vec<_> = p.candidates_after(Some(ip("10.1.2.4"))).collect();
    assert_eq!(
        after_4,
        ["10.1.2.5", "10.1.2.6", "10.1.2.2", "10.1.2.3", "10.1.2.4"].map(ip)
    );
    // The last address wraps to the first; a foreign cursor starts over.
    assert_eq!(
        p.candidates_after(Some(ip("10.1.2.6"))).next(),
        Some(ip("10.1.2.2"))
    );
    assert_eq!(
        p.candidates_after(Some(ip("192.0.2.1"))).next(),
        Some(ip("10.1.2.2"))
    );
}

#[test]
fn honours_range_and_exclusions() {
    let p = Pool::new(
        net("10.1.0.0/16"),
        Some(ip("10.1.0.10")),
        Some(ip("10.1.0.20")),
        vec![net("10.1.0.12/31"), net("10.1.0.15/32")],
        None,
    )
    .unwrap();
    let all: Vec<_> = p.candidates_after(None).collect();
    let want: Vec<_> = [10, 11, 14, 16, 17, 18, 19, 20]
        .iter()
        .map(|n| IpAddr::V4(Ipv4Addr::new(10, 1, 0, *n)))
        .collect();
    assert_eq!(all, want);
    assert!(p
        .why_unusable(ip("10.1.0.13"))
        .unwrap()
        .contains("excluded (10.1.0.12/31)"));
    assert!(p
        .why_unusable(ip("10.1.0.21"))
        .unwrap()
        .contains("outside the range 10.1.0.10-10.1.0.20"));
    assert_eq!(p.to_string(), "10.1.0.0/16 (range 10.1.0.10-10.1.0.20)");
}

#[test]
fn a_configured_gateway_is_skipped_wherever_it_is() {
    let p = Pool::new(net("10.1.2.0/29"), None, None, vec![], Some(ip("10.1.2.6"))).unwrap();
    let all: Vec<_> = p.candidates_after(None).collect();
    assert_eq!(
        all,
        ["10.1.2.1", "10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5"].map(ip)
    );
}

#[test]
fn exclusions_can_empty_the_pool() {
    let p = Pool::new(
        net("10.1.2.0/30"),
        None,
        None,
        vec![net("10.1.2.2/32")],
        None,
    )
    .unwrap();
    assert_eq!(p.candidates_after(None).count(), 0);
}

#[test]
fn rejects_impossible_configurations() {
    let bad = [
        Pool::new(net("10.1.2.0/31"), None, None, vec![], None),
        Pool::new(net("10.1.2.0/24"), Some(ip("10.1.3.1")), None, vec![], None),
        Pool::new(
            net("10.1.2.0/24"),
            None,
            Some(ip("10.1.2.255")),
            vec![],
            None,
        ),
        Pool::new(
            net("10.1.2.0/24"),
            Some(ip("10.1.2.9")),
            Some(ip("10.1.2.8")),
            vec![],
            None,
        ),
        Pool::new(net("10.1.2.0/24"), None, None, vec![], Some(ip("10.1.2.0"))),
    ];
    for b in bad {
        let e = b.unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
    }
}
