//! End to end with podman's CNI backend as the client: containers from a
//! local busybox root file system on two nodes of a simulated cluster.

use std::net::IpAddr;

use trellis_tests::cluster::{ping, Cluster, ClusterSpec, NETWORK_NAME, OUTSIDE_IP};
use trellis_tests::podman::Podman;
use trellis_tests::rootfs::Rootfs;

/// A shell loop pinging `ip` at most 5 times, 1 s each.
fn ping_script(ip: IpAddr) -> String {
    format!("for i in 1 2 3 4 5; do ping -c 1 -W 1 {ip} >/dev/null && exit 0; done; exit 1")
}

fn podman_on(cluster: &Cluster, node: usize, rootfs: &Rootfs) -> Podman {
    podman_for(cluster, node, rootfs, NETWORK_NAME)
}

/// podman on `node` whose `--network` is `network`.
fn podman_for(cluster: &Cluster, node: usize, rootfs: &Rootfs, network: &str) -> Podman {
    let n = &cluster.nodes[node];
    Podman::new(
        &n.netns,
        cluster.cni_bin_dir(),
        &n.conf_dir,
        network,
        rootfs,
    )
    .unwrap()
}

#[test]
fn podman_containers_reach_across_nodes_their_node_and_the_outside() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let rootfs = Rootfs::busybox().unwrap();
    let podmen = [
        podman_on(&cluster, 0, &rootfs),
        podman_on(&cluster, 1, &rootfs),
    ];

    let a = podmen[0].start("pm-a").unwrap();
    let b = podmen[1].start("pm-b").unwrap();
    for (node, ip) in [(0, a), (1, b)] {
        let IpAddr::V4(v4) = ip else { panic!("{ip}") };
        assert!(cluster.nodes[node].subnet().unwrap().contains(v4));
    }
    let mut allocated = cluster.allocations().unwrap();
    allocated.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(allocated, expected);

    // Across nodes, both ways.
    let out = podmen[0].exec("pm-a", &ping_script(b)).unwrap();
    assert!(
        out.status.success(),
        "pm-a -> pm-b: {out:?}\n{}",
        cluster.agent_logs()
    );
    let out = podmen[1].exec("pm-b", &ping_script(a)).unwrap();
    assert!(out.status.success(), "pm-b -> pm-a: {out:?}");
    // A libcni pod on node 2 and a podman container on node 1 see each other.
    let pod = cluster.add_pod(1, "pm-peer").unwrap();
    let out = podmen[0].exec("pm-a", &ping_script(pod.ip)).unwrap();
    assert!(out.status.success(), "pm-a -> libcni pod: {out:?}");
    ping(&pod.netns, a).unwrap();

    // The container and its node.
    let node_ip = IpAddr::V4(cluster.nodes[0].underlay_ip);
    let out = podmen[0].exec("pm-a", &ping_script(node_ip)).unwrap();
    assert!(out.status.success(), "pm-a -> node1: {out:?}");
    ping(&cluster.nodes[0].netns, a).unwrap();

    // Egress, masqueraded behind the node.
    let service = cluster.outside_peer_addr_service().unwrap();
    assert_eq!(service.ip(), IpAddr::V4(OUTSIDE_IP));
    let out = podmen[0]
        .exec(
            "pm-a",
            &format!("nc -w 3 {} {}", service.ip(), service.port()),
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        node_ip.to_string()
    );

    // podman rm is a CNI DEL: the address and the veth go.
    podmen[0].remove("pm-a").unwrap();
    podmen[1].remove("pm-b").unwrap();
    cluster.del_pod(pod).unwrap();
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
fn podman_run_rm_attaches_and_releases() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(1)).unwrap();
    let rootfs = Rootfs::busybox().unwrap();
    let podman = podman_on(&cluster, 0, &rootfs);
    let gateway = cluster.nodes[0].record().unwrap().gateway().unwrap();
    for i in 0..3 {
        let out = podman
            .run_once(&format!("pm-once-{i}"), &ping_script(IpAddr::V4(gateway)))
            .unwrap();
        assert!(out.status.success(), "run {i}: {out:?}");
    }
    assert!(cluster.allocations().unwrap().is_empty());
    assert!(cluster.nodes[0].host_veths().unwrap().is_empty());
}

/// A two-node cluster with `ipv6Network` and an IPv6 underlay.
fn dual_stack_spec() -> ClusterSpec {
    let mut spec = ClusterSpec {
        underlay6: true,
        ..ClusterSpec::default().nodes(2)
    };
    spec.config.ipv6_network = Some("fd10:244::/56".parse().unwrap());
    spec
}

#[test]
fn podman_dual_stack_containers_reach_each_other_and_the_outside_over_ipv6() {
    containers_reach_each_other_and_the_outside_over_ipv6(dual_stack_spec());
}

/// An IPv6-only cluster: `ipv6Network` and no `network`; each container
/// has one IPv6 address and no IPv4 one.
#[test]
fn podman_ipv6_only_containers_reach_each_other_and_the_outside() {
    let mut spec = dual_stack_spec();
    spec.config.network = None;
    containers_reach_each_other_and_the_outside_over_ipv6(spec);
}

/// Two podman containers on two nodes of `spec` (an IPv6 pool, with or
/// without its IPv4 one) ping each other over IPv6 and reach the outside
/// masqueraded; removing them frees every address.
fn containers_reach_each_other_and_the_outside_over_ipv6(spec: ClusterSpec) {
    let ipv4 = spec.config.network.is_some();
    let cluster = Cluster::start(spec).unwrap();
    let rootfs = Rootfs::busybox().unwrap();
    let podmen = [
        podman_on(&cluster, 0, &rootfs),
        podman_on(&cluster, 1, &rootfs),
    ];
    podmen[0].start("pm6-a").unwrap();
    podmen[1].start("pm6-b").unwrap();
    let (a6, b6) = (
        podmen[0].ip6("pm6-a").unwrap(),
        podmen[1].ip6("pm6-b").unwrap(),
    );
    for (node, ip) in [(0, a6), (1, b6)] {
        let IpAddr::V6(v6) = ip else { panic!("{ip}") };
        let subnet6 = cluster.nodes[node].record().unwrap().ipv6_subnet.unwrap();
        assert!(subnet6.contains(v6), "{v6} not in {subnet6}");
    }
    let per_container = if ipv4 { 2 } else { 1 };
    assert_eq!(cluster.allocations().unwrap().len(), 2 * per_container);
    let v4 = podmen[0].exec("pm6-a", "ip -4 addr show eth0").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&v4.stdout).contains("inet "),
        ipv4,
        "{v4:?}"
    );
    let out = podmen[0].exec("pm6-a", &ping_script(b6)).unwrap();
    assert!(
        out.status.success(),
        "pm6-a -> pm6-b: {out:?}\n{}",
        cluster.agent_logs()
    );
    let out = podmen[1].exec("pm6-b", &ping_script(a6)).unwrap();
    assert!(out.status.success(), "pm6-b -> pm6-a: {out:?}");
    // Egress over IPv6, masqueraded behind the node's IPv6 address.
    let service = cluster.outside_peer_addr_service6().unwrap();
    let out = podmen[0]
        .exec(
            "pm6-a",
            &format!("nc -w 3 {} {}", service.ip(), service.port()),
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster.nodes[0].underlay_ip6.unwrap().to_string()
    );
    podmen[0].remove("pm6-a").unwrap();
    podmen[1].remove("pm6-b").unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}

/// `from` (on `podman`) has the overlay's MTU 1450 and pings `to` by name,
/// reaching `to_ip`.
fn pings_by_name(cluster: &Cluster, podman: &Podman, from: &str, to: &str, to_ip: IpAddr) {
    let mtu = podman.exec(from, "cat /sys/class/net/eth0/mtu").unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1450");
    let script = format!("for i in 1 2 3 4 5; do ping -c 1 -W 1 {to} && exit 0; done; exit 1");
    let out = podman.exec(from, &script).unwrap();
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains(&format!("({to_ip})")),
        "{from} -> {to}: {out:?}\n{}",
        cluster.agent_logs()
    );
}

/// The seed's scenario on the default network: `podman run --name host1` on
/// one node, `--name host2` on the other, and each finds the other by name
/// through the agents' DNS, which podman's resolv.conf points at from the
/// CNI result.
#[test]
fn podman_containers_on_two_nodes_find_each_other_by_name() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let rootfs = Rootfs::busybox().unwrap();
    let podmen = [
        podman_on(&cluster, 0, &rootfs),
        podman_on(&cluster, 1, &rootfs),
    ];
    let host1 = podmen[0].start("host1").unwrap();
    let host2 = podmen[1].start("host2").unwrap();

    let gateway = cluster.nodes[0].record().unwrap().gateway().unwrap();
    let resolv = podmen[0].exec("host1", "cat /etc/resolv.conf").unwrap();
    let resolv = String::from_utf8_lossy(&resolv.stdout).into_owned();
    assert!(
        resolv.contains(&format!("nameserver {gateway}")),
        "resolv.conf of host1:\n{resolv}"
    );
    // host1 pings host2 by name, over the overlay.
    pings_by_name(&cluster, &podmen[0], "host1", "host2", host2);
    // host2 resolves host1, bare and in the network's domain.
    for name in ["host1", &format!("host1.{NETWORK_NAME}")] {
        let out = podmen[1]
            .exec("host2", &format!("nslookup {name}"))
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains(&host1.to_string()),
            "host2: nslookup {name}: {out:?}"
        );
    }
    // A removed container stops resolving on the other node within 2 s.
    podmen[0].remove("host1").unwrap();
    let out = podmen[1]
        .exec(
            "host2",
            "for i in 1 2 3 4 5 6 7 8 9 10; do nslookup host1 || exit 0; sleep 0.2; done; exit 1",
        )
        .unwrap();
    assert!(out.status.success(), "host1 still resolves: {out:?}");
    podmen[1].remove("host2").unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}

/// The seed's scenario as its users ran it: `trellisctl network create
/// multihost`, the network appears in `podman network ls` on every node,
/// `podman run --network multihost --name host1` on one node and `host2` on
/// the other, and host1 pings host2 by name over the network's VXLAN; a
/// container of the default network is neither resolved nor reached.
#[test]
fn podman_on_a_named_network_finds_containers_by_name_and_nothing_else() {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let out = trellis_tests::ctl::ctl(
        &cluster,
        &["network", "create", "multihost", "--subnet", "10.0.0.0/16"],
    );
    assert!(out.status.success(), "{out:?}");
    let rootfs = Rootfs::busybox().unwrap();
    let podmen = [
        podman_for(&cluster, 0, &rootfs, "multihost"),
        podman_for(&cluster, 1, &rootfs, "multihost"),
    ];
    trellis_tests::wait::wait_until(
        std::time::Duration::from_secs(30),
        "podman lists multihost on both nodes",
        || {
            Ok(podmen.iter().all(|p| {
                p.ok(&["network", "ls", "--format", "{{.Name}}"])
                    .is_ok_and(|names| names.lines().any(|n| n == "multihost"))
            }))
        },
    )
    .unwrap();
    // The network is set up on a node shortly after its conflist appears:
    // until then ADD says to try again, as a runtime would.
    let start = |p: &Podman, name: &str| {
        let mut last = None;
        for _ in 0..50 {
            match p.start(name) {
                Ok(ip) => return ip,
                Err(e) => last = Some(e),
            }
            let _ = p.remove(name);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("podman run {name}: {:?}\n{}", last, cluster.agent_logs())
    };
    let host1 = start(&podmen[0], "host1");
    let host2 = start(&podmen[1], "host2");
    let net: ipnetwork::Ipv4Network = "10.0.0.0/16".parse().unwrap();
    assert!(
        matches!(host1, IpAddr::V4(v4) if net.contains(v4)),
        "{host1}"
    );
    pings_by_name(&cluster, &podmen[0], "host1", "host2", host2);
    let out = podmen[1].exec("host2", "nslookup host1.multihost").unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&host1.to_string()),
        "host2: nslookup host1.multihost: {out:?}"
    );

    // A container of the default network on node 2: not a name in
    // multihost, and not reachable from it.
    let default = podman_on(&cluster, 1, &rootfs);
    let other = default.start("other").unwrap();
    let out = podmen[0].exec("host1", "nslookup other").unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&other.to_string()),
        "{out:?}"
    );
    let out = podmen[0]
        .exec("host1", &format!("ping -c 2 -W 1 {other}"))
        .unwrap();
    assert!(
        !out.status.success(),
        "host1 reaches the default network: {out:?}"
    );

    default.remove("other").unwrap();
    podmen[0].remove("host1").unwrap();
    podmen[1].remove("host2").unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}
