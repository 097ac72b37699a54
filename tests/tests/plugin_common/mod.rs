//! What the `plugin_*` suites share: a node namespace with its own CNI
//! plugin directory, libcni client, state and IPAM directories; direct
//! invocations of the plugin for what libcni cannot send (bad environments,
//! versions Debian's libcni does not speak); and the checks that nothing is
//! left behind.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use trellis_tests::bins::{bin, CniBinDir};
use trellis_tests::libcni::{write_conflist, Attachment, Driver};
use trellis_tests::netns::Netns;

/// The single-host subnet of most tests: a /30 holds exactly one address
/// for containers (.2; .1 is the gateway), so "the address was released"
/// is checked by adding another container, whatever the IPAM's store.
pub const ONE_ADDRESS: &str = "10.88.0.0/30";
pub const ONE_ADDRESS_IP: &str = "10.88.0.2/30";
pub const ONE_ADDRESS_GW: &str = "10.88.0.1";

/// The IPAM plugin of the single-host tests: trellis' own (local store),
/// or another one named by `TRELLIS_TEST_IPAM` (e.g. the reference
/// `host-local`, which takes the same `subnet` and `dataDir` keys).
pub fn ipam_type() -> String {
    std::env::var("TRELLIS_TEST_IPAM").unwrap_or_else(|_| "trellis-ipam".into())
}

/// A node: its namespace, CNI plugin directory, libcni client and files.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub bins: CniBinDir,
    pub driver: Driver,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let ns = Netns::new(tag).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("trl-plugin-")
            .tempdir()
            .unwrap();
        let bins = CniBinDir::reference_only().unwrap();
        bins.link("trellis", &bin("trellis")).unwrap();
        if ipam_type() == "trellis-ipam" {
            bins.link("trellis-ipam", &bin("trellis-ipam")).unwrap();
        }
        let driver = Driver::new(&ns, &[bins.path()])
            .unwrap()
            .env("TRELLIS_LOG", "info");
        Node {
            ns,
            dir,
            bins,
            driver,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The `trellis` entry of a single-host list on `subnet`, with `extra`
    /// keys merged in (a `null` removes a key).
    pub fn trellis(&self, subnet: &str, extra: Value) -> Value {
        let mut plugin = json!({
            "type": "trellis",
            "stateDir": self.state_dir(),
            "ipam": {"type": ipam_type(), "subnet": subnet, "dataDir": self.ipam_dir()},
        });
        merge(&mut plugin, extra);
        plugin
    }

    /// A conflist named `name` with these plugins, written to `<name>.conflist`.
    pub fn conflist(&self, name: &str, version: &str, plugins: Vec<Value>) -> PathBuf {
        self.conflist_file(name, name, version, plugins)
    }

    /// The same, written to `<file>.conflist` (several lists of one network).
    pub fn conflist_file(
        &self,
        file: &str,
        name: &str,
        version: &str,
        plugins: Vec<Value>,
    ) -> PathBuf {
        write_conflist(
            self.dir.path(),
            file,
            &json!({"cniVersion": version, "name": name, "plugins": plugins}),
        )
        .unwrap()
    }

    /// The usual single-host list: trellis alone on the one-address subnet.
    pub fn single_host(&self, version: &str) -> PathBuf {
        self.conflist("net", version, vec![self.trellis(ONE_ADDRESS, json!({}))])
    }

    pub fn pod(&self, tag: &str) -> Netns {
        Netns::new(tag).unwrap()
    }

    /// The host veths trellis made in this node.
    pub fn host_veths(&self) -> Vec<String> {
        self.ns
            .links()
            .unwrap()
            .into_iter()
            .filter(|n| {
                n.len() == 15
                    && n.starts_with("trl")
                    && n[3..].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect()
    }

    /// `ip -j -d link show dev NAME` in the node.
    pub fn link(&self, name: &str) -> Value {
        link_json(&self.ns, name)
    }

    /// Whether the node holds the single-host masquerade table of `bridge`.
    pub fn has_masquerade(&self, bridge: &str) -> bool {
        self.ns
            .exec(&["nft", "list", "table", "ip", &format!("trellis-{bridge}")])
            .status
            .success()
    }

    /// Runs the plugin once, as a runtime would, with exactly this
    /// environment (plus PATH) and `stdin`.
    pub fn invoke(&self, env: &[(&str, &str)], stdin: &[u8]) -> Invocation {
        let mut cmd = self.ns.command(&[bin("trellis")]);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TRELLIS_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_stdin(cmd, stdin)
    }

    /// The usual per-attachment environment for `command`.
    pub fn cni_env<'a>(
        &'a self,
        command: &'a str,
        container_id: &'a str,
        netns: &'a str,
        ifname: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", self.bins.path().to_str().unwrap()),
        ]
    }

    /// Nothing of any attachment is left on the node: no host veth, no
    /// masquerade table.
    pub fn assert_no_attachment_left(&self) {
        assert_eq!(self.host_veths(), Vec::<String>::new(), "host veths left");
        assert!(!self.has_masquerade("trellis0"), "masquerade table left");
    }

    /// The one address of [`ONE_ADDRESS`] is free: a new container gets it.
    pub fn assert_address_free(&self, conflist: &Path) {
        let pod = self.pod("probe");
        let att = Attachment::new("probe-free-address", pod.path(), "eth0");
        let result = self
            .driver
            .add(conflist, &att)
            .unwrap_or_else(|e| panic!("the only address is still taken: {e}"));
        assert_eq!(result["ips"][0]["address"], ONE_ADDRESS_IP);
        self.driver.del(conflist, &att).unwrap();
    }
}

/// The plugin's exit status and output.
#[derive(Debug)]
pub struct Invocation {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    /// stdout as JSON (the result or the error object).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code, asserting the invocation failed.
    pub fn error_code(&self) -> u64 {
        assert!(
            !self.success,
            "expected a failure, got {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let v = self.json();
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v["code"].as_u64().unwrap()
    }
}

fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Invocation {
    let mut child = cmd.spawn().unwrap();
    // A plugin may exit before reading everything: ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    Invocation {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The network configuration a runtime hands to the first plugin of a list.
pub fn network_config(name: &str, version: &str, plugin: &Value) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf["name"] = json!(name);
    conf["cniVersion"] = json!(version);
    serde_json::to_vec(&conf).unwrap()
}

/// Merge `extra` into `base` (objects recursively; `null` deletes).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// `ip -j -d link show dev NAME` in `ns`.
pub fn link_json(ns: &Netns, name: &str) -> Value {
    let out = ns
        .ok(&["ip", "-j", "-d", "link", "show", "dev", name])
        .unwrap();
    serde_json::from_str::<Vec<Value>>(&out).unwrap()[0].clone()
}

/// `ip -j addr show dev NAME` in `ns`: the addresses as `ip/prefix`.
pub fn addresses(ns: &Netns, name: &str) -> Vec<String> {
    let out = ns.ok(&["ip", "-j", "addr", "show", "dev", name]).unwrap();
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The IPv4 default route of `ns` as (gateway, device).
pub fn default_route(ns: &Netns) -> Option<(String, String)> {
    let out = ns.ok(&["ip", "-j", "route", "show", "default"]).unwrap();
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    v.first().map(|r| {
        (
            r["gateway"].as_str().unwrap_or_default().to_string(),
            r["dev"].as_str().unwrap_or_default().to_string(),
        )
    })
}
