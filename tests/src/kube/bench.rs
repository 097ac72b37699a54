//! Pod startup latency on the Kubernetes test cluster: created to Ready,
//! for a burst of pods, with the reference plugins' conflist (`bridge` +
//! `host-local` + `portmap`, what a cluster has before a network is
//! installed) and then with trellis installed from `manifests/`, on the
//! same cluster in one run (`scripts/bench-kube.sh`).
//!
//! Each pod's latency is measured by a watch of the API server, with the
//! host's monotonic clock: from the first event that shows the pod to the
//! first that shows it Ready (the API's own timestamps have whole seconds).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::images::AGNHOST;
use super::kubectl::Kubectl;
use super::layout::Layout;
use super::ClusterInfo;

/// The namespace of the measured pods.
const NS: &str = "bench-startup";

/// Latencies of one burst, sorted.
#[derive(Debug, Clone)]
pub struct Burst {
    pub latencies: Vec<Duration>,
    /// From the create request to the last pod Ready.
    pub total: Duration,
}

impl Burst {
    /// The `p`-th percentile (nearest rank).
    pub fn percentile(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1]
    }
}

/// The reference conflist of node `index` (0-based): its own host-local
/// range, so that no two nodes hand out one address.
pub fn reference_conflist(index: usize) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.250.{}.0/24", index + 1)}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

const REFERENCE_FILE: &str = "05-reference.conflist";

/// Put the reference conflist on every node (first in lexical order, so
/// the runtime uses it even beside trellis's), or take it away.
pub fn set_reference(layout: &Layout, info: &ClusterInfo, on: bool) -> Result<()> {
    for (i, node) in info.nodes.iter().enumerate() {
        let path = layout
            .node(node)
            .private_dir("/etc/cni/net.d")
            .join(REFERENCE_FILE);
        if on {
            std::fs::write(&path, reference_conflist(i))
                .with_context(|| format!("writing {}", path.display()))?;
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
    }
    Ok(())
}

fn pods_manifest(pods: usize, round: &str) -> String {
    let mut docs = Vec::new();
    for i in 0..pods {
        docs.push(
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{round}-{i}"), "namespace": NS,
                             "labels": {"bench": round}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "pause", "image": AGNHOST,
                                    "imagePullPolicy": "Never", "args": ["pause"]}]
                }
            })
            .to_string(),
        );
    }
    docs.join("\n---\n")
}

/// Create `pods` pods at once (one `kubectl apply`), measure each from
/// its first appearance in a watch to Ready, then delete them and wait
/// until they are gone.
pub fn burst(kubectl: &Kubectl, pods: usize, round: &str) -> Result<Burst> {
    let label = format!("bench={round}");
    let mut watch = kubectl
        .command(&[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            &label,
            "--watch",
            "--request-timeout=0",
            "-o",
            "jsonpath={.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl get --watch")?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // The watch is established once it answers "no resources": give it a
    // moment, then create.
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let result = (|| {
        kubectl.run_with_input(&["apply", "-f", "-"], &pods_manifest(pods, round))?;
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let mut ready: HashMap<String, Duration> = HashMap::new();
        let deadline = started + Duration::from_secs(300);
        while ready.len() < pods {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = match rx.recv_timeout(left) {
                Ok(event) => event,
                Err(_) => bail!(
                    "{} of {pods} pods Ready after {:?}",
                    ready.len(),
                    started.elapsed()
                ),
            };
            let mut words = line.split_whitespace();
            let Some(name) = words.next() else { continue };
            let first = *seen.entry(name.to_string()).or_insert(at);
            if words.next() == Some("True") && !ready.contains_key(name) {
                ready.insert(name.to_string(), at - first);
            }
        }
        let total = started.elapsed();
        let mut latencies: Vec<Duration> = ready.into_values().collect();
        latencies.sort();
        Ok(Burst { latencies, total })
    })();
    let _ = watch.kill();
    let _ = watch.wait();
    kubectl.run(&[
        "-n",
        NS,
        "delete",
        "pods",
        "-l",
        &label,
        "--wait=true",
        "--timeout=300s",
    ])?;
    result
}

/// The whole benchmark: a warm-up burst and a measured one with the
/// reference conflist, then trellis installed and its measured burst. The
/// cluster was brought up without trellis (`up --no-trellis`).
pub fn run(layout: &Layout, info: &ClusterInfo, pods: usize) -> Result<(Burst, Burst)> {
    let kubectl = info.kubectl(layout);
    let nodes = info.nodes.len();
    ensure!(
        kubectl
            .items(&["-n", "trellis-system", "daemonset"])
            .map(|ds| ds.is_empty())
            .unwrap_or(true),
        "trellis is installed already: bring the cluster up with --no-trellis"
    );
    let _ = kubectl.run(&["create", "namespace", NS]);

    eprintln!("bench-startup: the reference conflist on {nodes} nodes");
    set_reference(layout, info, true)?;
    super::wait_nodes_ready(&kubectl, nodes)?;
    eprintln!("bench-startup: warm-up burst of {pods} (images unpacked on every node)");
    burst(&kubectl, pods, "warmup")?;
    eprintln!("bench-startup: reference burst of {pods}");
    let reference = burst(&kubectl, pods, "reference")?;

    eprintln!("bench-startup: trellis from manifests/");
    set_reference(layout, info, false)?;
    super::install_trellis(&kubectl, &info.etcd_endpoint())?;
    super::wait_ready(&kubectl, nodes)?;
    eprintln!("bench-startup: trellis burst of {pods}");
    let trellis = burst(&kubectl, pods, "trellis")?;
    Ok((reference, trellis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let b = Burst {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            total: Duration::ZERO,
        };
        assert_eq!(b.percentile(50.0), Duration::from_millis(50));
        assert_eq!(b.percentile(99.0), Duration::from_millis(99));
        assert_eq!(b.percentile(100.0), Duration::from_millis(100));
        assert_eq!(b.percentile(0.0), Duration::from_millis(1));
    }

    #[test]
    fn each_node_gets_its_own_reference_range() {
        let a: serde_json::Value = serde_json::from_str(&reference_conflist(0)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&reference_conflist(2)).unwrap();
        let range =
            |v: &serde_json::Value| v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"].clone();
        assert_eq!(range(&a), "10.250.1.0/24");
        assert_eq!(range(&b), "10.250.3.0/24");
    }
}
