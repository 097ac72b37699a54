//! The cluster's long-running processes: started in their namespaces, in a
//! session of their own so that they outlive `up`, logging to
//! `<state>/logs/<name>.log`, their pid in `<state>/pids/<name>`.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::layout::Layout;

/// Namespaces a daemon runs in (`nsenter` opens both before entering them).
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    pub net: Option<PathBuf>,
    pub mount: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl Namespaces {
    /// The network namespace `name` (as `ip netns` knows it).
    pub fn net(name: &str) -> Namespaces {
        Namespaces {
            net: Some(PathBuf::from("/run/netns").join(name)),
            ..Namespaces::default()
        }
    }
}

/// A command that will run `argv` inside `ns`.
pub fn command<S: AsRef<OsStr>>(ns: &Namespaces, argv: &[S]) -> Command {
    let mut cmd = Command::new("nsenter");
    if let Some(net) = &ns.net {
        cmd.arg(format!("--net={}", net.display()));
    }
    if let Some(mount) = &ns.mount {
        cmd.arg(format!("--mount={}", mount.display()));
    }
    if let Some(uts) = &ns.uts {
        cmd.arg(format!("--uts={}", uts.display()));
    }
    cmd.arg("--").args(argv);
    cmd
}

/// Starts `cmd` as the daemon `name`: a new session, no stdin, its output in
/// its log (appended), its pid recorded. nsenter execs the program, so the
/// recorded pid is the daemon's own.
pub fn spawn(layout: &Layout, name: &str, mut cmd: Command) -> Result<u32> {
    std::fs::create_dir_all(layout.logs())?;
    std::fs::create_dir_all(layout.pids())?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(layout.log(name))
        .with_context(|| format!("opening the log of {name}"))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
    let pid = child.id();
    std::fs::write(layout.pids().join(name), pid.to_string())?;
    // Not waited for: the daemon outlives this process. Its exit status is
    // reaped by init once `up` has exited, or by `alive` below meanwhile.
    std::mem::forget(child);
    Ok(pid)
}

/// Whether the daemon `name` is running (false once it exited).
pub fn running(layout: &Layout, name: &str) -> bool {
    pid_of(layout, name).is_some_and(alive)
}

fn pid_of(layout: &Layout, name: &str) -> Option<i32> {
    std::fs::read_to_string(layout.pids().join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs (a zombie child of ours counts as gone, and is reaped).
pub fn alive(pid: i32) -> bool {
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stops the daemon `name`: SIGTERM, then SIGKILL after `grace`.
pub fn stop(layout: &Layout, name: &str, grace: Duration) {
    if let Some(pid) = pid_of(layout, name) {
        stop_pids(&[pid], grace);
    }
    let _ = std::fs::remove_file(layout.pids().join(name));
}

/// SIGTERM to every pid, SIGKILL to those left after `grace`.
pub fn stop_pids(pids: &[i32], grace: Duration) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The last `lines` lines of a daemon's log, for error messages.
pub fn log_tail(layout: &Layout, name: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(layout.log(name)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
