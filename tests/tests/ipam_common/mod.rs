//! Running the built `trellis-ipam` binary the way a runtime does: the
//! `CNI_*` environment, the network configuration on stdin, the result or
//! error JSON on stdout.

#![allow(dead_code)] // each suite uses a part

use serde_json::{json, Value};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trellis_common::node::{write_node_record, NodeRecord};
use trellis_tests::bins;
use trellis_tests::etcd::Etcd;

/// What one invocation printed and how it ended.
#[derive(Debug, Clone)]
pub struct Reply {
    pub success: bool,
    pub stdout: Value,
    pub stderr: String,
    pub took: Duration,
}

impl Reply {
    /// The CNI error code, if it failed.
    pub fn code(&self) -> Option<u64> {
        (!self.success).then(|| self.stdout["code"].as_u64().unwrap_or(0))
    }

    pub fn msg(&self) -> String {
        self.stdout["msg"].as_str().unwrap_or_default().to_string()
    }

    /// The allocated address of a successful ADD.
    /// The first address of the result, of either family.
    pub fn addr(&self) -> std::net::IpAddr {
        assert!(self.success, "ADD failed: {self:?}");
        let addr = self.stdout["ips"][0]["address"]
            .as_str()
            .expect("an address");
        addr.split('/').next().unwrap().parse().unwrap()
    }

    pub fn ip(&self) -> Ipv4Addr {
        assert!(self.success, "ADD failed: {self:?}");
        let addr = self.stdout["ips"][0]["address"]
            .as_str()
            .expect("an address");
        addr.split('/').next().unwrap().parse().unwrap()
    }

    #[track_caller]
    pub fn ok(self) -> Reply {
        assert!(self.success, "expected success: {self:?}");
        self
    }

    #[track_caller]
    pub fn fails_with(self, code: u64, needle: &str) -> Reply {
        assert_eq!(self.code(), Some(code), "{self:?}");
        assert!(
            self.msg().contains(needle),
            "{needle:?} not in {:?}",
            self.msg()
        );
        self
    }
}

/// One attachment.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub cni_args: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str) -> Call<'a> {
        Call {
            command,
            container_id,
            ifname: "eth0",
            cni_args: "",
        }
    }

    pub fn args(mut self, cni_args: &'a str) -> Call<'a> {
        self.cni_args = cni_args;
        self
    }
}

/// The built `trellis-ipam`, hard-linked into a directory of the test's own
/// (which is also its `CNI_PATH`): a rebuild of `target/` while the test
/// runs cannot pull the binary from under it. Removed on drop.
pub struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    pub fn snapshot() -> Plugin {
        let dir = tempfile::Builder::new()
            .prefix("trl-ipam-bin-")
            .tempdir()
            .unwrap();
        bins::snapshot_file(&bins::bin("trellis-ipam"), &dir.path().join("trellis-ipam")).unwrap();
        Plugin { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("trellis-ipam")
    }

    /// Run the plugin once.
    pub fn invoke(&self, call: &Call, conf: &Value) -> Reply {
        invoke_bin(&self.path(), call, conf, |_| {})
    }

    /// Run the plugin once, its command changed by `prepare` first.
    pub fn invoke_with(
        &self,
        call: &Call,
        conf: &Value,
        prepare: impl FnOnce(&mut Command),
    ) -> Reply {
        invoke_bin(&self.path(), call, conf, prepare)
    }

    /// Run `calls` all at once, one process each; replies in the same order.
    pub fn invoke_all(&self, calls: &[(String, &str)], conf: &Value) -> Vec<Reply> {
        let bin = self.path();
        std::thread::scope(|s| {
            let handles: Vec<_> = calls
                .iter()
                .map(|(id, command)| {
                    let bin = &bin;
                    s.spawn(move || invoke_bin(bin, &Call::new(command, id), conf, |_| {}))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }
}

fn invoke_bin(bin: &Path, call: &Call, conf: &Value, prepare: impl FnOnce(&mut Command)) -> Reply {
    let mut cmd = Command::new(bin);
    cmd.env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_NETNS", "/var/run/netns/unused-by-ipam")
        .env("CNI_PATH", bin.parent().unwrap())
        .env("CNI_ARGS", call.cni_args)
        .env_remove("NODE_NAME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("trellis-ipam starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let stdout = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    Reply {
        success: out.status.success(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    }
}

/// A node's state directory holding the record its agent would publish
/// (an IPv6-only cluster's for an IPv6 `subnet`).
pub fn node_state(subnet: &str, node: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("trellis-ipam-state-")
        .tempdir()
        .unwrap();
    let v6 = subnet.contains(':');
    let record = NodeRecord {
        subnet: (!v6).then(|| subnet.parse().unwrap()),
        public_ip: "192.0.2.10".parse().unwrap(),
        vtep_mac: "02:00:00:00:00:01".into(),
        network: (!v6).then(|| "10.244.0.0/16".parse().unwrap()),
        mtu: Some(1450),
        node_name: Some(node.into()),
        kubernetes: false,
        status_addr: None,
        dns: false,
        ipv6_subnet: v6.then(|| subnet.parse().unwrap()),
        ipv6_network: v6.then(|| "fd10:244::/56".parse().unwrap()),
        bridge: None,
    };
    write_node_record(dir.path(), &record).unwrap();
    dir
}

/// A cluster-mode network configuration as the trellis plugin delegates it.
pub fn cluster_conf(endpoint: &str, state_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "trellis",
        "type": "trellis",
        "stateDir": state_dir,
        "ipam": {"type": "trellis-ipam", "etcdEndpoints": [endpoint], "etcdPrefix": "/trellis"}
    })
}

/// A single-host network configuration.
pub fn local_conf(subnet: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "trellis",
        "type": "trellis",
        "ipam": {"type": "trellis-ipam", "subnet": subnet, "dataDir": data_dir}
    })
}

/// Set `ipam.<key>` in a configuration.
pub fn with_ipam(mut conf: Value, key: &str, value: Value) -> Value {
    conf["ipam"][key] = value;
    conf
}

/// The address keys in etcd, of either family: `(ip, containerID)`.
pub fn etcd_addresses(etcd: &Etcd) -> Vec<(String, String)> {
    etcd.get_prefix("/trellis/ipam/ips/")
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v: Value = serde_json::from_str(v).unwrap();
            let ip = k.rsplit('/').next().unwrap().to_string();
            (ip, v["containerID"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The addresses allocated in etcd: `(ip, containerID)`.
pub fn etcd_allocations(etcd: &Etcd) -> Vec<(Ipv4Addr, String)> {
    etcd.get_prefix("/trellis/ipam/ips/")
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let ip = k.rsplit('/').next().unwrap().parse().unwrap();
            let v: Value = serde_json::from_str(v).unwrap();
            (ip, v["containerID"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The allocations once they equal `want`, or as they are after `within`:
/// a claim that a frozen etcd applies late is undone by its fence moments
/// after etcd resumes.
pub fn settled_allocations(
    etcd: &Etcd,
    want: &[(Ipv4Addr, String)],
    within: Duration,
) -> Vec<(Ipv4Addr, String)> {
    let start = Instant::now();
    loop {
        let mut got = etcd_allocations(etcd);
        got.sort();
        let mut sorted = want.to_vec();
        sorted.sort();
        if got == sorted || start.elapsed() > within {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The local store's allocations file.
pub fn local_allocations(data_dir: &Path, network: &str) -> Vec<(Ipv4Addr, String)> {
    let file: PathBuf = data_dir.join(network).join("allocations.json");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    v["allocations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(ip, o)| {
            (
                ip.parse().unwrap(),
                o["containerID"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `ADD` calls for `ids`.
pub fn adds(ids: &[String]) -> Vec<(String, &'static str)> {
    ids.iter().map(|id| (id.clone(), "ADD")).collect()
}

/// `DEL` calls for `ids`.
pub fn dels(ids: &[String]) -> Vec<(String, &'static str)> {
    ids.iter().map(|id| (id.clone(), "DEL")).collect()
}

/// Wait (at most 20 s) until etcd holds at least `n` addresses: a burst of
/// ADDs is under way.
pub fn wait_for_allocations(etcd: &Etcd, n: usize) {
    let waiting = Instant::now();
    while etcd.keys("/trellis/ipam/ips/").unwrap().len() < n
        && waiting.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After an etcd failure: the runtime cleans up the `failed` ADDs and
/// retries them, which must get addresses nobody in `held` has; then every
/// one of `pods` is deleted, which must leave zero keys.
pub fn retry_failed_then_delete_all(
    p: &Plugin,
    conf: &Value,
    etcd: &Etcd,
    pods: &[String],
    failed: &[String],
    held: impl IntoIterator<Item = Ipv4Addr>,
) {
    for r in p.invoke_all(&dels(failed), conf) {
        r.ok();
    }
    let mut all: std::collections::HashSet<Ipv4Addr> = held.into_iter().collect();
    for r in p.invoke_all(&adds(failed), conf) {
        assert!(all.insert(r.ok().ip()), "a retry got a taken address");
    }
    assert_eq!(all.len(), pods.len());
    assert_eq!(etcd_allocations(etcd).len(), pods.len());
    for r in p.invoke_all(&dels(pods), conf) {
        r.ok();
    }
    // Nothing but the guards of ADDs that could not revoke them (etcd was
    // paused), and those go with their leases (10 s).
    let left = etcd.keys("/trellis/ipam/").unwrap();
    assert!(
        left.iter().all(|k| k.starts_with("/trellis/ipam/guards/")),
        "all DELs leave zero keys but expiring guards, not {left:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !etcd.keys("/trellis/ipam/").unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "guards outlived their leases: {:?}",
            etcd.keys("/trellis/ipam/").unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
