//! The data path benchmark: TCP throughput (iperf3) and ping latency between
//! pods on two nodes over the VXLAN overlay, against the same between the
//! two node namespaces directly over the underlay, in the same run, on a
//! simulated cluster. Prints medians and the overlay/underlay ratio.
//!
//!   trellis-bench-datapath [--seconds N] [--reps N] [--streams N]
//!
//! Wrapped by scripts/bench-datapath.sh (which builds in release first).

use std::net::IpAddr;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use trellis_tests::cluster::{ping, Cluster, ClusterSpec};
use trellis_tests::libcni::median;
use trellis_tests::netns::Netns;

struct Options {
    seconds: u32,
    reps: usize,
    streams: u32,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        seconds: 3,
        reps: 7,
        streams: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> Result<u32> {
            args.next()
                .with_context(|| format!("{flag} needs a number"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--seconds" => opts.seconds = value("--seconds")?,
            "--reps" => opts.reps = value("--reps")? as usize,
            "--streams" => opts.streams = value("--streams")?,
            "-h" | "--help" => {
                println!("usage: trellis-bench-datapath [--seconds N] [--reps N] [--streams N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !(1..=60).contains(&opts.seconds) || !(1..=10).contains(&opts.reps) {
        bail!("--seconds is 1 to 60 and --reps 1 to 10");
    }
    if !(1..=8).contains(&opts.streams) {
        bail!("--streams is 1 to 8");
    }
    Ok(opts)
}

fn main() {
    if let Err(err) = run() {
        eprintln!("trellis-bench-datapath: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    eprintln!("starting a 2-node cluster...");
    let cluster = Cluster::start(ClusterSpec::default().nodes(2))?;
    let pod_a = cluster.add_pod(0, "bench-a")?;
    let pod_b = cluster.add_pod(1, "bench-b")?;
    let (node_a, node_b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let node_b_ip = IpAddr::V4(node_b.underlay_ip);
    let node_a_ip = IpAddr::V4(node_a.underlay_ip);
    ping(&pod_a.netns, pod_b.ip)?;
    ping(&node_a.netns, node_b_ip)?;

    let _server_pod = IperfServer::start(&pod_b.netns, pod_b.ip)?;
    let _server_node = IperfServer::start(&node_b.netns, node_b_ip)?;

    println!(
        "data path: {} s TCP per run, {} stream(s), {} runs each, alternating",
        opts.seconds, opts.streams, opts.reps
    );
    println!(
        "mtu: underlay {} / pod {}",
        link_mtu(&node_a.netns, "eth0")?,
        link_mtu(&pod_a.netns, "eth0")?
    );
    let mut overlay = Vec::new();
    let mut underlay = Vec::new();
    for rep in 0..opts.reps {
        let o = iperf(&pod_a.netns, pod_b.ip, &opts)?;
        let u = iperf(&node_a.netns, node_b_ip, &opts)?;
        println!(
            "  run {}: overlay {:>7.2} Gbit/s   underlay {:>7.2} Gbit/s",
            rep + 1,
            o / 1e9,
            u / 1e9
        );
        overlay.push(o);
        underlay.push(u);
    }
    let (o, u) = (median(&overlay), median(&underlay));
    println!(
        "throughput (median): overlay pod->pod {:.2} Gbit/s, underlay node->node {:.2} Gbit/s, ratio {:.2}",
        o / 1e9,
        u / 1e9,
        o / u
    );

    let lat = [
        ("overlay  pod A -> pod B ", rtt_ms(&pod_a.netns, pod_b.ip)?),
        ("overlay  pod B -> pod A ", rtt_ms(&pod_b.netns, pod_a.ip)?),
        (
            "underlay node A -> node B",
            rtt_ms(&node_a.netns, node_b_ip)?,
        ),
        (
            "underlay node B -> node A",
            rtt_ms(&node_b.netns, node_a_ip)?,
        ),
    ];
    println!("latency (ping, 50 x 10 ms, average rtt, no loss):");
    for (what, ms) in lat {
        println!("  {what}: {ms:.3} ms");
    }
    Ok(())
}

/// An iperf3 server in a namespace, stopped with it.
struct IperfServer;

impl IperfServer {
    fn start(ns: &Netns, bind: IpAddr) -> Result<IperfServer> {
        let bind = bind.to_string();
        let mut cmd = ns.command(&["iperf3", "-s", "-B", &bind, "-p", "5201"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ns.spawn_command(cmd)
            .context("starting iperf3 (install iperf3: scripts/setup.sh)")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ns.exec(&["ss", "-Htln", "sport", "=", ":5201"]);
            if String::from_utf8_lossy(&out.stdout).contains("5201") {
                return Ok(IperfServer);
            }
            if Instant::now() > deadline {
                bail!("iperf3 did not listen in {}", ns.name());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Bits per second received in one iperf3 run.
fn iperf(client: &Netns, server: IpAddr, opts: &Options) -> Result<f64> {
    let server = server.to_string();
    let seconds = opts.seconds.to_string();
    let streams = opts.streams.to_string();
    let out: Output = client.exec(&[
        "timeout",
        &(opts.seconds + 20).to_string(),
        "iperf3",
        "-c",
        &server,
        "-p",
        "5201",
        "-t",
        &seconds,
        "-P",
        &streams,
        "-J",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(err) = report["error"].as_str() {
        bail!("iperf3 to {server}: {err}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received")
}

/// Average round trip of 50 pings 10 ms apart, in milliseconds.
fn rtt_ms(from: &Netns, to: IpAddr) -> Result<f64> {
    let to = to.to_string();
    let out = from.ok(&["ping", "-n", "-q", "-c", "50", "-i", "0.01", "-W", "1", &to])?;
    // Per-packet times are not printed with -q; use the summary's avg and
    // check there was no loss.
    if !out.contains(" 0% packet loss") {
        bail!("packet loss pinging {to}:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .context("no ping summary")?;
    let values = summary
        .split('=')
        .nth(1)
        .context("no ping summary values")?
        .trim();
    let avg = values
        .split('/')
        .nth(1)
        .context("no average")?
        .trim()
        .parse()?;
    Ok(avg)
}

fn link_mtu(ns: &Netns, ifname: &str) -> Result<u64> {
    let out = ns.ok(&["ip", "-j", "link", "show", ifname])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    links[0]["mtu"].as_u64().context("no mtu")
}
