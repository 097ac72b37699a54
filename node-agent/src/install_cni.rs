//! `trellis-agent install-cni`: what the DaemonSet's init container runs on
//! every node before the agent starts.
//!
//! 1. With `--cluster-config FILE`, writes that cluster config to etcd
//!    `<prefix>/config` if the key is absent (never overwrites it).
//! 2. Copies the plugins `trellis` and `trellis-ipam` from the image into
//!    the CNI bin dir, each through a temporary file in that directory and a
//!    rename, so a runtime never executes a half-written binary.
//! 3. Copies the etcd TLS files (from the Secret mount) to a directory the
//!    plugins can read on the host, `<cni conf dir>/trellis-tls/` by default.
//! 4. Writes the conflist (the ConfigMap's template, or the built-in one)
//!    into the CNI conf dir atomically, with the etcd endpoints, prefix and
//!    TLS paths, the bridge and the state dir filled in from the same flags
//!    and environment variables the agent reads, so the two cannot disagree.
//!
//! Every step leaves an identical file untouched and reports it
//! "unchanged": running it twice changes nothing. `--uninstall` removes the
//! files instead (the conflist first, so no new pod is sent to plugins that
//! are about to disappear).
//!
//! The host directories are expected at the same paths inside the container
//! (the DaemonSet mounts `/opt/cni/bin` and `/etc/cni/net.d` there), so the
//! paths written into the conflist are valid on the host.

mod cluster_config;
pub mod conf_dir;
pub mod conflist;
pub mod files;

pub use cluster_config::{SeedError, Seeded, ETCD_WAIT};
pub use files::Change;

use crate::flags::InstallOptions;
use conflist::{Settings, TlsPaths};
use std::fmt;
use std::path::{Path, PathBuf};

/// The plugins the installer copies, by file name.
pub const PLUGINS: [&str; 2] = ["trellis", "trellis-ipam"];
/// The TLS directory under the CNI conf dir when `--cni-tls-dir` is absent.
pub const TLS_SUBDIR: &str = "trellis-tls";
const TLS_CA: &str = "etcd-ca.pem";
const TLS_CERT: &str = "etcd-cert.pem";
const TLS_KEY: &str = "etcd-key.pem";

impl InstallOptions {
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conflist_name)
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.cni_tls_dir
            .clone()
            .unwrap_or_else(|| self.cni_conf_dir.join(TLS_SUBDIR))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plugin {0} is missing: the image must hold trellis and trellis-ipam next to trellis-agent (or set --plugin-dir)")]
    MissingPlugin(PathBuf),
    #[error("cannot find the directory of this executable: {0}")]
    OwnPath(#[source] std::io::Error),
    #[error("the conflist template {path} is not JSON: {source}")]
    TemplateSyntax {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the conflist would not work: {0}")]
    Conflist(String),
    #[error("--conflist-name {0:?} must be a plain file name ending in .conflist")]
    ConflistName(String),
    #[error("etcd settings: {0}")]
    Etcd(#[from] trellis_common::etcd::EtcdError),
    #[error(transparent)]
    Seed(#[from] SeedError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// What one thing the installer looked at is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A file path, or `etcd <key>`.
    pub target: String,
    pub change: Change,
}

/// Everything `run` did, in order, and what an operator should know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: Vec<Entry>,
    pub warnings: Vec<String>,
}

impl Report {
    fn push(&mut self, target: impl Into<String>, change: Change) {
        self.entries.push(Entry {
            target: target.into(),
            change,
        });
    }

    fn push_path(&mut self, path: &Path, change: Change) {
        self.push(path.display().to_string(), change);
    }

    /// Whether anything was created, updated or removed.
    pub fn changed(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e.change,
                Change::Created | Change::Updated | Change::Removed
            )
        })
    }

    /// The change recorded for `target`, if any.
    pub fn change_of(&self, target: &str) -> Option<Change> {
        self.entries
            .iter()
            .find(|e| e.target == target)
            .map(|e| e.change)
    }
}

/// One line per entry (`unchanged /opt/cni/bin/trellis`), then the warnings.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{:<9} {}", e.change, e.target)?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Install (or with `uninstall`, remove). The etcd step runs first, so a
/// node only gets a conflist, and so turns Ready, once the cluster config
/// exists.
pub async fn run(opts: &InstallOptions) -> Result<Report, InstallError> {
    if opts.uninstall {
        return uninstall(opts);
    }
    let mut report = Report::default();
    if let Some(path) = &opts.cluster_config {
        let (key, seeded) = cluster_config::seed(path, &opts.etcd).await?;
        let target = format!("etcd {key}");
        match seeded {
            Seeded::Created => report.push(target, Change::Created),
            Seeded::Unchanged => report.push(target, Change::Unchanged),
            Seeded::Differs { existing } => {
                report.warnings.push(format!(
                    "{key} holds {existing}, not the cluster config of {}: left as it is \
                     (the agents use what etcd holds)",
                    path.display()
                ));
                report.push(target, Change::Unchanged);
            }
        }
    }
    install_files(opts, &mut report)?;
    Ok(report)
}

/// The file part of `run`: plugins, TLS copies, conflist. No network.
pub fn install_files(opts: &InstallOptions, report: &mut Report) -> Result<(), InstallError> {
    let conflist_path = checked_conflist_path(opts)?;
    // Render first: a bad template fails before anything is touched.
    let template = load_template(opts)?;
    // Checked as the agent and the plugins check them (present, PEM,
    // paired, https://): what is copied is what was checked.
    let tls = opts.etcd.settings().tls_files()?;
    let (ca, identity) = match &tls {
        Some(files) => (Some(&files.ca), files.identity.as_ref()),
        None => (None, None),
    };
    let tls_copies = [
        (TLS_CA, ca, 0o644),
        (TLS_CERT, identity.map(|(cert, _)| cert), 0o644),
        (TLS_KEY, identity.map(|(_, key)| key), 0o600),
    ];
    let tls_dir = opts.tls_dir();
    let copy_path = |i: usize| tls_copies[i].1.map(|_| tls_dir.join(tls_copies[i].0));
    let tls_paths = TlsPaths {
        ca: copy_path(0),
        cert: copy_path(1),
        key: copy_path(2),
    };
    let text = conflist::render(
        &template,
        &Settings {
            bridge: &opts.bridge,
            state_dir: &opts.state_dir,
            etcd_endpoints: &opts.etcd.etcd_endpoints,
            etcd_prefix: &opts.etcd.etcd_prefix,
            tls: tls_paths.clone(),
            credentials: opts
                .cni_etcd_username
                .as_deref()
                .zip(opts.cni_etcd_password.as_deref()),
        },
    )
    .map_err(InstallError::Conflist)?;

    let plugin_dir = match &opts.plugin_dir {
        Some(dir) => dir.clone(),
        None => own_dir()?,
    };
    for name in PLUGINS {
        let source = plugin_dir.join(name);
        let bytes = match std::fs::read(&source) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InstallError::MissingPlugin(source))
            }
            Err(e) => return Err(io_error("reading", &source)(e)),
        };
        let target = opts.cni_bin_dir.join(name);
        let change =
            files::install(&target, &bytes, 0o755).map_err(io_error("installing", &target))?;
        report.push_path(&target, change);
    }

    for (name, bytes, mode) in tls_copies {
        let path = tls_dir.join(name);
        match bytes {
            Some(bytes) => {
                let change =
                    files::install(&path, bytes, mode).map_err(io_error("installing", &path))?;
                report.push_path(&path, change);
            }
            // A copy of a file no longer configured (TLS turned off) would
            // be a stale secret on the host.
            None => {
                if files::remove(&path).map_err(io_error("removing", &path))? == Change::Removed {
                    report.push_path(&path, Change::Removed);
                }
            }
        }
    }

    // A conflist holding a password is root's alone.
    let mode = if opts.cni_etcd_username.is_some() {
        0o600
    } else {
        0o644
    };
    let change = files::install(&conflist_path, text.as_bytes(), mode)
        .map_err(io_error("writing", &conflist_path))?;
    report.push_path(&conflist_path, change);
    warn_about_shadowing(opts, report);
    Ok(())
}

/// Remove what `install_files` writes, the conflist first.
pub fn uninstall(opts: &InstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    let mut paths = vec![checked_conflist_path(opts)?];
    paths.extend(PLUGINS.iter().map(|name| opts.cni_bin_dir.join(name)));
    let tls_dir = opts.tls_dir();
    paths.extend([TLS_CA, TLS_CERT, TLS_KEY].iter().map(|n| tls_dir.join(n)));
    for path in paths {
        let change = files::remove(&path).map_err(io_error("removing", &path))?;
        report.push_path(&path, change);
    }
    // The directory only if it is ours and now empty.
    if opts.cni_tls_dir.is_none() && std::fs::remove_dir(&tls_dir).is_ok() {
        report.push_path(&tls_dir, Change::Removed);
    }
    Ok(report)
}

fn checked_conflist_path(opts: &InstallOptions) -> Result<PathBuf, InstallError> {
    let name = &opts.conflist_name;
    let plain = Path::new(name).file_name().map(|n| n == name.as_str()) == Some(true);
    if !plain || !name.ends_with(".conflist") || name.starts_with('.') {
        return Err(InstallError::ConflistName(name.clone()));
    }
    Ok(opts.conflist_path())
}

fn load_template(opts: &InstallOptions) -> Result<serde_json::Value, InstallError> {
    let Some(path) = &opts.conflist_template else {
        return Ok(conflist::default_template());
    };
    let bytes = std::fs::read(path).map_err(io_error("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| InstallError::TemplateSyntax {
        path: path.clone(),
        source,
    })
}

fn own_dir() -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::OwnPath)?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| {
        InstallError::OwnPath(std::io::Error::other(format!(
            "{} has no parent directory",
            exe.display()
        )))
    })
}

/// Runtimes load the first config file in lexical order: say so when another
/// one comes before ours.
fn warn_about_shadowing(opts: &InstallOptions, report: &mut Report) {
    let Ok(entries) = std::fs::read_dir(&opts.cni_conf_dir) else {
        return;
    };
    let mut earlier: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".conf", ".conflist", ".json"]
                .iter()
                .any(|ext| n.ends_with(ext))
                && !n.starts_with('.')
                && n.as_str() < opts.conflist_name.as_str()
        })
        .collect();
    if !earlier.is_empty() {
        earlier.sort();
        report.warnings.push(format!(
            "{} also holds {}, which runtimes load before {}: remove it or pick a \
             --conflist-name that sorts first",
            opts.cni_conf_dir.display(),
            earlier.join(", "),
            opts.conflist_name
        ));
    }
}

#[cfg(test)]
mod tests;
