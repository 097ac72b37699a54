//! A real libcni client for the tests: the Go driver in tests/libcni-driver,
//! built against Debian's github.com/containernetworking/cni/libcni and run
//! inside a node namespace, so plugins are invoked exactly as container
//! runtimes invoke them (config injection, prevResult, result cache).

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

use crate::bins;
use crate::netns::Netns;

/// Where Debian's golang-github-appc-cni-dev installs its GOPATH tree.
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// The driver's sources.
pub fn driver_source_dir() -> PathBuf {
    bins::workspace_dir().join("tests/libcni-driver")
}

/// Builds the driver into `<target>/libcni-driver` unless a build newer than
/// its sources is there, once per process and under a file lock so parallel
/// test processes do not race. Returns its path.
pub fn driver_path() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_driver().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("building the libcni driver: {e}"))
}

fn build_driver() -> Result<PathBuf> {
    let target = bins::target_dir();
    std::fs::create_dir_all(&target)?;
    let out = target.join("libcni-driver");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target.join("libcni-driver.lock"))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .context("locking the libcni driver build")?;

    let src = driver_source_dir();
    if up_to_date(&out, &src)? {
        return Ok(out);
    }
    let libcni = Path::new(DEBIAN_GOPATH).join("src/github.com/containernetworking/cni/libcni");
    if !libcni.is_dir() {
        bail!(
            "{} is missing: install golang-go and golang-github-appc-cni-dev (scripts/setup.sh)",
            libcni.display()
        );
    }
    let tmp = target.join(format!("libcni-driver.tmp.{}", std::process::id()));
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GOFLAGS", "")
        .stdin(Stdio::null());
    if std::env::var_os("GOCACHE").is_none() {
        cmd.env("GOCACHE", target.join("go-build-cache"));
    }
    let output = cmd
        .output()
        .context("running `go build` (install golang-go: scripts/setup.sh)")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "go build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

fn up_to_date(out: &Path, src: &Path) -> Result<bool> {
    let built = match out.metadata().and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => return Ok(false),
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(src).with_context(|| src.display().to_string())? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "go") {
            newest = newest.max(entry.metadata()?.modified()?);
        }
    }
    Ok(built > newest)
}

/// One container attachment: what a runtime passes as CNI_CONTAINERID,
/// CNI_NETNS, CNI_IFNAME, CNI_ARGS and capability arguments.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub capability_args: Option<Value>,
}

impl Attachment {
    pub fn new(
        container_id: impl Into<String>,
        netns: impl AsRef<Path>,
        ifname: impl Into<String>,
    ) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            netns: netns.as_ref().to_path_buf(),
            ifname: ifname.into(),
            args: Vec::new(),
            capability_args: None,
        }
    }

    /// Adds a `K=V` pair to CNI_ARGS.
    pub fn arg(mut self, key: impl Into<String>, value: impl Into<String>) -> Attachment {
        self.args.push((key.into(), value.into()));
        self
    }

    /// Capability arguments, e.g. `{"portMappings": [...]}`.
    pub fn capability_args(mut self, args: Value) -> Attachment {
        self.capability_args = Some(args);
        self
    }

    fn flags(&self) -> Vec<OsString> {
        let mut flags: Vec<OsString> = vec![
            "--container-id".into(),
            self.container_id.clone().into(),
            "--netns".into(),
            self.netns.clone().into(),
            "--ifname".into(),
            self.ifname.clone().into(),
        ];
        if !self.args.is_empty() {
            let args: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            flags.push("--args".into());
            flags.push(args.join(";").into());
        }
        if let Some(caps) = &self.capability_args {
            flags.push("--capability-args".into());
            flags.push(caps.to_string().into());
        }
        flags
    }
}

/// A failed CNI operation as the runtime sees it.
#[derive(Clone, Debug)]
pub struct CniFailure {
    /// The CNI error code from the plugin; 0 when the failure did not come
    /// from a plugin's error JSON (plugin not found, bad conflist, driver).
    pub code: u32,
    pub msg: String,
    pub details: String,
    /// What the plugins and the driver wrote on stderr.
    pub stderr: String,
}

impl fmt::Display for CniFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "\nstderr:\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for CniFailure {}

#[derive(Deserialize)]
struct FailureJson {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Per-operation durations measured inside the driver, in milliseconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchTimings {
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    /// A burst's wall times (`Driver::burst`).
    #[serde(default)]
    pub burst_add_ms: f64,
    #[serde(default)]
    pub burst_del_ms: f64,
    #[serde(default)]
    pub failures: Vec<String>,
    /// Addresses handed to two containers of the burst.
    #[serde(default)]
    pub duplicates: Vec<String>,
}

/// The median of a set of durations.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The libcni client of one node: runs inside the node's namespace with its
/// own result cache, so DEL and CHECK find what ADD cached, as on a real node.
#[derive(Debug)]
pub struct Driver {
    node: String,
    cni_path: OsString,
    cache: TempDir,
    env: Vec<(OsString, OsString)>,
}

impl Driver {
    /// A client running in `node`, finding plugins in `cni_path`.
    pub fn new(node: &Netns, cni_path: &[&Path]) -> Result<Driver> {
        driver_path()?;
        let cni_path = std::env::join_paths(cni_path)?;
        Ok(Driver {
            node: node.name().to_owned(),
            cni_path,
            cache: tempfile::Builder::new().prefix("trl-cnicache-").tempdir()?,
            env: Vec::new(),
        })
    }

    /// Sets an environment variable for the driver and the plugins it runs
    /// (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Driver {
        self.env.push((key.into(), value.into()));
        self
    }

    /// libcni's result cache directory for this node.
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// ADD through `AddNetworkList`; the result as the runtime sees it.
    pub fn add(&self, conflist: &Path, att: &Attachment) -> Result<Value, CniFailure> {
        self.run("add", conflist, &att.flags())
    }

    /// DEL through `DelNetworkList` (with the cached result as prevResult).
    pub fn del(&self, conflist: &Path, att: &Attachment) -> Result<Value, CniFailure> {
        self.run("del", conflist, &att.flags())
    }

    /// CHECK through `CheckNetworkList`.
    pub fn check(&self, conflist: &Path, att: &Attachment) -> Result<Value, CniFailure> {
        self.run("check", conflist, &att.flags())
    }

    /// GC as libcni 1.2 does it: DEL cached attachments of this network that
    /// are not in `valid`, then GC on every plugin (cniVersion 1.1.0 lists)
    /// with `cni.dev/valid-attachments`. `valid` holds (containerID, ifname).
    pub fn gc(&self, conflist: &Path, valid: &[(&str, &str)]) -> Result<Value, CniFailure> {
        self.run("gc", conflist, &gc_flags(valid))
    }

    /// Only the plugins' GC, without the DEL of stale cached attachments:
    /// for testing what a plugin's GC itself cleans.
    pub fn gc_plugins_only(
        &self,
        conflist: &Path,
        valid: &[(&str, &str)],
    ) -> Result<Value, CniFailure> {
        let mut flags = gc_flags(valid);
        flags.push("--plugin-gc-only".into());
        self.run("gc", conflist, &flags)
    }

    /// STATUS on every plugin of a cniVersion 1.1.0 list, first error wins.
    pub fn status(&self, conflist: &Path) -> Result<Value, CniFailure> {
        self.run("status", conflist, &[])
    }

    /// `count` ADDs in sequence, container i in `netns_paths[i]`, then
    /// `count` DELs, timed inside the driver.
    pub fn bench(
        &self,
        conflist: &Path,
        netns_paths: &[PathBuf],
        count: usize,
    ) -> Result<BenchTimings> {
        self.bench_with(conflist, netns_paths, count, false)
    }

    /// `count` ADDs at once (one goroutine each, as a runtime starting many
    /// pods), then `count` DELs at once; failures are counted.
    pub fn burst(
        &self,
        conflist: &Path,
        netns_paths: &[PathBuf],
        count: usize,
    ) -> Result<BenchTimings> {
        self.bench_with(conflist, netns_paths, count, true)
    }

    fn bench_with(
        &self,
        conflist: &Path,
        netns_paths: &[PathBuf],
        count: usize,
        parallel: bool,
    ) -> Result<BenchTimings> {
        let mut list = tempfile::NamedTempFile::new()?;
        for path in netns_paths {
            use std::io::Write;
            writeln!(list, "{}", path.display())?;
        }
        let flags: Vec<OsString> = vec![
            "--netns-list".into(),
            list.path().into(),
            "--count".into(),
            count.to_string().into(),
        ];
        let mut flags = flags;
        if parallel {
            flags.push("--parallel".into());
        }
        let value = self.run("bench", conflist, &flags)?;
        Ok(serde_json::from_value(value)?)
    }

    /// Runs any driver command with extra flags (e.g. `--cni-version`).
    pub fn run(
        &self,
        verb: &str,
        conflist: &Path,
        extra: &[OsString],
    ) -> Result<Value, CniFailure> {
        let driver = driver_path().map_err(|e| failure(format!("{e:#}")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .arg(driver)
            .arg(verb)
            .arg("--conflist")
            .arg(conflist)
            .arg("--cni-path")
            .arg(&self.cni_path)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .map_err(|e| failure(format!("running the libcni driver: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return serde_json::from_str(&stdout).map_err(|e| CniFailure {
                stderr,
                ..failure(format!("driver printed no JSON ({e}): {stdout:?}"))
            });
        }
        match serde_json::from_str::<FailureJson>(&stdout) {
            Ok(f) => Err(CniFailure {
                code: f.code,
                msg: f.msg,
                details: f.details,
                stderr,
            }),
            Err(_) => Err(CniFailure {
                stderr,
                ..failure(format!("driver failed ({}): {stdout}", out.status))
            }),
        }
    }
}

fn gc_flags(valid: &[(&str, &str)]) -> Vec<OsString> {
    let valid: Vec<Value> = valid
        .iter()
        .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
        .collect();
    vec![
        "--valid-attachments".into(),
        Value::Array(valid).to_string().into(),
    ]
}

fn failure(msg: String) -> CniFailure {
    CniFailure {
        code: 0,
        msg,
        details: String::new(),
        stderr: String::new(),
    }
}

/// Writes `conflist` as JSON into `dir/<name>.conflist` and returns its path.
pub fn write_conflist(dir: &Path, name: &str, conflist: &Value) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.conflist"));
    std::fs::write(&path, serde_json::to_vec_pretty(conflist)?)
        .with_context(|| path.display().to_string())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_sets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn attachment_flags_carry_args_and_capabilities() {
        let att = Attachment::new("c1", "/run/netns/x", "eth0")
            .arg("K8S_POD_NAME", "p")
            .arg("IgnoreUnknown", "1")
            .capability_args(serde_json::json!({"portMappings": []}));
        let flags: Vec<String> = att
            .flags()
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            flags,
            [
                "--container-id",
                "c1",
                "--netns",
                "/run/netns/x",
                "--ifname",
                "eth0",
                "--args",
                "K8S_POD_NAME=p;IgnoreUnknown=1",
                "--capability-args",
                r#"{"portMappings":[]}"#
            ]
        );
    }
}
