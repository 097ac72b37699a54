//! `kubectl` against the test cluster, from the host (through the loopback
//! forwarder), with JSON output parsed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::netns::check;

/// The longest one kubectl call may take.
const REQUEST_TIMEOUT: &str = "30s";

#[derive(Clone, Debug)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(kube_bin: &Path, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin: kube_bin.join("kubectl"),
            kubeconfig: kubeconfig.to_owned(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--request-timeout={REQUEST_TIMEOUT}"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl; its stdout on success, an error with stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        check(&out).with_context(|| format!("kubectl {}", args.join(" ")))
    }

    /// Runs kubectl with `input` on its stdin (`apply -f -`).
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        check(&out).with_context(|| format!("kubectl {}", args.join(" ")))
    }

    /// `kubectl <args> -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// `kubectl get <what> -o json` items.
    pub fn items(&self, args: &[&str]) -> Result<Vec<Value>> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        Ok(self.json(&all)?["items"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.run_with_input(&["apply", "-f", "-"], manifest)
    }

    /// Whether the API server answers `/readyz`.
    pub fn ready(&self) -> bool {
        self.command(&["get", "--raw", "/readyz"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Waits (bounded) until `condition` holds of the JSON of `get <args>`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        args: &[&str],
        condition: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        crate::wait::poll(timeout, what, || {
            Ok(self.json(&all).ok().filter(|v| condition(v)))
        })
    }
}

/// Whether a Node object's `Ready` condition is `True`.
pub fn node_ready(node: &Value) -> bool {
    condition_true(node, "Ready")
}

/// Whether `status.conditions` holds `kind` with status `True`.
pub fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}
