//! The built workspace binaries and a CNI plugin directory holding them next
//! to the reference plugins.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// The directory holding the product binaries under test:
/// `$TRELLIS_BIN_DIR`, or `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("TRELLIS_BIN_DIR") {
        // Absolute, since plugin directories hold symlinks to these.
        Some(dir) if !dir.is_empty() => std::path::absolute(&dir).unwrap_or_else(|_| dir.into()),
        _ => target_dir().join("debug"),
    }
}

/// The path of a built workspace binary (`trellis`, `trellis-ipam`,
/// `trellis-agent`, ...). Panics with the command to run when it is missing:
/// integration tests run the real binaries, and `cargo test` does not build
/// the binaries of other packages.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} is missing: build the binaries first with `cargo build --workspace --bins` \
             (or point TRELLIS_BIN_DIR at a directory holding them)",
            path.display()
        );
    }
    path
}

/// Whether a workspace binary has been built.
pub fn has_bin(name: &str) -> bool {
    bin_dir().join(name).is_file()
}

/// A temporary CNI plugin directory (what goes in `CNI_PATH`) holding
/// symlinks to `trellis`, `trellis-ipam` and every reference plugin of
/// /usr/lib/cni. Removed on drop.
#[derive(Debug)]
pub struct CniBinDir {
    dir: TempDir,
}

impl CniBinDir {
    /// The product plugins plus every reference plugin. Panics like [`bin`]
    /// when `trellis` or `trellis-ipam` has not been built.
    pub fn new() -> Result<CniBinDir> {
        let dir = Self::reference_only()?;
        for name in ["trellis", "trellis-ipam"] {
            dir.snapshot(name, &bin(name))?;
        }
        Ok(dir)
    }

    /// Only the reference plugins (for baselines that must not depend on
    /// the product being built).
    pub fn reference_only() -> Result<CniBinDir> {
        let dir = CniBinDir {
            dir: tempfile::Builder::new().prefix("trl-cnibin-").tempdir()?,
        };
        let entries = std::fs::read_dir(REFERENCE_PLUGIN_DIR).with_context(|| {
            format!(
                "{REFERENCE_PLUGIN_DIR}: install Debian's containernetworking-plugins \
                 (scripts/setup.sh)"
            )
        })?;
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                dir.link(&entry.file_name().to_string_lossy(), &entry.path())?;
            }
        }
        Ok(dir)
    }

    /// Adds (or replaces) `name` pointing at `target`, e.g. a test double.
    pub fn link(&self, name: &str, target: &Path) -> Result<()> {
        let path = self.dir.path().join(name);
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path)?;
        }
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("linking {} -> {}", path.display(), target.display()))
    }

    /// Adds `name` as a hard link to (or, across file systems, a copy of)
    /// `target` as it is now: a rebuild of the workspace during the test
    /// replaces the file under `target/`, not the one the test runs.
    pub fn snapshot(&self, name: &str, target: &Path) -> Result<()> {
        let path = self.dir.path().join(name);
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path)?;
        }
        snapshot_file(target, &path)
    }

    /// The directory, for `CNI_PATH` / `--cni-path`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The path of one plugin in this directory.
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Hard-links `from` to `to`, or copies it across file systems. Retries
/// briefly: cargo replaces a binary by unlinking it first.
pub fn snapshot_file(from: &Path, to: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..20 {
        match std::fs::hard_link(from, to) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::CrossesDevices => {
                std::fs::copy(from, to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
                return Ok(());
            }
            Err(err) => last = Some(err),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(last.expect("at least one attempt"))
        .with_context(|| format!("linking {} to {}", from.display(), to.display()))
}

/// Write an executable file (a test's wrapper script) without holding a
/// writable descriptor in this process: a short-lived `tee` writes it. Tests
/// run in parallel threads, and a child forked by another test while this
/// process held the file open for writing would make exec of the file fail
/// with ETXTBSY ("Text file busy").
pub fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let mut tee = Command::new("tee")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running tee")?;
    let mut stdin = tee.stdin.take().expect("stdin is piped");
    stdin.write_all(contents.as_bytes())?;
    drop(stdin);
    anyhow::ensure!(tee.wait()?.success(), "tee {} failed", path.display());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
