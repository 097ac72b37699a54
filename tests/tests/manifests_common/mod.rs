//! What the `manifests_*` suites share: the objects of
//! `manifests/trellis.yaml` as an operator applies them, and the DaemonSet's
//! install-cni init container replayed on a temporary "host": the
//! ConfigMap's keys become files as the kubelet mounts them, the
//! container's environment is taken from the DaemonSet (values and
//! ConfigMap references), and only the host paths and the etcd endpoints are
//! pointed at the test's own.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use trellis_tests::bins::workspace_dir;

/// The combined manifest of `kubectl apply -f manifests/trellis.yaml`.
pub fn trellis_yaml() -> PathBuf {
    workspace_dir().join("manifests/trellis.yaml")
}

/// Every object of a (multi-document) YAML file, as JSON values.
pub fn objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The shipped objects an installer run depends on.
pub struct Shipped {
    pub config_map: Value,
    pub daemon_set: Value,
}

impl Shipped {
    pub fn load() -> Shipped {
        let objs = objects(&trellis_yaml());
        let find = |kind: &str, name: &str| {
            objs.iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("manifests/trellis.yaml has no {kind} {name}"))
                .clone()
        };
        Shipped {
            config_map: find("ConfigMap", "trellis-config"),
            daemon_set: find("DaemonSet", "trellis-agent"),
        }
    }

    /// A key of the ConfigMap.
    pub fn data(&self, key: &str) -> &str {
        self.config_map["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no {key}"))
    }

    /// The conflist template, parsed.
    pub fn conflist(&self) -> Value {
        serde_json::from_str(self.data("10-trellis.conflist")).expect("the conflist is JSON")
    }

    pub fn cluster_config(&self) -> trellis_common::cluster_config::ClusterConfig {
        serde_json::from_str(self.data("cluster-config.json")).expect("the cluster config")
    }

    fn pod_spec(&self) -> &Value {
        &self.daemon_set["spec"]["template"]["spec"]
    }

    /// The init container that installs the CNI files.
    pub fn install_container(&self) -> &Value {
        self.pod_spec()["initContainers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "install-cni"))
            .expect("the DaemonSet has an install-cni init container")
    }

    /// The host path of a volume of the pod.
    pub fn host_path(&self, volume: &str) -> Option<String> {
        self.pod_spec()["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == volume)?["hostPath"]["path"]
            .as_str()
            .map(str::to_owned)
    }

    /// Where a container mounts a volume.
    pub fn mount_path(container: &Value, volume: &str) -> Option<String> {
        container["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == volume)?["mountPath"]
            .as_str()
            .map(str::to_owned)
    }

    /// A container's environment as the kubelet sets it (literal values and
    /// ConfigMap references; downward-API fields are left out).
    pub fn env_of(&self, container: &Value) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().expect("env name").to_owned();
            if let Some(v) = e["value"].as_str() {
                env.push((name, v.to_owned()));
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                assert_eq!(r["name"], "trellis-config", "{name}");
                let key = r["key"].as_str().expect("configMapKeyRef key");
                env.push((name, self.data(key).to_owned()));
            }
        }
        env
    }
}

/// A node's file system as the install-cni container sees it, in a
/// temporary directory.
pub struct Host {
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn new() -> Host {
        Host {
            dir: tempfile::Builder::new()
                .prefix("trl-manifests-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.path("opt/cni/bin")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.path("etc/cni/net.d")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("run/trellis")
    }
}

/// Where things go for one replay of the init container.
pub struct Replay {
    pub etcd_endpoint: String,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Where the ConfigMap's keys are written (the volume).
    pub config_dir: PathBuf,
}

impl Replay {
    /// Everything under `host`, etcd at `etcd_endpoint`.
    pub fn on(host: &Host, etcd_endpoint: String) -> Replay {
        Replay {
            etcd_endpoint,
            cni_bin_dir: host.cni_bin_dir(),
            cni_conf_dir: host.cni_conf_dir(),
            state_dir: host.state_dir(),
            config_dir: host.path("configmap"),
        }
    }
}

/// `trellis-agent install-cni` as the DaemonSet runs it, with the host paths
/// and the etcd endpoints of `replay`. `agent` runs the built trellis-agent
/// (directly, or inside a namespace).
pub fn install_cni_command(shipped: &Shipped, replay: &Replay, mut cmd: Command) -> Command {
    let container = shipped.install_container();
    let argv: Vec<String> = container["command"]
        .as_array()
        .expect("install-cni has a command")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(argv[0], "trellis-agent");

    // The ConfigMap volume: one file per key.
    let config_mount =
        Shipped::mount_path(container, "config").expect("install-cni mounts the ConfigMap");
    std::fs::create_dir_all(&replay.config_dir).unwrap();
    for (key, value) in shipped.config_map["data"].as_object().unwrap() {
        std::fs::write(replay.config_dir.join(key), value.as_str().unwrap()).unwrap();
    }

    cmd.args(&argv[1..]);
    for (name, _) in std::env::vars() {
        if name.starts_with("TRELLIS_") || name == "NODE_NAME" {
            cmd.env_remove(name);
        }
    }
    for (name, value) in shipped.env_of(container) {
        let value = match value.strip_prefix(&format!("{config_mount}/")) {
            Some(key) => replay.config_dir.join(key).display().to_string(),
            None => value,
        };
        cmd.env(name, value);
    }
    cmd.env("TRELLIS_ETCD_ENDPOINTS", &replay.etcd_endpoint)
        .env("TRELLIS_STATE_DIR", &replay.state_dir)
        // The DaemonSet relies on the defaults, which are its mount paths.
        .env("TRELLIS_CNI_BIN_DIR", &replay.cni_bin_dir)
        .env("TRELLIS_CNI_CONF_DIR", &replay.cni_conf_dir)
        .env("RUST_LOG", "info");
    cmd
}

/// Runs a command to its end and returns its output.
pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The report lines (`<change> <target>`) an installer run printed on
/// stderr, without the log lines.
pub fn report_lines(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| {
            let (change, target) = l.split_once(' ')?;
            let known = ["created", "updated", "unchanged", "removed", "absent"];
            known
                .contains(&change)
                .then(|| (change.to_owned(), target.trim().to_owned()))
        })
        .collect()
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
