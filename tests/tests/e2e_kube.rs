//! trellis under Kubernetes: a cluster of real kubelets in network
//! namespaces (`scripts/kube-cluster.sh`'s), trellis installed from
//! `manifests/` with `kubectl apply`, then what its users rely on, checked
//! from pods and nodes, and the Kubernetes network conformance tests.
//!
//! One cluster for the whole suite (bringing one up takes most of a
//! minute), so the checks run in order, the ones that change the cluster
//! last. Needs `scripts/kube-build.sh` and `cargo build --workspace --bins`.
//!
//!   cargo test -p trellis-tests --test e2e_kube [-- NAME]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use trellis_tests::bins;
use trellis_tests::kube::kubectl::node_ready;
use trellis_tests::kube::layout::{node_ip, OUTSIDE_HTTP_PORT, OUTSIDE_IP};
use trellis_tests::kube::testbed::Testbed;
use trellis_tests::kube::{self, conformance, poll, Spec};

const NS: &str = "trellis-e2e";
const HTTP: u16 = 8080;
const UDP: u16 = 8081;
const HOST_HTTP: u16 = 8090;
const HOST_UDP: u16 = 8091;
const HOST_PORT: u16 = 8089;

/// Six agnhost netexec pods spread over the nodes, a ClusterIP and a
/// NodePort Service over them, a hostNetwork DaemonSet (a server on every
/// node), and a pod with a hostPort.
const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: trellis-e2e}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: netexec, namespace: trellis-e2e}
spec:
  replicas: 6
  selector: {matchLabels: {app: netexec}}
  template:
    metadata: {labels: {app: netexec}}
    spec:
      # Spread per revision (matchLabelKeys): during a rollout the old
      # revision's pods would count too, and its end could leave a node
      # without a pod.
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector: {matchLabels: {app: netexec}}
          matchLabelKeys: [pod-template-hash]
      containers:
        - name: netexec
          image: registry.k8s.io/e2e-test-images/agnhost:2.56
          args: ["netexec", "--http-port=8080", "--udp-port=8081"]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: netexec, namespace: trellis-e2e}
spec:
  selector: {app: netexec}
  ports:
    - {name: http, port: 80, targetPort: 8080, protocol: TCP}
    - {name: udp, port: 81, targetPort: 8081, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: netexec-nodeport, namespace: trellis-e2e}
spec:
  type: NodePort
  selector: {app: netexec}
  ports:
    - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: hostnet, namespace: trellis-e2e}
spec:
  selector: {matchLabels: {app: hostnet}}
  template:
    metadata: {labels: {app: hostnet}}
    spec:
      hostNetwork: true
      containers:
        - name: netexec
          image: registry.k8s.io/e2e-test-images/agnhost:2.56
          args: ["netexec", "--http-port=8090", "--udp-port=8091"]
---
apiVersion: v1
kind: Pod
metadata: {name: hostport, namespace: trellis-e2e, labels: {app: hostport}}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers:
    - name: netexec
      image: registry.k8s.io/e2e-test-images/agnhost:2.56
      args: ["netexec", "--http-port=8080", "--udp-port=8081"]
      ports: [{containerPort: 8080, hostPort: 8089, protocol: TCP}]
      readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
"#;

/// What the suite saw while it brought the cluster up.
struct Bringup {
    /// Node name -> the kubelet's Ready message before trellis was installed.
    not_ready_before: BTreeMap<String, String>,
    ready_after: bool,
}

struct Suite {
    bed: Testbed,
    bringup: Bringup,
}

/// A netexec pod: name, node, IP.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    node: String,
    ip: String,
}

fn main() {
    let args = Arguments::from_args();
    if !bins::has_bin("trellis-agent") || !bins::has_bin("trellis-kube") {
        eprintln!("build the binaries first: cargo build --workspace --bins");
        std::process::exit(1);
    }
    let suite = match bring_up() {
        Ok(s) => Arc::new(s),
        Err(err) => {
            eprintln!("bringing the cluster up: {err:#}");
            std::process::exit(1);
        }
    };
    type Check = fn(&Suite) -> Result<()>;
    let checks: &[(&str, Check)] = &[
        (
            "nodes_are_not_ready_until_trellis_is_installed",
            nodes_not_ready_until_installed,
        ),
        ("every_pod_reaches_every_pod_over_http_and_udp", pod_to_pod),
        ("pods_reach_nodes_and_nodes_reach_pods", pods_and_nodes),
        ("cluster_ip_service_reaches_pods_on_other_nodes", cluster_ip),
        ("node_port_answers_from_another_node", node_port),
        ("host_port_through_the_chained_portmap", host_port),
        ("egress_leaves_masqueraded_behind_the_node", egress),
        ("trellisctl_doctor_finds_the_cluster_clean", doctor_clean),
        (
            "pods_have_both_families_and_are_reached_over_ipv6",
            dual_stack,
        ),
        ("conformance_sig_network", conformance_run),
        ("conformance_dual_stack", dual_stack_run),
        ("scale_down_and_up_leaves_no_allocation_or_veth", scale),
        ("agent_rollout_restart_loses_no_request", rollout_restart),
        ("a_drained_and_deleted_node_is_released", drain_and_delete),
        ("uninstall_with_cleanup_leaves_the_nodes_clean", uninstall),
        (
            "a_wrong_etcd_endpoint_is_reported_and_leaves_nothing",
            wrong_endpoint,
        ),
    ];
    let trials = checks
        .iter()
        .map(|&(name, check)| {
            let suite = Arc::clone(&suite);
            Trial::test(name, move || {
                check(&suite).map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    // In order, one at a time: they share the cluster.
    let mut args = args;
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials);
    drop(suite);
    conclusion.exit();
}

fn bring_up() -> Result<Suite> {
    // The image holds release binaries, as the Containerfile's does
    // (TRELLIS_BIN_DIR, default target/release: scripts/test.sh builds them).
    let mut spec = Spec::from_env();
    spec.install_trellis = false;
    let bed = Testbed::up(&spec)?;

    let nodes = bed.kubectl.items(&["nodes"])?;
    let not_ready_before = nodes
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .cloned()
                .unwrap_or(Value::Null);
            let state = format!("{}: {}", ready["status"], ready["message"]);
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                state,
            )
        })
        .collect();
    kube::install_trellis(&bed.kubectl, &bed.info.etcd_endpoint())?;
    kube::wait_ready(&bed.kubectl, bed.info.nodes.len())?;
    let ready_after = bed.kubectl.items(&["nodes"])?.iter().all(node_ready);

    bed.kubectl.apply(WORKLOADS)?;
    wait_workloads(&bed, 6)?;
    Ok(Suite {
        bed,
        bringup: Bringup {
            not_ready_before,
            ready_after,
        },
    })
}

fn wait_workloads(bed: &Testbed, replicas: u64) -> Result<()> {
    bed.kubectl.wait_for(
        Duration::from_secs(120),
        "the netexec Deployment to be available",
        &["-n", NS, "deployment", "netexec"],
        |d| {
            d["status"]["availableReplicas"].as_u64() == Some(replicas)
                && d["status"]["replicas"].as_u64() == Some(replicas)
        },
    )?;
    let nodes = bed.info.nodes.len() as u64;
    bed.kubectl.wait_for(
        Duration::from_secs(120),
        "the hostnet DaemonSet to be ready",
        &["-n", NS, "daemonset", "hostnet"],
        |d| d["status"]["numberReady"].as_u64() == Some(nodes),
    )?;
    bed.kubectl.run(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        "pod/hostport",
        "--timeout=120s",
    ])?;
    Ok(())
}

fn netexec_pods(bed: &Testbed) -> Result<Vec<Pod>> {
    let items = bed
        .kubectl
        .items(&["pods", "-n", NS, "-l", "app=netexec"])?;
    Ok(items
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| {
            Some(Pod {
                name: p["metadata"]["name"].as_str()?.to_owned(),
                node: p["spec"]["nodeName"].as_str()?.to_owned(),
                ip: p["status"]["podIP"].as_str()?.to_owned(),
            })
        })
        .collect())
}

/// Through netexec's `/dial` on `via` (asked from `via`'s node): `tries`
/// requests of `request` from that pod to `host:port` over `protocol`.
fn dial(
    bed: &Testbed,
    via: &Pod,
    host: &str,
    port: u16,
    protocol: &str,
    request: &str,
    tries: usize,
) -> Result<Vec<String>> {
    let url = format!(
        "http://{}:{HTTP}/dial?request={request}&protocol={protocol}&host={host}&port={port}&tries={tries}",
        via.ip
    );
    let body = bed.curl(&via.node, &url)?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("/dial answered {body}"))?;
    if let Some(errors) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        bail!("{} -> {host}:{port}/{protocol}: {errors:?}", via.name);
    }
    Ok(v["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(|s| s.trim().to_owned()))
        .collect())
}

/// Why `answers` is not exactly the one answer `want`; None when it is.
fn unexpected(answers: &Result<Vec<String>>, want: &str) -> Option<String> {
    match answers {
        Ok(a) if a.len() == 1 && a[0] == want => None,
        Ok(a) => Some(format!("answered {a:?}")),
        Err(e) => Some(format!("{e:#}")),
    }
}

fn nodes_not_ready_until_installed(s: &Suite) -> Result<()> {
    let before = &s.bringup.not_ready_before;
    ensure!(
        before.len() == s.bed.info.nodes.len(),
        "nodes before install: {before:?}"
    );
    for (node, state) in before {
        ensure!(
            state.starts_with("\"False\"") && state.contains("network"),
            "{node} before trellis was installed: {state} (want NotReady for the network)"
        );
    }
    ensure!(s.bringup.ready_after, "not every node turned Ready");
    // Installed as the DaemonSet's init container does it.
    for node in &s.bed.info.nodes {
        for file in [
            "/opt/cni/bin/trellis",
            "/opt/cni/bin/trellis-ipam",
            "/etc/cni/net.d/10-trellis.conflist",
        ] {
            s.bed
                .node_ok(node, &["test", "-f", file])
                .with_context(|| format!("{file} on {node}"))?;
        }
    }
    Ok(())
}

fn pod_to_pod(s: &Suite) -> Result<()> {
    let pods = netexec_pods(&s.bed)?;
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    ensure!(
        pods.len() == 6 && nodes.len() == s.bed.info.nodes.len(),
        "want 6 pods over every node: {pods:?}"
    );
    let mut failures = Vec::new();
    for a in &pods {
        for b in &pods {
            for (protocol, port) in [("http", HTTP), ("udp", UDP)] {
                let r = dial(&s.bed, a, &b.ip, port, protocol, "hostname", 1);
                if let Some(why) = unexpected(&r, &b.name) {
                    failures.push(format!("{} -> {} {protocol}: {why}", a.name, b.name));
                }
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of 72 failed: {failures:#?}",
        failures.len()
    );
    Ok(())
}

fn pods_and_nodes(s: &Suite) -> Result<()> {
    let pods = netexec_pods(&s.bed)?;
    let mut failures = Vec::new();
    for (i, node) in s.bed.info.nodes.iter().enumerate() {
        let ip = node_ip(i).to_string();
        for pod in &pods {
            // Pod to node, to the node's hostNetwork server: HTTP to every
            // node, UDP to the other nodes. (A UDP server bound to 0.0.0.0
            // on the node answers a pod of its own node from the bridge's
            // address, the source the kernel picks for the pod subnet's
            // route, and netexec's connected client drops that answer; the
            // same holds for every bridge-based network, flannel's too.)
            let mut checks = vec![("http", HOST_HTTP)];
            if pod.node != *node {
                checks.push(("udp", HOST_UDP));
            }
            for (protocol, port) in checks {
                let r = dial(&s.bed, pod, &ip, port, protocol, "hostname", 1);
                if let Some(why) = unexpected(&r, node) {
                    failures.push(format!("{} -> node {node} {protocol}: {why}", pod.name));
                }
            }
            // Node to pod.
            let r = s
                .bed
                .curl(node, &format!("http://{}:{HTTP}/hostname", pod.ip))
                .map(|name| vec![name.trim().to_owned()]);
            if let Some(why) = unexpected(&r, &pod.name) {
                failures.push(format!("node {node} -> {}: {why}", pod.name));
            }
        }
    }
    ensure!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

fn service_ip(s: &Suite, name: &str) -> Result<String> {
    let svc = s.bed.kubectl.json(&["-n", NS, "get", "service", name])?;
    svc["spec"]["clusterIP"]
        .as_str()
        .map(str::to_owned)
        .context("no clusterIP")
}

fn cluster_ip(s: &Suite) -> Result<()> {
    let pods = netexec_pods(&s.bed)?;
    let ip = service_ip(s, "netexec")?;
    let client = pods
        .iter()
        .find(|p| p.node == "node1")
        .context("no pod on node1")?;
    let remote: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.node != client.node)
        .map(|p| p.name.as_str())
        .collect();
    for (protocol, port) in [("http", 80), ("udp", 81)] {
        // Each request a new connection, balanced by kube-proxy.
        let answers = dial(&s.bed, client, &ip, port, protocol, "hostname", 60)?;
        ensure!(
            answers.len() == 60,
            "{protocol}: {} answers of 60",
            answers.len()
        );
        let names: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
        let reached: BTreeSet<&str> = names.intersection(&remote).copied().collect();
        ensure!(
            reached.len() >= 2,
            "{protocol}: the Service {ip} reached {names:?}, want pods on the other nodes {remote:?}"
        );
    }
    Ok(())
}

fn node_port(s: &Suite) -> Result<()> {
    let svc = s
        .bed
        .kubectl
        .json(&["-n", NS, "get", "service", "netexec-nodeport"])?;
    let port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .context("no nodePort")?;
    let pods = netexec_pods(&s.bed)?;
    let by_name: BTreeMap<&str, &str> = pods
        .iter()
        .map(|p| (p.name.as_str(), p.node.as_str()))
        .collect();
    // From node2 to node1's address: kube-proxy on node1 forwards to pods
    // on any node.
    let mut served_by = BTreeSet::new();
    for _ in 0..30 {
        let name = s
            .bed
            .curl("node2", &format!("http://{}:{port}/hostname", node_ip(0)))?;
        let node = by_name
            .get(name.trim())
            .with_context(|| format!("answered by {name:?}, not a netexec pod"))?;
        served_by.insert(node.to_string());
    }
    ensure!(
        served_by.len() >= 2,
        "NodePort answers came only from {served_by:?}"
    );
    Ok(())
}

fn host_port(s: &Suite) -> Result<()> {
    for from in ["node2", "node3"] {
        let name = s
            .bed
            .curl(from, &format!("http://{}:{HOST_PORT}/hostname", node_ip(0)))?;
        ensure!(
            name.trim() == "hostport",
            "{from} -> node1:{HOST_PORT} answered {name:?}"
        );
    }
    Ok(())
}

fn egress(s: &Suite) -> Result<()> {
    for pod in netexec_pods(&s.bed)? {
        let index: usize = pod.node.trim_start_matches("node").parse::<usize>()? - 1;
        let answers = dial(
            &s.bed,
            &pod,
            &OUTSIDE_IP.to_string(),
            OUTSIDE_HTTP_PORT,
            "http",
            "clientip",
            1,
        )?;
        let seen = answers
            .first()
            .map(|a| a.rsplit_once(':').map_or(a.as_str(), |(ip, _)| ip));
        ensure!(
            seen == Some(node_ip(index).to_string().as_str()),
            "{} on {}: the outside host saw {answers:?}, want the node's {}",
            pod.name,
            pod.node,
            node_ip(index)
        );
    }
    Ok(())
}

/// `trellisctl doctor` against the cluster's etcd, from the underlay: the
/// DaemonSet's agents answer on their status port, probe each other on the
/// probe port, find their kernels as etcd says, and read the conflist the
/// installer wrote as theirs.
fn doctor_clean(_s: &Suite) -> Result<()> {
    let endpoint = format!("http://127.0.0.1:{}", kube::layout::ETCD_PORT);
    let ctl = bins::bin("trellisctl").display().to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", kube::layout::UNDERLAY_NS, &ctl])
        .args(["--etcd-endpoints", &endpoint, "-o", "json", "doctor"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running trellisctl doctor")?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "doctor printed no report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(
        out.status.success(),
        "doctor found: {:#}",
        report["findings"]
    );
    let matrix = report["matrix"].as_object().context("no matrix")?;
    ensure!(
        matrix.len() >= 2,
        "fewer than two agents answered: {report}"
    );
    for (from, row) in matrix {
        for (to, cell) in row.as_object().context("a matrix row")? {
            ensure!(cell == "ok", "{from} -> {to}: {cell}");
        }
    }
    Ok(())
}

fn conformance_run(s: &Suite) -> Result<()> {
    let dir = bins::target_dir().join("kube");
    std::fs::create_dir_all(&dir)?;
    let report = dir.join("conformance.json");
    let started = Instant::now();
    let results = conformance::run(&s.bed, 4, &report)?;
    let table = conformance::table(&results);
    std::fs::write(dir.join("conformance.md"), &table)?;
    let count = |state: &str| results.iter().filter(|r| r.state == state).count();
    eprintln!(
        "conformance: {} tests in {:.0} s: {} passed, {} failed, {} skipped (table: {})",
        results.len(),
        started.elapsed().as_secs_f64(),
        count("passed"),
        count("failed"),
        count("skipped"),
        dir.join("conformance.md").display()
    );
    let networking = results.iter().filter(|r| r.is_networking()).count();
    let conformance = results.iter().filter(|r| r.is_conformance()).count();
    ensure!(
        networking >= 20 && conformance >= 45,
        "the run selected {networking} Networking and {conformance} Conformance tests"
    );
    all_passed(&results)
}

/// Every test of an e2e run passed, or which did not and why.
fn all_passed(results: &[conformance::SpecResult]) -> Result<()> {
    let not_passed: Vec<String> = results
        .iter()
        .filter(|r| r.state != "passed")
        .map(|r| {
            format!(
                "{}: {} {}",
                r.name,
                r.state,
                r.message.lines().next().unwrap_or("")
            )
        })
        .collect();
    ensure!(
        not_passed.is_empty(),
        "not passed:\n{}",
        not_passed.join("\n")
    );
    Ok(())
}

/// The dual-stack tests of the suite: every one selected must pass.
fn dual_stack_run(s: &Suite) -> Result<()> {
    let dir = bins::target_dir().join("kube");
    std::fs::create_dir_all(&dir)?;
    let report = dir.join("conformance-dual-stack.json");
    let started = Instant::now();
    let results = conformance::run_dual_stack(&s.bed, 4, &report)?;
    std::fs::write(
        dir.join("conformance-dual-stack.md"),
        conformance::table(&results),
    )?;
    let passed = results.iter().filter(|r| r.state == "passed").count();
    eprintln!(
        "dual-stack: {} tests in {:.0} s: {passed} passed",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        results.len() >= 15,
        "the run selected {} dual-stack tests",
        results.len()
    );
    all_passed(&results)
}

/// Every netexec pod has an address of each family (`status.podIPs`, from
/// the CRI's additional IPs), the IPv6 one in its node's IPv6 subnet, and
/// every node reaches every pod over IPv6 (the overlay for the pods of the
/// other nodes).
fn dual_stack(s: &Suite) -> Result<()> {
    let items = s
        .bed
        .kubectl
        .items(&["pods", "-n", NS, "-l", "app=netexec"])?;
    let mut pods = Vec::new();
    for p in items
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
    {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let ips: Vec<std::net::IpAddr> = p["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["ip"].as_str()?.parse().ok())
            .collect();
        ensure!(
            ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(),
            "{name}: podIPs {ips:?}"
        );
        pods.push((name, ips[1]));
    }
    ensure!(pods.len() == 6, "netexec pods: {pods:?}");
    let mut failures = Vec::new();
    for node in &s.bed.info.nodes {
        for (name, ip6) in &pods {
            let url = format!("http://[{ip6}]:{HTTP}/hostname");
            match s.bed.curl(node, &url) {
                Ok(body) if body.trim() == name => {}
                Ok(body) => failures.push(format!("{node} -> {name} [{ip6}]: {body}")),
                Err(e) => failures.push(format!("{node} -> {name} [{ip6}]: {e:#}")),
            }
        }
    }
    ensure!(failures.is_empty(), "over IPv6:\n{}", failures.join("\n"));
    Ok(())
}

/// Pods on the pod network (not hostNetwork, with an address), by node:
/// each pod's addresses (`status.podIPs`, both families).
fn pod_network_pods(s: &Suite) -> Result<BTreeMap<String, Vec<Vec<String>>>> {
    let mut by_node: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for p in s.bed.kubectl.items(&["pods", "-A"])? {
        if p["spec"]["hostNetwork"] == true || p["status"]["podIP"].is_null() {
            continue;
        }
        if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
        let ips = p["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["ip"].as_str().map(str::to_owned))
            .collect();
        by_node.entry(node).or_default().push(ips);
    }
    Ok(by_node)
}

/// Waits until etcd holds exactly one allocation per pod address (of each
/// family) and every
/// node exactly one veth per pod.
fn allocations_match_pods(s: &Suite) -> Result<()> {
    let last = std::cell::RefCell::new(String::new());
    let r = poll(
        Duration::from_secs(60),
        "allocations and veths to match the pods",
        || {
            let pods = pod_network_pods(s)?;
            let want: BTreeSet<String> = pods.values().flatten().flatten().cloned().collect();
            let allocated: BTreeSet<String> = s
                .bed
                .etcd_entries("/trellis/ipam/ips/")?
                .into_iter()
                .map(|(k, _)| k.trim_start_matches("/trellis/ipam/ips/").to_owned())
                .collect();
            let mut veths = BTreeMap::new();
            for node in live_nodes(s)? {
                let n = s.bed.host_veths(&node)?.len();
                let want = pods.get(&node).map_or(0, Vec::len);
                if n != want {
                    veths.insert(node, (n, want));
                }
            }
            *last.borrow_mut() =
                format!("pods {want:?}, allocations {allocated:?}, veths (have, want) {veths:?}");
            Ok((allocated == want && veths.is_empty()).then_some(()))
        },
    );
    r.with_context(|| last.borrow().clone())
}

/// The nodes Kubernetes still has.
fn live_nodes(s: &Suite) -> Result<Vec<String>> {
    Ok(s.bed
        .kubectl
        .items(&["nodes"])?
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

fn scale(s: &Suite) -> Result<()> {
    allocations_match_pods(s).context("before scaling")?;
    for replicas in [1u64, 9, 6] {
        s.bed.kubectl.run(&[
            "-n",
            NS,
            "scale",
            "deployment/netexec",
            &format!("--replicas={replicas}"),
        ])?;
        wait_workloads(&s.bed, replicas)?;
        allocations_match_pods(s).with_context(|| format!("at {replicas} replicas"))?;
    }
    // A scale-down picks its victims without regard to the spread, and
    // the next tests want a pod on every node: new pods are spread again
    // (maxSkew 1), and their ADDs and the old pods' DELs balance too.
    s.bed
        .kubectl
        .run(&["-n", NS, "rollout", "restart", "deployment/netexec"])?;
    s.bed.kubectl.run(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/netexec",
        "--timeout=240s",
    ])?;
    wait_workloads(&s.bed, 6)?;
    allocations_match_pods(s).context("after the restart of the deployment")?;
    Ok(())
}

fn rollout_restart(s: &Suite) -> Result<()> {
    let pods = netexec_pods(&s.bed)?;
    let a = pods
        .iter()
        .find(|p| p.node == "node1")
        .context("no pod on node1")?
        .clone();
    let b = pods
        .iter()
        .find(|p| p.node == "node2")
        .context("no pod on node2")?
        .clone();
    let c = pods
        .iter()
        .find(|p| p.node == "node3")
        .context("no pod on node3")?
        .clone();
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let lost = std::sync::Mutex::new(Vec::new());
    let restart = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for (from, to) in [(&a, &b), (&b, &c), (&c, &a)] {
                    for (protocol, port) in [("http", HTTP), ("udp", UDP)] {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let r = dial(&s.bed, from, &to.ip, port, protocol, "hostname", 1);
                        if let Some(why) = unexpected(&r, &to.name) {
                            let lost_one =
                                format!("{} -> {} {protocol}: {why}", from.name, to.name);
                            lost.lock().unwrap().push(lost_one);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let restart = (|| -> Result<()> {
            std::thread::sleep(Duration::from_secs(2));
            s.bed.kubectl.run(&[
                "-n",
                "trellis-system",
                "rollout",
                "restart",
                "daemonset/trellis-agent",
            ])?;
            s.bed.kubectl.run(&[
                "-n",
                "trellis-system",
                "rollout",
                "status",
                "daemonset/trellis-agent",
                "--timeout=240s",
            ])?;
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        restart
    });
    restart?;
    let sent = sent.load(Ordering::Relaxed);
    let lost = lost.lock().unwrap();
    eprintln!(
        "rollout restart: {sent} requests across nodes, {} lost",
        lost.len()
    );
    ensure!(sent >= 60, "only {sent} requests were made");
    ensure!(
        lost.is_empty(),
        "{} of {sent} requests lost: {:#?}",
        lost.len(),
        *lost
    );
    Ok(())
}

/// What the overlay of `node` holds for `subnet`: routes on the VXLAN
/// device.
fn has_route_to(s: &Suite, node: &str, subnet: &str) -> Result<bool> {
    let routes = s.bed.node_ok(node, &["ip", "route", "show", subnet])?;
    Ok(!routes.trim().is_empty())
}

fn node_record(s: &Suite, node: &str) -> Result<Option<Value>> {
    let entries = s.bed.etcd_entries(&format!("/trellis/nodes/{node}"))?;
    match entries.first() {
        Some((_, v)) => Ok(Some(serde_json::from_str(v)?)),
        None => Ok(None),
    }
}

fn drain_and_delete(s: &Suite) -> Result<()> {
    let gone = "node3";
    let record = node_record(s, gone)?.context("node3 has no record")?;
    let subnet = record["subnet"]
        .as_str()
        .context("record without subnet")?
        .to_owned();
    for node in ["node1", "node2"] {
        ensure!(
            has_route_to(s, node, &subnet)?,
            "{node} has no route to {gone}'s {subnet}"
        );
    }
    s.bed.kubectl.run(&[
        "drain",
        gone,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=180s",
    ])?;
    s.bed
        .kubectl
        .run(&["delete", "node", gone, "--timeout=60s"])?;
    let started = Instant::now();
    let last = std::cell::RefCell::new(String::new());
    poll(
        Duration::from_secs(180),
        "node3's subnet, record and entries to go",
        || {
            let record = node_record(s, gone)?;
            let subnets: Vec<String> = s
                .bed
                .etcd_entries("/trellis/subnets/")?
                .into_iter()
                .filter(|(_, v)| v.contains(&format!("\"{gone}\"")))
                .map(|(k, _)| k)
                .collect();
            let allocations: Vec<String> = s
                .bed
                .etcd_entries("/trellis/ipam/ips/")?
                .into_iter()
                .filter(|(_, v)| v.contains(&format!("\"node\":\"{gone}\"")))
                .map(|(k, _)| k)
                .collect();
            let mut routes = Vec::new();
            for node in ["node1", "node2"] {
                if has_route_to(s, node, &subnet)? {
                    routes.push(node);
                }
            }
            *last.borrow_mut() = format!(
                "record {record:?}, subnet keys {subnets:?}, allocations {allocations:?}, \
             routes on {routes:?}"
            );
            Ok((record.is_none()
                && subnets.is_empty()
                && allocations.is_empty()
                && routes.is_empty())
            .then_some(()))
        },
    )
    .with_context(|| last.borrow().clone())?;
    eprintln!(
        "node3 released {:.0} s after its deletion",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether `node` holds nothing of trellis.
fn node_leftovers(s: &Suite, node: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for link in s.bed.links(node)? {
        if link.starts_with("trellis") || link.starts_with("trl") {
            left.push(format!("link {link}"));
        }
    }
    let tables = s.bed.node_ok(node, &["nft", "list", "tables"])?;
    if tables.contains("trellis") {
        left.push(format!("nftables: {}", tables.trim()));
    }
    for file in [
        "/opt/cni/bin/trellis",
        "/opt/cni/bin/trellis-ipam",
        "/etc/cni/net.d/10-trellis.conflist",
        "/run/trellis/node.json",
    ] {
        if s.bed.node_ok(node, &["test", "-e", file]).is_ok() {
            left.push(file.to_owned());
        }
    }
    Ok(left)
}

fn uninstall(s: &Suite) -> Result<()> {
    // As the README says: the pods on the trellis network go first.
    s.bed
        .kubectl
        .run(&["delete", "namespace", NS, "--timeout=180s"])?;
    s.bed.kubectl.run(&[
        "-n",
        "kube-system",
        "scale",
        "deployment/coredns",
        "--replicas=0",
    ])?;
    s.bed.kubectl.run(&[
        "-n",
        "kube-system",
        "wait",
        "--for=delete",
        "pod",
        "-l",
        "k8s-app=kube-dns",
        "--timeout=120s",
    ])?;
    let manifest = kube::trellis_manifest(&s.bed.info.etcd_endpoint())?;
    s.bed
        .kubectl
        .run_with_input(&["delete", "-f", "-", "--timeout=120s"], &manifest)?;
    let cleanup = bins::workspace_dir().join("manifests/cleanup.yaml");
    let cleanup = cleanup.display().to_string();
    s.bed.kubectl.run(&["apply", "-f", &cleanup])?;
    s.bed.kubectl.run(&[
        "-n",
        "trellis-cleanup",
        "rollout",
        "status",
        "daemonset/trellis-cleanup",
        "--timeout=180s",
    ])?;
    s.bed
        .kubectl
        .run(&["delete", "-f", &cleanup, "--timeout=120s"])?;
    let mut left = Vec::new();
    for node in live_nodes(s)? {
        for l in node_leftovers(s, &node)? {
            left.push(format!("{node}: {l}"));
        }
    }
    ensure!(left.is_empty(), "left on the nodes: {left:#?}");
    Ok(())
}

fn wrong_endpoint(s: &Suite) -> Result<()> {
    let wrong = "http://192.0.2.254:2999";
    kube::install_trellis(&s.bed.kubectl, wrong)?;
    let nodes = live_nodes(s)?;
    // The installer's log names what is wrong.
    let log = poll(
        Duration::from_secs(120),
        "the installer to report the etcd failure",
        || {
            let out = s.bed.kubectl.command(&[
                "-n",
                "trellis-system",
                "logs",
                "daemonset/trellis-agent",
                "-c",
                "install-cni",
            ]);
            let out = {
                let mut out = out;
                out.output()?
            };
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text.contains("2999").then_some(text))
        },
    )?;
    ensure!(
        log.contains("etcd"),
        "the installer's log does not say etcd: {log}"
    );
    // The nodes stay NotReady and get nothing.
    std::thread::sleep(Duration::from_secs(10));
    let items = s.bed.kubectl.items(&["nodes"])?;
    ensure!(
        !items.iter().any(node_ready),
        "a node turned Ready with a wrong etcd endpoint"
    );
    let mut left = Vec::new();
    for node in &nodes {
        for l in node_leftovers(s, node)? {
            left.push(format!("{node}: {l}"));
        }
    }
    ensure!(
        left.is_empty(),
        "made on the nodes with a wrong etcd endpoint: {left:#?}"
    );
    // Corrected, trellis comes up.
    kube::install_trellis(&s.bed.kubectl, &s.bed.info.etcd_endpoint())?;
    s.bed.kubectl.run(&[
        "-n",
        "trellis-system",
        "rollout",
        "restart",
        "daemonset/trellis-agent",
    ])?;
    s.bed.kubectl.run(&[
        "-n",
        "kube-system",
        "scale",
        "deployment/coredns",
        "--replicas=2",
    ])?;
    kube::wait_ready(&s.bed.kubectl, nodes.len())?;
    eprintln!(
        "wrong endpoint: installer said: {}",
        log.lines().last().unwrap_or("")
    );
    Ok(())
}
