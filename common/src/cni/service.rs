//! A delegated plugin answered by a daemon on a local socket instead of a
//! process of its own: the node agent serves `trellis-ipam` this way with
//! the etcd connection it already holds, where an exec'd `trellis-ipam`
//! starts a runtime and opens a connection for every call (the Cilium CNI
//! plugin talks to its agent in the same spirit).
//!
//! The invocation is what an exec would have passed (the plugin's name, the
//! `CNI_*` environment, stdin) and the answer what it would have printed
//! (exit code, stdout), so the verb, its errors and their codes are those
//! of the plugin itself. One JSON document each way on a Unix stream
//! socket: the caller writes its invocation and shuts down its writing
//! side, the daemon answers and closes. A daemon may decline (it serves
//! only the etcd it is connected to, say): the caller then runs the plugin
//! as a process, as it does when nothing listens on the socket.

use super::env::{CniEnv, Command};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The socket of the agent's IPAM service, under the node's `stateDir`.
pub const IPAM_SOCKET: &str = "ipam.sock";

/// The IPAM plugin the agent serves (its binary's name, its `type`).
pub const IPAM_PLUGIN: &str = "trellis-ipam";

/// The longest a caller waits for an answer before it runs the plugin
/// itself: above any verb's own budget (3 s), so only a daemon that
/// stopped answering (frozen) gets here, and its verb is over by then.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The biggest invocation or answer a daemon reads (a configuration with
/// its prevResult is a few KiB).
pub const MAX_MESSAGE: u64 = 1 << 20;

/// What an exec would have passed to the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// The plugin's `type`.
    pub plugin: String,
    /// The `CNI_*` variables.
    pub env: BTreeMap<String, String>,
    /// The network configuration, as the plugin would read it on stdin.
    pub stdin: String,
    /// When the caller stops waiting and runs the plugin itself
    /// (milliseconds since the Unix epoch): a daemon that reads the call
    /// too late to finish before then (it was frozen, say) declines it, so
    /// that a verb never runs twice at once for one call.
    pub gives_up_at_ms: u64,
}

impl Invocation {
    pub fn new(plugin: &str, command: Command, env: &CniEnv, stdin: &[u8]) -> Invocation {
        Invocation {
            plugin: plugin.to_string(),
            env: cni_vars(command, env).into_iter().collect(),
            stdin: String::from_utf8_lossy(stdin).into_owned(),
            gives_up_at_ms: unix_ms(SystemTime::now() + ANSWER_TIMEOUT),
        }
    }

    /// The time the caller has left, if any.
    pub fn time_left(&self) -> Option<Duration> {
        let now = unix_ms(SystemTime::now());
        self.gives_up_at_ms
            .checked_sub(now)
            .map(Duration::from_millis)
    }

    /// A variable as the plugin would read it from its environment.
    pub fn var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "answer",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Answer {
    /// What the plugin would have printed, and its exit code.
    Done { exit_code: i32, stdout: String },
    /// Not for this daemon: run the plugin.
    Declined { reason: String },
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `CNI_*` environment of a delegated call.
pub fn cni_vars(command: Command, env: &CniEnv) -> Vec<(String, String)> {
    let args: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path: Vec<String> = env.path.iter().map(|p| p.display().to_string()).collect();
    let mut vars = vec![
        ("CNI_COMMAND".to_string(), command.as_str().to_string()),
        ("CNI_CONTAINERID".to_string(), env.container_id.clone()),
        ("CNI_IFNAME".to_string(), env.ifname.clone()),
        ("CNI_ARGS".to_string(), args.join(";")),
        ("CNI_PATH".to_string(), path.join(":")),
    ];
    if let Some(ns) = &env.netns {
        vars.push(("CNI_NETNS".to_string(), ns.display().to_string()));
    }
    vars
}

/// An invocation sent, its answer not read yet: the caller works meanwhile.
#[derive(Debug)]
pub struct Pending {
    stream: UnixStream,
}

/// Send `invocation` to the daemon on `socket`. An error means nobody
/// took it (no daemon, or a dead one): the caller runs the plugin.
pub fn send(socket: &Path, invocation: &Invocation) -> io::Result<Pending> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    serde_json::to_writer(&mut stream, invocation)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(Pending { stream })
}

impl Pending {
    /// Wait for the answer.
    pub fn answer(mut self) -> io::Result<Answer> {
        let mut buf = Vec::new();
        (&mut self.stream).take(MAX_MESSAGE).read_to_end(&mut buf)?;
        serde_json::from_slice(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn env() -> CniEnv {
        CniEnv {
            command: Command::Add,
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            args: vec![("IP".into(), "10.0.0.9".into()), ("A".into(), "b".into())],
            path: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        }
    }

    #[test]
    fn the_invocation_carries_what_an_exec_would() {
        let inv = Invocation::new("trellis-ipam", Command::Del, &env(), b"{\"a\":1}");
        let back = CniEnv::from_lookup(|k| inv.var(k)).unwrap();
        assert_eq!(back.command, Command::Del);
        assert_eq!(back.container_id, "c1");
        assert_eq!(back.args, env().args);
        assert_eq!(back.path, env().path);
        assert_eq!(back.netns, env().netns);
        assert_eq!(inv.stdin, "{\"a\":1}");
        let left = inv.time_left().unwrap();
        assert!(left > ANSWER_TIMEOUT - Duration::from_secs(1) && left <= ANSWER_TIMEOUT);
        let mut no_netns = env();
        no_netns.netns = None;
        let inv = Invocation::new("x", Command::Gc, &no_netns, b"");
        assert_eq!(inv.var("CNI_NETNS"), None);
    }

    #[test]
    fn an_answer_comes_back_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IPAM_SOCKET);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            conn.read_to_end(&mut buf).unwrap();
            let inv: Invocation = serde_json::from_slice(&buf).unwrap();
            let answer = Answer::Done {
                exit_code: 0,
                stdout: format!("served {}", inv.env["CNI_CONTAINERID"]),
            };
            serde_json::to_writer(&mut conn, &answer).unwrap();
        });
        let inv = Invocation::new("trellis-ipam", Command::Add, &env(), b"{}");
        let answer = send(&path, &inv).unwrap().answer().unwrap();
        assert_eq!(
            answer,
            Answer::Done {
                exit_code: 0,
                stdout: "served c1".into()
            }
        );
        server.join().unwrap();
    }

    #[test]
    fn no_daemon_is_an_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Invocation::new("trellis-ipam", Command::Add, &env(), b"{}");
        let e = send(&dir.path().join(IPAM_SOCKET), &inv).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A socket file left by a daemon that died: refused, not waited on.
        let path = dir.path().join("dead.sock");
        drop(UnixListener::bind(&path).unwrap());
        let e = send(&path, &inv).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn answers_are_tagged() {
        let json = serde_json::to_value(Answer::Declined {
            reason: "other etcd".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"answer": "declined", "reason": "other etcd"})
        );
        let json = serde_json::to_value(Answer::Done {
            exit_code: 1,
            stdout: "x".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"answer": "done", "exitCode": 1, "stdout": "x"})
        );
    }
}
