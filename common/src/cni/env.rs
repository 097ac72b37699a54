//! The `CNI_*` environment: which verb, which attachment, where plugins live.

use super::error::CniError;
use std::fmt;
use std::path::PathBuf;

/// The verb the runtime asked for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// Whether the verb is about one attachment (container ID + ifname).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    fn required_vars(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated `CNI_*` variables. Fields a verb does not need are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// Absent for DEL when the runtime has no namespace any more.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs, in order.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Read and validate the environment through `get` (normally `std::env::var`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let command_raw = get("CNI_COMMAND")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CniError::invalid_env("required env variables [CNI_COMMAND] missing"))?;
        let command = Command::parse(&command_raw).ok_or_else(|| {
            CniError::invalid_env(format!(
                "unknown CNI_COMMAND: {command_raw} (expected ADD, DEL, CHECK, VERSION, GC or STATUS)"
            ))
        })?;
        let nonempty = |k: &str| get(k).filter(|s| !s.is_empty());

        let missing: Vec<&str> = command
            .required_vars()
            .iter()
            .copied()
            .filter(|k| nonempty(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "required env variables [{}] missing",
                missing.join(" ")
            )));
        }

        let args = match nonempty("CNI_ARGS") {
            Some(raw) if command != Command::Version => parse_cni_args(&raw)?,
            _ => Vec::new(),
        };
        let path = nonempty("CNI_PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let mut env = CniEnv {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args,
            path,
        };
        if command.is_per_attachment() {
            env.container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
            validate_container_id(&env.container_id)?;
            env.ifname = nonempty("CNI_IFNAME").unwrap_or_default();
            validate_ifname(&env.ifname)?;
            env.netns = nonempty("CNI_NETNS").map(PathBuf::from);
        }
        Ok(env)
    }

    /// The value of one `CNI_ARGS` key, e.g. `IP` or `K8S_POD_NAME`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `CNI_ARGS` is `K=V;K2=V2`. A pair without `=` is an error, as in libcni.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::invalid_env(format!("CNI_ARGS: invalid pair \"{pair}\"")))
        })
        .collect()
}

/// Identifiers (container IDs, network names) as libcni accepts them:
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            super::error::code::UNKNOWN_CONTAINER,
            "missing containerID",
        ));
    }
    if !is_valid_identifier(id) {
        return Err(
            CniError::invalid_env("invalid characters in CNI_CONTAINERID").with_details(id),
        );
    }
    Ok(())
}

/// A valid `CNI_IFNAME` (see [`ifname_problem`]); code 4 otherwise.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    match ifname_problem(name) {
        Some(why) => {
            Err(CniError::invalid_env(format!("CNI_IFNAME: {why}")).with_details(name.to_string()))
        }
        None => Ok(()),
    }
}

/// Why `name` cannot be a Linux interface name (1-15 bytes, not `.`/`..`,
/// no `/`, `:` or whitespace), `None` when it can: for callers that report
/// it under their own key and code.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("interface name is empty")
    } else if name.len() > 15 {
        Some("interface name is longer than 15 characters")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("interface name contains / or : or whitespace")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::code;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-123_x.y"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;IP=10.88.0.7;K8S_POD_NAME=web"),
    ];

    #[test]
    fn parses_a_full_add_environment() {
        let env = env_of(ADD).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id, "abc-123_x.y");
        assert_eq!(env.ifname, "eth0");
        assert_eq!(
            env.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/x"))
        );
        assert_eq!(env.path.len(), 2);
        assert_eq!(env.arg("IP"), Some("10.88.0.7"));
        assert_eq!(env.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(env.arg("nope"), None);
    }

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    #[test]
    fn missing_variables_are_named_with_code_4() {
        for key in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let err = env_of(&without(key)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
            assert!(err.msg.contains(key), "{}", err.msg);
        }
        let err = env_of(&without("CNI_COMMAND")).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn del_does_not_need_a_netns_and_version_needs_nothing() {
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        let env = env_of(&del).unwrap();
        assert_eq!(env.netns, None);
        let env = env_of(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(env.command, Command::Version);
        let env = env_of(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).unwrap();
        assert_eq!(env.command, Command::Gc);
        let err = env_of(&[("CNI_COMMAND", "STATUS")]).unwrap_err();
        assert!(err.msg.contains("CNI_PATH"));
    }

    #[test]
    fn unknown_command_is_code_4() {
        let err = env_of(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("FROB"));
    }

    #[test]
    fn container_ids_follow_libcni() {
        for ok in ["a", "0abc", "a.b-c_d", "ABC123"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a/b", "a b", "a;b", "ä"] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
        let mut e = ADD.to_vec();
        e[1] = ("CNI_CONTAINERID", "bad/id");
        assert_eq!(env_of(&e).unwrap_err().code, 4);
    }

    #[test]
    fn ifnames_follow_linux() {
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad:?}");
        }
        for ok in ["eth0", "net1", "fifteen-chars-x"] {
            validate_ifname(ok).unwrap();
        }
    }

    #[test]
    fn malformed_cni_args_are_code_4() {
        let mut e = ADD.to_vec();
        e[5] = ("CNI_ARGS", "IP=1.2.3.4;garbage");
        let err = env_of(&e).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_ARGS"));
    }
}
