//! containerd as a CNI client, inside a node namespace: its own config,
//! socket, root and state in a temporary directory; images imported from a
//! local busybox root file system; `ctr run --cni` and the CRI plugin (the
//! path the kubelet uses) both calling the node's CNI conf dir and plugins.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::cri::CriClient;
use crate::netns::{check, Netns};
use crate::rootfs::Rootfs;

/// The CRI sandbox ("pause") image, imported locally.
pub const SANDBOX_IMAGE: &str = "trellis.test/pause:1";
/// The image of `ctr run` containers.
pub const RUN_IMAGE: &str = "trellis.test/busybox:1";
/// Where `ctr run --cni` (go-cni's defaults) looks for configs and plugins;
/// the harness bind-mounts the node's over them in a private mount
/// namespace, never on the host.
const GO_CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// A containerd running inside a node's network namespace.
pub struct Containerd {
    node: String,
    node_netns: PathBuf,
    cni_bin_dir: PathBuf,
    cni_conf_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("node", &self.node)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Containerd {
    /// Starts containerd in `node` with the CRI plugin reading
    /// `cni_conf_dir` and `cni_bin_dir`, and imports the sandbox and run
    /// images built from `rootfs`.
    pub fn start(
        node: &Netns,
        cni_bin_dir: &Path,
        cni_conf_dir: &Path,
        rootfs: &Rootfs,
    ) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("trl-containerd-")
            .tempdir()?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            config_toml(dir.path(), &socket, cni_bin_dir, cni_conf_dir),
        )?;
        let log = dir.path().join("containerd.log");
        let mut ctd = Containerd {
            node: node.name().to_owned(),
            node_netns: node.path(),
            cni_bin_dir: cni_bin_dir.to_owned(),
            cni_conf_dir: cni_conf_dir.to_owned(),
            socket,
            log,
            child: None,
            dir,
        };
        let log_file = File::create(&ctd.log)?;
        let mut cmd = node.nsenter(&["containerd", "--config"]);
        cmd.arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        ctd.child = Some(cmd.spawn().context("starting containerd")?);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ctd.socket.exists() && ctd.ctr(&["version"]).is_ok() {
                break;
            }
            if let Some(status) = ctd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("containerd exited ({status}):\n{}", ctd.log_tail());
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer within 30 s:\n{}", ctd.log_tail());
            }
            thread::sleep(Duration::from_millis(100));
        }

        let images = tempfile::Builder::new().prefix("trl-images-").tempdir()?;
        let pause = images.path().join("pause.tar");
        rootfs.oci_archive(SANDBOX_IMAGE, &["/bin/sleep", "2147483647"], &pause)?;
        let busybox = images.path().join("busybox.tar");
        rootfs.oci_archive(RUN_IMAGE, &["/bin/sh"], &busybox)?;
        let pause = pause.display().to_string();
        let busybox = busybox.display().to_string();
        ctd.ctr(&["-n", "k8s.io", "images", "import", &pause])?;
        ctd.ctr(&["-n", "default", "images", "import", &busybox])?;
        Ok(ctd)
    }

    /// The containerd (and CRI) socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `ctr` against this containerd; stdout on success.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr (install containerd: scripts/setup.sh)")?;
        check(&out).with_context(|| format!("ctr {}", args.join(" ")))
    }

    /// `ctr run --cni --rm`: a container of [`RUN_IMAGE`] running `script`
    /// with `sh -c`, attached through the node's CNI config (ADD before it
    /// starts, DEL when it exits). ctr runs in the node namespace and in a
    /// private mount namespace where the node's conf dir and plugins sit at
    /// go-cni's fixed paths.
    pub fn ctr_run_cni(&self, id: &str, script: &str) -> Result<Output> {
        if !Path::new(GO_CNI_CONF_DIR).is_dir() {
            bail!("{GO_CNI_CONF_DIR} is missing (the podman package creates it): ctr run --cni reads it");
        }
        let mounts = format!(
            "set -e; mount -t tmpfs trl-opt /opt; mkdir -p /opt/cni/bin; \
             mount --bind '{bins}' /opt/cni/bin; mount --bind '{conf}' {GO_CNI_CONF_DIR}; \
             exec \"$@\"",
            bins = self.cni_bin_dir.display(),
            conf = self.cni_conf_dir.display(),
        );
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node_netns.display()))
            .args(["--", "unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &mounts, "ctr-run"])
            .arg("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args([
                "run", "--cni", "--rm", RUN_IMAGE, id, "/bin/sh", "-c", script,
            ])
            .stdin(Stdio::null())
            .output()
            .context("running ctr run --cni")?;
        Ok(out)
    }

    /// A CRI client on this containerd's socket.
    pub fn cri(&self) -> Result<CriClient> {
        CriClient::connect(&self.socket)
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn stop(&mut self) {
        // Pod sandboxes first, through CRI, so the runtime calls CNI DEL.
        if let Ok(mut cri) = self.cri() {
            for id in cri.list_pod_sandboxes().unwrap_or_default() {
                let _ = cri.stop_pod_sandbox(&id);
                let _ = cri.remove_pod_sandbox(&id);
            }
        }
        for ns in ["default", "k8s.io"] {
            let tasks = self
                .ctr(&["-n", ns, "tasks", "ls", "-q"])
                .unwrap_or_default();
            for task in tasks.split_whitespace() {
                let _ = self.ctr(&["-n", ns, "tasks", "kill", "-s", "SIGKILL", task]);
                let _ = self.ctr(&["-n", ns, "tasks", "rm", "-f", task]);
            }
            let containers = self
                .ctr(&["-n", ns, "containers", "ls", "-q"])
                .unwrap_or_default();
            for container in containers.split_whitespace() {
                let _ = self.ctr(&["-n", ns, "containers", "rm", container]);
            }
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd by design; ours name our socket.
        kill_processes_mentioning(&self.socket.display().to_string());
        unmount_under(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- containerd log ({}) ---\n{}",
                self.node,
                self.log_tail()
            );
        }
        self.stop();
    }
}

fn config_toml(dir: &Path, socket: &Path, bins: &Path, conf: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Sandboxes ask for oom_score_adj -998; without CAP_SYS_RESOURCE (nested
  # machines) runc cannot lower it, so keep it at ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bins}"
    conf_dir = "{conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
        socket = socket.display(),
        bins = bins.display(),
        conf = conf.display(),
    )
}

/// Kills every process whose command line contains `needle`.
pub(crate) fn kill_processes_mentioning(needle: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}
