//! Root tests of the agent's IPAM service: the plugins' `trellis-ipam`
//! calls answered by the agent on `<stateDir>/ipam.sock`, and the plugin
//! running `trellis-ipam` itself whenever the agent is not there to answer
//! (killed, frozen, turned off, another etcd), with the same results.

use std::time::{Duration, Instant};

use trellis_tests::cluster::{ping, Cluster, ClusterSpec};
use trellis_tests::libcni::{write_conflist, Attachment};
use trellis_tests::netns::Netns;
use trellis_tests::wait::wait_until;

fn spec(args: &[&str]) -> ClusterSpec {
    ClusterSpec {
        agent_args: ["--metrics-addr", "127.0.0.1:9464"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect(),
        ..ClusterSpec::default().nodes(2)
    }
}

/// A counter of node `i`'s agent, from /metrics.
fn counter(cluster: &Cluster, i: usize, name: &str) -> u64 {
    cluster.nodes[i]
        .agent_counter("127.0.0.1:9464", name)
        .unwrap()
}

const SERVED: &str = "trellis_agent_ipam_service_calls_total";
const DECLINED: &str = "trellis_agent_ipam_service_declined_total";

#[test]
fn the_agent_answers_the_plugins_and_the_plugin_goes_on_without_it() {
    let mut cluster = Cluster::start(spec(&[])).unwrap();
    assert!(cluster.nodes[0].state_dir.join("ipam.sock").exists());
    let p1 = cluster.add_pod(0, "p1").unwrap();
    let far = cluster.add_pod(1, "far").unwrap();
    ping(&p1.netns, far.ip).unwrap();
    assert_eq!(counter(&cluster, 0, SERVED), 1, "ADD served by the agent");
    assert_eq!(counter(&cluster, 0, DECLINED), 0);
    cluster.check_pod(&p1).unwrap();
    assert_eq!(counter(&cluster, 0, SERVED), 2, "CHECK served too");

    // The agent crashes: its socket stays, nobody listens; the plugin
    // runs trellis-ipam itself, DEL included.
    cluster.nodes[0].kill_agent().unwrap();
    let p2 = cluster.add_pod(0, "p2").unwrap();
    assert_ne!(p2.ip, p1.ip);
    cluster.del_pod(p1).unwrap();
    let mut held = cluster.allocations().unwrap();
    held.sort();
    let mut want = vec![p2.ip, far.ip];
    want.sort();
    assert_eq!(held, want);

    // Back: it answers again, and releases what the plugin allocated
    // without it.
    cluster.nodes[0].start_agent().unwrap();
    wait_until(Duration::from_secs(20), "agent of node1 serving", || {
        // The log is appended to: the second run's line.
        Ok(cluster.nodes[0]
            .agent_log()
            .matches("serving trellis-ipam on")
            .count()
            == 2)
    })
    .unwrap();
    let p3 = cluster.add_pod(0, "p3").unwrap();
    ping(&p3.netns, far.ip).unwrap();
    cluster.del_pod(p2).unwrap();
    cluster.del_pod(p3).unwrap();
    assert_eq!(counter(&cluster, 0, SERVED), 3, "ADD and 2 DELs");
    assert_eq!(cluster.allocations().unwrap(), vec![far.ip]);
    cluster.del_pod(far).unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}

#[test]
fn a_frozen_agent_delays_an_add_but_does_not_fail_it() {
    let cluster = Cluster::start(spec(&[])).unwrap();
    let frozen = cluster.nodes[0].freeze_agent().unwrap();
    let started = Instant::now();
    let p = cluster.add_pod(0, "p").unwrap();
    let took = started.elapsed();
    drop(frozen);
    // The plugin waited for the agent's answer, then ran trellis-ipam.
    assert!(took >= Duration::from_secs(4), "ADD took {took:?}");
    assert_eq!(cluster.allocations().unwrap(), vec![p.ip]);
    // The thawed agent then reads the call the plugin gave up on, and
    // declines it: the plugin did the work.
    wait_until(Duration::from_secs(10), "the late call declined", || {
        Ok(counter(&cluster, 0, DECLINED) == 1)
    })
    .unwrap();
    assert_eq!(counter(&cluster, 0, SERVED), 0);
    assert_eq!(cluster.allocations().unwrap(), vec![p.ip]);
    cluster.del_pod(p).unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}

#[test]
fn calls_for_another_etcd_or_with_the_service_off_run_trellis_ipam() {
    // --ipam-service=false: no socket, every call exec'd.
    let cluster = Cluster::start(spec(&["--ipam-service=false"])).unwrap();
    assert!(!cluster.nodes[0].state_dir.join("ipam.sock").exists());
    let p = cluster.add_pod(0, "p").unwrap();
    assert_eq!(counter(&cluster, 0, SERVED), 0);
    cluster.del_pod(p).unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
    drop(cluster);

    // A conflist naming the agent's etcd prefix by another spelling is
    // served (the same keys); one naming another prefix is declined, and
    // trellis-ipam allocates there itself (the node's subnet pinned).
    let cluster = Cluster::start(spec(&[])).unwrap();
    let node = &cluster.nodes[0];
    let mut conf = cluster.conflist_for(&node.state_dir);
    let prefix = cluster.key_prefix();
    conf["plugins"][0]["ipam"]["etcdPrefix"] =
        serde_json::json!(format!("{}/", prefix.trim_start_matches('/')));
    let same = write_conflist(cluster.work_dir(), "same", &conf).unwrap();
    conf["plugins"][0]["ipam"]["etcdPrefix"] = serde_json::json!(format!("{prefix}-other"));
    conf["plugins"][0]["ipam"]["subnet"] = serde_json::json!(node.subnet().unwrap().to_string());
    let other = write_conflist(cluster.work_dir(), "other", &conf).unwrap();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("svc").unwrap()).collect();
    for (i, (list, pod)) in [(&same, &pods[0]), (&other, &pods[1])]
        .into_iter()
        .enumerate()
    {
        let att = Attachment::new(
            format!("svc-{i}-{}", std::process::id()),
            pod.path(),
            "eth0",
        );
        node.driver.add(list, &att).unwrap();
        if i == 1 {
            let elsewhere = cluster
                .etcdctl(&[
                    "get",
                    "--prefix",
                    "--keys-only",
                    &format!("{prefix}-other/ipam/"),
                ])
                .unwrap();
            assert!(
                !elsewhere.trim().is_empty(),
                "nothing allocated under the other prefix"
            );
        }
        node.driver.del(list, &att).unwrap();
    }
    assert_eq!(counter(&cluster, 0, SERVED), 2, "ADD and DEL of `same`");
    assert_eq!(counter(&cluster, 0, DECLINED), 2, "ADD and DEL of `other`");
    assert!(cluster.allocations().unwrap().is_empty());
}
