//! Asking the agents' DNS as a container would: `dig` in the container's
//! namespace, and the DNS settings an ADD result gave it.

use crate::cluster::Pod;
use crate::netns::Netns;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;

/// What `dig` prints for `name` asked of `server` from `from`: the
/// addresses (`+short`), sorted; an error carries dig's whole answer.
pub fn dig(from: &Netns, server: IpAddr, name: &str, extra: &[&str]) -> Result<Vec<IpAddr>> {
    let at = format!("@{server}");
    let mut argv = vec!["dig", "+time=1", "+tries=1", &at, name];
    argv.extend(extra);
    let full = from.ok(&argv)?;
    if !full.contains("status: NOERROR") {
        bail!("dig {name} at {server}: {full}");
    }
    let mut argv = argv.clone();
    argv.push("+short");
    let mut ips: Vec<IpAddr> = from
        .ok(&argv)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    ips.sort();
    Ok(ips)
}

/// The response code dig reports for `name`.
pub fn status(from: &Netns, server: IpAddr, name: &str) -> Result<String> {
    let at = format!("@{server}");
    let out = from.ok(&["dig", "+time=1", "+tries=1", &at, name])?;
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string)
        .with_context(|| format!("no status in {out}"))
}

/// The nameserver and search domain the ADD result gave the pod.
pub fn result_dns(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    (
        strings(&pod.result["dns"]["nameservers"]),
        strings(&pod.result["dns"]["search"]),
    )
}
