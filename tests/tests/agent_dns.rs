//! The agents' DNS in the simulated three-node cluster (network namespaces,
//! a real etcd, pods through the libcni driver and the real plugins, the
//! pod name in `K8S_POD_NAME` as podman and the kubelet pass it): every
//! container's name answers its address from every node's gateway, as
//! `NAME` and `NAME.<network>`, over UDP and TCP; a removed container stops
//! answering within 2 s everywhere; other names go to the upstream resolver
//! (dnsmasq on the harness's outside host, never the machine's own).

use std::net::IpAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Result;
use trellis_tests::cluster::{Cluster, ClusterSpec, NETWORK_NAME, OUTSIDE_IP};
use trellis_tests::dig::{dig, result_dns, status};
use trellis_tests::netns::Netns;
use trellis_tests::wait::{wait_for, wait_until};

fn gateway(cluster: &Cluster, node: usize) -> IpAddr {
    IpAddr::V4(cluster.nodes[node].record().unwrap().gateway().unwrap())
}

/// dnsmasq on the outside host, answering `upstream.test` and nothing else.
fn upstream(cluster: &Cluster) -> Result<Child> {
    let pid = cluster.dir().join("dnsmasq.pid");
    cluster.outside().spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={OUTSIDE_IP}"),
        "--address=/upstream.test/203.0.113.9",
        "--user=root",
        &format!("--pid-file={}", pid.display()),
    ])
}

#[test]
fn names_resolve_from_every_node_and_go_with_their_container() {
    let cluster = Cluster::start(ClusterSpec::default()).unwrap();
    // Killed by the outside namespace's drop should the test fail.
    let mut upstream = upstream(&cluster).unwrap();
    let host1 = cluster.add_pod(0, "host1").unwrap();
    let host2 = cluster.add_pod(1, "Host2").unwrap();
    let (gw0, gw1, gw2) = (
        gateway(&cluster, 0),
        gateway(&cluster, 1),
        gateway(&cluster, 2),
    );

    // The result names the node's gateway and the network's domain.
    assert_eq!(
        result_dns(&host1),
        (vec![gw0.to_string()], vec![NETWORK_NAME.to_string()])
    );
    assert_eq!(result_dns(&host2).0, vec![gw1.to_string()]);

    // host1 finds host2 (on another node) by name, bare and in the
    // network's domain, case-insensitively, over UDP and TCP; and back.
    let in_domain = format!("host2.{NETWORK_NAME}");
    let ask = |from: &Netns, server, name: &str, extra: &[&str]| {
        wait_for(Duration::from_secs(5), &format!("{name} resolves"), || {
            Ok(Some(dig(from, server, name, extra)?).filter(|ips| !ips.is_empty()))
        })
    };
    assert_eq!(
        ask(&host1.netns, gw0, "host2", &[]).unwrap(),
        vec![host2.ip]
    );
    assert_eq!(
        ask(&host1.netns, gw0, &in_domain, &["+tcp"]).unwrap(),
        vec![host2.ip]
    );
    assert_eq!(
        ask(&host1.netns, gw0, "HOST2", &[]).unwrap(),
        vec![host2.ip]
    );
    assert_eq!(
        ask(&host2.netns, gw1, "host1", &[]).unwrap(),
        vec![host1.ip]
    );
    // An IPv4-only cluster has no AAAA for it; the name still exists.
    assert_eq!(
        dig(&host1.netns, gw0, "host2", &["AAAA"]).unwrap(),
        Vec::<IpAddr>::new()
    );
    // A name in the network's domain that no container has: NXDOMAIN, not
    // a question for the upstream.
    assert_eq!(
        status(&host1.netns, gw0, "nosuch.trellis").unwrap(),
        "NXDOMAIN"
    );
    // Other names go to the upstream resolver.
    assert_eq!(
        ask(&host1.netns, gw0, "upstream.test", &[]).unwrap(),
        vec!["203.0.113.9".parse::<IpAddr>().unwrap()]
    );

    // A second live container of the same name (on node3): both addresses.
    let twin = cluster.add_pod(2, "host2").unwrap();
    let mut both = vec![host2.ip, twin.ip];
    both.sort();
    wait_until(Duration::from_secs(5), "host2 answers both", || {
        Ok(dig(&host1.netns, gw0, "host2", &[])? == both)
    })
    .unwrap();

    // host2 removed: within 2 s no node answers its address any more.
    let (twin_ip, host2_ip) = (twin.ip, host2.ip);
    cluster.del_pod(host2).unwrap();
    let removed = Instant::now();
    for (from, gw) in [
        (&host1.netns, gw0),
        (&twin.netns, gw2),
        (&cluster.nodes[1].netns, gw1),
    ] {
        wait_until(
            Duration::from_secs(2),
            "host2 forgets the removed one",
            || Ok(dig(from, gw, "host2", &[])? == vec![twin_ip]),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    }
    let forgotten = removed.elapsed();
    assert!(forgotten < Duration::from_secs(2), "{forgotten:?}");
    println!("a removed container stopped resolving on all 3 nodes in {forgotten:?}");
    assert!(!dig(&host1.netns, gw0, "host2", &[])
        .unwrap()
        .contains(&host2_ip));
    cluster.del_pod(twin).unwrap();
    wait_until(Duration::from_secs(2), "host2 is gone", || {
        Ok(status(&host1.netns, gw0, "host2.trellis")? == "NXDOMAIN")
    })
    .unwrap();
    cluster.del_pod(host1).unwrap();
    let _ = upstream.kill();
    let _ = upstream.wait();
}

#[test]
fn a_restarted_agent_answers_within_a_second_and_names_survive_it() {
    let mut cluster = Cluster::start(ClusterSpec::default().nodes(2)).unwrap();
    let web = cluster.add_pod(1, "web").unwrap();
    let client = cluster.add_pod(0, "client").unwrap();
    let gw0 = gateway(&cluster, 0);
    wait_until(Duration::from_secs(5), "web resolves", || {
        Ok(dig(&client.netns, gw0, "web", &[])? == vec![web.ip])
    })
    .unwrap();

    cluster.nodes[0].stop_agent(Duration::from_secs(5)).unwrap();
    // The data path stays; the name server goes with the agent.
    assert!(dig(&client.netns, gw0, "web", &[]).is_err());
    let started = Instant::now();
    cluster.nodes[0].start_agent().unwrap();
    // Asked over TCP: a closed port answers a reset at once, where UDP's
    // port-unreachable is rate-limited by the kernel (1/s after a burst)
    // and dig would wait out its second. Until the agent has read the
    // names it answers nothing, never NXDOMAIN for a name it has not read.
    let at = format!("@{gw0}");
    let argv = ["dig", "+tcp", "+time=1", "+tries=1", &at, "web"];
    wait_until(Duration::from_secs(5), "web resolves again", || {
        let out = client.netns.command(&argv).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.split("status: ").nth(1) {
            None => Ok(false),
            Some(rest) if rest.starts_with("NOERROR") => {
                Ok(text.contains(&format!("IN\tA\t{}", web.ip)))
            }
            Some(rest) => panic!(
                "a restarting agent answered {}\n{}",
                rest.split(',').next().unwrap_or(rest),
                cluster.agent_logs()
            ),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    let answered = started.elapsed();
    println!("a restarted agent answered after {answered:?}");
    assert!(answered < Duration::from_secs(1), "{answered:?}");
    cluster.del_pod(web).unwrap();
    cluster.del_pod(client).unwrap();
}

#[test]
fn without_dns_the_result_names_no_nameserver() {
    let spec = ClusterSpec {
        agent_args: vec!["--dns=false".into()],
        ..ClusterSpec::default().nodes(1)
    };
    let cluster = Cluster::start(spec).unwrap();
    let pod = cluster.add_pod(0, "quiet").unwrap();
    assert_eq!(result_dns(&pod), (vec![], vec![]));
    assert!(!cluster.nodes[0].record().unwrap().dns);
    let gw = gateway(&cluster, 0);
    assert!(dig(&pod.netns, gw, "quiet", &[]).is_err());
    cluster.del_pod(pod).unwrap();
}
