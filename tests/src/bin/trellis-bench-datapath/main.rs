//! The data path benchmark, like with like: TCP throughput (iperf3) and
//! ping latency in one run, on a simulated dual-stack cluster of two nodes
//! and beside it, on the same underlay bridge, two references built by hand:
//!
//! 1. underlay: node to node;
//! 2. trellis direct routing, pod to pod: with the pods at the overlay's
//!    MTU (`"directRouting": true`, set in etcd between the rows: the
//!    agents move the route at once), and in a second cluster with
//!    `"mtu": 1500` (host-gw's MTU);
//! 3. trellis VXLAN, pod to pod (and its IPv6 row), and in a third cluster
//!    with `ipMasq` off (no nftables chain that needs conntrack, as in the
//!    bare hand-built rows);
//! 4. flannel-style VXLAN built by hand (flannel's devices and entries, the
//!    bridge plugin's bridge and veths), bare and with flannel's masquerade;
//! 5. host-gw-style routing built by hand, bare and with masquerade.
//!
//! trellis runs with its nftables table (masquerade, so conntrack sees the
//! pods' packets); the "+ masq" rows give the references the same, and the
//! `ipMasq` off row gives trellis what the bare references have. Every
//! congestion control asked for runs in turn (default: CUBIC, then BBR when
//! the kernel has it), each with its medians, ratios to the underlay and
//! the two targets (trellis VXLAN / hand-built VXLAN, trellis direct /
//! host-gw); then ping for every row.
//!
//!   trellis-bench-datapath [--seconds N] [--reps N] [--streams N] [--ab-notrack] [--no-pin]
//!                          [--congestion ALGO]
//!
//! The iperf3 client runs on CPU 0 and the server on CPU 1 (`iperf3 -A 0,1`),
//! as on two machines, unless `--no-pin` (or a single CPU): left to the
//! scheduler, the placement changes from run to run and with it the
//! underlay figure by up to 40%. The rows of one rep run back to back, their
//! order reversed every other rep.
//!
//! `--ab-notrack` measures the agent's untracked tunnel packets
//! (`--vxlan-notrack`) against tracked ones in the same run instead: every
//! rep runs the overlay once with the notrack chains filled and once with
//! them emptied (the order alternating), then the underlay.
//!
//! Wrapped by scripts/bench-datapath.sh (which builds in release first).

mod ab_notrack;
mod handbuilt;
mod measure;
mod options;

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use handbuilt::{HandBuilt, Kind};
use measure::{link_mtu, rtt_ms, Iperf, IperfServer};
use options::{parse_args, Options};
use trellis_tests::cluster::{ping, result_ip6, Cluster, ClusterSpec};
use trellis_tests::libcni::median;
use trellis_tests::netns::Netns;

fn main() {
    if let Err(err) = run() {
        eprintln!("trellis-bench-datapath: {err:#}");
        std::process::exit(1);
    }
}

/// The rows, in the order they are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Underlay,
    DirectFull,
    Direct,
    Vxlan,
    Vxlan6,
    VxlanBare,
    Flannel,
    FlannelMasq,
    HostGw,
    HostGwMasq,
}

const ROWS: [Row; 10] = [
    Row::Underlay,
    Row::DirectFull,
    Row::Direct,
    Row::Vxlan,
    Row::Vxlan6,
    Row::VxlanBare,
    Row::Flannel,
    Row::FlannelMasq,
    Row::HostGw,
    Row::HostGwMasq,
];

impl Row {
    fn label(self) -> &'static str {
        match self {
            Row::Underlay => "1 underlay node -> node",
            Row::DirectFull => "2 trellis direct routing, mtu 1500",
            Row::Direct => "2 trellis direct routing, mtu 1450",
            Row::Vxlan => "3 trellis VXLAN",
            Row::Vxlan6 => "3 trellis VXLAN, IPv6",
            Row::VxlanBare => "3 trellis VXLAN, ipMasq off",
            Row::Flannel => "4 hand-built flannel VXLAN",
            Row::FlannelMasq => "4 hand-built flannel VXLAN + masq",
            Row::HostGw => "5 hand-built host-gw",
            Row::HostGwMasq => "5 hand-built host-gw + masq",
        }
    }
}

/// Everything measured, and how to switch between the rows.
struct Bench<'a> {
    cluster: &'a Cluster,
    config: trellis_common::cluster_config::ClusterConfig,
    pod_a: &'a Netns,
    pod_b: IpAddr,
    pod_b6: IpAddr,
    /// The pods of a second cluster, with `"directRouting": true, "mtu":
    /// 1500` (an MTU takes a restart and new pods).
    full: (&'a Netns, IpAddr),
    /// The pods of a third cluster, with `ipMasq` off.
    bare: (&'a Netns, IpAddr),
    flannel: HandBuilt,
    host_gw: HandBuilt,
}

impl Bench<'_> {
    /// Turn trellis's direct routing on or off and wait until both nodes
    /// route each other's pod subnet accordingly.
    fn set_direct(&self, on: bool) -> Result<()> {
        let config = trellis_common::cluster_config::ClusterConfig {
            direct_routing: on,
            ..self.config.clone()
        };
        let key = format!("{}/config", self.cluster.key_prefix());
        self.cluster
            .etcdctl(&["put", &key, &serde_json::to_string(&config)?])?;
        let want = if on { "eth0" } else { "trellis.1" };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (a, b) = (&self.cluster.nodes[0], &self.cluster.nodes[1]);
        loop {
            let there = route_dev(&a.netns, &b.subnet()?.to_string())? == want
                && route_dev(&b.netns, &a.subnet()?.to_string())? == want;
            if there {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agents did not move the routes to {want} within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Put the paths in the state `row` is measured in.
    fn prepare(&self, row: Row) -> Result<()> {
        match row {
            Row::Direct => self.set_direct(true),
            Row::Vxlan | Row::Vxlan6 => self.set_direct(false),
            Row::Flannel | Row::FlannelMasq => self.flannel.set_masquerade(row == Row::FlannelMasq),
            Row::HostGw | Row::HostGwMasq => self.host_gw.set_masquerade(row == Row::HostGwMasq),
            Row::Underlay | Row::DirectFull | Row::VxlanBare => Ok(()),
        }
    }

    /// Client, server address and port of `row`.
    fn ends(&self, row: Row) -> (&Netns, IpAddr, u16) {
        let nodes = &self.cluster.nodes;
        match row {
            Row::Underlay => (&nodes[0].netns, IpAddr::V4(nodes[1].underlay_ip), 5201),
            Row::DirectFull => (self.full.0, self.full.1, 5201),
            Row::VxlanBare => (self.bare.0, self.bare.1, 5201),
            Row::Direct | Row::Vxlan => (self.pod_a, self.pod_b, 5201),
            Row::Vxlan6 => (self.pod_a, self.pod_b6, 5202),
            Row::Flannel | Row::FlannelMasq => {
                (&self.flannel.pods[0], self.flannel.pod_ips[1], 5201)
            }
            Row::HostGw | Row::HostGwMasq => (&self.host_gw.pods[0], self.host_gw.pod_ips[1], 5201),
        }
    }

    fn throughput(&self, row: Row, iperf: &Iperf) -> Result<f64> {
        self.prepare(row)?;
        let (client, server, port) = self.ends(row);
        iperf
            .run(client, server, port)
            .with_context(|| format!("row {}", row.label()))
    }
}

fn route_dev(ns: &Netns, dst: &str) -> Result<String> {
    let out = ns.ok(&["ip", "-j", "route", "show", dst])?;
    let routes: serde_json::Value = serde_json::from_str(&out)?;
    Ok(routes[0]["dev"].as_str().unwrap_or_default().to_string())
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    eprintln!("starting a 2-node cluster...");
    let mut spec = ClusterSpec::default().nodes(2);
    spec.config.ipv6_network = Some("fd10:244::/56".parse()?);
    if opts.ab_notrack {
        // The bench empties and fills the notrack chains itself: no resync
        // may put them back in between.
        spec.agent_args = vec!["--resync-interval".into(), "86400".into()];
    }
    let port = spec.config.port;
    let config = spec.config.clone();
    let cluster = Cluster::start(spec)?;
    let pod_a = cluster.add_pod(0, "bench-a")?;
    let pod_b = cluster.add_pod(1, "bench-b")?;
    let (node_a, node_b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let node_b_ip = IpAddr::V4(node_b.underlay_ip);
    let pod_b6 = result_ip6(&pod_b.result).context("the pod has no IPv6 address")?;
    ping(&pod_a.netns, pod_b.ip)?;
    ping(&pod_a.netns, pod_b6)?;
    ping(&node_a.netns, node_b_ip)?;

    let _server_pod = IperfServer::start(&pod_b.netns, pod_b.ip, 5201)?;
    let _server_pod6 = IperfServer::start(&pod_b.netns, pod_b6, 5202)?;
    let _server_node = IperfServer::start(&node_b.netns, node_b_ip, 5201)?;

    println!(
        "data path: {} s TCP per run, {} stream(s), {} runs each",
        opts.seconds, opts.streams, opts.reps
    );
    match opts.pin {
        Some((c, s)) => println!("iperf3 client on CPU {c}, server on CPU {s}"),
        None => println!("iperf3 placement left to the scheduler"),
    }
    println!(
        "mtu: underlay {} / pod {}",
        link_mtu(&node_a.netns, "eth0")?,
        link_mtu(&pod_a.netns, "eth0")?
    );
    if opts.ab_notrack {
        let iperf = opts.iperf(opts.congestion.clone());
        return ab_notrack::ab_notrack(
            &cluster,
            &pod_a.netns,
            pod_b.ip,
            node_b_ip,
            port,
            opts.reps,
            &iperf,
        );
    }

    eprintln!("starting a second cluster (direct routing, mtu 1500)...");
    let mut full_spec = ClusterSpec::default().nodes(2);
    full_spec.config.direct_routing = true;
    full_spec.config.mtu = Some(1500);
    let full = Cluster::start(full_spec)?;
    let full_a = full.add_pod(0, "full-a")?;
    let full_b = full.add_pod(1, "full-b")?;
    let _server_full = IperfServer::start(&full_b.netns, full_b.ip, 5201)?;
    ping(&full_a.netns, full_b.ip)?;
    println!(
        "mtu of the second cluster's pods: {}",
        link_mtu(&full_a.netns, "eth0")?
    );
    eprintln!("starting a third cluster (ipMasq off)...");
    let bare = Cluster::start(ClusterSpec::default().nodes(2).ip_masq(false))?;
    let bare_a = bare.add_pod(0, "bare-a")?;
    let bare_b = bare.add_pod(1, "bare-b")?;
    let _server_bare = IperfServer::start(&bare_b.netns, bare_b.ip, 5201)?;
    ping(&bare_a.netns, bare_b.ip)?;
    eprintln!("building the hand-built references...");
    let flannel = HandBuilt::build(cluster.underlay(), Kind::FlannelVxlan, 21, 98)?;
    let host_gw = HandBuilt::build(cluster.underlay(), Kind::HostGw, 31, 97)?;
    let _servers = [&flannel, &host_gw]
        .map(|h| IperfServer::start(&h.pods[1], h.pod_ips[1], 5201))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    for h in [&flannel, &host_gw] {
        ping(&h.pods[0], h.pod_ips[1])?;
    }
    let bench = Bench {
        cluster: &cluster,
        config,
        pod_a: &pod_a.netns,
        pod_b: pod_b.ip,
        pod_b6,
        full: (&full_a.netns, full_b.ip),
        bare: (&bare_a.netns, bare_b.ip),
        flannel,
        host_gw,
    };
    // Each row's path, as the kernel routes it.
    bench.set_direct(true)?;
    let b_subnet = node_b.subnet()?.to_string();
    println!(
        "route of row 2: {} dev {}",
        b_subnet,
        route_dev(&node_a.netns, &b_subnet)?
    );
    bench.set_direct(false)?;
    println!(
        "route of row 3: {} dev {}",
        b_subnet,
        route_dev(&node_a.netns, &b_subnet)?
    );

    let congestions: Vec<String> = match &opts.congestion {
        Some(algo) => vec![algo.clone()],
        None => {
            let available =
                node_a
                    .netns
                    .ok(&["sysctl", "-n", "net.ipv4.tcp_available_congestion_control"])?;
            let mut all = vec!["cubic".to_string()];
            if available.split_whitespace().any(|a| a == "bbr") {
                all.push("bbr".into());
            } else {
                println!("(BBR: not in this kernel's tcp_available_congestion_control; skipped)");
            }
            all
        }
    };
    for algo in congestions {
        compare(&bench, &opts, &opts.iperf(Some(algo)))?;
    }

    println!("latency (ping, 50 x 10 ms, average rtt, no loss):");
    for row in ROWS {
        bench.prepare(row)?;
        let (client, server, _) = bench.ends(row);
        println!("  {:<36} {:.3} ms", row.label(), rtt_ms(client, server)?);
    }
    bench.flannel.set_masquerade(false)?;
    bench.host_gw.set_masquerade(false)?;
    Ok(())
}

/// One congestion control: every row `reps` times, then the medians.
fn compare(bench: &Bench, opts: &Options, iperf: &Iperf) -> Result<()> {
    let algo = iperf.congestion.as_deref().unwrap_or("default");
    println!("\nTCP congestion control {algo}:");
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
    for rep in 0..opts.reps {
        let mut order: Vec<usize> = (0..ROWS.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            figures[i].push(bench.throughput(ROWS[i], iperf)?);
        }
        let line: Vec<String> = figures
            .iter()
            .map(|f| format!("{:.2}", f[rep] / 1e9))
            .collect();
        println!(
            "  run {} (Gbit/s, rows in order): {}",
            rep + 1,
            line.join("  ")
        );
    }
    let medians: Vec<f64> = figures.iter().map(|f| median(f)).collect();
    let of = |row: Row| medians[ROWS.iter().position(|r| *r == row).expect("a row")];
    let underlay = of(Row::Underlay);
    println!("  {:<36} {:>10} {:>12}", "median", "Gbit/s", "/ underlay");
    for (row, m) in ROWS.iter().zip(&medians) {
        println!(
            "  {:<36} {:>10.2} {:>12.2}",
            row.label(),
            m / 1e9,
            m / underlay
        );
    }
    println!(
        "  targets ({algo}): trellis VXLAN / hand-built VXLAN {:.2} (+ masq both {:.2}; ipMasq off / bare {:.2}); trellis direct (mtu 1500) / host-gw {:.2} (+ masq {:.2}); want >= 1.0",
        of(Row::Vxlan) / of(Row::Flannel),
        of(Row::Vxlan) / of(Row::FlannelMasq),
        of(Row::VxlanBare) / of(Row::Flannel),
        of(Row::DirectFull) / of(Row::HostGw),
        of(Row::DirectFull) / of(Row::HostGwMasq),
    );
    Ok(())
}
