//! `trellis-ipam` in single-host mode (local store under `dataDir`, no etcd),
//! one process per call as a runtime runs it.

mod ipam_common;

use ipam_common::*;
use serde_json::json;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Instant;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn two_hundred_concurrent_processes_never_duplicate() {
    let p = Plugin::snapshot();
    let data = tempfile::tempdir().unwrap();
    let conf = local_conf("10.88.0.0/16", data.path());
    let pods = ids("pod", 200);
    let start = Instant::now();
    let replies = p.invoke_all(
        &pods.iter().map(|p| (p.clone(), "ADD")).collect::<Vec<_>>(),
        &conf,
    );
    eprintln!("200 concurrent ADDs, local store: {:?}", start.elapsed());
    let mut seen = HashSet::new();
    for r in &replies {
        let r = r.clone().ok();
        assert!(seen.insert(r.ip()), "{} twice", r.ip());
        assert_eq!(r.stdout["ips"][0]["gateway"], "10.88.0.1");
        assert!(r.stdout["ips"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with("/16"));
    }
    assert!(!seen.contains(&ip("10.88.0.1")) && !seen.contains(&ip("10.88.0.0")));
    let stored = local_allocations(data.path(), "trellis");
    assert_eq!(stored.len(), 200);
    for (pod, r) in pods.iter().zip(&replies) {
        assert!(stored.contains(&(r.ip(), pod.clone())));
    }
    for r in p.invoke_all(
        &pods.iter().map(|p| (p.clone(), "DEL")).collect::<Vec<_>>(),
        &conf,
    ) {
        r.ok();
    }
    assert!(local_allocations(data.path(), "trellis").is_empty());
}

#[test]
fn add_check_del_gc_and_static_requests() {
    let p = Plugin::snapshot();
    let data = tempfile::tempdir().unwrap();
    let conf = with_ipam(
        with_ipam(
            local_conf("10.88.0.0/24", data.path()),
            "rangeStart",
            json!("10.88.0.10"),
        ),
        "rangeEnd",
        json!("10.88.0.13"),
    );
    let a = p.invoke(&Call::new("ADD", "a"), &conf).ok();
    assert_eq!(a.ip(), ip("10.88.0.10"));
    assert_eq!(p.invoke(&Call::new("ADD", "a"), &conf).ok().ip(), a.ip());
    let mut prev = conf.clone();
    prev["prevResult"] = a.stdout.clone();
    p.invoke(&Call::new("CHECK", "a"), &prev).ok();
    p.invoke(&Call::new("CHECK", "zz"), &conf)
        .fails_with(104, "no address is allocated");

    assert_eq!(
        p.invoke(&Call::new("ADD", "s").args("IP=10.88.0.12"), &conf)
            .ok()
            .ip(),
        ip("10.88.0.12")
    );
    p.invoke(&Call::new("ADD", "t").args("IP=10.88.0.12"), &conf)
        .fails_with(103, "already allocated to container s");
    p.invoke(&Call::new("ADD", "t").args("IP=10.88.0.200"), &conf)
        .fails_with(103, "outside the range 10.88.0.10-10.88.0.13");
    assert_eq!(
        p.invoke(&Call::new("ADD", "b"), &conf).ok().ip(),
        ip("10.88.0.11")
    );
    assert_eq!(
        p.invoke(&Call::new("ADD", "c"), &conf).ok().ip(),
        ip("10.88.0.13")
    );
    p.invoke(&Call::new("ADD", "d"), &conf)
        .fails_with(102, "10.88.0.0/24 (range 10.88.0.10-10.88.0.13)");

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "a", "ifname": "eth0"},
        {"containerID": "s", "ifname": "eth0"}]);
    p.invoke(&Call::new("GC", "-"), &gc).ok();
    let mut left: Vec<_> = local_allocations(data.path(), "trellis")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    left.sort();
    assert_eq!(left, ["a", "s"]);

    p.invoke(&Call::new("DEL", "a"), &conf).ok();
    p.invoke(&Call::new("DEL", "a"), &conf).ok();
    p.invoke(&Call::new("STATUS", "-"), &conf).ok();
}

#[test]
fn del_of_an_unknown_network_creates_nothing() {
    let p = Plugin::snapshot();
    let data = tempfile::tempdir().unwrap();
    let conf = local_conf("10.88.0.0/16", data.path());
    p.invoke(&Call::new("DEL", "never-added"), &conf).ok();
    assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);
}

#[test]
fn store_problems_have_clear_codes() {
    let p = Plugin::snapshot();
    let data = tempfile::tempdir().unwrap();
    // dataDir is a file: the store cannot be created.
    let file = data.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let conf = local_conf("10.88.0.0/16", &file);
    p.invoke(&Call::new("ADD", "a"), &conf)
        .fails_with(105, "not-a-dir");
    p.invoke(&Call::new("STATUS", "-"), &conf)
        .fails_with(50, "not-a-dir");

    let conf = local_conf("10.88.0.0/16", data.path());
    std::fs::create_dir_all(data.path().join("trellis")).unwrap();
    std::fs::write(data.path().join("trellis/allocations.json"), b"{garbage").unwrap();
    p.invoke(&Call::new("ADD", "a"), &conf)
        .fails_with(105, "allocations.json");

    p.invoke(
        &Call::new("ADD", "a"),
        &local_conf("10.88.0.0/31", data.path()),
    )
    .fails_with(7, "too small");
    let mut no_subnet = local_conf("10.88.0.0/16", data.path());
    no_subnet["ipam"].as_object_mut().unwrap().remove("subnet");
    p.invoke(&Call::new("ADD", "a"), &no_subnet)
        .fails_with(7, "etcdEndpoints");
}
