//! Container file systems made locally from Debian's busybox-static, so that
//! no test ever pulls an image: a root file system directory (for `podman
//! --rootfs`) and an OCI image archive of it (for `ctr images import`, as
//! the CRI sandbox image and the `ctr run` image).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tempfile::TempDir;

use crate::netns::check;

/// Debian's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked into the root file system.
const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "ip", "ifconfig", "route", "ping", "nc", "wget", "sleep", "ls",
    "hostname", "true", "false", "test", "grep", "awk", "sed", "head", "tail", "wc", "ps", "kill",
    "mkdir", "rm", "env", "id", "uname", "date", "timeout", "httpd",
];

/// A busybox root file system in a temporary directory.
#[derive(Debug)]
pub struct Rootfs {
    dir: TempDir,
}

impl Rootfs {
    pub fn busybox() -> Result<Rootfs> {
        if !Path::new(BUSYBOX).is_file() {
            bail!("{BUSYBOX} is missing: install busybox-static (scripts/setup.sh)");
        }
        let dir = tempfile::Builder::new().prefix("trl-rootfs-").tempdir()?;
        let root = dir.path();
        for sub in [
            "bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/log",
        ] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
        for file in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
            std::fs::write(root.join(file), "")?;
        }
        Ok(Rootfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an OCI image archive of this root file system to `out`, named
    /// `name` (e.g. `trellis.test/busybox:1`), whose default process is
    /// `entrypoint`. Import it with `ctr images import`.
    pub fn oci_archive(&self, name: &str, entrypoint: &[&str], out: &Path) -> Result<()> {
        oci_archive(self.path(), name, &ImageConfig::entrypoint(entrypoint), out)
    }
}

/// The process an image runs by default.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl ImageConfig {
    pub fn entrypoint(argv: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: argv.iter().map(|s| s.to_string()).collect(),
            cmd: Vec::new(),
        }
    }

    pub fn cmd(argv: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: Vec::new(),
            cmd: argv.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Writes an OCI image archive (one layer: the directory `root`) to `out`,
/// named `name`, running `config` by default. Import it with
/// `ctr images import`.
pub fn oci_archive(root: &Path, name: &str, config: &ImageConfig, out: &Path) -> Result<()> {
    let work = tempfile::Builder::new().prefix("trl-oci-").tempdir()?;
    let blobs = work.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;

    let layer = work.path().join("layer.tar");
    check(
        &Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
            .arg(&layer)
            .arg(".")
            .output()
            .context("running tar")?,
    )
    .context("packing the layer")?;
    let (layer_digest, layer_size) = store_blob(&blobs, &layer)?;

    let mut process = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    });
    if !config.entrypoint.is_empty() {
        process["Entrypoint"] = json!(config.entrypoint);
    }
    if !config.cmd.is_empty() {
        process["Cmd"] = json!(config.cmd);
    }
    let image_config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": process,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let (config_digest, config_size) = store_json(&blobs, &work, &image_config)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = store_json(&blobs, &work, &manifest)?;

    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(work.path().join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        work.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    check(
        &Command::new("tar")
            .arg("-C")
            .arg(work.path())
            .arg("-cf")
            .arg(out)
            .args(["oci-layout", "index.json", "blobs"])
            .output()
            .context("running tar")?,
    )
    .context("packing the image archive")?;
    Ok(())
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Moves `file` into the blob store under its digest.
fn store_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let out = check(
        &Command::new("sha256sum")
            .arg(file)
            .output()
            .context("running sha256sum")?,
    )?;
    let digest = out
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned();
    let size = file.metadata()?.len();
    std::fs::rename(file, blobs.join(&digest))?;
    Ok((digest, size))
}

fn store_json(blobs: &Path, work: &TempDir, value: &serde_json::Value) -> Result<(String, u64)> {
    let tmp: PathBuf = work.path().join("blob.json");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    store_blob(blobs, &tmp)
}
