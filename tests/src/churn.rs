//! Rounds of concurrent pod ADDs and DELs on a [`Cluster`], through the
//! real plugins as a runtime calls them, and the checks that a round left
//! nothing it should not have: for the etcd failover tests and the soak.

use crate::cluster::{Cluster, FailedAdd, Pod};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use trellis_common::naming::host_veth_name;

/// One round's outcome.
#[derive(Debug, Default)]
pub struct Round {
    pub pods: Vec<Pod>,
    pub failed: Vec<FailedAdd>,
    /// The longest ADD of the round (success or failure).
    pub longest: Duration,
}

impl Round {
    /// Failures by CNI code.
    pub fn codes(&self) -> BTreeMap<u32, usize> {
        let mut codes = BTreeMap::new();
        for f in &self.failed {
            *codes.entry(f.failure.code).or_default() += 1;
        }
        codes
    }

    /// One line per failure, for assertion messages.
    pub fn failures(&self) -> String {
        self.failed
            .iter()
            .map(|f| format!("{}: {}", f.name, f.failure))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `per_node` ADDs on every node, all at once; pods named `<tag>-<n>`.
pub fn add_round(cluster: &Cluster, per_node: usize, tag: &str) -> Result<Round> {
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cluster.nodes.len())
            .flat_map(|node| (0..per_node).map(move |i| (node, i)))
            .map(|(node, i)| {
                s.spawn(move || {
                    let started = Instant::now();
                    let r = cluster.try_add_pod(node, &format!("{tag}-n{node}-{i}"));
                    (r, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread panicked"))
            .collect::<Vec<_>>()
    });
    let mut round = Round::default();
    for (r, took) in results {
        round.longest = round.longest.max(took);
        match r? {
            Ok(pod) => round.pods.push(pod),
            Err(failed) => round.failed.push(failed),
        }
    }
    Ok(round)
}

/// Every failed ADD left no host veth on its node.
pub fn failed_adds_left_no_veth(cluster: &Cluster, failed: &[FailedAdd]) -> Result<()> {
    for f in failed {
        let veth = host_veth_name(&f.container_id, "eth0");
        if cluster.nodes[f.node].host_veths()?.contains(&veth) {
            bail!(
                "failed ADD of {} left its veth {veth}: {}",
                f.name,
                f.failure
            );
        }
    }
    Ok(())
}

/// No two live pods share an address, read from the pods' interfaces.
pub fn no_address_twice(pods: &[&Pod]) -> Result<()> {
    let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for pod in pods {
        let out = pod
            .netns
            .ok(&["ip", "-j", "-4", "addr", "show", "dev", &pod.ifname])?;
        let links: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        for info in links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        {
            let Some(ip) = info["local"].as_str() else {
                continue;
            };
            let ip: IpAddr = ip.parse()?;
            if let Some(other) = seen.insert(ip, &pod.name) {
                bail!("{ip} is on the interfaces of both {other} and {}", pod.name);
            }
        }
    }
    Ok(())
}

/// DEL every pod and every failed ADD, as the runtime would; DELs that
/// fail are tried again (bounded) until `timeout`.
pub fn del_all(
    cluster: &Cluster,
    pods: Vec<Pod>,
    failed: Vec<FailedAdd>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pods = pods;
    let mut failed = failed;
    loop {
        let (left_pods, left_failed) = std::thread::scope(|s| {
            let pods: Vec<_> = pods
                .into_iter()
                .map(|p| {
                    s.spawn(move || {
                        let node = &cluster.nodes[p.node];
                        match node.driver.del(&node.conflist, &p.attachment()) {
                            Ok(_) => None,
                            Err(e) => Some((p, e)),
                        }
                    })
                })
                .collect();
            let failed: Vec<_> = failed
                .into_iter()
                .map(|f| s.spawn(move || cluster.del_failed(&f).err().map(|e| (f, e))))
                .collect();
            (
                pods.into_iter()
                    .filter_map(|h| h.join().expect("DEL thread"))
                    .collect::<Vec<_>>(),
                failed
                    .into_iter()
                    .filter_map(|h| h.join().expect("DEL thread"))
                    .collect::<Vec<_>>(),
            )
        });
        if left_pods.is_empty() && left_failed.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let first = left_pods
                .first()
                .map(|(p, e)| format!("{}: {e}", p.name))
                .or_else(|| left_failed.first().map(|(f, e)| format!("{}: {e}", f.name)))
                .unwrap_or_default();
            bail!(
                "{} DELs still failing after {timeout:?}; first: {first}",
                left_pods.len() + left_failed.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        pods = left_pods.into_iter().map(|(p, _)| p).collect();
        failed = left_failed.into_iter().map(|(f, _)| f).collect();
    }
}

/// What etcd still holds under the IPAM keys: allocated addresses, and
/// handles with claim guards (with their values).
pub fn ipam_leftovers(cluster: &Cluster) -> Result<(Vec<String>, Vec<String>)> {
    let ips = cluster
        .etcd_entries("ipam/ips/")?
        .into_iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    // Handles, and the claim guards of ADDs (gone with their ADD).
    let mut handles: Vec<String> = cluster
        .etcd_entries("ipam/handles/")?
        .into_iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    handles.extend(
        cluster
            .etcd_entries("ipam/guards/")?
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}")),
    );
    Ok((ips, handles))
}

/// Wait (bounded) until etcd holds no allocation and no handle; the time
/// it took, or an error listing what stayed.
pub fn wait_nothing_allocated(cluster: &Cluster, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let left = ipam_leftovers(cluster);
        if let Ok((ips, handles)) = &left {
            if ips.is_empty() && handles.is_empty() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            let (ips, handles) = left?;
            bail!(
                "after {timeout:?}, {} addresses and {} handles stayed:\n{}\n{}",
                ips.len(),
                handles.len(),
                ips.join("\n"),
                handles.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
