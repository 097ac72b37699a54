//! Named network namespaces that remove themselves.
//!
//! Every test topology is built from these: a `Netns` is created under
//! `/run/netns/trl-<tag>-<pid>-<n>` with `lo` up, runs commands inside itself
//! through `ip netns exec`, and on drop kills whatever still runs inside it
//! and deletes itself, also when the test panicked. Nothing here touches the
//! root namespace: veth pairs are created inside a test namespace and their
//! peer is moved straight into another one.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Makes `cmd` run in a UTS namespace of its own whose host name is empty
/// (what a node without a name looks like to `gethostname`); the host's
/// name is untouched.
pub fn with_empty_host_name(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe system calls
    // (unshare, sethostname) run.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
            nix::unistd::sethostname("")?;
            Ok(())
        })
    }
}

/// Prefix of every namespace the harness creates.
pub const PREFIX: &str = "trl-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<u32>>,
}

impl Netns {
    /// Creates `trl-<tag>-<pid>-<n>` and brings its loopback up. The first
    /// call in a process also removes namespaces left by dead test processes.
    pub fn new(tag: &str) -> Result<Netns> {
        SWEEP.call_once(|| {
            if let Err(err) = sweep_stale() {
                log::warn!("removing stale test namespaces: {err:#}");
            }
        });
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("namespace tag {tag:?}: use letters, digits and '-'");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with exactly this name (for the demo, whose
    /// namespaces should read well in `ip netns list`); fails if it exists.
    /// Such names are never swept as leftovers of dead test processes.
    pub fn named(name: &str) -> Result<Netns> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("namespace name {name:?}: use letters, digits, '-' and '_'");
        }
        if Path::new("/run/netns").join(name).exists() {
            bail!("namespace {name} already exists");
        }
        run_ok(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns {
            name: name.to_owned(),
            children: Mutex::new(Vec::new()),
        };
        ns.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, what `CNI_NETNS` points at.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that will run inside the namespace (`ip netns exec`, which
    /// also mounts a /sys showing this namespace's devices). Set its
    /// environment, stdin and so on before running it.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// A command that will run inside the namespace with the host's mounts
    /// untouched (`nsenter --net`): for container runtimes, which need the
    /// host's /sys/fs/cgroup that `ip netns exec` hides behind a fresh /sys.
    pub fn nsenter<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the
    /// exit status. Panics only if `ip` itself cannot be started.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("running ip netns exec {}: {err}", self.name))
    }

    /// Runs a shell command line inside the namespace.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Runs `argv` inside the namespace, fails unless it exits 0, and
    /// returns its stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Result<String> {
        let out = self.exec(argv);
        check(&out).with_context(|| format!("in {}: {}", self.name, describe(argv)))
    }

    /// Like [`Netns::ok`] for a shell command line.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        let out = self.sh(script);
        check(&out).with_context(|| format!("in {}: sh -c {script:?}", self.name))
    }

    /// Starts a long-running process inside the namespace, stdin closed,
    /// stdout/stderr inherited. It is killed when the namespace is dropped.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Result<Child> {
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null());
        self.spawn_command(cmd)
    }

    /// Starts a prepared [`Netns::command`] and remembers it so that drop
    /// kills it.
    pub fn spawn_command(&self, mut cmd: Command) -> Result<Child> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {cmd:?} in {}", self.name))?;
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(child)
    }

    /// Pids of every process whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Names of the links in this namespace (without `lo`).
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ok(&["ip", "-j", "link", "show"])?;
        let links: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| *n != "lo")
            .map(str::to_owned)
            .collect())
    }

    /// Adds an address to a link of this namespace and brings the link up
    /// (an IPv6 one without duplicate address detection: usable at once).
    pub fn add_addr(&self, ifname: &str, addr: IpNetwork) -> Result<()> {
        let text = addr.to_string();
        let mut argv = vec!["ip", "addr", "add", &text, "dev", ifname];
        if addr.is_ipv6() {
            argv.push("nodad");
        }
        self.ok(&argv)?;
        self.ok(&["ip", "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Creates a bridge in this namespace, up, optionally with an address.
    pub fn add_bridge(&self, name: &str, addr: Option<IpNetwork>) -> Result<()> {
        self.ok(&["ip", "link", "add", name, "type", "bridge"])?;
        self.ok(&["ip", "link", "set", name, "up"])?;
        if let Some(addr) = addr {
            self.add_addr(name, addr)?;
        }
        Ok(())
    }

    fn kill_all(&self) {
        let spawned: Vec<u32> =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in &spawned {
            signal(*pid as i32, Signal::SIGTERM);
        }
        // Give what we started a moment to exit cleanly, then kill what is
        // left in the namespace, including anything those processes forked.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !spawned.iter().all(|p| !alive(*p as i32)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                signal(pid, Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let mut last = String::new();
        for _ in 0..20 {
            match Command::new("ip")
                .args(["netns", "del", &self.name])
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => return,
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(err) => last = err.to_string(),
            }
            if !self.path().exists() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("warning: could not delete namespace {}: {last}", self.name);
    }
}

/// Whether this process runs as root (namespaces, mounts and cgroups need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Connects two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`,
/// both up, each with its address when given. The pair is created inside `a`
/// and its peer moved straight into `b`: the root namespace never sees it.
pub fn veth_pair(
    a: &Netns,
    a_if: &str,
    a_addr: Option<IpNetwork>,
    b: &Netns,
    b_if: &str,
    b_addr: Option<IpNetwork>,
) -> Result<()> {
    a.ok(&[
        "ip",
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ok(&["ip", "link", "set", ifname, "up"])?;
        if let Some(addr) = addr {
            ns.add_addr(ifname, addr)?;
        }
    }
    Ok(())
}

/// Connects `ns` to a bridge living in `bridge_ns`: a veth whose `ns` end is
/// `ifname` (with `addr`) and whose other end, `port`, is enslaved to
/// `bridge`.
pub fn attach_to_bridge(
    bridge_ns: &Netns,
    bridge: &str,
    port: &str,
    ns: &Netns,
    ifname: &str,
    addr: Option<IpNetwork>,
) -> Result<()> {
    veth_pair(bridge_ns, port, None, ns, ifname, addr)?;
    bridge_ns.ok(&["ip", "link", "set", port, "master", bridge])?;
    Ok(())
}

/// Deletes namespaces named by this harness whose creating process is gone
/// (a test killed before its drop guards ran). Namespaces of live processes,
/// such as other test runs going on at the same time, are left alone.
pub fn sweep_stale() -> Result<()> {
    let dir = match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    for entry in dir {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() as i32 || alive(pid) {
            continue;
        }
        for pid in Command::new("ip")
            .args(["netns", "pids", &name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
        {
            signal(pid, Signal::SIGKILL);
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
    Ok(())
}

/// The pid in `trl-<tag>-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    parts.next()?.parse::<u64>().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry but is gone for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: Signal) {
    // The process may have exited since it was listed; that is fine.
    let _ = kill(Pid::from_raw(pid), sig);
}

pub(crate) fn check(out: &Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let status = match (out.status.code(), out.status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".to_owned(),
    };
    bail!(
        "{status}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn describe<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    check(&out)
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_parses_harness_names_only() {
        assert_eq!(owner_pid("trl-node-a-1234-7"), Some(1234));
        assert_eq!(owner_pid("trl-x-99-0"), Some(99));
        assert_eq!(owner_pid("trl-1234-7"), None);
        assert_eq!(owner_pid("cni-1234-7"), None);
        assert_eq!(owner_pid("trl-node-abc-7"), None);
    }
}
