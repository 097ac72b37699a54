//! Running another plugin (the IPAM plugin) the way a runtime would: found
//! in `CNI_PATH`, the same stdin, the `CNI_*` environment of this call.

use super::env::{CniEnv, Command};
use super::error::{code, CniError};
use super::result::CniResult;
use super::service;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

/// Find `plugin_type` in the `CNI_PATH` directories.
pub fn find_plugin(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
        return Err(CniError::invalid_config(format!(
            "invalid plugin type \"{plugin_type}\""
        )));
    }
    path.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::DELEGATE,
                format!("failed to find plugin \"{plugin_type}\" in path {:?}", path),
            )
        })
}

/// Run `plugin_type` for `command` with `stdin`. ADD returns the plugin's
/// result; the other verbs return `None`. A plugin's CNI error is passed
/// through with its code.
pub fn delegate(
    plugin_type: &str,
    command: Command,
    env: &CniEnv,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    Delegation::start(plugin_type, command, env, stdin)?.finish()
}

/// A delegated plugin that is running: started with [`Delegation::start`]
/// (or [`Delegation::start_served`]), so that the caller can do other work
/// (kernel requests) while it runs, and collected with
/// [`Delegation::finish`].
#[derive(Debug)]
pub struct Delegation {
    plugin_type: String,
    command: Command,
    run: Run,
}

#[derive(Debug)]
enum Run {
    /// The plugin as a process.
    Process {
        binary: PathBuf,
        child: std::process::Child,
        write: std::io::Result<()>,
    },
    /// Sent to a daemon; what to exec if it does not answer.
    Served {
        pending: service::Pending,
        env: CniEnv,
        stdin: Vec<u8>,
    },
}

impl Delegation {
    /// Start the plugin and hand it `stdin` (closed afterwards).
    pub fn start(
        plugin_type: &str,
        command: Command,
        env: &CniEnv,
        stdin: &[u8],
    ) -> Result<Delegation, CniError> {
        let binary = find_plugin(plugin_type, &env.path)?;
        let mut proc = Process::new(&binary);
        proc.env_remove("CNI_NETNS")
            .envs(service::cni_vars(command, env))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = proc.spawn().map_err(|e| {
            CniError::new(
                code::DELEGATE,
                format!("cannot run {}: {e}", binary.display()),
            )
        })?;
        // Dropping the pipe closes the plugin's stdin.
        let write = child.stdin.take().expect("stdin is piped").write_all(stdin);
        Ok(Delegation {
            plugin_type: plugin_type.to_string(),
            command,
            run: Run::Process {
                binary,
                child,
                write,
            },
        })
    }

    /// Hand the call to the daemon serving `plugin_type` on `socket` (see
    /// [`service`]); the plugin is run as a process instead when nothing
    /// takes the call there, when the daemon declines it, or when its
    /// answer does not come. Every verb of a plugin served this way must
    /// be safe to repeat (CNI's ADD of the same attachment returns what it
    /// holds, DEL of nothing succeeds): a daemon that died half-way through
    /// a call is followed by the process doing the call again.
    pub fn start_served(
        socket: &Path,
        plugin_type: &str,
        command: Command,
        env: &CniEnv,
        stdin: &[u8],
    ) -> Result<Delegation, CniError> {
        let invocation = service::Invocation::new(plugin_type, command, env, stdin);
        match service::send(socket, &invocation) {
            Ok(pending) => Ok(Delegation {
                plugin_type: plugin_type.to_string(),
                command,
                run: Run::Served {
                    pending,
                    env: env.clone(),
                    stdin: stdin.to_vec(),
                },
            }),
            Err(e) => {
                log::debug!(
                    "{plugin_type} {command}: not served on {} ({e}), running it",
                    socket.display()
                );
                Delegation::start(plugin_type, command, env, stdin)
            }
        }
    }

    /// Wait for the plugin and read its answer, as [`delegate`] does.
    pub fn finish(self) -> Result<Option<CniResult>, CniError> {
        if self.command != Command::Add {
            return self.wait().map(|_| None);
        }
        self.finish_add()?.map(Some)
    }

    /// Wait for a delegated ADD. The outer error: the plugin failed (and by
    /// the specification kept nothing). The inner one: it succeeded, so it
    /// holds an allocation, but its result is unusable; the caller has to
    /// release what it allocated.
    pub fn finish_add(self) -> Result<Result<CniResult, CniError>, CniError> {
        let plugin_type = self.plugin_type.clone();
        let stdout = self.wait()?;
        Ok(CniResult::from_slice(&stdout).map_err(|e| {
            CniError::new(code::DELEGATE, e.msg).context(format!("{plugin_type} ADD result"))
        }))
    }

    /// Wait for the plugin: its stdout when it succeeded, its error (or
    /// one naming its exit status) when it failed.
    fn wait(self) -> Result<Vec<u8>, CniError> {
        let Delegation {
            plugin_type,
            command,
            run,
        } = self;
        let (status, stdout) = match run {
            Run::Process {
                binary,
                child,
                write,
            } => {
                let output = child.wait_with_output().map_err(|e| {
                    CniError::new(
                        code::DELEGATE,
                        format!("waiting for {}: {e}", binary.display()),
                    )
                })?;
                if let Err(e) = write {
                    // A plugin may exit before reading all input; only
                    // report when it failed.
                    if !output.status.success() {
                        log::warn!("writing stdin of {}: {e}", binary.display());
                    }
                }
                let status = (!output.status.success()).then(|| output.status.to_string());
                (status, output.stdout)
            }
            Run::Served {
                pending,
                env,
                stdin,
            } => match pending.answer() {
                Ok(service::Answer::Done { exit_code, stdout }) => {
                    let status = (exit_code != 0).then(|| format!("exit status: {exit_code}"));
                    (status, stdout.into_bytes())
                }
                Ok(service::Answer::Declined { reason }) => {
                    log::debug!("{plugin_type} {command}: declined by its daemon ({reason})");
                    return Delegation::start(&plugin_type, command, &env, &stdin)?.wait();
                }
                Err(e) => {
                    log::warn!(
                        "{plugin_type} {command}: its daemon did not answer ({e}); running it"
                    );
                    return Delegation::start(&plugin_type, command, &env, &stdin)?.wait();
                }
            },
        };
        if let Some(status) = status {
            return Err(match serde_json::from_slice::<CniError>(&stdout) {
                Ok(e) => e,
                Err(_) => CniError::new(code::DELEGATE, format!("{plugin_type} failed ({status})"))
                    .with_details(String::from_utf8_lossy(&stdout).trim().to_string()),
            }
            .context(format!("{plugin_type} {command}")));
        }
        Ok(stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Write an executable script. The file is written by a short-lived
    /// child (`tee`), never through a descriptor of this process: tests run
    /// in parallel threads, and a child forked by another test meanwhile
    /// would inherit a writable descriptor and make exec fail with ETXTBSY.
    fn script(dir: &std::path::Path, name: &str, body: &str) {
        let p = dir.join(name);
        let mut tee = std::process::Command::new("tee")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = tee.stdin.take().unwrap();
        stdin
            .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
            .unwrap();
        drop(stdin);
        assert!(tee.wait().unwrap().success());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn env_for(dir: &std::path::Path) -> CniEnv {
        CniEnv {
            command: Command::Add,
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            args: vec![("IP".into(), "10.0.0.9".into())],
            path: vec!["/nonexistent".into(), dir.to_path_buf()],
        }
    }

    #[test]
    fn runs_the_plugin_with_the_cni_environment() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "ipam",
            r#"cat >/dev/null
printf '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.9/24","gateway":"10.0.0.1"}],"note":"%s %s %s %s"}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_IFNAME" "$CNI_ARGS""#,
        );
        let r = delegate("ipam", Command::Add, &env_for(dir.path()), b"{}")
            .unwrap()
            .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.9/24");
        assert_eq!(
            delegate("ipam", Command::Del, &env_for(dir.path()), b"{}").unwrap(),
            None
        );
    }

    #[test]
    fn passes_through_the_plugins_error_code() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "ipam",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"etcd down"}'; exit 1"#,
        );
        let e = delegate("ipam", Command::Add, &env_for(dir.path()), b"{}").unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("etcd down"));
        script(dir.path(), "broken", "echo garbage; exit 3");
        let e = delegate("broken", Command::Add, &env_for(dir.path()), b"{}").unwrap_err();
        assert_eq!(e.code, code::DELEGATE);
        assert_eq!(e.details, "garbage");
    }

    #[test]
    fn an_add_that_succeeded_with_an_unusable_result_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "garbled", "cat >/dev/null; echo garbage");
        let env = env_for(dir.path());
        let start = || Delegation::start("garbled", Command::Add, &env, b"{}").unwrap();
        let unusable = start().finish_add().unwrap().unwrap_err();
        assert_eq!(unusable.code, code::DELEGATE);
        assert_eq!(start().finish().unwrap_err().code, code::DELEGATE);
        script(
            dir.path(),
            "failing",
            "cat >/dev/null; echo garbage; exit 3",
        );
        let failed = Delegation::start("failing", Command::Add, &env, b"{}")
            .unwrap()
            .finish_add()
            .unwrap_err();
        assert_eq!(failed.details, "garbage");
    }

    #[test]
    fn a_started_plugin_runs_while_the_caller_works() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        script(
            dir.path(),
            "ipam",
            &format!(
                r#"cat >/dev/null; touch {}
printf '{{"cniVersion":"1.0.0","ips":[{{"address":"10.0.0.9/24"}}]}}'"#,
                marker.display()
            ),
        );
        let running = Delegation::start("ipam", Command::Add, &env_for(dir.path()), b"{}").unwrap();
        // The plugin runs on its own: wait (bounded) for its side effect.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(marker.exists(), "the plugin did not run before finish()");
        let r = running.finish().unwrap().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.9/24");
        let e = Delegation::start("nope", Command::Add, &env_for(dir.path()), b"{}").unwrap_err();
        assert_eq!(e.code, code::DELEGATE);
    }

    #[test]
    fn missing_or_unsafe_plugin_names_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let e = delegate("nope", Command::Add, &env_for(dir.path()), b"{}").unwrap_err();
        assert_eq!(e.code, code::DELEGATE);
        assert!(e.msg.contains("failed to find plugin \"nope\""));
        let e = find_plugin("../bin/sh", &[dir.path().to_path_buf()]).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    /// A daemon on `socket` that answers one call with `answer`, and hands
    /// back the invocation it got.
    fn daemon(
        socket: &std::path::Path,
        answer: service::Answer,
    ) -> std::thread::JoinHandle<service::Invocation> {
        use std::io::Read;
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            conn.read_to_end(&mut buf).unwrap();
            serde_json::to_writer(&mut conn, &answer).unwrap();
            serde_json::from_slice(&buf).unwrap()
        })
    }

    #[test]
    fn a_served_call_is_answered_by_the_daemon_with_the_plugins_codes() {
        let dir = tempfile::tempdir().unwrap();
        // The plugin as a process would fail: the daemon's answer is used.
        script(dir.path(), "ipam", "cat >/dev/null; exit 9");
        let socket = dir.path().join("s.sock");
        let served = daemon(
            &socket,
            service::Answer::Done {
                exit_code: 0,
                stdout: r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.7/24"}]}"#.into(),
            },
        );
        let env = env_for(dir.path());
        let r = Delegation::start_served(&socket, "ipam", Command::Add, &env, b"{\"x\":1}")
            .unwrap()
            .finish()
            .unwrap()
            .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.7/24");
        let got = served.join().unwrap();
        assert_eq!(got.env["CNI_CONTAINERID"], "c1");
        assert_eq!(got.stdin, "{\"x\":1}");
        std::fs::remove_file(&socket).unwrap();
        let served = daemon(
            &socket,
            service::Answer::Done {
                exit_code: 1,
                stdout: r#"{"cniVersion":"1.0.0","code":11,"msg":"etcd down"}"#.into(),
            },
        );
        let e = Delegation::start_served(&socket, "ipam", Command::Add, &env, b"{}")
            .unwrap()
            .finish()
            .unwrap_err();
        assert_eq!((e.code, e.msg.contains("etcd down")), (11, true));
        served.join().unwrap();
    }

    #[test]
    fn a_call_nobody_serves_runs_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "ipam",
            r#"cat >/dev/null; printf '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.9/24"}],"note":"%s"}' "$CNI_COMMAND""#,
        );
        let env = env_for(dir.path());
        let run = |socket: &std::path::Path| {
            Delegation::start_served(socket, "ipam", Command::Add, &env, b"{}")
                .unwrap()
                .finish()
                .unwrap()
                .unwrap()
        };
        // No socket; a socket nobody listens on; a daemon that declines.
        assert_eq!(run(&dir.path().join("none.sock")).ips.len(), 1);
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        assert_eq!(run(&dead).ips.len(), 1);
        let socket = dir.path().join("s.sock");
        let served = daemon(
            &socket,
            service::Answer::Declined {
                reason: "another etcd".into(),
            },
        );
        assert_eq!(run(&socket).ips[0].address.to_string(), "10.0.0.9/24");
        served.join().unwrap();
    }
}
