//! The data path benchmark: TCP throughput (iperf3) and ping latency between
//! pods on two nodes over the VXLAN overlay, against the same between the
//! two node namespaces directly over the underlay, in the same run, on a
//! simulated dual-stack cluster: the pods' IPv4 and IPv6 addresses each
//! get a row. Prints medians and the overlay/underlay ratio.
//!
//!   trellis-bench-datapath [--seconds N] [--reps N] [--streams N] [--ab-notrack] [--no-pin]
//!                          [--congestion ALGO]
//!
//! The iperf3 client runs on CPU 0 and the server on CPU 1 (`iperf3 -A 0,1`),
//! as on two machines, unless `--no-pin` (or a single CPU): left to the
//! scheduler, the placement changes from run to run and with it the
//! underlay figure by up to 40%.
//!
//! TCP congestion control: the senders use `--congestion` (`iperf3 -C`),
//! by default the nodes' own default, which a new network namespace takes
//! from the host (`net.ipv4.tcp_congestion_control`), and which is printed.
//! It matters: BBR paces, and on a 2-vCPU machine it holds the underlay to
//! about 17 Gbit/s where CUBIC, the kernel's default, reaches about 28.
//!
//! `--ab-notrack` measures the agent's untracked tunnel packets
//! (`--vxlan-notrack`) against tracked ones in the same run: every rep runs
//! the overlay once with the notrack chains filled and once with them
//! emptied (the order alternating), then the underlay.
//!
//! Wrapped by scripts/bench-datapath.sh (which builds in release first).

use std::net::IpAddr;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use trellis_tests::cluster::{ping, result_ip6, Cluster, ClusterSpec};
use trellis_tests::libcni::median;
use trellis_tests::netns::Netns;

struct Options {
    seconds: u32,
    reps: usize,
    streams: u32,
    ab_notrack: bool,
    /// CPUs of the iperf3 client and server (`iperf3 -A c,s`).
    pin: Option<(usize, usize)>,
    /// `iperf3 -C`: the senders' congestion control.
    congestion: Option<String>,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        seconds: 3,
        reps: 7,
        streams: 1,
        ab_notrack: false,
        pin: (std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2).then_some((0, 1)),
        congestion: None,
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
            "--ab-notrack" => opts.ab_notrack = true,
            "--no-pin" => opts.pin = None,
            "--congestion" => {
                let algo = args
                    .next()
                    .context("--congestion needs a name (cubic, bbr, ...)")?;
                if algo.is_empty() || !algo.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    bail!("--congestion {algo:?}: not an algorithm name");
                }
                opts.congestion = Some(algo);
            }
            "-h" | "--help" => {
                println!(
                    "usage: trellis-bench-datapath [--seconds N] [--reps N] [--streams N] [--ab-notrack] [--no-pin] [--congestion ALGO]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !(1..=60).contains(&opts.seconds) || !(1..=30).contains(&opts.reps) {
        bail!("--seconds is 1 to 60 and --reps 1 to 30");
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
    let mut spec = ClusterSpec::default().nodes(2);
    spec.config.ipv6_network = Some("fd10:244::/56".parse()?);
    if opts.ab_notrack {
        // The bench empties and fills the notrack chains itself: no resync
        // may put them back in between.
        spec.agent_args = vec!["--resync-interval".into(), "86400".into()];
    }
    let port = spec.config.port;
    let cluster = Cluster::start(spec)?;
    let pod_a = cluster.add_pod(0, "bench-a")?;
    let pod_b = cluster.add_pod(1, "bench-b")?;
    let (node_a, node_b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let node_b_ip = IpAddr::V4(node_b.underlay_ip);
    let node_a_ip = IpAddr::V4(node_a.underlay_ip);
    let ipv6_of =
        |result: &serde_json::Value| result_ip6(result).context("the pod has no IPv6 address");
    let (pod_a6, pod_b6) = (ipv6_of(&pod_a.result)?, ipv6_of(&pod_b.result)?);
    ping(&pod_a.netns, pod_b.ip)?;
    ping(&pod_a.netns, pod_b6)?;
    ping(&node_a.netns, node_b_ip)?;

    let _server_pod = IperfServer::start(&pod_b.netns, pod_b.ip, 5201)?;
    let _server_pod6 = IperfServer::start(&pod_b.netns, pod_b6, 5202)?;
    let _server_node = IperfServer::start(&node_b.netns, node_b_ip, 5201)?;

    println!(
        "data path: {} s TCP per run, {} stream(s), {} runs each, alternating",
        opts.seconds, opts.streams, opts.reps
    );
    match opts.pin {
        Some((c, s)) => println!("iperf3 client on CPU {c}, server on CPU {s}"),
        None => println!("iperf3 placement left to the scheduler"),
    }
    match &opts.congestion {
        Some(algo) => println!("TCP congestion control: {algo} (--congestion)"),
        None => println!(
            "TCP congestion control: {} (the nodes' default; choose with --congestion)",
            node_a
                .netns
                .ok(&["sysctl", "-n", "net.ipv4.tcp_congestion_control"])?
                .trim()
        ),
    }
    println!(
        "mtu: underlay {} / pod {}",
        link_mtu(&node_a.netns, "eth0")?,
        link_mtu(&pod_a.netns, "eth0")?
    );
    if opts.ab_notrack {
        return ab_notrack(&cluster, &pod_a.netns, pod_b.ip, node_b_ip, port, &opts);
    }
    let mut overlay = Vec::new();
    let mut overlay6 = Vec::new();
    let mut underlay = Vec::new();
    for rep in 0..opts.reps {
        let o = iperf(&pod_a.netns, pod_b.ip, 5201, &opts)?;
        let o6 = iperf(&pod_a.netns, pod_b6, 5202, &opts)?;
        let u = iperf(&node_a.netns, node_b_ip, 5201, &opts)?;
        println!(
            "  run {}: overlay IPv4 {:>7.2} Gbit/s   overlay IPv6 {:>7.2} Gbit/s   underlay {:>7.2} Gbit/s",
            rep + 1,
            o / 1e9,
            o6 / 1e9,
            u / 1e9
        );
        overlay.push(o);
        overlay6.push(o6);
        underlay.push(u);
    }
    let (o, o6, u) = (median(&overlay), median(&overlay6), median(&underlay));
    println!(
        "throughput (median): overlay pod->pod {:.2} Gbit/s, underlay node->node {:.2} Gbit/s, ratio {:.2}",
        o / 1e9,
        u / 1e9,
        o / u
    );
    println!(
        "throughput (median): overlay pod->pod over IPv6 {:.2} Gbit/s, ratio to underlay {:.2}, to IPv4 pod->pod {:.2}",
        o6 / 1e9,
        o6 / u,
        o6 / o
    );

    let lat = [
        ("overlay  pod A -> pod B ", rtt_ms(&pod_a.netns, pod_b.ip)?),
        ("overlay  pod B -> pod A ", rtt_ms(&pod_b.netns, pod_a.ip)?),
        ("overlay6 pod A -> pod B ", rtt_ms(&pod_a.netns, pod_b6)?),
        ("overlay6 pod B -> pod A ", rtt_ms(&pod_b.netns, pod_a6)?),
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

/// Overlay with the tunnel packets untracked and tracked, alternating, and
/// the underlay; medians and ratios.
fn ab_notrack(
    cluster: &Cluster,
    pod_a: &Netns,
    pod_b: IpAddr,
    node_b: IpAddr,
    port: u16,
    opts: &Options,
) -> Result<()> {
    let set = |on: bool| -> Result<()> {
        for node in &cluster.nodes {
            set_notrack(node, on, port)?;
        }
        Ok(())
    };
    let (mut untracked, mut tracked, mut underlay) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..opts.reps {
        let mut pair = [(true, 0.0), (false, 0.0)];
        if rep % 2 == 1 {
            pair.reverse();
        }
        for (on, bps) in pair.iter_mut() {
            set(*on)?;
            *bps = iperf(pod_a, pod_b, 5201, opts)?;
        }
        let u = iperf(&cluster.nodes[0].netns, node_b, 5201, opts)?;
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

/// An iperf3 server in a namespace, stopped with it.
struct IperfServer;

impl IperfServer {
    fn start(ns: &Netns, bind: IpAddr, port: u16) -> Result<IperfServer> {
        let bind = bind.to_string();
        let port_text = port.to_string();
        let mut cmd = ns.command(&["iperf3", "-s", "-B", &bind, "-p", &port_text]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ns.spawn_command(cmd)
            .context("starting iperf3 (install iperf3: scripts/setup.sh)")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ns.exec(&["ss", "-Htln", "sport", "=", &format!(":{port}")]);
            if String::from_utf8_lossy(&out.stdout).contains(&port_text) {
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
fn iperf(client: &Netns, server: IpAddr, port: u16, opts: &Options) -> Result<f64> {
    let server = server.to_string();
    let seconds = opts.seconds.to_string();
    let streams = opts.streams.to_string();
    let mut argv = vec![
        "timeout".to_string(),
        (opts.seconds + 20).to_string(),
        "iperf3".into(),
        "-c".into(),
        server.clone(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        seconds,
        "-P".into(),
        streams,
        "-J".into(),
    ];
    if let Some(algo) = &opts.congestion {
        argv.extend(["-C".into(), algo.clone()]);
    }
    if let Some((c, s)) = opts.pin {
        argv.extend(["-A".into(), format!("{c},{s}")]);
    }
    let out: Output = client.exec(&argv);
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
