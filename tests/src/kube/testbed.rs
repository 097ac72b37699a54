//! The test suites' handle on a cluster they brought up: kubectl, commands
//! inside a node, etcd, the kernel state of a node. Dropping it removes the
//! cluster (`TRELLIS_KUBE_KEEP=1` leaves it up for inspection).

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use super::daemon;
use super::kubectl::Kubectl;
use super::layout::{Layout, ETCD_PORT, UNDERLAY_NS};
use super::node::node_ns;
use super::{ClusterInfo, Spec};
use crate::netns::check;

pub struct Testbed {
    pub layout: Layout,
    pub info: ClusterInfo,
    pub kubectl: Kubectl,
}

impl Testbed {
    pub fn up(spec: &Spec) -> Result<Testbed> {
        let layout = Layout::from_env();
        let info = super::up(&layout, spec)?;
        let kubectl = info.kubectl(&layout);
        Ok(Testbed {
            layout,
            info,
            kubectl,
        })
    }

    /// A command running inside node `node` (its network, mount and UTS
    /// namespaces), as a process of that machine would.
    pub fn node_command(&self, node: &str, argv: &[&str]) -> Command {
        let mut cmd = daemon::command(&node_ns(&self.layout.node(node)), argv);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` in `node`; stdout on success.
    pub fn node_ok(&self, node: &str, argv: &[&str]) -> Result<String> {
        let out = self.node_command(node, argv).output()?;
        check(&out).with_context(|| format!("{} on {node}", argv.join(" ")))
    }

    /// An HTTP GET from `node` (curl, 5 s at most); the body.
    pub fn curl(&self, node: &str, url: &str) -> Result<String> {
        self.node_ok(
            node,
            &["curl", "-sS", "--fail", "--max-time", "5", "-g", url],
        )
    }

    /// `etcdctl` (v3) against the cluster's etcd, from the underlay.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", UNDERLAY_NS, "etcdctl"])
            .args(["--endpoints", &format!("http://127.0.0.1:{ETCD_PORT}")])
            .args(["--dial-timeout=3s", "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl")?;
        check(&out).with_context(|| format!("etcdctl {}", args.join(" ")))
    }

    /// Every key under `prefix` with its value.
    pub fn etcd_entries(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.etcdctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect())
    }

    /// The pod veths on `node`: its veths but the underlay's `eth0`.
    pub fn host_veths(&self, node: &str) -> Result<Vec<String>> {
        let out = self.node_ok(node, &["ip", "-j", "link", "show", "type", "veth"])?;
        let links: Vec<Value> = if out.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&out)?
        };
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| *n != "eth0")
            .map(str::to_owned)
            .collect())
    }

    /// The names of the links of `node`.
    pub fn links(&self, node: &str) -> Result<Vec<String>> {
        let out = self.node_ok(node, &["ip", "-j", "link", "show"])?;
        let links: Vec<Value> = serde_json::from_str(&out)?;
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::env::var_os("TRELLIS_KUBE_KEEP").is_some() {
            eprintln!(
                "TRELLIS_KUBE_KEEP: the cluster stays up ({}); remove it with \
                 `scripts/kube-cluster.sh down`",
                self.layout.state().display()
            );
            return;
        }
        if let Err(err) = super::down(&self.layout) {
            eprintln!("removing the Kubernetes cluster: {err:#}");
        }
    }
}
