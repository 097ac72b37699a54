//! `--ab-notrack`: the overlay with the agent's untracked tunnel packets
//! against tracked ones, interleaved in one run, and the underlay.

use std::net::IpAddr;

use anyhow::{Context, Result};
use trellis_tests::cluster::Cluster;
use trellis_tests::libcni::median;
use trellis_tests::netns::Netns;

use crate::measure::Iperf;

/// Overlay with the tunnel packets untracked and tracked, alternating, and
/// the underlay; medians and ratios.
pub fn ab_notrack(
    cluster: &Cluster,
    pod_a: &Netns,
    pod_b: IpAddr,
    node_b: IpAddr,
    port: u16,
    reps: usize,
    iperf: &Iperf,
) -> Result<()> {
    let set = |on: bool| -> Result<()> {
        for node in &cluster.nodes {
            set_notrack(node, on, port)?;
        }
        Ok(())
    };
    let (mut untracked, mut tracked, mut underlay) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut pair = [(true, 0.0), (false, 0.0)];
        if rep % 2 == 1 {
            pair.reverse();
        }
        for (on, bps) in pair.iter_mut() {
            set(*on)?;
            *bps = iperf.run(pod_a, pod_b, 5201)?;
        }
        let u = iperf.run(&cluster.nodes[0].netns, node_b, 5201)?;
        let get = |on: bool| pair.iter().find(|(o, _)| *o == on).map_or(0.0, |p| p.1);
        let (n, t) = (get(true), get(false));
        println!(
            "  run {}: overlay untracked {:>6.2}  tracked {:>6.2}  underlay {:>6.2} Gbit/s",
            rep + 1,
            n / 1e9,
            t / 1e9,
            u / 1e9
        );
        untracked.push(n);
        tracked.push(t);
        underlay.push(u);
    }
    set(true)?;
    let (n, t, u) = (median(&untracked), median(&tracked), median(&underlay));
    println!(
        "throughput (median): overlay untracked {:.2}, tracked {:.2}, underlay {:.2} Gbit/s",
        n / 1e9,
        t / 1e9,
        u / 1e9
    );
    println!(
        "ratio to the underlay: untracked {:.2}, tracked {:.2}; untracked/tracked {:.3}",
        n / u,
        t / u,
        n / t
    );
    Ok(())
}

/// Fill (or empty) the agent's notrack chains on `node` by hand.
fn set_notrack(node: &trellis_tests::cluster::Node, on: bool, port: u16) -> Result<()> {
    let table = "ip trellis-agent";
    let mut script =
        format!("nft flush chain {table} tunnel-in && nft flush chain {table} tunnel-out");
    if on {
        let ip = node.underlay_ip;
        script += &format!(
            " && nft add rule {table} tunnel-in ip daddr {ip} udp dport {port} notrack \
             && nft add rule {table} tunnel-out ip saddr {ip} udp dport {port} notrack"
        );
    }
    node.netns.sh_ok(&script).with_context(|| {
        format!(
            "notrack chains on {} (is the agent's table there?)",
            node.name
        )
    })?;
    Ok(())
}
