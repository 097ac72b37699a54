//! A Kubernetes cluster in network namespaces, the way kind makes one from
//! containers: the control plane in the underlay namespace, every node a
//! namespace on the underlay with its own containerd, kubelet and
//! kube-proxy, and trellis installed from `manifests/` with `kubectl
//! apply`. [`up`] makes it and leaves it running (the processes outlive
//! it), [`down`] removes all of it, also after a failed `up`.
//! `scripts/kube-cluster.sh` is the command around it.

pub mod bench;
pub mod conformance;
pub mod control_plane;
pub mod daemon;
pub mod e2e;
pub mod forward;
pub mod images;
pub mod kubectl;
pub mod layout;
pub mod node;
pub mod pki;
pub mod testbed;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bins::workspace_dir;
use crate::netns::check;
pub use crate::wait::poll;
use kubectl::Kubectl;
use layout::{Layout, CGROUP_PARENT, ETCD_PORT, OUTSIDE_NS, UNDERLAY_GATEWAY, UNDERLAY_NS};
use pki::Pki;

/// What to make.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: usize,
    /// Apply trellis's manifests (off: the nodes stay NotReady until a
    /// network is installed).
    pub install_trellis: bool,
    /// kube-build.sh's output (`KUBE_BIN`).
    pub kube_bin: PathBuf,
    /// The reference CNI plugins every node starts with in /opt/cni/bin
    /// (kube-build.sh's `target/kube/cni`).
    pub cni_plugins: PathBuf,
    /// The trellis release binaries (`trellis`, `trellis-ipam`,
    /// `trellis-agent`) the image is made of.
    pub trellis_bin: PathBuf,
}

impl Spec {
    /// Three nodes, trellis installed, the binaries where the scripts put
    /// them (`KUBE_BIN` and `TRELLIS_BIN_DIR` override).
    pub fn from_env() -> Spec {
        let target = crate::bins::target_dir();
        let dir = |var: &str, default: PathBuf| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or(default)
        };
        Spec {
            nodes: 3,
            install_trellis: true,
            kube_bin: dir("KUBE_BIN", target.join("kube/bin")),
            cni_plugins: dir("TRELLIS_KUBE_CNI", target.join("kube/cni")),
            trellis_bin: dir("TRELLIS_BIN_DIR", target.join("release")),
        }
    }
}

/// What `up` made, recorded in `<state>/cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub nodes: Vec<String>,
    /// The API server's port, on the host's 127.0.0.1 (forwarded) and the
    /// underlay's 127.0.0.1 and 192.0.2.254.
    pub api_port: u16,
    pub kube_bin: PathBuf,
    pub trellis_bin: PathBuf,
}

impl ClusterInfo {
    pub fn load(layout: &Layout) -> Result<ClusterInfo> {
        let file = layout.info_file();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("no cluster is up ({} is missing)", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}", file.display()))
    }

    pub fn kubectl(&self, layout: &Layout) -> Kubectl {
        Kubectl::new(&self.kube_bin, &layout.kubeconfig())
    }

    /// trellis's etcd endpoint (the cluster's one etcd, `/trellis` prefix).
    pub fn etcd_endpoint(&self) -> String {
        format!("http://{UNDERLAY_GATEWAY}:{ETCD_PORT}")
    }
}

/// Brings the cluster up and returns what it made; on failure removes
/// everything again and returns the error (with the logs that explain it).
pub fn up(layout: &Layout, spec: &Spec) -> Result<ClusterInfo> {
    preflight(layout, spec)?;
    std::fs::create_dir_all(layout.state())?;
    let started = Instant::now();
    match build(layout, spec) {
        Ok(info) => {
            eprintln!(
                "kube-cluster: up in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            Ok(info)
        }
        Err(err) => {
            let logs = failure_logs(layout);
            if std::env::var_os("TRELLIS_KUBE_KEEP_FAILED").is_some() {
                return Err(err.context(format!(
                    "bringing the cluster up (kept for inspection: {})\n{logs}",
                    layout.state().display()
                )));
            }
            let cleanup = down(layout);
            let mut err = err.context(format!("bringing the cluster up\n{logs}"));
            if let Err(c) = cleanup {
                err = err.context(format!("and removing it again failed too: {c:#}"));
            }
            Err(err)
        }
    }
}

fn preflight(layout: &Layout, spec: &Spec) -> Result<()> {
    if !crate::netns::is_root() {
        bail!("run as root: the cluster is made of namespaces, mounts and cgroups");
    }
    if !(1..=9).contains(&spec.nodes) {
        bail!("--nodes is 1 to 9");
    }
    if layout.state().exists() {
        bail!(
            "{} exists: a cluster is up (or a failed one left state): \
             run `scripts/kube-cluster.sh down` first",
            layout.state().display()
        );
    }
    for ns in [UNDERLAY_NS, OUTSIDE_NS] {
        if Path::new("/run/netns").join(ns).exists() {
            bail!("the namespace {ns} exists: run `scripts/kube-cluster.sh down` first");
        }
    }
    let mut missing = Vec::new();
    for bin in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
        "etcd",
        "agnhost",
        "coredns",
        "pause",
    ] {
        if !spec.kube_bin.join(bin).is_file() {
            missing.push(spec.kube_bin.join(bin));
        }
    }
    for bin in ["trellis", "trellis-ipam", "trellis-agent"] {
        if !spec.trellis_bin.join(bin).is_file() {
            missing.push(spec.trellis_bin.join(bin));
        }
    }
    for plugin in ["loopback", "portmap"] {
        if !spec.cni_plugins.join(plugin).is_file() {
            missing.push(spec.cni_plugins.join(plugin));
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing: {} (scripts/kube-cluster.sh builds them: scripts/kube-build.sh and \
             cargo build --release)",
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for tool in [
        "containerd",
        "runc",
        "ctr",
        "nft",
        "openssl",
        "unshare",
        "nsenter",
        "etcdctl",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("{tool} is not installed (scripts/setup.sh installs it)");
        }
    }
    Ok(())
}

fn build(layout: &Layout, spec: &Spec) -> Result<ClusterInfo> {
    let nodes: Vec<String> = (0..spec.nodes).map(layout::node_name).collect();
    let info = ClusterInfo {
        nodes: nodes.clone(),
        api_port: api_port()?,
        kube_bin: std::path::absolute(&spec.kube_bin)?,
        trellis_bin: std::path::absolute(&spec.trellis_bin)?,
    };
    // First: `down` finds everything through it.
    std::fs::write(layout.info_file(), serde_json::to_vec_pretty(&info)?)?;
    for dir in [layout.config(), layout.logs(), layout.pids()] {
        std::fs::create_dir_all(dir)?;
    }

    step("images");
    let images = images::build_all(
        &images::Sources {
            kube_bin: info.kube_bin.clone(),
            trellis_bin: info.trellis_bin.clone(),
            agnhost_porter_dir: Some(info.kube_bin.join("agnhost-porter")),
        },
        &layout.images(),
    )?;

    step("certificates");
    let pki = Pki::at(layout);
    pki.generate(&nodes)?;
    pki.write_kubeconfig(
        &layout.kubeconfig(),
        "admin",
        &format!("https://127.0.0.1:{}", info.api_port),
    )?;

    step("underlay and control plane");
    control_plane::underlay()?;
    control_plane::outside_server(layout, &info.kube_bin)?;
    control_plane::etcd(layout, &info.kube_bin)?;
    control_plane::apiserver(layout, &pki, &info.kube_bin, info.api_port)?;
    let self_exe = std::env::current_exe().context("this program's path")?;
    control_plane::forwarder(layout, &forwarder_program(&self_exe), info.api_port)?;
    let kubectl = info.kubectl(layout);
    poll(
        Duration::from_secs(90),
        "the API server to be ready",
        || {
            if !daemon::running(layout, control_plane::APISERVER) {
                bail!(
                    "kube-apiserver exited:\n{}",
                    daemon::log_tail(layout, control_plane::APISERVER, 30)
                );
            }
            Ok(kubectl.ready().then_some(()))
        },
    )?;
    control_plane::controllers(layout, &pki, &info.kube_bin, info.api_port)?;
    control_plane::trellis_agent(layout, &info.trellis_bin)?;

    let ctx = node::NodeContext {
        layout,
        pki: &pki,
        kube_bin: &info.kube_bin,
        cni_plugins: &spec.cni_plugins,
        api_port: info.api_port,
        images: &images,
    };
    for (index, name) in nodes.iter().enumerate() {
        step(&format!("node {name}"));
        node::create(&ctx, index).with_context(|| format!("node {name}"))?;
    }
    kubectl.wait_for(
        Duration::from_secs(120),
        "every kubelet to register its node",
        &["nodes"],
        |list| {
            list["items"]
                .as_array()
                .is_some_and(|i| i.len() == nodes.len())
        },
    )?;

    step("CoreDNS");
    let coredns = workspace_dir().join("tests/kube/coredns.yaml");
    kubectl.run(&["apply", "-f", &coredns.display().to_string()])?;

    if spec.install_trellis {
        step("trellis (kubectl apply -f manifests/trellis.yaml)");
        install_trellis(&kubectl, &info.etcd_endpoint())?;
        wait_ready(&kubectl, nodes.len())?;
    }
    write_env(layout, &info)?;
    Ok(info)
}

fn step(what: &str) {
    eprintln!("kube-cluster: {what}");
}

/// The program that serves `forward`: this one, or the `trellis-kube`
/// binary beside a test executable (the test harness calls `up` too).
fn forwarder_program(self_exe: &Path) -> PathBuf {
    if self_exe.file_name().is_some_and(|n| n == "trellis-kube") {
        return self_exe.to_owned();
    }
    crate::bins::bin("trellis-kube")
}

/// 6443 on the host's loopback when it is free, else any free port.
fn api_port() -> Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 6443));
    if TcpListener::bind(addr).is_ok() {
        return Ok(6443);
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The etcd endpoint line of the ConfigMap in `manifests/trellis.yaml`.
const MANIFEST_ETCD_ENDPOINTS: &str = "etcd_endpoints: \"http://10.96.0.23:2379\"";

/// The cluster config line of that ConfigMap.
const MANIFEST_CLUSTER_CONFIG: &str =
    r#"{"network": "10.244.0.0/16", "subnetLen": 24, "vni": 1, "port": 8472}"#;

/// `manifests/trellis.yaml` with its ConfigMap pointed at `etcd_endpoints`
/// (the README's step 2: "Set etcd_endpoints in the ConfigMap") and, as
/// the cluster is dual-stack, its cluster config given the `ipv6Network`
/// (the README's "Dual-stack").
pub fn trellis_manifest(etcd_endpoints: &str) -> Result<String> {
    let file = workspace_dir().join("manifests/trellis.yaml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    for line in [MANIFEST_ETCD_ENDPOINTS, MANIFEST_CLUSTER_CONFIG] {
        if text.matches(line).count() != 1 {
            bail!("{} no longer holds exactly one `{line}`", file.display());
        }
    }
    let dual = format!(
        r#"{{"network": "{}", "subnetLen": 24, "vni": 1, "port": 8472, "ipv6Network": "{}"}}"#,
        layout::POD_CIDR,
        layout::POD_CIDR6
    );
    Ok(text
        .replace(
            MANIFEST_ETCD_ENDPOINTS,
            &format!("etcd_endpoints: \"{etcd_endpoints}\""),
        )
        .replace(MANIFEST_CLUSTER_CONFIG, &dual))
}

/// Applies trellis's manifests with the ConfigMap's etcd endpoints set.
pub fn install_trellis(kubectl: &Kubectl, etcd_endpoints: &str) -> Result<()> {
    kubectl.apply(&trellis_manifest(etcd_endpoints)?)?;
    Ok(())
}

/// Waits until the trellis DaemonSet runs on every node, every node is
/// Ready and CoreDNS is available.
pub fn wait_ready(kubectl: &Kubectl, nodes: usize) -> Result<()> {
    kubectl.wait_for(
        Duration::from_secs(180),
        "the trellis-agent DaemonSet to be ready on every node",
        &["-n", "trellis-system", "daemonset", "trellis-agent"],
        |ds| {
            let s = &ds["status"];
            s["numberReady"].as_u64() == Some(nodes as u64)
                && s["updatedNumberScheduled"].as_u64() == Some(nodes as u64)
        },
    )?;
    wait_nodes_ready(kubectl, nodes)?;
    kubectl.wait_for(
        Duration::from_secs(120),
        "CoreDNS to be available",
        &["-n", "kube-system", "deployment", "coredns"],
        |d| d["status"]["availableReplicas"].as_u64() == d["spec"]["replicas"].as_u64(),
    )?;
    Ok(())
}

/// Waits until every node is Ready.
pub fn wait_nodes_ready(kubectl: &Kubectl, nodes: usize) -> Result<()> {
    kubectl.wait_for(
        Duration::from_secs(180),
        "every node to be Ready",
        &["nodes"],
        |list| {
            list["items"]
                .as_array()
                .is_some_and(|i| i.len() == nodes && i.iter().all(kubectl::node_ready))
        },
    )?;
    Ok(())
}

/// `export KUBECONFIG=...` and `export KUBE_BIN=...`, written to
/// `<state>/env` and printed by `up` and `env`.
pub fn env_text(layout: &Layout, info: &ClusterInfo) -> String {
    format!(
        "export KUBECONFIG={}\nexport KUBE_BIN={}\n",
        layout.kubeconfig().display(),
        info.kube_bin.display()
    )
}

fn write_env(layout: &Layout, info: &ClusterInfo) -> Result<()> {
    std::fs::write(layout.env_file(), env_text(layout, info))?;
    Ok(())
}

/// The last lines of every log, for a failed `up`.
fn failure_logs(layout: &Layout) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(layout.logs()) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    for name in names {
        let tail = daemon::log_tail(layout, &name, 8);
        if !tail.is_empty() {
            out.push_str(&format!("--- {name} (last lines)\n{tail}\n"));
        }
    }
    out
}

/// Removes the cluster: every node (daemons, containers, mount namespace,
/// cgroups, namespace), the control plane, the underlay, the host mount
/// points `up` created, the state directory. Works on whatever part of a
/// cluster exists, and on none.
pub fn down(layout: &Layout) -> Result<()> {
    let mut errors = Vec::new();
    let mut nodes: Vec<String> = ClusterInfo::load(layout)
        .map(|i| i.nodes)
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(layout.state().join("nodes")) {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                nodes.push(name.to_owned());
            }
        }
    }
    nodes.sort();
    nodes.dedup();
    for name in &nodes {
        errors.extend(node::remove(layout, &layout.node(name)));
    }
    for name in control_plane::DAEMONS {
        daemon::stop(layout, name, Duration::from_secs(10));
    }
    node::kill_cgroup_tree(CGROUP_PARENT);
    if let Err(err) = node::remove_cgroup_tree(CGROUP_PARENT) {
        errors.push(format!("{err:#}"));
    }
    for ns in [UNDERLAY_NS, OUTSIDE_NS] {
        node::kill_netns_processes(ns);
        if Path::new("/run/netns").join(ns).exists() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if let Err(err) = out.map_err(anyhow::Error::from).and_then(|o| check(&o)) {
                errors.push(format!("deleting {ns}: {err:#}"));
            }
        }
    }
    let ns_dir = layout.ns_dir();
    if ns_dir.exists() {
        let _ = Command::new("umount").arg(&ns_dir).output();
    }
    remove_created_dirs(layout, &mut errors);
    if layout.state().exists() {
        match mounts_under(layout.state()) {
            Ok(mounts) if mounts.is_empty() => {
                if let Err(err) = std::fs::remove_dir_all(layout.state()) {
                    errors.push(format!("removing {}: {err}", layout.state().display()));
                }
            }
            Ok(mounts) => errors.push(format!(
                "{} kept: still mounted there: {}",
                layout.state().display(),
                mounts.join(", ")
            )),
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("the cluster is not entirely gone: {}", errors.join("; "))
    }
}

fn remove_created_dirs(layout: &Layout, errors: &mut Vec<String>) {
    let Ok(text) = std::fs::read_to_string(layout.created_dirs_file()) else {
        return;
    };
    // Recorded deepest first per mount point.
    for dir in text.lines().filter(|l| !l.is_empty()) {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => errors.push(format!("removing {dir}: {err}")),
        }
    }
}

fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let prefix = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix) || *m == dir.to_string_lossy())
        .map(str::to_owned)
        .collect())
}
