//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) for tests: its own
//! free ports on 127.0.0.1, its data in a temporary directory, stopped and
//! removed when dropped.
//!
//! ```no_run
//! let mut etcd = trellis_tests::etcd::Etcd::start()?;
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
    tls: Option<EtcdTls>,
    /// `user:password` for `etcdctl` once authentication is on.
    user: Option<String>,
    paused: bool,
    /// The member's name and `--initial-cluster` when it is one of several
    /// (see `crate::etcd_cluster`).
    member: Option<(String, String)>,
}

/// The PKI of a TLS etcd: a throwaway CA, etcd's server certificate (for
/// 127.0.0.1) and a client certificate, all PEM files in etcd's temp dir.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// Make a CA and certificates with `openssl` in `dir`.
    pub fn generate(dir: &Path, server_ip: IpAddr) -> Result<EtcdTls> {
        let f = |name: &str| dir.join(name);
        let tls = EtcdTls {
            ca: f("ca.pem"),
            server_cert: f("server.pem"),
            server_key: f("server-key.pem"),
            client_cert: f("client.pem"),
            client_key: f("client-key.pem"),
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .args(["-days", "2", "-subj", "/CN=trellis-test-ca"])
                .arg("-keyout")
                .arg(f("ca-key.pem"))
                .arg("-out")
                .arg(&tls.ca),
        )?;
        for (cert, key, cn, ext) in [
            (
                &tls.server_cert,
                &tls.server_key,
                "etcd",
                format!(
                    "subjectAltName=IP:{server_ip},DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
                ),
            ),
            (
                &tls.client_cert,
                &tls.client_key,
                "trellis",
                "extendedKeyUsage=clientAuth\n".to_string(),
            ),
        ] {
            let csr = dir.join(format!("{cn}.csr"));
            let extfile = dir.join(format!("{cn}.ext"));
            std::fs::write(&extfile, ext)?;
            openssl(
                Command::new("openssl")
                    .arg("req")
                    .args(ec)
                    .args(["-subj", &format!("/CN={cn}")])
                    .arg("-keyout")
                    .arg(key)
                    .arg("-out")
                    .arg(&csr),
            )?;
            openssl(
                Command::new("openssl")
                    .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                    .arg("-in")
                    .arg(&csr)
                    .arg("-CA")
                    .arg(&tls.ca)
                    .arg("-CAkey")
                    .arg(f("ca-key.pem"))
                    .arg("-extfile")
                    .arg(&extfile)
                    .arg("-out")
                    .arg(cert),
            )?;
        }
        Ok(tls)
    }
}

fn openssl(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().context("running openssl")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Etcd {
    /// Start etcd on 127.0.0.1 with free client and peer ports and wait
    /// (bounded) until it serves.
    pub fn start() -> Result<Etcd> {
        Self::start_on_localhost(false)
    }

    /// Like `start`, but serving only `https://` and requiring client
    /// certificates signed by its own throwaway CA (see `tls()`).
    pub fn start_tls() -> Result<Etcd> {
        Self::start_on_localhost(true)
    }

    fn start_on_localhost(with_tls: bool) -> Result<Etcd> {
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
                tls: None,
                user: None,
                paused: false,
                member: None,
            };
            if with_tls {
                etcd.tls = Some(EtcdTls::generate(etcd.dir.path(), etcd.bind_ip)?);
            }
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
        Self::start_in_namespace(netns_name, bind_ip, false)
    }

    /// Like `start_in`, serving only `https://` with its own throwaway CA
    /// and client certificates (see `tls()`), its certificate for `bind_ip`.
    pub fn start_tls_in(ns: &crate::netns::Netns, bind_ip: IpAddr) -> Result<Etcd> {
        Self::start_in_namespace(ns.name(), bind_ip, true)
    }

    fn start_in_namespace(netns_name: &str, bind_ip: IpAddr, with_tls: bool) -> Result<Etcd> {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::Builder::new().prefix("trellis-etcd-").tempdir()?,
            bind_ip,
            client_port: 2379,
            peer_port: 2380,
            netns: Some(netns_name.to_string()),
            tls: None,
            user: None,
            paused: false,
            member: None,
        };
        if with_tls {
            etcd.tls = Some(EtcdTls::generate(etcd.dir.path(), bind_ip)?);
        }
        etcd.spawn_and_wait()?;
        Ok(etcd)
    }

    /// Start member `name` of a cluster of several (`initial_cluster`:
    /// `name=http://ip:2380,...`) inside `netns_name`, on `bind_ip`
    /// ports 2379/2380, without waiting: a member serves only once a
    /// majority runs (see [`Etcd::wait_healthy`]).
    pub fn spawn_member(
        netns_name: &str,
        name: &str,
        bind_ip: IpAddr,
        initial_cluster: &str,
    ) -> Result<Etcd> {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::Builder::new().prefix("trellis-etcd-").tempdir()?,
            bind_ip,
            client_port: 2379,
            peer_port: 2380,
            netns: Some(netns_name.to_string()),
            tls: None,
            user: None,
            paused: false,
            member: Some((name.to_string(), initial_cluster.to_string())),
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// The member name (`trellis-test` for a single etcd).
    pub fn name(&self) -> &str {
        self.member
            .as_ref()
            .map_or("trellis-test", |m| m.0.as_str())
    }

    /// The client URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    /// The certificates of a TLS etcd.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// An `etcdctl` (v3 API) command aimed at this etcd, with its TLS files
    /// and inside its namespace when it has one; add the subcommand.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = match &self.netns {
            None => Command::new("etcdctl"),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
        };
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint()])
            .args(["--dial-timeout", "3s", "--command-timeout", "5s"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        if let Some(user) = &self.user {
            cmd.args(["--user", user]);
        }
        cmd
    }

    /// Run every later `etcdctl` as `user:password` (after `etcdctl auth
    /// enable`), or without a user.
    pub fn set_etcdctl_user(&mut self, user: Option<&str>) {
        self.user = user.map(str::to_string);
    }

    /// Run `etcdctl <args>` (see `etcdctl`) and return its stdout; a
    /// failure carries etcdctl's output.
    pub fn run_etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .etcdctl()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl")?;
        crate::netns::check(&out).with_context(|| format!("etcdctl {}", args.join(" ")))
    }

    /// Every key under `prefix`, in etcd's order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .run_etcdctl(&["get", "--prefix", "--keys-only", prefix])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Every key under `prefix` with its value, read in one request (one
    /// consistent snapshot). Values must be single-line (JSON is).
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let text = self.run_etcdctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = text.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect())
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let text = self.run_etcdctl(&["get", "--print-value-only", key])?;
        let text = text.trim_end_matches('\n');
        Ok((!text.is_empty()).then(|| text.to_string()))
    }

    /// Write `key` (as an operator or agent would).
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.run_etcdctl(&["put", key, value]).map(drop)
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

    /// Kill etcd at once (SIGKILL), as a crash would, keeping its data.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.paused = false;
        Ok(())
    }

    /// Whether the process runs (killed or stopped: no).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it is frozen ([`Etcd::pause`]).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Start a stopped etcd again on the same address and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn_and_wait()
    }

    /// Whether `/health` answers healthy right now (1 s budget).
    pub fn is_healthy(&self) -> bool {
        if self.netns.is_none() && self.tls.is_none() {
            return http_health(self.client_addr(), Duration::from_secs(1));
        }
        self.etcdctl()
            .args(["--dial-timeout", "1s", "--command-timeout", "1s"])
            .args(["endpoint", "health"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("etcd is not running"))?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("{sig} to etcd {pid}"))
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("creating etcd log")?;
        let client = self.endpoint();
        let peer = format!("http://{}", SocketAddr::new(self.bind_ip, self.peer_port));
        let mut cmd = match &self.netns {
            None => Command::new(etcd_binary()),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(etcd_binary());
                c
            }
        };
        let (name, initial_cluster) = match &self.member {
            Some((name, cluster)) => (name.clone(), cluster.clone()),
            None => ("trellis-test".to_string(), format!("trellis-test={peer}")),
        };
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null())
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
        Ok(())
    }

    /// Wait (bounded) until etcd answers healthy; fails when it exited.
    pub fn wait_healthy(&mut self) -> Result<()> {
        let client = self.endpoint();
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

        etcd.put("/trellis/x", "{\"a\":1}").unwrap();
        assert_eq!(etcd.keys("/trellis/").unwrap(), vec!["/trellis/x"]);
        assert_eq!(
            etcd.get_prefix("/trellis/").unwrap(),
            vec![("/trellis/x".to_string(), "{\"a\":1}".to_string())]
        );
        assert_eq!(
            etcd.get("/trellis/x").unwrap().as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(etcd.get("/trellis/none").unwrap(), None);

        let pid = etcd.pid().unwrap();
        drop(etcd);
        assert!(!dir.exists(), "data directory removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd process gone"
        );
    }

    #[test]
    fn tls_etcd_requires_client_certificates() {
        let etcd = Etcd::start_tls().unwrap();
        assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
        assert!(etcd.is_healthy());
        etcd.put("/k", "v").unwrap();
        assert_eq!(etcd.get("/k").unwrap().as_deref(), Some("v"));
        let tls = etcd.tls().unwrap();
        let no_client_cert = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint(), "--dial-timeout", "1s"])
            .args(["--command-timeout", "1s", "--cacert"])
            .arg(&tls.ca)
            .args(["get", "/k"])
            .output()
            .unwrap();
        assert!(!no_client_cert.status.success());
    }
}
