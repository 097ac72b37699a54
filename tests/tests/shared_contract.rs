//! The contract every binary shares (INTERFACES.md): the etcd prefix, TLS
//! to etcd, the cluster config and the node name mean the same in
//! `trellis-agent` (run, cleanup, install-cni), `trellis-ipam` and, through
//! the conflist the installer writes, the plugins. Each test runs the built
//! binaries the way an operator or a runtime does.

mod ipam_common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipam_common::{cluster_conf, Call, Plugin};
use serde_json::json;
use trellis_common::node::{write_node_record, NodeRecord};
use trellis_tests::bins;
use trellis_tests::cluster::{result_ip, Cluster, ClusterSpec};
use trellis_tests::etcd::Etcd;
use trellis_tests::libcni::{write_conflist, Attachment};
use trellis_tests::netns::{with_empty_host_name, Netns};
use trellis_tests::wait::wait_until;

/// How an agent run that must stop on its own ended: its exit status and
/// everything it logged, or `Err(log)` when it was still running after
/// `timeout` (and was killed).
fn agent_outcome(
    ns: &Netns,
    args: &[String],
    timeout: Duration,
    prepare: impl FnOnce(&mut Command),
) -> Result<(ExitStatus, String), String> {
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut argv = vec![bins::bin("trellis-agent").display().to_string()];
    argv.extend(args.iter().cloned());
    let mut cmd = ns.command(&argv);
    cmd.env_remove("NODE_NAME")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    prepare(&mut cmd);
    let mut child = ns.spawn_command(cmd).unwrap();
    let deadline = Instant::now() + timeout;
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok((status, read()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(read());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `trellis-agent` flags that get it past its kernel set-up in a bare
/// namespace (the underlay is `lo`), with `etcd` flags of the test's own.
fn agent_args(state_dir: &Path, etcd: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--iface",
        "lo",
        "--public-ip",
        "127.0.0.1",
        "--state-dir",
        &state_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(etcd.iter().map(|s| s.to_string()));
    args
}

/// The agent stops within 10 s with a failure whose log says `needle`.
#[track_caller]
fn assert_agent_refuses(ns: &Netns, args: &[String], needle: &str) {
    assert_agent_refuses_with(ns, args, needle, |_| {});
}

#[track_caller]
fn assert_agent_refuses_with(
    ns: &Netns,
    args: &[String],
    needle: &str,
    prepare: impl FnOnce(&mut Command),
) {
    match agent_outcome(ns, args, Duration::from_secs(10), prepare) {
        Ok((status, log)) => {
            assert!(!status.success(), "{args:?}: exited 0\n{log}");
            assert!(log.contains(needle), "{args:?}: {needle:?} not in\n{log}");
        }
        Err(log) => panic!("{args:?}: still running after 10 s, expected {needle:?}\n{log}"),
    }
}

#[test]
fn an_etcd_prefix_without_slashes_names_the_same_keys_in_every_binary() {
    let spec = ClusterSpec {
        etcd_prefix: "trellis".into(),
        agent_args: vec!["--ipam-gc-interval".into(), "1".into()],
        ..ClusterSpec::default().nodes(1)
    };
    let cluster = Cluster::start(spec).unwrap();
    // The conflist says "trellis", as the agent's flag does.
    let plain = cluster
        .add_pod(0, "plain")
        .unwrap_or_else(|e| panic!("ADD with etcdPrefix \"trellis\": {e:#}"));
    // Another list of the same network says "/trellis/".
    let node = &cluster.nodes[0];
    let mut slashed = cluster.conflist_for(&node.state_dir);
    slashed["plugins"][0]["ipam"]["etcdPrefix"] = json!("/trellis/");
    let slashed = write_conflist(&node.conf_dir, "20-slashed", &slashed).unwrap();
    let leaked_ns = Netns::new("pod").unwrap();
    let leaked_att = Attachment::new("slashed-pod", leaked_ns.path(), "eth0");
    let result = node.driver.add(&slashed, &leaked_att).unwrap();
    let leaked_ip = result_ip(&result).unwrap();

    // Both under /trellis/, nothing under a prefix without its slash.
    let keys = cluster.etcdctl(&["get", "--prefix", "--keys-only", "trellis"]);
    assert_eq!(keys.unwrap().trim(), "", "keys under \"trellis\" without /");
    let ips = cluster
        .etcdctl(&["get", "--prefix", "--keys-only", "/trellis/ipam/ips/"])
        .unwrap();
    for ip in [plain.ip, leaked_ip] {
        assert!(ips.contains(&format!("/trellis/ipam/ips/{ip}")), "{ips}");
    }

    // The agent's leak reclaim looks at the same keys: the pod that died
    // without a DEL gets its address back.
    drop(leaked_ns);
    wait_until(Duration::from_secs(10), "leaked address released", || {
        Ok(!cluster.allocations()?.contains(&leaked_ip))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_logs()));
    assert_eq!(cluster.allocations().unwrap(), vec![plain.ip]);
    cluster.del_pod(plain).unwrap();
    assert!(cluster.allocations().unwrap().is_empty());
}

#[test]
fn the_agent_checks_etcd_urls_and_tls_files_as_the_ipam_plugin_does() {
    let ns = Netns::new("tls-agent").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let not_pem = not_pem.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    let state = dir.path().join("state");
    for (etcd, needle) in [
        (
            vec![
                "--etcd-endpoints",
                "https://127.0.0.1:9",
                "--etcd-cafile",
                &not_pem,
            ],
            "holds no PEM certificate",
        ),
        (
            vec![
                "--etcd-endpoints",
                "https://127.0.0.1:9",
                "--etcd-cafile",
                &missing,
            ],
            "missing.pem",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:9",
                "--etcd-cafile",
                &not_pem,
            ],
            "https://",
        ),
        (
            vec!["--etcd-endpoints", "127.0.0.1:9"],
            "must start with http:// or https://",
        ),
        (
            vec![
                "--etcd-endpoints",
                "https://127.0.0.1:9",
                "--etcd-cafile",
                &not_pem,
                "--etcd-certfile",
                &not_pem,
            ],
            "go together",
        ),
    ] {
        let mut args = agent_args(&state, &etcd);
        args.extend(["--node-name".into(), "n1".into()]);
        assert_agent_refuses(&ns, &args, needle);
    }
    // install-cni would copy such files for the plugins: it refuses them.
    assert_install_cni_refuses(
        dir.path(),
        &[
            "--etcd-endpoints",
            "https://127.0.0.1:9",
            "--etcd-cafile",
            &not_pem,
        ],
        "holds no PEM certificate",
    );
}

/// `trellis-agent install-cni <args>` into dirs under `dir` fails saying
/// `needle`, and writes no file.
#[track_caller]
fn assert_install_cni_refuses(dir: &Path, args: &[&str], needle: &str) {
    let out = Command::new(bins::bin("trellis-agent"))
        .arg("install-cni")
        .args(args)
        .arg("--plugin-dir")
        .arg(bins::bin_dir())
        .arg("--cni-bin-dir")
        .arg(dir.join("bin"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?}: accepted: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {needle:?} not in {stderr}"
    );
    assert!(!dir.join("net.d").exists(), "{args:?}: files written");
    assert!(!dir.join("bin").exists(), "{args:?}: plugins copied");
}

#[test]
fn the_agent_leases_its_subnet_over_tls() {
    let ns = Netns::new("tls-node").unwrap();
    // An underlay of its own: both ends of a veth pair in the namespace.
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.ok(&["ip", "link", "set", "eth0p", "up"]).unwrap();
    ns.add_addr("eth0", "192.0.2.1/24".parse().unwrap())
        .unwrap();
    let etcd = Etcd::start_tls_in(&ns, "192.0.2.1".parse().unwrap()).unwrap();
    etcd.put(
        "/trellis/config",
        r#"{"network":"10.244.0.0/16","subnetLen":24,"vni":1,"port":8472}"#,
    )
    .unwrap();
    let tls = etcd.tls().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &PathBuf| p.display().to_string();
    let (ca, cert, key) = (path(&tls.ca), path(&tls.client_cert), path(&tls.client_key));
    let mut argv = vec![bins::bin("trellis-agent").display().to_string()];
    argv.extend(
        [
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
            "--iface",
            "eth0",
            "--node-name",
            "tls-node",
            "--state-dir",
            &dir.path().display().to_string(),
        ]
        .map(String::from),
    );
    let mut cmd = ns.command(&argv);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut agent = ns.spawn_command(cmd).unwrap();
    let leased = wait_until(Duration::from_secs(20), "node record over TLS", || {
        Ok(etcd.get("/trellis/nodes/tls-node")?.is_some())
    });
    let _ = agent.kill();
    let _ = agent.wait();
    leased.unwrap();
}

#[test]
fn the_installer_refuses_a_cluster_config_the_agent_would_refuse() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (config, needle) in [
        (r#"{"network":"10.244.1.0/16"}"#, "host bits"),
        (r#"{"network":"10.244.0.0/16","subnetLen":16}"#, "subnetLen"),
    ] {
        let file = dir.path().join("cluster-config.json");
        std::fs::write(&file, config).unwrap();
        let file = file.display().to_string();
        let endpoint = etcd.endpoint();
        assert_install_cni_refuses(
            dir.path(),
            &["--etcd-endpoints", &endpoint, "--cluster-config", &file],
            needle,
        );
        assert_eq!(etcd.get("/trellis/config").unwrap(), None, "{config}");
    }
}

#[test]
fn a_node_without_a_name_is_an_error_in_the_agent_and_the_ipam_plugin() {
    // The agent: no --node-name, no NODE_NAME, an empty host name.
    let ns = Netns::new("noname").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = agent_args(
        &dir.path().join("state"),
        &["--etcd-endpoints", "http://127.0.0.1:9"],
    );
    assert_agent_refuses_with(&ns, &args, "node name", |cmd| {
        with_empty_host_name(cmd);
    });

    // The IPAM plugin: no nodeName, a node record that names no node.
    let etcd = Etcd::start().unwrap();
    let record = NodeRecord {
        subnet: Some("10.244.7.0/24".parse().unwrap()),
        public_ip: "192.0.2.7".parse().unwrap(),
        vtep_mac: "02:00:00:00:00:07".into(),
        network: Some("10.244.0.0/16".parse().unwrap()),
        mtu: Some(1450),
        node_name: None,
        kubernetes: false,
        status_addr: None,
        dns: false,
        ipv6_subnet: None,
        ipv6_network: None,
        bridge: None,
    };
    write_node_record(dir.path(), &record).unwrap();
    let plugin = Plugin::snapshot();
    let conf = cluster_conf(&etcd.endpoint(), dir.path());
    let reply = plugin.invoke_with(&Call::new("ADD", "nameless"), &conf, |cmd| {
        with_empty_host_name(cmd);
    });
    reply.fails_with(7, "nodeName");
    assert_eq!(
        etcd.keys("/trellis/ipam/").unwrap(),
        Vec::<String>::new(),
        "allocated for a node without a name"
    );
}
