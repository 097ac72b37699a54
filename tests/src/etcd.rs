//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) for tests: its own
//! free ports on 127.0.0.1, its data in a temporary directory, stopped and
//! removed when dropped.
//!
//! ```no_run
//! let etcd = trellis_tests::etcd::Etcd::start()?;
//! let url = etcd.endpoint(); // "http://127.0.0.1:NNNNN"
//! etcd.pause()?; // SIGSTOP: connections hang, as with a stuck server
//! etcd.resume()?;
//! # anyhow::Ok(())
//! ```

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary; `TRELLIS_ETCD_BIN` overrides it.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("TRELLIS_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// How long `start` waits for etcd to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with fresh ports when another process grabbed ours first.
const START_ATTEMPTS: usize = 3;

/// A running etcd. Drop kills it and removes its data directory.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bind_ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    /// `ip netns exec <name>` prefix when etcd runs inside a namespace.
    netns: Option<String>,
    paused: bool,
}

impl Etcd {
    /// Start etcd on 127.0.0.1 with free client and peer ports and wait
    /// (bounded) until it serves.
    pub fn start() -> Result<Etcd> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let mut etcd = Etcd {
                child: None,
                dir: tempfile::Builder::new().prefix("trellis-etcd-").tempdir()?,
                bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                client_port,
                peer_port,
                netns: None,
                paused: false,
            };
            match etcd.spawn_and_wait() {
                Ok(()) => return Ok(etcd),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Start etcd inside the test namespace `ns`, listening on `bind_ip`
    /// (an address of that namespace) on ports 2379/2380.
    pub fn start_in(ns: &crate::netns::Netns, bind_ip: IpAddr) -> Result<Etcd> {
        Self::start_in_named(ns.name(), bind_ip)
    }

    /// Start etcd inside the network namespace `netns_name` (as listed by
    /// `ip netns`), listening on `bind_ip`, which must be an address of that
    /// namespace. Fixed ports 2379/2380: the namespace is the test's own.
    pub fn start_in_named(netns_name: &str, bind_ip: IpAddr) -> Result<Etcd> {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::Builder::new().prefix("trellis-etcd-").tempdir()?,
            bind_ip,
            client_port: 2379,
            peer_port: 2380,
            netns: Some(netns_name.to_string()),
            paused: false,
        };
        etcd.spawn_and_wait()?;
        Ok(etcd)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client_addr())
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip, self.client_port)
    }

    /// The data directory (kept across `stop`/`restart`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's own log (stdout and stderr), for diagnosing a failed test.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freeze etcd with SIGSTOP: its sockets stay open, nothing answers.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// Let a paused etcd run again (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// Stop etcd (SIGTERM, then SIGKILL after 5 s), keeping its data.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        if self.paused {
            let _ = kill(pid, Signal::SIGCONT);
            self.paused = false;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// Start a stopped etcd again on the same address and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn_and_wait()
    }

    /// Whether `/health` answers healthy right now (1 s budget).
    pub fn is_healthy(&self) -> bool {
        match &self.netns {
            None => http_health(self.client_addr(), Duration::from_secs(1)),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", ns])
                .arg("etcdctl")
                .args(["--endpoints", &self.endpoint()])
                .args(["--dial-timeout", "1s", "--command-timeout", "1s"])
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
        }
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("etcd is not running"))?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("{sig} to etcd {pid}"))
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("creating etcd log")?;
        let client = format!("http://{}", self.client_addr());
        let peer = format!("http://{}", SocketAddr::new(self.bind_ip, self.peer_port));
        let mut cmd = match &self.netns {
            None => Command::new(etcd_binary()),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(etcd_binary());
                c
            }
        };
        cmd.arg("--name")
            .arg("trellis-test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("trellis-test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", etcd_binary().display()))?;
        self.child = Some(child);
        self.paused = false;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "etcd exited during start-up ({status}); log:\n{}",
                    tail(&self.log_path())
                );
            }
            if self.is_healthy() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.stop();
                bail!(
                    "etcd at {client} not healthy after {START_TIMEOUT:?}; log:\n{}",
                    tail(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
        // The TempDir field removes the data directory.
    }
}

/// A port the kernel just gave us on 127.0.0.1 (free when we asked).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// etcd 3.4 refuses to start on architectures it does not support officially
/// unless `ETCD_UNSUPPORTED_ARCH` names the architecture.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" | "powerpc64" | "s390x" => None,
        "arm" => Some("arm"),
        "x86" => Some("386"),
        "riscv64" => Some("riscv64"),
        "mips64" => Some("mips64le"),
        "loongarch64" => Some("loong64"),
        other => Some(other),
    }
}

/// `GET /health` with a plain HTTP/1.0 request: true when etcd says healthy.
fn http_health(addr: SocketAddr, budget: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, budget) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(budget));
    let _ = s.set_write_timeout(Some(budget));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.") && body.contains(" 200 ") && body.contains("\"health\":\"true\"")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_pauses_restarts_and_cleans_up() {
        let mut etcd = Etcd::start().unwrap();
        assert!(etcd.is_healthy());
        assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
        let dir = etcd.data_dir();
        assert!(dir.join("member").is_dir());

        etcd.pause().unwrap();
        assert!(!etcd.is_healthy(), "a paused etcd must not answer");
        etcd.resume().unwrap();
        assert!(etcd.is_healthy());

        let endpoint = etcd.endpoint();
        etcd.stop().unwrap();
        assert!(!etcd.is_healthy());
        etcd.restart().unwrap();
        assert_eq!(etcd.endpoint(), endpoint);
        assert!(etcd.is_healthy());

        let pid = etcd.pid().unwrap();
        drop(etcd);
        assert!(!dir.exists(), "data directory removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd process gone"
        );
    }
}
