//! End to end with containerd as the client: `ctr run --cni` and the CRI
//! path the kubelet uses (RunPodSandbox / StopPodSandbox /
//! RemovePodSandbox), containerd running inside the node namespaces of a
//! simulated cluster.

use std::net::IpAddr;

use trellis_tests::cluster::{
    ping, ping_from_path, source_seen_outside_from_path, Cluster, ClusterSpec,
};
use trellis_tests::containerd::Containerd;
use trellis_tests::rootfs::Rootfs;

fn containerd_on(cluster: &Cluster, node: usize, rootfs: &Rootfs) -> Containerd {
    let n = &cluster.nodes[node];
    Containerd::start(&n.netns, cluster.cni_bin_dir(), &n.conf_dir, rootfs).unwrap()
}

#[test]
fn cri_sandboxes_reach_across_nodes_their_node_and_the_outside() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let rootfs = Rootfs::busybox().unwrap();
    let runtimes = [
        containerd_on(&cluster, 0, &rootfs),
        containerd_on(&cluster, 1, &rootfs),
    ];
    let mut cri: Vec<_> = runtimes.iter().map(|r| r.cri().unwrap()).collect();

    let mut sandboxes = Vec::new();
    for (node, client) in cri.iter_mut().enumerate() {
        let name = format!("cri-{node}");
        let id = client
            .run_pod_sandbox(&name, "default", &format!("uid-{name}"))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", runtimes[node].log_tail()));
        let net = client.sandbox_network(&id).unwrap();
        let ip = net.ip.expect("CRI reports the pod IP from the CNI result");
        let IpAddr::V4(v4) = ip else { panic!("{ip}") };
        assert!(cluster.nodes[node].subnet().unwrap().contains(v4));
        sandboxes.push((node, id, ip, net.netns.expect("sandbox netns")));
    }
    assert_eq!(cluster.allocations().unwrap().len(), 2);

    let (a, b) = (&sandboxes[0], &sandboxes[1]);
    ping_from_path(&a.3, b.2).unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    ping_from_path(&b.3, a.2).unwrap();
    // Sandbox and its node.
    ping_from_path(&a.3, IpAddr::V4(cluster.nodes[0].underlay_ip)).unwrap();
    ping(&cluster.nodes[0].netns, a.2).unwrap();
    // Egress masqueraded behind the node.
    let seen = source_seen_outside_from_path(&cluster, &b.3).unwrap();
    assert_eq!(seen, IpAddr::V4(cluster.nodes[1].underlay_ip));

    // `ctr run --cni` on node 1 reaches the CRI sandbox on node 2 and the
    // outside; its DEL on exit releases its address.
    let script = format!(
        "for i in 1 2 3 4 5; do ping -c 1 -W 1 {} >/dev/null && break; done && \
         nc -w 3 198.51.100.2 7777",
        b.2
    );
    let out = runtimes[0].ctr_run_cni("ctr-e2e-1", &script).unwrap();
    assert!(out.status.success(), "{out:?}\n{}", runtimes[0].log_tail());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster.nodes[0].underlay_ip.to_string()
    );
    assert_eq!(
        cluster.allocations().unwrap().len(),
        2,
        "ctr's DEL released its address"
    );

    for (node, id, _, netns) in &sandboxes {
        cri[*node].stop_pod_sandbox(id).unwrap();
        cri[*node].remove_pod_sandbox(id).unwrap();
        assert!(!netns.exists(), "sandbox netns left: {}", netns.display());
    }
    assert!(cluster.allocations().unwrap().is_empty());
    for node in &cluster.nodes {
        assert!(
            node.host_veths().unwrap().is_empty(),
            "veth left on {}",
            node.name
        );
    }
}

#[test]
fn cri_dual_stack_sandboxes_report_both_addresses_and_reach_over_ipv6() {
    sandboxes_reach_each_other_over_ipv6(true);
}

/// An IPv6-only cluster (`ipv6Network`, no `network`): the pod IP is the
/// IPv6 address, and there is no other.
#[test]
fn cri_ipv6_only_sandboxes_report_one_ipv6_address_and_reach_each_other() {
    sandboxes_reach_each_other_over_ipv6(false);
}

/// Two CRI sandboxes on two nodes of a cluster with `ipv6Network` (and
/// `network` when `ipv4`) report their addresses as the kubelet reads
/// them for `status.podIPs` and ping each other over IPv6, as does a
/// `ctr run --cni` container; every address is freed when they go.
fn sandboxes_reach_each_other_over_ipv6(ipv4: bool) {
    let mut spec = ClusterSpec {
        underlay6: true,
        ..ClusterSpec::default().nodes(2)
    };
    spec.config.ipv6_network = Some("fd10:244::/56".parse().unwrap());
    if !ipv4 {
        spec.config.network = None;
    }
    let cluster = Cluster::start(spec).unwrap();
    let rootfs = Rootfs::busybox().unwrap();
    let runtimes = [
        containerd_on(&cluster, 0, &rootfs),
        containerd_on(&cluster, 1, &rootfs),
    ];
    let mut cri: Vec<_> = runtimes.iter().map(|r| r.cri().unwrap()).collect();
    let mut sandboxes = Vec::new();
    for (node, client) in cri.iter_mut().enumerate() {
        let name = format!("cri6-{node}");
        let id = client
            .run_pod_sandbox(&name, "default", &format!("uid-{name}"))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", runtimes[node].log_tail()));
        let net = client.sandbox_network(&id).unwrap();
        // Dual-stack: the IPv4 pod IP and, beside it, the IPv6 one.
        // IPv6-only: the IPv6 pod IP alone.
        let ip = net.ip.expect("a pod IP");
        let v6 = match (ipv4, ip, &net.additional_ips[..]) {
            (true, IpAddr::V4(_), [IpAddr::V6(v6)]) => *v6,
            (false, IpAddr::V6(v6), []) => v6,
            _ => panic!("pod IP {ip}, additional IPs {:?}", net.additional_ips),
        };
        let subnet6 = cluster.nodes[node].record().unwrap().ipv6_subnet.unwrap();
        assert!(subnet6.contains(v6), "{v6} not in {subnet6}");
        sandboxes.push((node, id, IpAddr::V6(v6), net.netns.expect("sandbox netns")));
    }
    let per_sandbox = if ipv4 { 2 } else { 1 };
    assert_eq!(cluster.allocations().unwrap().len(), 2 * per_sandbox);
    let (a, b) = (&sandboxes[0], &sandboxes[1]);
    ping_from_path(&a.3, b.2).unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.agent_logs()));
    ping_from_path(&b.3, a.2).unwrap();
    // `ctr run --cni` on node 1 reaches the sandbox on node 2 over IPv6 and
    // the outside masqueraded behind the node's IPv6 address; its DEL on
    // exit releases its addresses.
    let service = cluster.outside_peer_addr_service6().unwrap();
    let script = format!(
        "for i in 1 2 3 4 5; do ping -c 1 -W 1 {} >/dev/null && break; done && nc -w 3 {} {}",
        b.2,
        service.ip(),
        service.port()
    );
    // (runc's state is the host's: one name per test.)
    let name = if ipv4 { "ctr-e2e-dual" } else { "ctr-e2e-v6" };
    let out = runtimes[0].ctr_run_cni(name, &script).unwrap();
    assert!(out.status.success(), "{out:?}\n{}", runtimes[0].log_tail());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster.nodes[0].underlay_ip6.unwrap().to_string()
    );
    assert_eq!(cluster.allocations().unwrap().len(), 2 * per_sandbox);
    for (node, id, _, _) in &sandboxes {
        cri[*node].stop_pod_sandbox(id).unwrap();
        cri[*node].remove_pod_sandbox(id).unwrap();
    }
    assert!(cluster.allocations().unwrap().is_empty());
}
