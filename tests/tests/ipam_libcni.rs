//! `trellis-ipam` driven by a real runtime library: Debian's libcni
//! (`tests/libcni-driver`) runs it as the only plugin of a conflist inside a
//! test namespace, with etcd inside that namespace. libcni parses our
//! results, caches them for DEL and CHECK, injects `runtimeConfig.ips` from
//! capability arguments and sends `cni.dev/valid-attachments` to GC.

mod ipam_common;

use ipam_common::*;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use trellis_tests::bins::{self, CniBinDir};
use trellis_tests::etcd::Etcd;
use trellis_tests::libcni::{write_conflist, Attachment, Driver};
use trellis_tests::netns::Netns;

fn conflist(version: &str, endpoint: &str, state: &std::path::Path) -> Value {
    json!({"cniVersion": version, "name": "ipamnet", "plugins": [{
        "type": "trellis-ipam",
        "stateDir": state,
        "capabilities": {"ips": true},
        "ipam": {"type": "trellis-ipam", "etcdEndpoints": [endpoint]}
    }]})
}

fn address(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn libcni_add_check_del_gc_status() {
    let node = Netns::new("ipamlc").unwrap();
    let mut etcd = Etcd::start_in(&node, IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let state = node_state("10.244.6.0/24", "node-l");
    let bin = CniBinDir::reference_only().unwrap();
    bin.snapshot("trellis-ipam", &bins::bin("trellis-ipam"))
        .unwrap();
    let driver = Driver::new(&node, &[bin.path()]).unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let list = write_conflist(
        conf_dir.path(),
        "ipam",
        &conflist("1.0.0", &etcd.endpoint(), state.path()),
    )
    .unwrap();
    let list_1_1 = write_conflist(
        conf_dir.path(),
        "ipam-1.1",
        &conflist("1.1.0", &etcd.endpoint(), state.path()),
    )
    .unwrap();
    let att = |id: &str| Attachment::new(id, node.path(), "eth0");

    let r = driver.add(&list, &att("c1")).unwrap();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(address(&r), "10.244.6.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(r["ips"][0]["gateway"], "10.244.6.1");
    driver.check(&list, &att("c1")).unwrap();

    // Static addresses through CNI_ARGS and through the `ips` capability.
    let r = driver
        .add(&list, &att("c2").arg("IP", "10.244.6.50"))
        .unwrap();
    assert_eq!(address(&r), "10.244.6.50".parse::<Ipv4Addr>().unwrap());
    let r = driver
        .add(
            &list,
            &att("c3").capability_args(json!({"ips": ["10.244.6.51/24"]})),
        )
        .unwrap();
    assert_eq!(address(&r), "10.244.6.51".parse::<Ipv4Addr>().unwrap());
    let e = driver
        .add(&list, &att("c4").arg("IP", "10.244.6.50"))
        .unwrap_err();
    assert_eq!(e.code, 103, "{e}");
    assert!(e.msg.contains("container c2"), "{e}");

    // GC with only c1 valid frees c2 and c3 (the plugins' GC, not libcni's).
    driver
        .gc_plugins_only(&list_1_1, &[("c1", "eth0")])
        .unwrap();
    let mut held: Vec<String> = etcd
        .keys("/trellis/ipam/ips/")
        .unwrap()
        .into_iter()
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    held.sort();
    assert_eq!(held, ["10.244.6.2"]);

    driver.status(&list_1_1).unwrap();
    etcd.pause().unwrap();
    let e = driver.status(&list_1_1).unwrap_err();
    etcd.resume().unwrap();
    assert_eq!(e.code, 50, "{e}");

    driver.del(&list, &att("c1")).unwrap();
    driver.del(&list, &att("c1")).unwrap();
    for id in ["c2", "c3", "c4"] {
        driver.del(&list, &att(id)).unwrap();
    }
    assert!(etcd.keys("/trellis/ipam/").unwrap().is_empty());
}
