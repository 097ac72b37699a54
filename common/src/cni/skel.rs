//! Reading a CNI invocation, calling the plugin's verb and printing the
//! answer: the part every CNI plugin shares.

use super::config::NetConf;
use super::env::{CniEnv, Command};
use super::error::{code, CniError};
use super::result::CniResult;
use super::version::Version;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};

/// One invocation: the validated environment and network configuration.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: CniEnv,
    pub conf: NetConf,
    /// Stdin as received, handed unchanged to delegated plugins.
    pub stdin: Vec<u8>,
}

impl Request {
    /// Decode the plugin's own keys from the configuration (code 7 on error).
    pub fn plugin_config<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        serde_json::from_value(self.conf.raw.clone())
            .map_err(|e| CniError::invalid_config(format!("invalid network configuration: {e}")))
    }

    pub fn command(&self) -> Command {
        self.env.command
    }
}

/// The verbs a plugin implements. VERSION is answered by the skeleton.
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
}

/// What to print on stdout and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            exit_code: 0,
        }
    }
    fn err(e: &CniError, version: &str) -> Outcome {
        Outcome {
            stdout: e.to_json(version),
            exit_code: 1,
        }
    }
}

/// Run one invocation with the given environment and stdin.
pub fn dispatch(
    plugin: &impl Plugin,
    lookup: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Outcome {
    let req = match parse(lookup, stdin) {
        Ok(req) => req,
        Err(answered) => return answered,
    };
    let answer = match req.env.command {
        Command::Add => plugin.add(&req).map(Some),
        Command::Del => plugin.del(&req).map(|()| None),
        Command::Check => plugin.check(&req).map(|()| None),
        Command::Gc => plugin.gc(&req).map(|()| None),
        Command::Status => plugin.status(&req).map(|()| None),
        Command::Version => unreachable!("answered by parse"),
    };
    outcome(&req, answer)
}

/// Reads an invocation: the request for the verb, or what to print at once
/// (VERSION's answer, or the error in the environment or configuration).
pub fn parse(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request, Outcome> {
    // The version to tag errors with: the config's when it has a supported one.
    let error_version = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(Version::parse))
        .unwrap_or(Version::LATEST);
    let env = CniEnv::from_lookup(lookup).map_err(|e| Outcome::err(&e, error_version.as_str()))?;
    if env.command == Command::Version {
        return Err(Outcome::ok(version_info(stdin)));
    }
    let conf = NetConf::parse(stdin).map_err(|e| Outcome::err(&e, error_version.as_str()))?;
    let version = conf.cni_version;
    verb_allowed(env.command, version).map_err(|e| Outcome::err(&e, version.as_str()))?;
    Ok(Request {
        env,
        conf,
        stdin: stdin.to_vec(),
    })
}

/// What to print for the verb's `answer` (ADD's result, in the version the
/// runtime asked for; nothing for the other verbs).
pub fn outcome(req: &Request, answer: Result<Option<CniResult>, CniError>) -> Outcome {
    let version = req.conf.cni_version;
    match answer {
        Ok(Some(result)) => Outcome::ok(result.to_value(version).to_string()),
        Ok(None) => Outcome::ok(String::new()),
        Err(e) => {
            log::error!("{} failed: {e}", req.env.command);
            Outcome::err(&e, version.as_str())
        }
    }
}

fn verb_allowed(command: Command, version: Version) -> Result<(), CniError> {
    let refused = match command {
        Command::Check => !version.supports_check(),
        Command::Gc | Command::Status => !version.supports_gc_and_status(),
        _ => false,
    };
    if refused {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {version} does not allow {command}"),
        ));
    }
    Ok(())
}

/// VERSION's answer: the requested version when we speak it, else the latest.
fn version_info(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(Version::parse))
        .unwrap_or(Version::LATEST);
    serde_json::json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": Version::supported_list(),
    })
    .to_string()
}

/// The `main` of a plugin binary: logs to stderr (`RUST_LOG`, default warn),
/// reads the process environment and stdin, prints, returns the exit code.
pub fn run(plugin: &impl Plugin) -> i32 {
    init_logging();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(plugin, |k| std::env::var(k).ok(), &stdin),
        Err(e) => Outcome::err(
            &CniError::new(code::IO_FAILURE, format!("cannot read stdin: {e}")),
            Version::LATEST.as_str(),
        ),
    };
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    outcome.exit_code
}

/// stderr logging, never stdout. `TRELLIS_LOG` or `RUST_LOG` set the level
/// (default `warn`).
pub fn init_logging() {
    let filter = std::env::var("TRELLIS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    let _ = env_logger::Builder::new()
        .parse_filters(&filter)
        .target(env_logger::Target::Stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::result::IpConfig;
    use serde_json::{json, Value};
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A fake plugin that records the verbs it saw.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Command>>,
        fail_with: Option<CniError>,
    }

    impl Recorder {
        fn answer(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push(req.command());
            match &self.fail_with {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            }
        }
    }

    impl Plugin for Recorder {
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.answer(req)?;
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.88.0.2/16".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
        fn check(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
        fn status(&self, req: &Request) -> Result<(), CniError> {
            self.answer(req)
        }
    }

    fn run_with(p: &Recorder, cmd: &str, version: &str) -> (Outcome, Value) {
        let env: HashMap<&str, &str> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into();
        let stdin = json!({"cniVersion": version, "name": "net", "type": "fake"}).to_string();
        let out = dispatch(p, |k| env.get(k).map(|v| v.to_string()), stdin.as_bytes());
        let v = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out.stdout).unwrap()
        };
        (out, v)
    }

    #[test]
    fn every_verb_reaches_the_plugin() {
        let p = Recorder::default();
        for cmd in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
            let (out, _) = run_with(&p, cmd, "1.1.0");
            assert_eq!(out.exit_code, 0, "{cmd}: {}", out.stdout);
        }
        assert_eq!(
            *p.calls.borrow(),
            vec![
                Command::Add,
                Command::Del,
                Command::Check,
                Command::Gc,
                Command::Status
            ]
        );
    }

    #[test]
    fn add_result_is_in_the_requested_version() {
        let p = Recorder::default();
        let (_, v) = run_with(&p, "ADD", "0.3.1");
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        let (_, v) = run_with(&p, "ADD", "1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn version_lists_supported_versions() {
        let p = Recorder::default();
        let out = dispatch(&p, |k| (k == "CNI_COMMAND").then(|| "VERSION".into()), b"");
        assert_eq!(out.exit_code, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let out = dispatch(
            &p,
            |k| (k == "CNI_COMMAND").then(|| "VERSION".into()),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn old_versions_refuse_check_gc_status_with_code_1() {
        let p = Recorder::default();
        for (cmd, ver) in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")] {
            let (out, v) = run_with(&p, cmd, ver);
            assert_ne!(out.exit_code, 0);
            assert_eq!(v["code"], 1, "{cmd} {ver}");
            assert_eq!(v["cniVersion"], ver);
        }
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn plugin_errors_are_printed_as_cni_errors() {
        let p = Recorder {
            fail_with: Some(CniError::try_again("etcd unreachable")),
            ..Default::default()
        };
        let (out, v) = run_with(&p, "ADD", "1.0.0");
        assert_eq!(out.exit_code, 1);
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "etcd unreachable");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn bad_stdin_and_env_give_their_codes() {
        let p = Recorder::default();
        let env: HashMap<&str, &str> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let out = dispatch(&p, get, b"not json");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 6);
        let out = dispatch(&p, get, br#"{"cniVersion":"9.9.9","name":"n"}"#);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 1);
        let out = dispatch(
            &p,
            |k| (k != "CNI_IFNAME").then(|| get(k)).flatten(),
            br#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"].as_str().unwrap().contains("CNI_IFNAME"));
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn plugin_config_type_errors_are_code_7() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Mine {
            mtu: u32,
        }
        let req = Request {
            env: CniEnv::from_lookup(|k| (k == "CNI_COMMAND").then(|| "VERSION".into())).unwrap(),
            conf: NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#).unwrap(),
            stdin: vec![],
        };
        assert_eq!(req.plugin_config::<Mine>().unwrap_err().code, 7);
    }
}
