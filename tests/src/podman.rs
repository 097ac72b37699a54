//! podman as a CNI client, inside a node namespace: its CNI backend
//! (`network_backend = "cni"`) configured per node through `CONTAINERS_CONF`,
//! its storage in a temporary directory, containers from a local busybox
//! root file system (`--rootfs`), so nothing is pulled.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::containerd::unmount_under;
use crate::netns::{check, Netns};
use crate::rootfs::Rootfs;

/// Flags these machines need: no systemd, cgroup v1 or v2 through cgroupfs,
/// runc, and explicit limits (podman's defaults read the host's).
const RUN_FLAGS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// A podman "installation" for one node.
pub struct Podman {
    node_netns: PathBuf,
    network: String,
    rootfs: PathBuf,
    conf: PathBuf,
    dir: TempDir,
}

impl std::fmt::Debug for Podman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Podman")
            .field("node_netns", &self.node_netns)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Podman {
    /// podman for `node`, whose CNI conf dir holds a conflist named
    /// `network`, with plugins in `cni_bin_dir`.
    pub fn new(
        node: &Netns,
        cni_bin_dir: &Path,
        cni_conf_dir: &Path,
        network: &str,
        rootfs: &Rootfs,
    ) -> Result<Podman> {
        let dir = tempfile::Builder::new().prefix("trl-podman-").tempdir()?;
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
netns = "private"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bins}"]
network_config_dir = "{confdir}"
default_network = "{network}"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
static_dir = "{d}/root/libpod"
volume_path = "{d}/root/volumes"
"#,
                bins = cni_bin_dir.display(),
                confdir = cni_conf_dir.display(),
                d = dir.path().display(),
            ),
        )?;
        Ok(Podman {
            node_netns: node.path(),
            network: network.to_owned(),
            rootfs: rootfs.path().to_owned(),
            conf,
            dir,
        })
    }

    /// A `podman` command in the node namespace (host mounts kept: runc
    /// needs the cgroup file system) with this node's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node_netns.display()))
            .args(["--", "podman"])
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs podman; its output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .context("running podman (install podman: scripts/setup.sh)")
    }

    /// Runs podman; stdout, or an error with its output.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        check(&self.run(args)?).with_context(|| format!("podman {}", args.join(" ")))
    }

    /// Starts a container `name` on the network (CNI ADD) sleeping in the
    /// background; returns its address (its IPv6 one on an IPv6-only
    /// network).
    pub fn start(&self, name: &str) -> Result<IpAddr> {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.network];
        args.extend_from_slice(RUN_FLAGS);
        args.extend_from_slice(&["--rootfs", &rootfs, "/bin/sleep", "3600"]);
        self.ok(&args)?;
        self.ip(name).or_else(|e| self.ip6(name).map_err(|_| e))
    }

    /// The container's address on the network, as podman recorded it from
    /// the CNI result.
    pub fn ip(&self, name: &str) -> Result<IpAddr> {
        let inspect: serde_json::Value =
            serde_json::from_str(&self.ok(&["inspect", "--type", "container", name])?)?;
        let ip = inspect[0]["NetworkSettings"]["Networks"][&self.network]["IPAddress"]
            .as_str()
            .unwrap_or_default();
        if ip.is_empty() {
            bail!("podman reports no address for {name} on {}", self.network);
        }
        ip.parse()
            .with_context(|| format!("podman IPAddress {ip:?}"))
    }

    /// The container's IPv6 address on the network (dual-stack), as podman
    /// recorded it from the CNI result.
    pub fn ip6(&self, name: &str) -> Result<IpAddr> {
        let inspect: serde_json::Value =
            serde_json::from_str(&self.ok(&["inspect", "--type", "container", name])?)?;
        let ip = inspect[0]["NetworkSettings"]["Networks"][&self.network]["GlobalIPv6Address"]
            .as_str()
            .unwrap_or_default();
        if ip.is_empty() {
            bail!(
                "podman reports no IPv6 address for {name} on {}",
                self.network
            );
        }
        ip.parse()
            .with_context(|| format!("podman GlobalIPv6Address {ip:?}"))
    }

    /// Runs `script` with `sh -c` inside a running container.
    pub fn exec(&self, name: &str, script: &str) -> Result<Output> {
        self.run(&["exec", name, "/bin/sh", "-c", script])
    }

    /// `podman run --rm` of a one-shot container on the network running
    /// `script` (ADD, run, DEL).
    pub fn run_once(&self, name: &str, script: &str) -> Result<Output> {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "--rm", "--name", name, "--network", &self.network];
        args.extend_from_slice(RUN_FLAGS);
        args.extend_from_slice(&["--rootfs", &rootfs, "/bin/sh", "-c", script]);
        self.run(&args)
    }

    /// Removes a container at once (CNI DEL).
    pub fn remove(&self, name: &str) -> Result<()> {
        self.ok(&["rm", "-f", "-t", "0", name]).map(drop)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        unmount_under(self.dir.path());
    }
}
