//! etcd with authentication on, set up by the README's `etcdctl` commands
//! as written: the agents and the plugins connect as their own users, each
//! role granting only its keys (`Keys::grants`), and pods come up and talk
//! across nodes. A plugin whose role lacks a key, or with a wrong or no
//! password, fails ADD with code 106 naming what etcd refused, and leaves
//! nothing: no veth, no allocation, no handle.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use trellis_common::cni::code;
use trellis_common::keys::{EtcdRole, Keys};
use trellis_tests::cluster::{ping, Cluster, ClusterSpec};
use trellis_tests::libcni::{Attachment, CniFailure};
use trellis_tests::netns::Netns;

const ROOT_PASSWORD: &str = "root-pw-1";
const AGENT_PASSWORD: &str = "agent-pw-2";
const CNI_PASSWORD: &str = "cni-pw-3";
/// The agents' `--metrics-addr`, inside their nodes.
const METRICS: &str = "127.0.0.1:9464";

/// The README's block of `etcdctl` commands (after `<!-- etcd-permissions -->`).
fn readme_commands() -> String {
    let readme = include_str!("../../README.md");
    let (_, after) = readme
        .split_once("<!-- etcd-permissions -->\n```sh\n")
        .expect("the README has the etcd permissions block");
    let (block, _) = after.split_once("```").expect("the block ends");
    block.to_string()
}

#[test]
fn the_readme_grants_exactly_the_keys_of_each_role() {
    let block = readme_commands();
    let keys = Keys::default();
    let mut granted = BTreeSet::new();
    for role in [EtcdRole::Agent, EtcdRole::Plugin] {
        for grant in keys.grants(role) {
            granted.insert(grant.etcdctl(role));
        }
    }
    let written: BTreeSet<String> = block
        .lines()
        .filter(|l| l.contains(" grant-permission "))
        .map(str::to_string)
        .collect();
    assert_eq!(written, granted);
}

/// Every conflist gets the plugins' user, every agent starts (as its
/// user, from the spec's flags); the nodes converge.
fn start_as_their_users(cluster: &mut Cluster) {
    for node in &mut cluster.nodes {
        set_credentials(
            &node.conflist,
            Some((EtcdRole::Plugin.name(), CNI_PASSWORD)),
        )
        .unwrap();
        node.start_agent().unwrap();
    }
    cluster
        .wait_converged(std::time::Duration::from_secs(60))
        .unwrap();
}

/// Run the README's block as an operator does, against `endpoints`.
fn run_readme_commands(cluster: &Cluster, endpoints: &str) {
    let out = cluster
        .underlay()
        .command(&["sh", "-euc", &readme_commands()])
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", endpoints)
        .env("ROOT_PASSWORD", ROOT_PASSWORD)
        .env("AGENT_PASSWORD", AGENT_PASSWORD)
        .env("CNI_PASSWORD", CNI_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's etcdctl commands failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ipam` object of a node's conflist gets `credentials` (user,
/// password), or none.
fn set_credentials(conflist: &std::path::Path, credentials: Option<(&str, &str)>) -> Result<()> {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(conflist)?)?;
    let ipam = v["plugins"][0]["ipam"]
        .as_object_mut()
        .context("conflist without ipam")?;
    ipam.remove("etcdUsername");
    ipam.remove("etcdPassword");
    if let Some((user, password)) = credentials {
        ipam.insert("etcdUsername".into(), json!(user));
        ipam.insert("etcdPassword".into(), json!(password));
    }
    std::fs::write(conflist, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

/// An ADD on node `node` that must fail: its failure, after checking that
/// it left no veth on the node, no allocation and no handle in etcd.
fn failed_add(cluster: &Cluster, node: usize, container_id: &str) -> Result<CniFailure> {
    let n = cluster.node(node)?;
    let veths = n.host_veths()?;
    let allocations = cluster.allocations()?;
    let pod = Netns::new("pod")?;
    let att = Attachment::new(container_id, pod.path(), "eth0");
    let failure = match n.driver.add(&n.conflist, &att) {
        Ok(result) => bail!("ADD of {container_id} succeeded: {result}"),
        Err(f) => f,
    };
    assert_eq!(n.host_veths()?, veths, "a veth is left after {failure}");
    assert_eq!(cluster.allocations()?, allocations, "after {failure}");
    let handles = cluster.etcd_entries("ipam/handles/")?;
    assert!(
        !handles.iter().any(|(k, _)| k.contains(container_id)),
        "a handle is left after {failure}: {handles:?}"
    );
    assert!(
        pod.links()?.iter().all(|l| l == "lo"),
        "the pod keeps {:?}",
        pod.links()?
    );
    Ok(failure)
}

#[test]
fn agents_and_plugins_as_their_own_etcd_users() {
    let mut spec = ClusterSpec::default().nodes(2).agents(false);
    spec.agent_args = vec![
        "--etcd-username".into(),
        EtcdRole::Agent.name().into(),
        "--etcd-password".into(),
        AGENT_PASSWORD.into(),
        "--metrics-addr".into(),
        METRICS.into(),
    ];
    let mut cluster = Cluster::start(spec).unwrap();
    let keys = Keys::default();

    // The README's commands, as an operator runs them.
    run_readme_commands(&cluster, &cluster.etcd_endpoint());
    // Without a user etcd answers nothing now.
    let anonymous = cluster.etcdctl(&["get", &keys.config()]);
    assert!(anonymous.is_err(), "{anonymous:?}");
    cluster
        .etcd_mut()
        .set_etcdctl_user(Some(&format!("root:{ROOT_PASSWORD}")));

    // Each user may write its keys and nothing else (a delete of a key
    // that does not exist is checked as a write, and changes nothing).
    let (agent, plugin) = (
        (EtcdRole::Agent.name(), AGENT_PASSWORD),
        (EtcdRole::Plugin.name(), CNI_PASSWORD),
    );
    for ((user, password), key, allowed) in [
        (plugin, keys.node("intruder"), false),
        (plugin, keys.config(), false),
        (plugin, keys.subnets() + "10.244.9.0-24", false),
        (plugin, keys.ips() + "10.244.9.9", true),
        (plugin, keys.handles() + "c/eth0", true),
        (agent, keys.node("n9"), true),
        (agent, keys.subnets() + "10.244.9.0-24", true),
        (agent, keys.ips() + "10.244.9.9", true),
        (agent, "/trellis/other".into(), false),
        (agent, "/trellis-other/config".into(), false),
    ] {
        let ok = etcdctl_as(&cluster, user, password)
            .args(["del", &key])
            .output()
            .unwrap()
            .status
            .success();
        assert_eq!(ok, allowed, "{user} writing {key}");
    }

    start_as_their_users(&mut cluster);
    let a = cluster.add_pod(0, "auth-a").unwrap();
    let b = cluster.add_pod(1, "auth-b").unwrap();
    ping(&a.netns, b.ip).unwrap();
    cluster.check_pod(&a).unwrap();
    let held: BTreeSet<IpAddr> = cluster.allocations().unwrap().into_iter().collect();
    assert_eq!(held, BTreeSet::from([a.ip, b.ip]));
    // The agents served those calls, as the plugins' own user.
    for node in &cluster.nodes {
        let served = node.agent_counter(METRICS, "trellis_agent_ipam_service_calls_total");
        let declined = node.agent_counter(METRICS, "trellis_agent_ipam_service_declined_total");
        assert!(served.unwrap() >= 1, "{}", node.agent_log());
        assert_eq!(declined.unwrap(), 0, "{}", node.agent_log());
    }

    // The plugins' role loses the handles: ADD names the key it could not
    // write and leaves nothing.
    let handles = keys.handles();
    cluster
        .etcdctl(&[
            "role",
            "revoke-permission",
            EtcdRole::Plugin.name(),
            "--prefix=true",
            &handles,
        ])
        .unwrap();
    let f = failed_add(&cluster, 0, "auth-no-handles").unwrap();
    assert_eq!(f.code, code::ETCD_ACCESS, "{f}");
    for needle in [
        "refused user \"trellis-cni\" while allocating an address",
        "permission denied to read and write /trellis/ipam/handles/auth-no-handles/eth0",
        "etcd permissions",
    ] {
        assert!(f.msg.contains(needle), "{needle:?} not in {f}");
    }
    assert!(!f.msg.contains("/trellis/ipam/ips/"), "{f}");
    cluster
        .etcdctl(&[
            "role",
            "grant-permission",
            EtcdRole::Plugin.name(),
            "--prefix=true",
            "readwrite",
            &handles,
        ])
        .unwrap();

    // A wrong password, then none at all.
    let conflist = cluster.node(0).unwrap().conflist.clone();
    set_credentials(&conflist, Some((EtcdRole::Plugin.name(), "wrong"))).unwrap();
    let f = failed_add(&cluster, 0, "auth-wrong-password").unwrap();
    assert_eq!(f.code, code::ETCD_ACCESS, "{f}");
    for needle in [
        "refused user \"trellis-cni\"",
        "authentication failed",
        "check etcdUsername/etcdPassword",
    ] {
        assert!(f.msg.contains(needle), "{needle:?} not in {f}");
    }
    set_credentials(&conflist, None).unwrap();
    let f = failed_add(&cluster, 0, "auth-no-user").unwrap();
    assert_eq!(f.code, code::ETCD_ACCESS, "{f}");
    assert!(
        f.msg
            .contains("etcd has authentication on; set etcdUsername/etcdPassword"),
        "{f}"
    );

    // Back to the right password: pods come and go as before.
    set_credentials(&conflist, Some((EtcdRole::Plugin.name(), CNI_PASSWORD))).unwrap();
    let c = cluster.add_pod(0, "auth-c").unwrap();
    ping(&c.netns, b.ip).unwrap();
    for pod in [a, b, c] {
        cluster.del_pod(pod).unwrap();
    }
    assert_eq!(cluster.allocations().unwrap(), Vec::<IpAddr>::new());
    for node in &mut cluster.nodes {
        assert!(node.agent_running(), "{}", node.agent_log());
    }

    // An agent with a wrong password stops at start-up, saying why.
    let out = cluster
        .node(0)
        .unwrap()
        .netns
        .command(&[
            "timeout".to_string(),
            "30".into(),
            trellis_tests::bins::bin("trellis-agent")
                .display()
                .to_string(),
            "--etcd-endpoints".into(),
            cluster.etcd_endpoint(),
            "--etcd-username".into(),
            EtcdRole::Agent.name().into(),
            "--node-name".into(),
            "node1".into(),
        ])
        .env("TRELLIS_ETCD_PASSWORD", "wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "{out:?}"
    );
    assert!(
        stderr.contains("refused user \"trellis-agent\"")
            && stderr.contains("check --etcd-username/--etcd-password"),
        "{stderr}"
    );
}

/// Three etcd members with authentication on, one of them down while the
/// agents and the plugins connect: every binary logs in on the members
/// that answer and, on the one that was away, at its first request there.
/// Then each member goes in turn, and every round of ADDs succeeds.
#[test]
fn with_three_members_one_away_at_start_every_round_succeeds() {
    let mut spec = ClusterSpec::default()
        .nodes(2)
        .agents(false)
        .etcd_members(3);
    spec.agent_args = vec![
        "--etcd-username".into(),
        EtcdRole::Agent.name().into(),
        "--etcd-password".into(),
        AGENT_PASSWORD.into(),
    ];
    let mut cluster = Cluster::start(spec).unwrap();
    run_readme_commands(&cluster, &cluster.etcd_endpoints().join(","));
    cluster
        .etcd_cluster_mut()
        .set_etcdctl_user(Some(&format!("root:{ROOT_PASSWORD}")));

    let away = cluster.etcd_cluster().follower().unwrap();
    cluster.etcd_cluster_mut().kill(away).unwrap();
    start_as_their_users(&mut cluster);

    let others: Vec<usize> = (0..3).filter(|i| *i != away).collect();
    // Round 0 with `away` down; round 1 with it back and others[0] down;
    // round 2 with others[1] down.
    for round in 0..3 {
        if round > 0 {
            let (back, down) = if round == 1 {
                (away, others[0])
            } else {
                (others[0], others[1])
            };
            cluster.etcd_cluster_mut().restart(back).unwrap();
            cluster.etcd_cluster_mut().kill(down).unwrap();
            cluster
                .etcd_cluster()
                .wait_leader(std::time::Duration::from_secs(20))
                .unwrap();
        }
        let pods: Vec<_> = (0..4)
            .map(|i| {
                cluster
                    .add_pod(i % 2, &format!("auth3-{round}-{i}"))
                    .unwrap_or_else(|e| panic!("round {round}: {e:#}"))
            })
            .collect();
        ping(&pods[0].netns, pods[1].ip).unwrap();
        ping(&pods[3].netns, pods[2].ip).unwrap();
        for pod in pods {
            cluster
                .del_pod(pod)
                .unwrap_or_else(|f| panic!("round {round}: DEL: {f}"));
        }
        assert_eq!(
            cluster.allocations().unwrap(),
            Vec::<IpAddr>::new(),
            "round {round}"
        );
    }
    for node in &mut cluster.nodes {
        assert!(node.agent_running(), "{}", node.agent_log());
    }
}

/// `etcdctl` against the cluster's etcd as `user`.
fn etcdctl_as(cluster: &Cluster, user: &str, password: &str) -> std::process::Command {
    let mut cmd = cluster.underlay().command(&["etcdctl"]);
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", &cluster.etcd_endpoint()])
        .args(["--dial-timeout", "3s", "--command-timeout", "5s"])
        .args(["--user", &format!("{user}:{password}")]);
    cmd
}
