//! The underlay (the nodes' network, with a host outside the cluster beyond
//! it) and the control plane on it: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler in the underlay namespace, and
//! a loopback forwarder that makes the API server reachable from the host
//! at `https://127.0.0.1:<port>`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::daemon::{self, Namespaces};
use super::layout::{
    Layout, ETCD_PORT, OUTSIDE_GATEWAY, OUTSIDE_HTTP_PORT, OUTSIDE_IP, OUTSIDE_NS, POD_CIDR,
    POD_CIDR6, SERVICE_CIDR, SERVICE_CIDR6, UNDERLAY6_GATEWAY, UNDERLAY_GATEWAY, UNDERLAY_NS,
};
use super::pki::Pki;
use crate::netns::check;
use crate::wait::poll;

pub const ETCD: &str = "etcd";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
pub const FORWARDER: &str = "apiserver-forwarder";
pub const OUTSIDE_SERVER: &str = "outside-http";
pub const CONTROL_PLANE_AGENT: &str = "trellis-agent-control-plane";
/// The control plane's name in trellis (it is no Kubernetes node).
pub const CONTROL_PLANE_NAME: &str = "control-plane";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    check(&out).with_context(|| format!("ip {}", args.join(" ")))?;
    Ok(())
}

fn in_netns(name: &str) -> Namespaces {
    Namespaces::net(name)
}

/// The underlay namespace (bridge `br0` 192.0.2.254/24, forwarding) and the
/// outside host (198.51.100.2) beyond it, with a route back to the nodes
/// and none to the pods.
pub fn underlay() -> Result<()> {
    for ns in [UNDERLAY_NS, OUTSIDE_NS] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let u = UNDERLAY_NS;
    ip(&["-n", u, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        u,
        "addr",
        "add",
        &format!("{UNDERLAY_GATEWAY}/24"),
        "dev",
        "br0",
    ])?;
    ip(&[
        "-n",
        u,
        "addr",
        "add",
        &format!("{UNDERLAY6_GATEWAY}/64"),
        "dev",
        "br0",
        "nodad",
    ])?;
    ip(&["-n", u, "link", "set", "br0", "up"])?;
    ip(&[
        "-n", u, "link", "add", "outside", "type", "veth", "peer", "name", "eth0", "netns",
        OUTSIDE_NS,
    ])?;
    ip(&[
        "-n",
        u,
        "addr",
        "add",
        &format!("{OUTSIDE_GATEWAY}/24"),
        "dev",
        "outside",
    ])?;
    ip(&["-n", u, "link", "set", "outside", "up"])?;
    ip(&[
        "-n",
        OUTSIDE_NS,
        "addr",
        "add",
        &format!("{OUTSIDE_IP}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", OUTSIDE_NS, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        OUTSIDE_NS,
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        &OUTSIDE_GATEWAY.to_string(),
    ])?;
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let out = Command::new("ip")
            .args(["netns", "exec", u, "sysctl", "-qw", sysctl])
            .output()?;
        check(&out).with_context(|| format!("{sysctl} in the underlay"))?;
    }
    Ok(())
}

/// An HTTP server on the outside host (`agnhost netexec`: `/clientip`
/// answers the address a request came from).
pub fn outside_server(layout: &Layout, kube_bin: &Path) -> Result<()> {
    let argv = [
        kube_bin.join("agnhost").display().to_string(),
        "netexec".to_owned(),
        format!("--http-port={OUTSIDE_HTTP_PORT}"),
        "--udp-port=-1".to_owned(),
    ];
    daemon::spawn(
        layout,
        OUTSIDE_SERVER,
        daemon::command(&in_netns(OUTSIDE_NS), &argv),
    )?;
    Ok(())
}

/// etcd 3.6 in the underlay, for the API server (`/registry`) and trellis
/// (`/trellis`).
pub fn etcd(layout: &Layout, kube_bin: &Path) -> Result<()> {
    let argv = [
        kube_bin.join("etcd").display().to_string(),
        "--name=trellis-kube".to_owned(),
        format!("--data-dir={}", layout.etcd_data().display()),
        format!("--listen-client-urls=http://{UNDERLAY_GATEWAY}:{ETCD_PORT},http://127.0.0.1:{ETCD_PORT}"),
        format!("--advertise-client-urls=http://{UNDERLAY_GATEWAY}:{ETCD_PORT}"),
        "--listen-peer-urls=http://127.0.0.1:2380".to_owned(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".to_owned(),
        "--initial-cluster=trellis-kube=http://127.0.0.1:2380".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    daemon::spawn(layout, ETCD, daemon::command(&in_netns(UNDERLAY_NS), &argv))?;
    poll(Duration::from_secs(30), "etcd to serve", || {
        if !daemon::running(layout, ETCD) {
            anyhow::bail!("etcd exited:\n{}", daemon::log_tail(layout, ETCD, 20));
        }
        let out = Command::new("ip")
            .args(["netns", "exec", UNDERLAY_NS, "etcdctl"])
            .args(["--endpoints", &format!("http://127.0.0.1:{ETCD_PORT}")])
            .args(["--dial-timeout=1s", "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()?;
        Ok(out.status.success().then_some(()))
    })
}

/// The API server on `port` of every underlay address (192.0.2.254 for the
/// nodes, 127.0.0.1 for the forwarder and the control plane).
pub fn apiserver(layout: &Layout, pki: &Pki, kube_bin: &Path, port: u16) -> Result<()> {
    let p = |path: std::path::PathBuf| path.display().to_string();
    let serving = pki.cert("apiserver");
    let kubelet_client = pki.cert("apiserver-kubelet-client");
    let argv = [
        kube_bin.join("kube-apiserver").display().to_string(),
        format!("--etcd-servers=http://127.0.0.1:{ETCD_PORT}"),
        "--bind-address=0.0.0.0".to_owned(),
        format!("--secure-port={port}"),
        format!("--advertise-address={UNDERLAY_GATEWAY}"),
        format!("--tls-cert-file={}", p(serving.cert)),
        format!("--tls-private-key-file={}", p(serving.key)),
        format!("--client-ca-file={}", p(pki.ca())),
        format!("--kubelet-client-certificate={}", p(kubelet_client.cert)),
        format!("--kubelet-client-key={}", p(kubelet_client.key)),
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        format!("--service-account-key-file={}", p(pki.sa_pub())),
        format!("--service-account-signing-key-file={}", p(pki.sa_key())),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-cluster-ip-range={SERVICE_CIDR},{SERVICE_CIDR6}"),
        "--authorization-mode=Node,RBAC".to_owned(),
        "--enable-admission-plugins=NodeRestriction".to_owned(),
        "--allow-privileged=true".to_owned(),
        "--v=1".to_owned(),
    ];
    daemon::spawn(
        layout,
        APISERVER,
        daemon::command(&in_netns(UNDERLAY_NS), &argv),
    )?;
    Ok(())
}

/// The controller manager (no node CIDR allocation: trellis leases node
/// subnets itself) and the scheduler.
pub fn controllers(layout: &Layout, pki: &Pki, kube_bin: &Path, port: u16) -> Result<()> {
    let server = format!("https://127.0.0.1:{port}");
    let cm_config = layout.config().join("controller-manager.kubeconfig");
    pki.write_kubeconfig(&cm_config, "controller-manager", &server)?;
    let kc = cm_config.display().to_string();
    let argv = [
        kube_bin
            .join("kube-controller-manager")
            .display()
            .to_string(),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        format!(
            "--service-account-private-key-file={}",
            pki.sa_key().display()
        ),
        format!("--root-ca-file={}", pki.ca().display()),
        "--use-service-account-credentials=true".to_owned(),
        format!("--cluster-signing-cert-file={}", pki.ca().display()),
        format!(
            "--cluster-signing-key-file={}",
            pki.cert("ca").key.display()
        ),
        format!("--cluster-cidr={POD_CIDR},{POD_CIDR6}"),
        "--allocate-node-cidrs=false".to_owned(),
        format!("--service-cluster-ip-range={SERVICE_CIDR},{SERVICE_CIDR6}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--v=1".to_owned(),
    ];
    daemon::spawn(
        layout,
        CONTROLLER_MANAGER,
        daemon::command(&in_netns(UNDERLAY_NS), &argv),
    )?;

    let sched_config = layout.config().join("scheduler.kubeconfig");
    pki.write_kubeconfig(&sched_config, "scheduler", &server)?;
    let kc = sched_config.display().to_string();
    let argv = [
        kube_bin.join("kube-scheduler").display().to_string(),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--v=1".to_owned(),
    ];
    daemon::spawn(
        layout,
        SCHEDULER,
        daemon::command(&in_netns(UNDERLAY_NS), &argv),
    )?;
    Ok(())
}

/// trellis-agent on the control plane host (the underlay namespace), run
/// directly as flannel's documentation runs flanneld on masters without a
/// kubelet: the API server reaches pods (its pod and service proxy, the
/// e2e suite's DNS and proxy checks) over the overlay like any node. It
/// waits for the cluster config the DaemonSet's installer writes.
pub fn trellis_agent(layout: &Layout, trellis_bin: &Path) -> Result<()> {
    let state = layout.state().join("control-plane/run-trellis");
    std::fs::create_dir_all(&state)?;
    let argv = [
        trellis_bin.join("trellis-agent").display().to_string(),
        "run".to_owned(),
        format!("--etcd-endpoints=http://127.0.0.1:{ETCD_PORT}"),
        format!("--node-name={CONTROL_PLANE_NAME}"),
        "--iface=br0".to_owned(),
        format!("--state-dir={}", state.display()),
        // No pods here: nothing to masquerade or reclaim.
        "--ip-masq=false".to_owned(),
        "--ipam-gc-interval=0".to_owned(),
        // Its status endpoint, as the DaemonSet's agents have theirs, so
        // that `trellisctl doctor` can ask it too.
        "--metrics-addr=0.0.0.0:9437".to_owned(),
    ];
    let mut cmd = daemon::command(&in_netns(UNDERLAY_NS), &argv);
    cmd.env("RUST_LOG", "info");
    daemon::spawn(layout, CONTROL_PLANE_AGENT, cmd)?;
    Ok(())
}

/// The forwarder: listens on 127.0.0.1:`port` of the host and connects each
/// client to 127.0.0.1:`port` inside the underlay (this program's `forward`
/// subcommand, see [`super::forward`]).
pub fn forwarder(layout: &Layout, self_exe: &Path, port: u16) -> Result<()> {
    let mut cmd = Command::new(self_exe);
    cmd.args(["forward", UNDERLAY_NS, &format!("127.0.0.1:{port}")]);
    daemon::spawn(layout, FORWARDER, cmd)?;
    Ok(())
}

/// Every daemon of the control plane, in the order `down` stops them.
pub const DAEMONS: &[&str] = &[
    CONTROL_PLANE_AGENT,
    FORWARDER,
    SCHEDULER,
    CONTROLLER_MANAGER,
    APISERVER,
    ETCD,
    OUTSIDE_SERVER,
];
