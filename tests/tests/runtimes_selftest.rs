//! Root test of the runtime plumbing with the reference plugins (bridge +
//! host-local), independent of trellis: podman's CNI backend, `ctr run
//! --cni` and containerd's CRI plugin each attach a container in a node
//! namespace, reach the bridge gateway, and detach leaving no veth.

use std::net::IpAddr;

use serde_json::json;
use trellis_tests::bins::CniBinDir;
use trellis_tests::cluster::ping;
use trellis_tests::containerd::Containerd;
use trellis_tests::libcni::write_conflist;
use trellis_tests::netns::Netns;
use trellis_tests::podman::Podman;
use trellis_tests::rootfs::Rootfs;

struct Node {
    netns: Netns,
    bins: CniBinDir,
    conf_dir: tempfile::TempDir,
}

fn node(tag: &str, subnet: &str) -> Node {
    let netns = Netns::new(tag).unwrap();
    let bins = CniBinDir::reference_only().unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    write_conflist(
        conf_dir.path(),
        "10-ref",
        &json!({"cniVersion": "1.0.0", "name": "refnet", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "subnet": subnet,
                      "dataDir": conf_dir.path().join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]}),
    )
    .unwrap();
    Node {
        netns,
        bins,
        conf_dir,
    }
}

fn veths(ns: &Netns) -> Vec<String> {
    ns.links()
        .unwrap()
        .into_iter()
        .filter(|l| l != "cni0")
        .collect()
}

#[test]
fn podman_cni_backend_attaches_and_detaches() {
    let node = node("rt-pm", "10.210.0.0/24");
    let rootfs = Rootfs::busybox().unwrap();
    let podman = Podman::new(
        &node.netns,
        node.bins.path(),
        node.conf_dir.path(),
        "refnet",
        &rootfs,
    )
    .unwrap();
    let ip = podman.start("rt-pm-1").unwrap();
    assert_eq!(ip.to_string(), "10.210.0.2");
    assert_eq!(veths(&node.netns).len(), 1, "one host veth on the node");
    let out = podman.exec("rt-pm-1", "ping -c 1 -W 2 10.210.0.1").unwrap();
    assert!(out.status.success(), "{out:?}");
    ping(&node.netns, ip).unwrap();
    podman.remove("rt-pm-1").unwrap();
    assert!(veths(&node.netns).is_empty(), "podman rm left a veth");

    let out = podman.run_once("rt-pm-2", "ip -4 addr show eth0").unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.210.0."));
    assert!(veths(&node.netns).is_empty(), "podman run --rm left a veth");
}

#[test]
fn containerd_ctr_run_cni_and_cri_sandboxes() {
    let node = node("rt-ctd", "10.211.0.0/24");
    let rootfs = Rootfs::busybox().unwrap();
    let ctd =
        Containerd::start(&node.netns, node.bins.path(), node.conf_dir.path(), &rootfs).unwrap();

    let out = ctd
        .ctr_run_cni(
            "rt-ctr-1",
            "ip -4 addr show eth0 && ping -c 1 -W 2 10.211.0.1",
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", ctd.log_tail());
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.211.0."));
    assert!(veths(&node.netns).is_empty(), "ctr run --rm left a veth");

    let mut cri = ctd.cri().unwrap();
    let (name, _) = cri.version().unwrap();
    assert_eq!(name, "containerd");
    let id = cri
        .run_pod_sandbox("rt-cri-1", "default", "uid-rt-cri-1")
        .unwrap();
    let net = cri.sandbox_network(&id).unwrap();
    let ip = net.ip.expect("the sandbox has an IP");
    assert!(ip.to_string().starts_with("10.211.0."), "{ip}");
    assert_eq!(veths(&node.netns).len(), 1);
    ping(&node.netns, ip).unwrap();
    let netns = net.netns.expect("containerd reports the sandbox netns");
    assert!(netns.exists());
    cri.stop_pod_sandbox(&id).unwrap();
    assert!(veths(&node.netns).is_empty(), "StopPodSandbox left a veth");
    cri.remove_pod_sandbox(&id).unwrap();
    assert!(cri.list_pod_sandboxes().unwrap().is_empty());
    let _: IpAddr = ip;
}
