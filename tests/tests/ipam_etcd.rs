//! `trellis-ipam` in cluster mode against a real etcd (127.0.0.1, its own
//! ports), run as a runtime runs it: environment + stdin, one process per
//! call. Build the binaries first (`cargo build --workspace --bins`).

mod ipam_common;

use ipam_common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trellis_tests::etcd::Etcd;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn two_hundred_concurrent_adds_on_one_node_then_all_dels() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let state = node_state("10.244.3.0/24", "node-a");
    let conf = cluster_conf(&etcd.endpoint(), state.path());
    let pods = ids("pod", 200);

    let start = Instant::now();
    let replies = p.invoke_all(&adds(&pods), &conf);
    let burst = start.elapsed();
    let subnet: ipnetwork::Ipv4Network = "10.244.3.0/24".parse().unwrap();
    let mut seen = HashSet::new();
    for (pod, r) in pods.iter().zip(&replies) {
        let r = r.clone().ok();
        let a = r.ip();
        assert!(subnet.contains(a), "{a}");
        assert!(![ip("10.244.3.0"), ip("10.244.3.1"), ip("10.244.3.255")].contains(&a));
        assert!(seen.insert(a), "{a} handed out twice ({pod})");
        assert_eq!(r.stdout["ips"][0]["gateway"], "10.244.3.1");
        assert_eq!(r.stdout["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r.stdout["routes"][0]["gw"], "10.244.3.1");
    }
    let alloc = etcd_allocations(&etcd);
    assert_eq!(alloc.len(), 200, "one address key per pod");
    let by_pod: HashMap<_, _> = alloc.iter().map(|(a, id)| (id.clone(), *a)).collect();
    for (pod, r) in pods.iter().zip(&replies) {
        assert_eq!(by_pod[pod], r.ip(), "etcd agrees with the result for {pod}");
    }
    let v: Value = serde_json::from_str(
        &etcd
            .get(&format!("/trellis/ipam/ips/{}", replies[0].ip()))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["ifname"], "eth0");
    eprintln!("200 concurrent ADDs on one node: {burst:?}");

    for r in p.invoke_all(&dels(&pods), &conf) {
        r.ok();
    }
    assert_eq!(etcd.keys("/trellis/ipam/").unwrap(), Vec::<String>::new());
    // DEL again: nothing left, still success.
    p.invoke(&Call::new("DEL", &pods[0]), &conf).ok();
}

#[test]
fn concurrent_adds_on_four_nodes_stay_in_their_subnets() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let nodes: Vec<_> = (0..4)
        .map(|n| {
            let state = node_state(&format!("10.244.{}.0/24", 10 + n), &format!("node-{n}"));
            let conf = cluster_conf(&etcd.endpoint(), state.path());
            (state, conf, ids(&format!("n{n}-pod"), 50))
        })
        .collect();
    let plugin = &p;
    let replies: Vec<Vec<Reply>> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|(_, conf, pods)| s.spawn(move || plugin.invoke_all(&adds(pods), conf)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::new();
    for (n, rs) in replies.iter().enumerate() {
        let subnet: ipnetwork::Ipv4Network = format!("10.244.{}.0/24", 10 + n).parse().unwrap();
        for r in rs {
            let a = r.clone().ok().ip();
            assert!(subnet.contains(a), "node-{n} got {a}");
            assert!(all.insert(a), "{a} twice");
        }
    }
    assert_eq!(all.len(), 200);
    assert_eq!(etcd_allocations(&etcd).len(), 200);
    for (_, conf, pods) in &nodes {
        for r in p.invoke_all(&dels(pods), conf) {
            r.ok();
        }
    }
    assert!(etcd.keys("/trellis/ipam/").unwrap().is_empty());
}

#[test]
fn repeated_add_check_and_del_are_consistent() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let state = node_state("10.244.3.0/24", "node-a");
    let conf = cluster_conf(&etcd.endpoint(), state.path());
    let first = p.invoke(&Call::new("ADD", "c1"), &conf).ok();
    let again = p.invoke(&Call::new("ADD", "c1"), &conf).ok();
    assert_eq!(first.ip(), again.ip());
    assert_eq!(etcd_allocations(&etcd).len(), 1);
    // A second interface of the same container is another attachment.
    let net1 = p
        .invoke(
            &Call {
                ifname: "net1",
                ..Call::new("ADD", "c1")
            },
            &conf,
        )
        .ok();
    assert_ne!(net1.ip(), first.ip());

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = first.stdout.clone();
    p.invoke(&Call::new("CHECK", "c1"), &with_prev).ok();
    let mut wrong_prev = conf.clone();
    wrong_prev["prevResult"] = json!({"cniVersion": "1.1.0",
        "ips": [{"address": "10.244.3.200/24"}]});
    p.invoke(&Call::new("CHECK", "c1"), &wrong_prev)
        .fails_with(104, "prevResult shows 10.244.3.200/24");
    p.invoke(&Call::new("CHECK", "nobody"), &conf)
        .fails_with(104, "no address is allocated");

    p.invoke(&Call::new("DEL", "c1"), &conf).ok();
    p.invoke(&Call::new("DEL", "c1"), &conf).ok();
    p.invoke(&Call::new("CHECK", "c1"), &conf)
        .fails_with(104, "container c1 interface eth0");
    // net1 still holds its address.
    assert_eq!(etcd_allocations(&etcd), vec![(net1.ip(), "c1".to_string())]);
}

#[test]
fn static_requests_are_honoured_and_conflicts_refused() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let state = node_state("10.244.3.0/24", "node-a");
    let conf = cluster_conf(&etcd.endpoint(), state.path());
    let r = p
        .invoke(
            &Call::new("ADD", "s1").args("IgnoreUnknown=1;IP=10.244.3.77"),
            &conf,
        )
        .ok();
    assert_eq!(r.ip(), ip("10.244.3.77"));
    assert_eq!(r.stdout["ips"][0]["address"], "10.244.3.77/24");
    p.invoke(&Call::new("ADD", "s2").args("IP=10.244.3.77"), &conf)
        .fails_with(
            103,
            "already allocated to container s1 interface eth0 on node node-a",
        );
    p.invoke(&Call::new("ADD", "s2").args("IP=10.244.4.7"), &conf)
        .fails_with(103, "outside the subnet 10.244.3.0/24");
    p.invoke(&Call::new("ADD", "s2").args("IP=10.244.3.1"), &conf)
        .fails_with(103, "gateway");
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.244.3.78/24"]});
    assert_eq!(
        p.invoke(&Call::new("ADD", "s3"), &rc).ok().ip(),
        ip("10.244.3.78")
    );
    let mut args = conf.clone();
    args["args"] = json!({"cni": {"ips": ["10.244.3.79"]}});
    assert_eq!(
        p.invoke(&Call::new("ADD", "s4"), &args).ok().ip(),
        ip("10.244.3.79")
    );
    p.invoke(&Call::new("ADD", "s5").args("IP=nonsense"), &conf)
        .fails_with(4, "IP=nonsense");
    // Dynamic allocation goes around the static ones.
    let dynamic = p.invoke(&Call::new("ADD", "d1"), &conf).ok().ip();
    assert!(![ip("10.244.3.77"), ip("10.244.3.78"), ip("10.244.3.79")].contains(&dynamic));
    assert_eq!(etcd_allocations(&etcd).len(), 4);
}

#[test]
fn an_ipv6_only_node_hands_out_ipv6_addresses_alone() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let state = node_state("fd10:244:0:3::/64", "node-a");
    let conf = cluster_conf(&etcd.endpoint(), state.path());
    // One address, its gateway and ::/0: no IPv4 at all.
    let r = p.invoke(&Call::new("ADD", "d1"), &conf).ok();
    assert_eq!(
        r.stdout["ips"].as_array().unwrap().len(),
        1,
        "{:?}",
        r.stdout
    );
    assert_eq!(r.stdout["ips"][0]["address"], "fd10:244:0:3::2/64");
    assert_eq!(r.stdout["ips"][0]["gateway"], "fd10:244:0:3::1");
    assert_eq!(
        r.stdout["routes"],
        json!([{"dst": "::/0", "gw": "fd10:244:0:3::1"}])
    );
    // Static requests are of the pool's family.
    let s1 = p
        .invoke(&Call::new("ADD", "s1").args("IP=fd10:244:0:3::77"), &conf)
        .ok();
    assert_eq!(s1.addr().to_string(), "fd10:244:0:3::77");
    p.invoke(&Call::new("ADD", "s2").args("IP=fd10:244:0:3::77"), &conf)
        .fails_with(
            103,
            "already allocated to container s1 interface eth0 on node node-a",
        );
    p.invoke(&Call::new("ADD", "s2").args("IP=10.244.3.7"), &conf)
        .fails_with(103, "has no IPv4 subnet");
    p.invoke(&Call::new("ADD", "s2").args("IP=fd10:244:0:4::7"), &conf)
        .fails_with(103, "outside the subnet fd10:244:0:3::/64");
    let mut keys = etcd_addresses(&etcd);
    keys.sort();
    assert_eq!(
        keys,
        [
            ("fd10:244:0:3::2".to_string(), "d1".to_string()),
            ("fd10:244:0:3::77".to_string(), "s1".to_string())
        ]
    );
    // A repeated ADD answers the same address; DEL frees it.
    assert_eq!(
        p.invoke(&Call::new("ADD", "d1"), &conf).ok().stdout,
        r.stdout
    );
    p.invoke(&Call::new("DEL", "d1"), &conf).ok();
    p.invoke(&Call::new("DEL", "s1"), &conf).ok();
    assert!(etcd_addresses(&etcd).is_empty());
    // A range of two: the third ADD is told the pool is full (102).
    let conf = with_ipam(
        with_ipam(conf, "rangeStart", json!("fd10:244:0:3::10")),
        "rangeEnd",
        json!("fd10:244:0:3::11"),
    );
    for id in ["a", "b"] {
        p.invoke(&Call::new("ADD", id), &conf).ok();
    }
    p.invoke(&Call::new("ADD", "c"), &conf).fails_with(
        102,
        "no free address left in fd10:244:0:3::/64 (range fd10:244:0:3::10-fd10:244:0:3::11)",
    );
    p.invoke(&Call::new("DEL", "a"), &conf).ok();
    assert_eq!(
        p.invoke(&Call::new("ADD", "c"), &conf)
            .ok()
            .addr()
            .to_string(),
        "fd10:244:0:3::10"
    );
}

#[test]
fn exhaustion_names_the_subnet_and_freed_addresses_come_back() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let state = node_state("10.244.3.0/24", "node-a");
    let conf = with_ipam(
        with_ipam(
            cluster_conf(&etcd.endpoint(), state.path()),
            "rangeStart",
            json!("10.244.3.10"),
        ),
        "rangeEnd",
        json!("10.244.3.12"),
    );
    let got: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| p.invoke(&Call::new("ADD", id), &conf).ok().ip())
        .collect();
    assert_eq!(got, ["10.244.3.10", "10.244.3.11", "10.244.3.12"].map(ip));
    p.invoke(&Call::new("ADD", "d"), &conf).fails_with(
        102,
        "no free address left in 10.244.3.0/24 (range 10.244.3.10-10.244.3.12)",
    );
    p.invoke(&Call::new("DEL", "b"), &conf).ok();
    assert_eq!(
        p.invoke(&Call::new("ADD", "d"), &conf).ok().ip(),
        ip("10.244.3.11")
    );
}

#[test]
fn without_a_node_record_add_is_code_11_naming_the_agent() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let conf = with_ipam(
        cluster_conf(&etcd.endpoint(), empty.path()),
        "nodeName",
        json!("node-x"),
    );
    p.invoke(&Call::new("ADD", "c1"), &conf)
        .fails_with(11, "trellis-agent");
    p.invoke(&Call::new("STATUS", "-"), &conf)
        .fails_with(50, "trellis-agent");
    assert!(etcd.keys("/trellis/").unwrap().is_empty());
    // The record the agent keeps in etcd is enough.
    etcd.put(
        "/trellis/nodes/node-x",
        r#"{"subnet":"10.244.9.0/24","publicIP":"192.0.2.9","vtepMAC":"02:00:00:00:00:09"}"#,
    )
    .unwrap();
    assert_eq!(
        p.invoke(&Call::new("ADD", "c1"), &conf).ok().ip(),
        ip("10.244.9.2")
    );
    p.invoke(&Call::new("STATUS", "-"), &conf).ok();
}

#[test]
fn gc_frees_only_attachments_that_are_not_valid() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start().unwrap();
    let state = node_state("10.244.3.0/24", "node-a");
    let other = node_state("10.244.4.0/24", "node-b");
    let conf = cluster_conf(&etcd.endpoint(), state.path());
    let conf_b = cluster_conf(&etcd.endpoint(), other.path());
    for id in ["keep", "leak1", "leak2"] {
        p.invoke(&Call::new("ADD", id), &conf).ok();
    }
    let b = p.invoke(&Call::new("ADD", "other-node"), &conf_b).ok().ip();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    p.invoke(&Call::new("GC", "-"), &gc).ok();
    let mut left = etcd_allocations(&etcd);
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|(_, id)| id == "keep"));
    assert!(
        left.contains(&(b, "other-node".to_string())),
        "another node's pod survives"
    );
    assert_eq!(
        etcd.keys("/trellis/ipam/handles/").unwrap().len(),
        2,
        "handles of freed addresses are gone too"
    );
    // GC without the list is refused rather than guessed.
    p.invoke(&Call::new("GC", "-"), &conf)
        .fails_with(7, "valid-attachments");
}

#[test]
fn unreachable_etcd_is_code_11_within_five_seconds() {
    let p = Plugin::snapshot();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = node_state("10.244.3.0/24", "node-a");
    let conf = cluster_conf(&format!("http://127.0.0.1:{port}"), state.path());
    for cmd in ["ADD", "DEL", "CHECK"] {
        let r = p.invoke(&Call::new(cmd, "c1"), &conf);
        assert_eq!(r.code(), Some(11), "{cmd}: {r:?}");
        assert!(r.took < Duration::from_secs(5), "{cmd} took {:?}", r.took);
        assert!(
            r.msg().contains(&format!("127.0.0.1:{port}")),
            "{}",
            r.msg()
        );
    }
    let r = p.invoke(&Call::new("STATUS", "-"), &conf);
    assert_eq!(r.code(), Some(50), "{r:?}");
}

#[test]
fn paused_etcd_add_fails_in_time_and_allocates_nothing() {
    let p = Plugin::snapshot();
    let mut etcd = Etcd::start().unwrap();
    let state = node_state("10.244.3.0/24", "node-a");
    let conf = cluster_conf(&etcd.endpoint(), state.path());
    let before = p.invoke(&Call::new("ADD", "before"), &conf).ok().ip();
    etcd.pause().unwrap();
    let r = p.invoke(&Call::new("ADD", "during"), &conf);
    let d = p.invoke(&Call::new("DEL", "before"), &conf);
    let s = p.invoke(&Call::new("STATUS", "-"), &conf);
    etcd.resume().unwrap();
    assert_eq!(r.code(), Some(11), "{r:?}");
    assert!(r.took < Duration::from_secs(5), "ADD took {:?}", r.took);
    assert_eq!(
        d.code(),
        Some(11),
        "DEL with etcd down must be retried: {d:?}"
    );
    assert_eq!(s.code(), Some(50), "{s:?}");
    let want = vec![(before, "before".to_string())];
    assert_eq!(
        settled_allocations(&etcd, &want, Duration::from_secs(5)),
        want,
        "the failed ADD left no address behind"
    );
    // The runtime retries the DEL once etcd is back.
    p.invoke(&Call::new("DEL", "before"), &conf).ok();
    p.invoke(&Call::new("DEL", "during"), &conf).ok();
    assert!(etcd.keys("/trellis/ipam/").unwrap().is_empty());
}

#[test]
fn tls_etcd_works_and_tls_mistakes_are_explained() {
    let p = Plugin::snapshot();
    let etcd = Etcd::start_tls().unwrap();
    let tls = etcd.tls().unwrap().clone();
    let state = node_state("10.244.3.0/24", "node-a");
    let base = cluster_conf(&etcd.endpoint(), state.path());
    let mut conf = base.clone();
    conf["ipam"]["etcdCACert"] = json!(tls.ca);
    conf["ipam"]["etcdCert"] = json!(tls.client_cert);
    conf["ipam"]["etcdKey"] = json!(tls.client_key);
    let a = p.invoke(&Call::new("ADD", "c1"), &conf).ok().ip();
    assert_eq!(etcd_allocations(&etcd), vec![(a, "c1".to_string())]);
    p.invoke(&Call::new("DEL", "c1"), &conf).ok();

    p.invoke(&Call::new("ADD", "c2"), &base)
        .fails_with(7, "etcdCACert");
    let mut no_key = conf.clone();
    no_key["ipam"].as_object_mut().unwrap().remove("etcdKey");
    p.invoke(&Call::new("ADD", "c2"), &no_key)
        .fails_with(7, "etcdCert and etcdKey");
    let mut missing = conf.clone();
    missing["ipam"]["etcdCACert"] = json!("/nonexistent/ca.pem");
    p.invoke(&Call::new("ADD", "c2"), &missing)
        .fails_with(7, "cannot read etcdCACert /nonexistent/ca.pem");
    let mut swapped = conf.clone();
    swapped["ipam"]["etcdKey"] = json!(tls.client_cert);
    p.invoke(&Call::new("ADD", "c2"), &swapped)
        .fails_with(7, "holds no PEM private key");
    let mut http = conf.clone();
    http["ipam"]["etcdEndpoints"] = json!([etcd.endpoint().replace("https://", "http://")]);
    p.invoke(&Call::new("ADD", "c2"), &http)
        .fails_with(7, "use https:// URLs");
    // Without a client certificate etcd refuses the connection: code 11.
    let mut anonymous = conf.clone();
    anonymous["ipam"]
        .as_object_mut()
        .unwrap()
        .remove("etcdCert");
    anonymous["ipam"].as_object_mut().unwrap().remove("etcdKey");
    let r = p.invoke(&Call::new("ADD", "c2"), &anonymous);
    assert_eq!(r.code(), Some(11), "{r:?}");
    assert!(r.took < Duration::from_secs(5));
    assert!(etcd.keys("/trellis/ipam/").unwrap().is_empty());
}
