//! Root test of the harness itself: namespaces come and go and leave nothing
//! behind, veth wiring works, processes started inside are killed, and the
//! libcni driver drives the reference plugins in a node namespace.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use trellis_tests::bins::CniBinDir;
use trellis_tests::libcni::{write_conflist, Attachment, Driver};
use trellis_tests::netns::{attach_to_bridge, veth_pair, Netns};
use trellis_tests::wait::wait_until;

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn namespaces_are_unique_wired_and_removed() {
    let (a_name, b_name, mut sleeper);
    {
        let a = Netns::new("self-a").unwrap();
        let b = Netns::new("self-b").unwrap();
        assert_ne!(a.name(), b.name());
        assert!(a.name().contains(&std::process::id().to_string()));
        assert!(a.path().exists());
        a_name = a.name().to_owned();
        b_name = b.name().to_owned();

        // lo is up inside, and the namespace is empty otherwise.
        assert!(a.links().unwrap().is_empty());
        assert!(a.ok(&["ping", "-c", "1", "-W", "1", "127.0.0.1"]).is_ok());

        veth_pair(
            &a,
            "va",
            Some("10.200.0.1/24".parse().unwrap()),
            &b,
            "vb",
            Some("10.200.0.2/24".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(a.links().unwrap(), ["va"]);
        assert_eq!(b.links().unwrap(), ["vb"]);
        a.ok(&["ping", "-c", "1", "-W", "2", "10.200.0.2"]).unwrap();

        // A failing command is reported with its output.
        let err = a.sh_ok("echo oops >&2; exit 3").unwrap_err();
        assert!(format!("{err:#}").contains("exit status 3"), "{err:#}");
        assert!(format!("{err:#}").contains("oops"), "{err:#}");

        // `ip netns exec` enters the namespace just after the spawn returns.
        sleeper = b.spawn(&["sleep", "300"]).unwrap();
        let pid = sleeper.id() as i32;
        wait_until(Duration::from_secs(5), "the spawned process inside", || {
            Ok(b.pids() == [pid])
        })
        .unwrap_or_else(|e| panic!("{e:#}: {:?}", b.pids()));
    }
    assert!(!netns_exists(&a_name), "{a_name} left behind");
    assert!(!netns_exists(&b_name), "{b_name} left behind");
    // Already dead: the namespace's drop killed it.
    let status = sleeper.try_wait().unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "process spawned in the namespace still running: {status:?}"
    );
}

#[test]
fn namespaces_are_removed_on_panic() {
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("self-panic").unwrap();
        *name.lock().unwrap() = ns.name().to_owned();
        panic!("test failure half-way");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(!netns_exists(&name), "{name} left behind after a panic");
}

#[test]
fn bridge_in_one_namespace_joins_two_others() {
    let hub = Netns::new("self-hub").unwrap();
    let x = Netns::new("self-x").unwrap();
    let y = Netns::new("self-y").unwrap();
    hub.add_bridge("br0", None).unwrap();
    attach_to_bridge(
        &hub,
        "br0",
        "px",
        &x,
        "eth0",
        Some("192.0.2.1/24".parse().unwrap()),
    )
    .unwrap();
    attach_to_bridge(
        &hub,
        "br0",
        "py",
        &y,
        "eth0",
        Some("192.0.2.2/24".parse().unwrap()),
    )
    .unwrap();
    x.ok(&["ping", "-c", "1", "-W", "2", "192.0.2.2"]).unwrap();
}

#[test]
fn libcni_driver_runs_reference_plugins_in_a_node() {
    let node = Netns::new("self-node").unwrap();
    let pod = Netns::new("self-pod").unwrap();
    let bins = CniBinDir::reference_only().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conflist = write_conflist(
        dir.path(),
        "ref",
        &json!({"cniVersion": "1.0.0", "name": "ref", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "subnet": "10.201.0.0/24",
                      "dataDir": dir.path().join("ipam")}}]}),
    )
    .unwrap();
    let driver = Driver::new(&node, &[bins.path()]).unwrap();
    let att = Attachment::new("selftest-1", pod.path(), "eth0");

    let result = driver.add(&conflist, &att).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["address"], "10.201.0.2/24");
    assert_eq!(pod.links().unwrap(), ["eth0"]);
    // The plugin ran in the node namespace: the bridge is there, not here.
    assert!(node.links().unwrap().contains(&"cni0".to_owned()));
    pod.ok(&["ping", "-c", "1", "-W", "2", "10.201.0.1"])
        .unwrap();

    driver.check(&conflist, &att).unwrap();
    driver.del(&conflist, &att).unwrap();
    assert!(pod.links().unwrap().is_empty());
    // CHECK after DEL fails with the plugin's error.
    let err = driver.check(&conflist, &att).unwrap_err();
    assert!(!err.msg.is_empty(), "{err}");

    // A missing netns on ADD is the plugin's error, reported with its text.
    let gone = Attachment::new("selftest-2", "/run/netns/trl-does-not-exist", "eth0");
    let err = driver.add(&conflist, &gone).unwrap_err();
    assert!(err.msg.contains("trl-does-not-exist"), "{err}");

    // A plugin that is not in CNI_PATH: libcni's own error, code 0.
    let missing = write_conflist(
        dir.path(),
        "missing",
        &json!({"cniVersion": "1.0.0", "name": "missing", "plugins": [{"type": "no-such-plugin"}]}),
    )
    .unwrap();
    let err = driver.add(&missing, &att).unwrap_err();
    assert_eq!(err.code, 0);
    assert!(err.msg.contains("no-such-plugin"), "{err}");
}

#[test]
fn libcni_driver_gc_deletes_stale_cached_attachments() {
    let node = Netns::new("self-gcn").unwrap();
    let pods = [
        Netns::new("self-gc1").unwrap(),
        Netns::new("self-gc2").unwrap(),
    ];
    let bins = CniBinDir::reference_only().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conflist = write_conflist(
        dir.path(),
        "ref",
        &json!({"cniVersion": "1.0.0", "name": "ref", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local",
             "subnet": "10.202.0.0/24", "dataDir": dir.path().join("ipam")}}]}),
    )
    .unwrap();
    let driver = Driver::new(&node, &[bins.path()]).unwrap();
    for (i, pod) in pods.iter().enumerate() {
        driver
            .add(
                &conflist,
                &Attachment::new(format!("gc-{i}"), pod.path(), "eth0"),
            )
            .unwrap();
    }
    driver.gc(&conflist, &[("gc-0", "eth0")]).unwrap();
    assert_eq!(pods[0].links().unwrap(), ["eth0"]);
    assert!(
        pods[1].links().unwrap().is_empty(),
        "stale attachment not deleted"
    );
    driver
        .del(&conflist, &Attachment::new("gc-0", pods[0].path(), "eth0"))
        .unwrap();
}

#[test]
fn libcni_driver_bench_times_each_operation() {
    let node = Netns::new("self-bn").unwrap();
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("self-bp").unwrap()).collect();
    let bins = CniBinDir::reference_only().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conflist = write_conflist(
        dir.path(),
        "ref",
        &json!({"cniVersion": "1.0.0", "name": "ref", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local",
             "subnet": "10.203.0.0/24", "dataDir": dir.path().join("ipam")}}]}),
    )
    .unwrap();
    let driver = Driver::new(&node, &[bins.path()]).unwrap();
    let paths: Vec<_> = pods.iter().map(Netns::path).collect();
    let timings = driver.bench(&conflist, &paths, 3).unwrap();
    assert_eq!(timings.add_ms.len(), 3);
    assert_eq!(timings.del_ms.len(), 3);
    assert!(timings.add_ms.iter().all(|ms| *ms > 0.0));
    for pod in &pods {
        assert!(pod.links().unwrap().is_empty(), "bench left an attachment");
    }
}
