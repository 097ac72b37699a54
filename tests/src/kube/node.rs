//! One Kubernetes node: a network namespace on the underlay, a mount
//! namespace of its own (its CNI directories, `/run/trellis`, the pods'
//! netns files, the kubelet's kernel tunables), a cgroup subtree for its
//! kubelet's `--cgroup-root`, and its containerd, kubelet and kube-proxy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::daemon::{self, Namespaces};
use super::images;
use super::layout::{
    node_ip, node_ip6, Layout, NodeLayout, CGROUP_PARENT, CLUSTER_DOMAIN, DNS_SERVICE_IP,
    KUBELET_SYSCTLS, NODE_PRIVATE_DIRS, OUTSIDE_IP, POD_CIDR, POD_CIDR6, UNDERLAY6_GATEWAY,
    UNDERLAY_GATEWAY, UNDERLAY_NS,
};
use super::pki::Pki;
use crate::netns::check;
use crate::wait::poll;

/// What a node needs from the cluster.
pub struct NodeContext<'a> {
    pub layout: &'a Layout,
    pub pki: &'a Pki,
    pub kube_bin: &'a Path,
    /// The reference CNI plugins copied into the node's /opt/cni/bin.
    pub cni_plugins: &'a Path,
    /// The API server's port (on the underlay gateway).
    pub api_port: u16,
    pub images: &'a [PathBuf],
}

/// Brings node `index` up: its namespaces, cgroups and daemons. Everything
/// it makes is found again by [`remove`] through the layout.
pub fn create(ctx: &NodeContext<'_>, index: usize) -> Result<()> {
    let name = super::layout::node_name(index);
    let node = ctx.layout.node(&name);
    network(&node, index).context("the node's network namespace")?;
    files(ctx, &node).context("the node's directories")?;
    namespaces(ctx.layout, &node).context("the node's mount and UTS namespaces")?;
    cgroups(&node).context("the node's cgroups")?;
    containerd(ctx, &node).context("containerd")?;
    images::import(&node.containerd_socket(), ctx.images)
        .with_context(|| format!("importing the images into {name}'s containerd"))?;
    kubelet(ctx, &node, index).context("the kubelet")?;
    kube_proxy(ctx, &node).context("kube-proxy")?;
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    check(&out).with_context(|| format!("ip {}", args.join(" ")))?;
    Ok(())
}

/// The node's namespace, its `eth0` on the underlay bridge, the default
/// route via the underlay, forwarding on (kubeadm's preflight requires it).
fn network(node: &NodeLayout, index: usize) -> Result<()> {
    let ns = node.netns();
    let addr = format!("{}/24", node_ip(index));
    let port = format!("veth-{}", node.name);
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        UNDERLAY_NS,
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &ns,
    ])?;
    ip(&[
        "-n",
        UNDERLAY_NS,
        "link",
        "set",
        &port,
        "master",
        "br0",
        "up",
    ])?;
    ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    let addr6 = format!("{}/64", node_ip6(index));
    ip(&["-n", &ns, "addr", "add", &addr6, "dev", "eth0", "nodad"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &UNDERLAY6_GATEWAY.to_string(),
    ])?;
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        &UNDERLAY_GATEWAY.to_string(),
    ])?;
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.bridge.bridge-nf-call-iptables=1",
        "net.bridge.bridge-nf-call-ip6tables=1",
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl", "-qw", sysctl])
            .output()?;
        check(&out).with_context(|| format!("sysctl {sysctl} in {ns}"))?;
    }
    Ok(())
}

fn files(ctx: &NodeContext<'_>, node: &NodeLayout) -> Result<()> {
    for (host, _) in NODE_PRIVATE_DIRS {
        std::fs::create_dir_all(node.private_dir(host))?;
        ensure_host_dir(ctx.layout, Path::new(host))?;
    }
    // What kubeadm's kubernetes-cni package or kind put there: the
    // reference plugins (loopback for every pod's lo, portmap for hostPort).
    let cni_bin = node.private_dir("/opt/cni/bin");
    for entry in std::fs::read_dir(ctx.cni_plugins)
        .with_context(|| format!("reading {}", ctx.cni_plugins.display()))?
    {
        let entry = entry?;
        std::fs::copy(entry.path(), cni_bin.join(entry.file_name()))?;
    }
    for dir in [
        node.containerd_dir(),
        node.kubelet_dir(),
        node.pod_logs(),
        node.sysctl_dir(),
    ] {
        std::fs::create_dir_all(dir)?;
    }
    for (sysctl, value) in KUBELET_SYSCTLS {
        std::fs::write(
            node.sysctl_dir().join(sysctl.replace('/', ".")),
            format!("{value}\n"),
        )?;
    }
    // The pods' upstream resolver (CoreDNS forwards to it): the outside
    // host, which answers nothing; in-cluster names are CoreDNS's.
    std::fs::write(node.resolv_conf(), format!("nameserver {OUTSIDE_IP}\n"))?;
    Ok(())
}

/// Creates `dir` on the host as a mount point when missing, recording it so
/// that `down` removes it again.
fn ensure_host_dir(layout: &Layout, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.exists() {
            break;
        }
        missing.push(d.to_owned());
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let mut text = std::fs::read_to_string(layout.created_dirs_file()).unwrap_or_default();
    // Deepest first, so that `down` can remove them in order.
    for d in missing {
        text.push_str(&format!("{}\n", d.display()));
    }
    std::fs::write(layout.created_dirs_file(), text)?;
    Ok(())
}

/// The node's mount and UTS namespaces, kept by bind mounts of their files.
/// The mount namespace has private propagation, so nothing mounted inside
/// (containers' root file systems, volumes, netns files) reaches the host,
/// and the node's own directories are bound over the host paths. The UTS
/// namespace carries the node's name as host name.
fn namespaces(layout: &Layout, node: &NodeLayout) -> Result<()> {
    let dir = layout.ns_dir();
    if !is_mount_point(&dir)? {
        std::fs::create_dir_all(&dir)?;
        run(Command::new("mount").arg("--bind").arg(&dir).arg(&dir))?;
        run(Command::new("mount").arg("--make-private").arg(&dir))?;
    }
    std::fs::write(node.mount_ns(), "")?;
    std::fs::write(node.uts_ns(), "")?;
    let mut script = format!("set -e\nhostname '{}'\n", node.name);
    for (host, _) in NODE_PRIVATE_DIRS {
        script.push_str(&format!(
            "mount --bind '{}' '{host}'\n",
            node.private_dir(host).display()
        ));
    }
    for (sysctl, _) in KUBELET_SYSCTLS {
        script.push_str(&format!(
            "mount --bind '{}' '/proc/sys/{sysctl}'\n",
            node.sysctl_dir().join(sysctl.replace('/', ".")).display()
        ));
    }
    run(Command::new("unshare")
        .arg(format!("--mount={}", node.mount_ns().display()))
        .arg(format!("--uts={}", node.uts_ns().display()))
        .args(["--propagation", "private", "sh", "-c", &script]))
    .context("making the namespaces")
}

fn is_mount_point(dir: &Path) -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy();
    Ok(mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(dir.as_ref())))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    check(&out).map(|_| ())
}

/// The cgroup hierarchies of this machine: each v1 controller's mount, or
/// the one v2 mount.
pub fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![root.to_owned()]);
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.join("cgroup.procs").exists() && !path.is_symlink() {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

/// `<hierarchy>/trellis-kube/<node>` in every hierarchy: the kubelet's
/// `--cgroup-root`, which must exist before it starts. A new cpuset cgroup
/// has no CPUs or memory nodes until given its parent's.
fn cgroups(node: &NodeLayout) -> Result<()> {
    for hierarchy in cgroup_hierarchies()? {
        let parent = hierarchy.join(CGROUP_PARENT);
        let dir = parent.join(&node.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if hierarchy.join("cgroup.controllers").exists() {
            let controllers = std::fs::read_to_string(hierarchy.join("cgroup.controllers"))?;
            let enable: String = controllers
                .split_whitespace()
                .map(|c| format!("+{c} "))
                .collect();
            for d in [&hierarchy, &parent] {
                std::fs::write(d.join("cgroup.subtree_control"), enable.trim())?;
            }
        } else if hierarchy.join("cpuset.cpus").exists() {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(hierarchy.join(file))?;
                for d in [&parent, &dir] {
                    std::fs::write(d.join(file), value.trim())?;
                }
            }
        }
    }
    Ok(())
}

/// The node's network, mount and UTS namespaces.
pub fn node_ns(node: &NodeLayout) -> Namespaces {
    Namespaces {
        net: Some(node.netns_path()),
        mount: Some(node.mount_ns()),
        uts: Some(node.uts_ns()),
    }
}

/// containerd with the CRI plugin: its own root, state and socket; the CNI
/// directories at the usual paths, which are the node's own here.
fn containerd(ctx: &NodeContext<'_>, node: &NodeLayout) -> Result<()> {
    let dir = node.containerd_dir();
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Sandboxes ask for oom_score_adj -998; without CAP_SYS_RESOURCE (nested
  # machines) runc cannot lower it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
        socket = node.containerd_socket().display(),
        pause = images::PAUSE,
    );
    let file = dir.join("config.toml");
    std::fs::write(&file, config)?;
    let name = node.daemon("containerd");
    let mut argv = vec!["containerd".to_owned(), "--config".to_owned()];
    argv.push(file.display().to_string());
    daemon::spawn(ctx.layout, &name, daemon::command(&node_ns(node), &argv))?;
    let socket = node.containerd_socket();
    poll(Duration::from_secs(30), "containerd to answer", || {
        if !daemon::running(ctx.layout, &name) {
            bail!(
                "containerd exited:\n{}",
                daemon::log_tail(ctx.layout, &name, 20)
            );
        }
        let answers = socket.exists()
            && Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
        Ok(answers.then_some(()))
    })
}

fn kubelet(ctx: &NodeContext<'_>, node: &NodeLayout, index: usize) -> Result<()> {
    let kubeconfig = node.dir.join("kubelet.kubeconfig");
    let server = format!("https://{UNDERLAY_GATEWAY}:{}", ctx.api_port);
    ctx.pki
        .write_kubeconfig(&kubeconfig, &format!("kubelet-{}", node.name), &server)?;
    let config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip(index).to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": ctx.pki.ca()},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root(),
        "cgroupsPerQOS": true,
        "containerRuntimeEndpoint": format!("unix://{}", node.containerd_socket().display()),
        "clusterDNS": [DNS_SERVICE_IP.to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": node.resolv_conf(),
        "podLogsDir": node.pod_logs(),
        // This machine has no swap, and runs cgroup v1 (1.35 refuses it by
        // default; 1.34 warns).
        "failSwapOn": false,
        "failCgroupV1": false,
        "serializeImagePulls": false,
        // Nodes share one disk and the machine's memory: evict only when
        // really short, and never collect the imported images (they cannot
        // be pulled again).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "rotateCertificates": false,
        "staticPodPath": "",
        "maxPods": 110,
    });
    let file = node.dir.join("kubelet.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&config)?)?;
    let argv = vec![
        ctx.kube_bin.join("kubelet").display().to_string(),
        format!("--config={}", file.display()),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--root-dir={}", node.kubelet_dir().display()),
        format!("--cert-dir={}", node.kubelet_dir().join("pki").display()),
        format!("--hostname-override={}", node.name),
        format!("--node-ip={},{}", node_ip(index), node_ip6(index)),
        "--v=2".to_owned(),
    ];
    daemon::spawn(
        ctx.layout,
        &node.daemon("kubelet"),
        daemon::command(&node_ns(node), &argv),
    )?;
    Ok(())
}

/// kube-proxy in nftables mode. It leaves the host-wide conntrack limits
/// alone (`maxPerCore: 0`): those are the machine's, not the node's.
fn kube_proxy(ctx: &NodeContext<'_>, node: &NodeLayout) -> Result<()> {
    let kubeconfig = node.dir.join("kube-proxy.kubeconfig");
    let server = format!("https://{UNDERLAY_GATEWAY}:{}", ctx.api_port);
    ctx.pki
        .write_kubeconfig(&kubeconfig, "kube-proxy", &server)?;
    let config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "nftables",
        "clusterCIDR": format!("{POD_CIDR},{POD_CIDR6}"),
        "hostnameOverride": node.name,
        "healthzBindAddress": "0.0.0.0:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "min": 0},
    });
    let file = node.dir.join("kube-proxy.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&config)?)?;
    let argv = vec![
        ctx.kube_bin.join("kube-proxy").display().to_string(),
        format!("--config={}", file.display()),
        "--v=2".to_owned(),
    ];
    daemon::spawn(
        ctx.layout,
        &node.daemon("kube-proxy"),
        daemon::command(&node_ns(node), &argv),
    )?;
    Ok(())
}

/// Stops everything of the node and removes it: its daemons, every process
/// in its network namespace or its cgroups (containers, shims), its mount
/// namespace (and with it every mount made inside), its cgroups, its
/// namespace. Safe on a node that was never (fully) made.
pub fn remove(layout: &Layout, node: &NodeLayout) -> Vec<String> {
    let mut errors = Vec::new();
    // The kubelet first: it would restart what goes next.
    for what in ["kubelet", "kube-proxy", "containerd"] {
        daemon::stop(layout, &node.daemon(what), Duration::from_secs(5));
    }
    kill_cgroup_tree(&node.cgroup_root());
    kill_netns_processes(&node.netns());
    for ns_file in [node.mount_ns(), node.uts_ns()] {
        if ns_file.exists() {
            let _ = Command::new("umount").arg(&ns_file).output();
            if let Err(err) = std::fs::remove_file(&ns_file) {
                errors.push(format!("removing {}: {err}", ns_file.display()));
            }
        }
    }
    if let Err(err) = remove_cgroup_tree(&node.cgroup_root()) {
        errors.push(format!("{err:#}"));
    }
    if node.netns_path().exists() {
        if let Err(err) = run(Command::new("ip").args(["netns", "del", &node.netns()])) {
            errors.push(format!("deleting {}: {err:#}", node.netns()));
        }
    }
    errors
}

/// SIGKILL to every process of the cgroup `path` (relative to each
/// hierarchy) and its children, until none is left (bounded).
pub fn kill_cgroup_tree(path: &str) {
    for _ in 0..50 {
        let mut pids = Vec::new();
        for hierarchy in cgroup_hierarchies().unwrap_or_default() {
            collect_tasks(&hierarchy.join(path.trim_start_matches('/')), &mut pids);
        }
        if pids.is_empty() {
            return;
        }
        daemon::stop_pids(&pids, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn collect_tasks(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_tasks(&entry.path(), pids);
            }
        }
    }
}

/// Removes the cgroup `path` and everything under it in every hierarchy.
pub fn remove_cgroup_tree(path: &str) -> Result<()> {
    let mut failed = Vec::new();
    for hierarchy in cgroup_hierarchies()? {
        let dir = hierarchy.join(path.trim_start_matches('/'));
        if dir.exists() {
            if let Err(err) = rmdir_tree(&dir) {
                failed.push(format!("{}: {err}", dir.display()));
            }
        }
    }
    if !failed.is_empty() {
        bail!("cgroups left: {}", failed.join("; "));
    }
    Ok(())
}

fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            rmdir_tree(&entry.path())?;
        }
    }
    // A cgroup whose last task just exited may be busy for a moment.
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => last = Some(err),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.expect("an error"))
}

/// SIGKILL to every process whose network namespace is `ns`.
pub fn kill_netns_processes(ns: &str) {
    if !Path::new("/run/netns").join(ns).exists() {
        return;
    }
    for _ in 0..50 {
        let out = Command::new("ip").args(["netns", "pids", ns]).output();
        let pids: Vec<i32> = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        daemon::stop_pids(&pids, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(100));
    }
}
