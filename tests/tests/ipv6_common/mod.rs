//! What the IPv6 suites (dual-stack and IPv6-only) share: reading a CNI
//! result's addresses, TCP over IPv6 between pods, and the IPv6 routes of
//! a node's VXLAN device.

#![allow(dead_code)] // each suite uses a part

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use trellis_tests::bins;
use trellis_tests::cluster::{result_ip6, Pod};
use trellis_tests::netns::Netns;
use trellis_tests::wait::wait_for;

/// The addresses of a CNI result, IPv4 first, with their gateways.
pub fn result_ips(result: &Value) -> Vec<(IpNetwork, Option<IpAddr>)> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            (
                ip["address"]
                    .as_str()
                    .unwrap_or("")
                    .parse()
                    .expect("an address"),
                ip["gateway"].as_str().and_then(|g| g.parse().ok()),
            )
        })
        .collect()
}

pub fn ipv6_of(pod: &Pod) -> Result<IpAddr> {
    result_ip6(&pod.result)
        .with_context(|| format!("{} has no IPv6 address: {}", pod.name, pod.result))
}

/// The address the TCP server in `server` sees `client` connect from, over
/// IPv6 (trl-peer-addr answers the peer's address).
pub fn tcp6_source(server: &Pod, client: &Netns) -> Result<IpAddr> {
    let bin = bins::bin("trl-peer-addr").display().to_string();
    let addr = format!("[{}]:7777", ipv6_of(server)?);
    let mut child = server.netns.spawn(&[&bin, "serve", &addr])?;
    let answer = wait_for(Duration::from_secs(5), "a TCP answer over IPv6", || {
        let out = client.exec(&[&bin, "ask", &addr]);
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
    });
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer.with_context(|| format!("no TCP answer from {addr}"))?;
    answer
        .parse()
        .with_context(|| format!("trl-peer-addr answered {answer:?}"))
}

/// Behind a stopped agent: a departed node's route `stale` via `via` on
/// the VXLAN device planted, and the route to the live peer `live`
/// deleted, for the restarted agent to mend.
pub fn tamper_vxlan_routes6(ns: &Netns, stale: &str, via: &str, live: &str) -> Result<()> {
    ns.ok(&[
        "ip",
        "-6",
        "route",
        "replace",
        stale,
        "via",
        via,
        "dev",
        "trellis.1",
        "onlink",
    ])?;
    ns.ok(&["ip", "-6", "route", "del", live, "dev", "trellis.1"])?;
    Ok(())
}

/// The IPv6 routes of a node's VXLAN device: (destination, gateway).
pub fn vxlan_routes6(node: &Netns) -> Result<Vec<(String, String)>> {
    let out = node.ok(&["ip", "-6", "-j", "route", "show", "dev", "trellis.1"])?;
    let routes: Vec<Value> = serde_json::from_str(&out)?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            Some((
                r["dst"].as_str()?.to_string(),
                r["gateway"].as_str()?.to_string(),
            ))
        })
        .collect())
}
