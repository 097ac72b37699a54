//! Names under load: the agents' DNS on a two-node cluster against
//! aardvark-dns (podman's name server, Debian's `aardvark-dns`) answering
//! the same name on one host, in one run. Each side gets the same load:
//! two clients at `--rate / 2` queries per second each for `--secs`
//! seconds, asking an A record of a container's bare name. On trellis the
//! clients are pods of a named network (`trellisctl network create`) on
//! the two nodes, each asking its own node's gateway on it;
//! on aardvark-dns they are two namespaces on its bridge asking its gateway.
//! Prints answered/failed counts and latency p50/p99/max per side and the
//! ratios. Wrapped by scripts/bench-dns.sh (release binaries).
//!
//!   trellis-bench-dns [--rate 1000] [--secs 10]
//!
//! `trellis-bench-dns query SERVER NAME RATE SECS` is the client, run by
//! the benchmark inside a client's namespace: it prints one JSON line,
//! `{"sent","answered","failed","latencies_us":[...]}`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use trellis_tests::cluster::{Cluster, ClusterSpec, Pod};
use trellis_tests::netns::{attach_to_bridge, Netns};

/// aardvark-dns as Debian installs it for podman.
const AARDVARK: &str = "/usr/lib/podman/aardvark-dns";
/// The name both servers answer.
const NAME: &str = "web";
/// The named network the trellis side runs on.
const NETWORK: &str = "multihost";
/// A query without an answer by then is a failure.
const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("query") {
        let [_, server, name, rate, secs] = args.as_slice() else {
            bail!("usage: trellis-bench-dns query SERVER NAME RATE SECS");
        };
        let report = query(server.parse()?, name, rate.parse()?, secs.parse()?)?;
        println!("{report}");
        return Ok(());
    }
    let mut rate = 1000u32;
    let mut secs = 10u32;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => rate = value.parse()?,
            "--secs" => secs = value.parse()?,
            _ => bail!("unknown flag {flag} (--rate N, --secs N)"),
        }
    }
    if !trellis_tests::netns::is_root() {
        bail!("run as root (it creates network namespaces)");
    }
    let per_client = (rate / 2).max(1);
    println!(
        "DNS: A {NAME}, 2 clients x {per_client} queries/s for {secs} s each side \
         (answer timeout {} s)",
        TIMEOUT.as_secs()
    );
    let trellis = trellis_side(per_client, secs)?;
    let aardvark = aardvark_side(per_client, secs)?;
    println!(
        "\n{:<34} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "server", "answered", "failed", "p50 ms", "p99 ms", "max ms"
    );
    for (label, side) in [
        ("trellis-agent (2 nodes, named net)", &trellis),
        ("aardvark-dns 1.4 (one host)", &aardvark),
    ] {
        println!(
            "{label:<34} {:>8} {:>7} {:>9.3} {:>9.3} {:>9.3}",
            side.answered,
            side.failed,
            side.percentile(50.0),
            side.percentile(99.0),
            side.percentile(100.0)
        );
    }
    println!(
        "ratio trellis/aardvark: p50 {:.2}, p99 {:.2}",
        trellis.percentile(50.0) / aardvark.percentile(50.0),
        trellis.percentile(99.0) / aardvark.percentile(99.0)
    );
    if trellis.failed > 0 || aardvark.failed > 0 {
        bail!(
            "queries failed: trellis {}, aardvark-dns {}",
            trellis.failed,
            aardvark.failed
        );
    }
    Ok(())
}

/// What the clients of one side saw, together.
#[derive(Default)]
struct Side {
    answered: u64,
    failed: u64,
    /// Milliseconds, sorted.
    latencies: Vec<f64>,
}

impl Side {
    fn add(&mut self, report: &serde_json::Value) -> Result<()> {
        self.answered += report["answered"].as_u64().context("answered")?;
        self.failed += report["failed"].as_u64().context("failed")?;
        let lat = report["latencies_us"].as_array().context("latencies_us")?;
        self.latencies
            .extend(lat.iter().filter_map(|v| v.as_f64()).map(|us| us / 1000.0));
        self.latencies.sort_by(f64::total_cmp);
        Ok(())
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Runs the clients at once, each `query SERVER NAME RATE SECS` in its
/// namespace, and adds up what they saw.
fn run_clients(clients: &[(&Netns, IpAddr)], rate: u32, secs: u32) -> Result<Side> {
    let me = std::env::current_exe()?;
    let children: Vec<Child> = clients
        .iter()
        .map(|(ns, server)| {
            let mut cmd = ns.command(&[me.as_os_str()]);
            cmd.args(["query", &server.to_string(), NAME])
                .args([rate.to_string(), secs.to_string()])
                .stdout(Stdio::piped());
            cmd.spawn().context("starting a query client")
        })
        .collect::<Result<_>>()?;
    let mut side = Side::default();
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("a query client failed: {out:?}");
        }
        side.add(&serde_json::from_slice(&out.stdout)?)?;
    }
    Ok(side)
}

/// The seed's setup: a named network made with `trellisctl network
/// create`, the pods attached through the conflists the agents write for
/// it, each client asking its own node's gateway on the network.
fn trellis_side(rate: u32, secs: u32) -> Result<Side> {
    let cluster = Cluster::start(ClusterSpec::default().nodes(2))?;
    let made = trellis_tests::ctl::ctl(
        &cluster,
        &["network", "create", NETWORK, "--subnet", "10.0.0.0/16"],
    );
    if !made.status.success() {
        bail!("trellisctl network create: {made:?}");
    }
    trellis_tests::wait::wait_until(Duration::from_secs(30), "the network on both nodes", || {
        Ok(cluster
            .nodes
            .iter()
            .all(|n| n.network_record(NETWORK).is_some() && n.network_conflist(NETWORK).exists()))
    })?;
    let add = |node: usize, name: &str| -> Result<Pod> {
        let conflist = cluster.nodes[node].network_conflist(NETWORK);
        cluster
            .try_add_pod_with(node, name, &conflist)?
            .map_err(|f| anyhow::anyhow!("ADD {name}: {}", f.failure))
    };
    let web = add(0, NAME)?;
    let clients = [add(0, "client1")?, add(1, "client2")?];
    let gateways: Vec<IpAddr> = (0..2)
        .map(|n| {
            let record = cluster.nodes[n]
                .network_record(NETWORK)
                .context("no record")?;
            Ok(IpAddr::V4(record.gateway().context("an IPv4 network")?))
        })
        .collect::<Result<_>>()?;
    // Both agents answer the name before the clock starts.
    for (client, gw) in clients.iter().zip(&gateways) {
        wait_for_answer(&client.netns, *gw, "the agent's DNS")?;
    }
    let side = run_clients(
        &[
            (&clients[0].netns, gateways[0]),
            (&clients[1].netns, gateways[1]),
        ],
        rate,
        secs,
    )?;
    for pod in clients {
        cluster.del_pod(pod)?;
    }
    cluster.del_pod(web)?;
    Ok(side)
}

/// aardvark-dns on a bridge in a host namespace, as podman runs it: its
/// configuration directory holds one file per network, the gateway on the
/// first line, then `ID IPV4 IPV6 NAMES` per container.
fn aardvark_side(rate: u32, secs: u32) -> Result<Side> {
    if !Path::new(AARDVARK).exists() {
        bail!("{AARDVARK} is missing: apt-get install aardvark-dns (scripts/setup.sh)");
    }
    let host = Netns::new("advk")?;
    host.ok(&["ip", "link", "set", "lo", "up"])?;
    host.add_bridge("podman1", Some("10.89.0.1/24".parse()?))?;
    let mut clients = Vec::new();
    for i in 0..2u8 {
        let ns = Netns::new("advkc")?;
        attach_to_bridge(
            &host,
            "podman1",
            &format!("veth{i}"),
            &ns,
            "eth0",
            Some(format!("10.89.0.{}/24", 10 + i).parse()?),
        )?;
        clients.push(ns);
    }
    let config = tempfile::Builder::new().prefix("trl-aardvark-").tempdir()?;
    std::fs::write(
        config.path().join("podman1"),
        // The clients are containers of the network too: aardvark-dns
        // answers the containers it knows.
        format!(
            "10.89.0.1\n{} 10.89.0.2  {NAME}\n{} 10.89.0.10  client1\n{} 10.89.0.11  client2\n",
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64)
        ),
    )?;
    let mut server = host.spawn_command({
        let mut cmd = host.command(&[AARDVARK]);
        cmd.arg("--config")
            .arg(config.path())
            .args(["-p", "53", "run"])
            .stderr(Stdio::null());
        cmd
    })?;
    let gateway: IpAddr = "10.89.0.1".parse()?;
    // aardvark-dns forks; wait until it answers.
    let side = wait_for_answer(&clients[0], gateway, "aardvark-dns");
    let side = side.and_then(|()| {
        run_clients(
            &[(&clients[0], gateway), (&clients[1], gateway)],
            rate,
            secs,
        )
    });
    for pid in host.pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    side
}

/// Waits up to 5 s until `server` answers the name to a client in `ns`.
fn wait_for_answer(ns: &Netns, server: IpAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while query_once(ns, server).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not answer {NAME} on {server}:53 within 5 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One query from `ns`, through a client process of one query.
fn query_once(ns: &Netns, server: IpAddr) -> Result<()> {
    let me = std::env::current_exe()?;
    let out = ns
        .command(&[me.as_os_str()])
        .args(["query", &server.to_string(), NAME, "1", "1"])
        .output()?;
    if !out.status.success() {
        bail!("no answer");
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if report["answered"].as_u64() != Some(1) {
        bail!("no answer");
    }
    Ok(())
}

/// An A query for `name` with id `id`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, 1 question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    q
}

/// Sends `rate` queries per second for `secs` seconds to `server`:53 on
/// one socket, on a fixed schedule; an answer is a reply of the query's id
/// with NOERROR and at least one record.
fn query(server: IpAddr, name: &str, rate: u32, secs: u32) -> Result<serde_json::Value> {
    let total = (rate as usize) * (secs as usize);
    if total == 0 || total > u16::MAX as usize {
        bail!("rate x secs must be 1..65535 (one id per query)");
    }
    let socket = UdpSocket::bind(match server {
        IpAddr::V4(_) => "0.0.0.0:0",
        IpAddr::V6(_) => "[::]:0",
    })?;
    socket.connect(SocketAddr::new(server, 53))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let latencies: Arc<Mutex<Vec<u128>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let socket = socket.try_clone()?;
        let (sent_at, latencies, done) = (sent_at.clone(), latencies.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let now = Instant::now();
                if n < 12 {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                let Some(sent) = sent_at.lock().unwrap().get_mut(id).and_then(Option::take) else {
                    continue;
                };
                if rcode == 0 && answers > 0 && now - sent <= TIMEOUT {
                    latencies.lock().unwrap().push((now - sent).as_micros());
                }
            }
        })
    };
    let start = Instant::now();
    let interval = Duration::from_secs(1) / rate;
    for id in 0..total {
        let due = start + interval * id as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent_at.lock().unwrap()[id] = Some(Instant::now());
        socket.send(&a_query(id as u16, name))?;
    }
    std::thread::sleep(TIMEOUT);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    receiver.join().expect("receiver thread");
    let latencies = latencies.lock().unwrap().clone();
    let answered = latencies.len();
    Ok(json!({
        "sent": total,
        "answered": answered,
        "failed": total - answered,
        "latencies_us": latencies,
    }))
}
