//! The demo: etcd and three simulated nodes (network namespaces) each with
//! its `trellis-agent`, pods attached on every node through the real libcni,
//! each node's subnet, a connectivity matrix, then teardown, or `--keep` to
//! explore it. Wrapped by scripts/demo.sh, which installs and builds first.
//!
//!   trellis-demo [--keep] [--nodes N] [--pods-per-node N]
//!   trellis-demo --down          # remove a kept demo

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use trellis_tests::cluster::{
    ping, remove_kept, Cluster, ClusterSpec, Kept, Pod, OUTSIDE_IP, UNDERLAY_GATEWAY,
};
use trellis_tests::netns::is_root;

/// Where a kept demo records what to remove.
const KEPT_FILE: &str = "/run/trellis-demo.json";
const PREFIX: &str = "demo";

struct Options {
    keep: bool,
    down: bool,
    nodes: usize,
    pods_per_node: usize,
}

fn main() {
    if let Err(err) = run() {
        eprintln!("trellis-demo: {err:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        keep: false,
        down: false,
        nodes: 3,
        pods_per_node: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keep" => opts.keep = true,
            "--down" => opts.down = true,
            "--nodes" => opts.nodes = number(args.next(), "--nodes")?,
            "--pods-per-node" => opts.pods_per_node = number(args.next(), "--pods-per-node")?,
            "-h" | "--help" => {
                println!("usage: trellis-demo [--keep] [--nodes N] [--pods-per-node N] | --down");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !(1..=9).contains(&opts.nodes) || !(1..=26).contains(&opts.pods_per_node) {
        bail!("--nodes is 1 to 9 and --pods-per-node 1 to 26");
    }
    Ok(opts)
}

fn number(value: Option<String>, flag: &str) -> Result<usize> {
    value
        .with_context(|| format!("{flag} needs a number"))?
        .parse()
        .with_context(|| format!("{flag} needs a number"))
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    if !is_root() {
        bail!("run as root: the demo creates network namespaces");
    }
    if opts.down {
        return down();
    }
    if Path::new(KEPT_FILE).exists() {
        bail!("a kept demo is still up ({KEPT_FILE}): remove it with `scripts/demo.sh --down`");
    }

    let started = Instant::now();
    println!(
        "Starting etcd and {} nodes, each a network namespace running trellis-agent...",
        opts.nodes
    );
    let spec = ClusterSpec {
        nodes: opts.nodes,
        name_prefix: Some(PREFIX.to_owned()),
        ..ClusterSpec::default()
    };
    let cluster = Cluster::start(spec)?;
    println!("Cluster up in {:.1} s.\n", started.elapsed().as_secs_f64());
    print_nodes(&cluster)?;

    let mut pods = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        for p in 0..opts.pods_per_node {
            let name = format!("pod-{}{}", (b'a' + p as u8) as char, n + 1);
            let pod = cluster
                .add_pod(n, &name)
                .with_context(|| format!("attaching {name} to {}", node.name))?;
            pods.push(pod);
        }
    }
    print_pods(&cluster, &pods);
    let failures = print_matrix(&cluster, &pods) + print_names(&cluster, &pods)?;
    print_egress(&cluster, &pods)?;

    if opts.keep {
        let kept = cluster.keep(pods);
        std::fs::write(KEPT_FILE, serde_json::to_vec_pretty(&kept)?)?;
        print_explore(&kept);
    } else {
        println!("\nTearing down (pods: CNI DEL through libcni; then agents, etcd, namespaces)...");
        for pod in pods {
            cluster
                .del_pod(pod)
                .map_err(|e| anyhow::anyhow!("CNI DEL: {e}"))?;
        }
        let left = cluster.allocations()?;
        if !left.is_empty() {
            bail!("addresses still allocated after every DEL: {left:?}");
        }
        drop(cluster);
        println!("Done: nothing left behind.");
    }
    if failures > 0 {
        bail!("{failures} connectivity checks failed");
    }
    Ok(())
}

fn print_nodes(cluster: &Cluster) -> Result<()> {
    println!(
        "{:<8} {:<12} {:<16} {:<18} namespace",
        "node", "underlay", "pod subnet", "VTEP MAC"
    );
    for node in &cluster.nodes {
        let record = node.record()?;
        println!(
            "{:<8} {:<12} {:<16} {:<18} {}",
            node.name,
            node.underlay_ip.to_string(),
            node.subnet()?.to_string(),
            record.vtep_mac,
            node.netns.name()
        );
    }
    println!();
    Ok(())
}

fn print_pods(cluster: &Cluster, pods: &[Pod]) {
    println!("{:<8} {:<8} {:<14} namespace", "pod", "node", "address");
    for pod in pods {
        println!(
            "{:<8} {:<8} {:<14} {}",
            short(&pod.name),
            cluster.nodes[pod.node].name,
            pod.ip.to_string(),
            pod.netns.name()
        );
    }
    println!();
}

fn short(name: &str) -> &str {
    name.strip_prefix("pod-").unwrap_or(name)
}

/// Pings from every pod to every pod, its node's gateway and the outside
/// host; prints the matrix and returns the number of failures.
fn print_matrix(cluster: &Cluster, pods: &[Pod]) -> usize {
    let mut targets: Vec<(String, IpAddr)> = pods
        .iter()
        .map(|p| (short(&p.name).to_owned(), p.ip))
        .collect();
    targets.push(("etcd".into(), IpAddr::V4(UNDERLAY_GATEWAY)));
    targets.push(("outside".into(), IpAddr::V4(OUTSIDE_IP)));
    println!("Connectivity (ping from row to column; ok = reply):");
    print!("{:<12}", "");
    for (name, _) in &targets {
        print!("{name:>8}");
    }
    println!();
    let mut failures = 0;
    for pod in pods {
        print!(
            "{:<12}",
            format!("{} ({})", short(&pod.name), cluster.nodes[pod.node].name)
        );
        for (_, ip) in &targets {
            let cell = if *ip == pod.ip {
                "-"
            } else if ping(&pod.netns, *ip).is_ok() {
                "ok"
            } else {
                failures += 1;
                "FAIL"
            };
            print!("{cell:>8}");
        }
        println!();
    }
    failures
}

/// Each node's first pod asks its node's agent (DNS on the gateway) for
/// the name of a pod on the next node; returns the failures.
fn print_names(cluster: &Cluster, pods: &[Pod]) -> Result<usize> {
    println!("\nNames (each node's agent answers DNS on its gateway for every pod):");
    let firsts: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.name.starts_with("pod-a"))
        .collect();
    let mut failures = 0;
    for (i, pod) in firsts.iter().enumerate() {
        let peer = firsts[(i + 1) % firsts.len()];
        let peer = pods.iter().rfind(|p| p.node == peer.node).unwrap_or(peer);
        let gateway = cluster.nodes[pod.node]
            .record()?
            .gateway()
            .context("the demo's cluster is IPv4")?;
        let answer = pod
            .netns
            .ok(&[
                "dig",
                "+short",
                "+time=1",
                "+tries=2",
                &format!("@{gateway}"),
                &peer.name,
            ])
            .unwrap_or_default();
        let answer = answer.trim();
        let ok = answer == peer.ip.to_string();
        failures += usize::from(!ok);
        println!(
            "  {} asks {gateway} for {} -> {}: {}",
            short(&pod.name),
            peer.name,
            if answer.is_empty() {
                "no answer"
            } else {
                answer
            },
            if ok { "ok (its address)" } else { "FAILED" }
        );
    }
    Ok(failures)
}

fn print_egress(cluster: &Cluster, pods: &[Pod]) -> Result<()> {
    println!("\nEgress (what the outside host {OUTSIDE_IP} sees as the source):");
    for pod in pods.iter().filter(|p| p.name.starts_with("pod-a")) {
        let seen = cluster.source_seen_outside(&pod.netns)?;
        let node = &cluster.nodes[pod.node];
        let how = if seen == IpAddr::V4(node.underlay_ip) {
            "masqueraded behind its node"
        } else {
            "not masqueraded"
        };
        println!(
            "  {} ({}) -> seen as {seen}: {how}",
            short(&pod.name),
            pod.ip
        );
    }
    Ok(())
}

fn print_explore(kept: &Kept) {
    let node = kept
        .namespaces
        .iter()
        .find(|n| n.ends_with("node1"))
        .cloned()
        .unwrap_or_default();
    let pod = kept.namespaces.first().cloned().unwrap_or_default();
    println!(
        r#"
The demo is still up. Explore it:
  ip netns list | grep {PREFIX}-                         # every namespace
  ip netns exec {node} ip -d link show              # bridge, veths, VXLAN device
  ip netns exec {node} ip route                     # a route per remote node subnet
  ip netns exec {node} bridge fdb show dev trellis.1 # remote VTEPs
  ip netns exec {pod} ip addr                      # a pod
  ip netns exec {PREFIX}-underlay etcdctl --endpoints http://{UNDERLAY_GATEWAY}:2379 get --prefix /trellis
Tear it down:
  sudo scripts/demo.sh --down"#
    );
}

fn down() -> Result<()> {
    let text = match std::fs::read(KEPT_FILE) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("No kept demo ({KEPT_FILE} is absent).");
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    let kept: Kept = serde_json::from_slice(&text)?;
    remove_kept(&kept)?;
    std::fs::remove_file(KEPT_FILE)?;
    println!(
        "Removed the demo: {} namespaces and their processes.",
        kept.namespaces.len()
    );
    Ok(())
}
