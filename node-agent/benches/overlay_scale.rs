//! Scale benchmark of `trellis-agent` (run as root: `scripts/bench-agent.sh`
//! or `cargo bench -p trellis-agent --bench overlay_scale -- 1000 5000`).
//!
//! In a network namespace made for the run (a veth pair as the underlay,
//! etcd on the namespace's loopback, the release agent binary), K fake
//! remote node records are written in one etcd transaction; the time until
//! the kernel holds all K FDB, neighbour, nexthop and route entries is measured, then
//! the K records are deleted in one request and the time until none is left
//! is measured. Medians over RUNS (default 3) runs; the agent's own
//! reconcile time (from /metrics), the same writes (FDB entry, neighbour, nexthop and route per node) through `ip -batch` /
//! `bridge -batch` as a reference, and the agent's resident memory.
//!
//! The whole measurement runs on one thread that joined the namespace
//! (trellis_kernel::netns::run_in_netns) with its own runtime, so the etcd
//! client and the netlink dumps live in the namespace; nothing touches the
//! host's network, and the namespace is deleted at the end, also on failure.

use etcd_client::{Client, DeleteOptions, Txn, TxnOp};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_kernel::netns::{run_in_netns, NetnsFile};
use trellis_kernel::Netlink;

const DEV: &str = "trellis.1";
const METRICS: &str = "127.0.0.1:9464";

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(ns: &str, args: &[&str]) {
    let st = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .status()
        .expect("running ip netns exec");
    assert!(st.success(), "{args:?} failed");
}

fn spawn_in(ns: &str, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning");
    Proc(child)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fake(i: u32) -> (String, String, String, String) {
    let (a, b) = ((i >> 8) + 1, i & 255);
    (
        format!("10.{a}.{b}.0/24"),
        format!("172.16.{a}.{b}"),
        format!("02:00:00:00:{a:02x}:{b:02x}"),
        format!("10.{a}.{b}.0"),
    )
}

/// FDB entries, permanent neighbours, routes and nexthop objects on the
/// device.
async fn counts(nl: &Netlink, ifindex: u32) -> (usize, usize, usize, usize) {
    let f = nl.fdb_entries(ifindex).await.unwrap().len();
    let n = nl
        .neighbours_on(ifindex)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.permanent)
        .count();
    let nexthops: std::collections::HashSet<u32> = nl
        .nexthops_on_device(ifindex)
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    let r = nl
        .routes_on_devices(&[ifindex], &nexthops)
        .await
        .unwrap()
        .len();
    (f, n, r, nexthops.len())
}

/// Poll the kernel until it holds `want` of each kind; the time it took
/// since `t0`.
async fn wait_counts(nl: &Netlink, ifindex: u32, want: usize, t0: Instant) -> Duration {
    let deadline = t0 + Duration::from_secs(120);
    loop {
        if counts(nl, ifindex).await == (want, want, want, want) {
            return t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "kernel never reached {want} entries"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn last_reconcile_ms() -> f64 {
    let mut s = std::net::TcpStream::connect(METRICS).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("trellis_agent_last_reconcile_duration_seconds "))
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1000.0
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

/// The same entries the agent writes (and their removal) as iproute2
/// batch files: per node an FDB entry, a neighbour, a nexthop object and a
/// route through it; removed routes first, then the nexthops no longer in
/// use (as the agent does: deleting a nexthop still in use makes the kernel
/// flush its routing tables, once per nexthop).
fn write_batches(dir: &Path, k: u32) -> [PathBuf; 4] {
    let mut fdb = String::new();
    let mut ip = String::new();
    let mut fdb_del = String::new();
    let mut ip_del = String::new();
    let mut nexthop_del = String::new();
    for i in 1..=k {
        let (subnet, public, mac, vtep) = fake(i);
        fdb += &format!("fdb replace {mac} dev {DEV} dst {public} self permanent\n");
        ip += &format!("neigh replace {vtep} lladdr {mac} dev {DEV} nud permanent\n");
        let id = u32::from(vtep.parse::<std::net::Ipv4Addr>().unwrap());
        ip += &format!("nexthop replace id {id} via {vtep} dev {DEV} onlink\n");
        ip += &format!("route replace {subnet} nhid {id}\n");
        fdb_del += &format!("fdb del {mac} dev {DEV} dst {public} self\n");
        ip_del += &format!("neigh del {vtep} dev {DEV}\n");
        ip_del += &format!("route del {subnet} nhid {id}\n");
        nexthop_del += &format!("nexthop del id {id}\n");
    }
    ip_del += &nexthop_del;
    let paths = ["fdb", "ip", "fdb-del", "ip-del"].map(|n| dir.join(format!("{n}.batch")));
    for (p, text) in paths.iter().zip([fdb, ip, fdb_del, ip_del]) {
        std::fs::write(p, text).unwrap();
    }
    paths
}

fn timed_batch(ns: &str, tool: &str, file: &Path) -> Duration {
    let t0 = Instant::now();
    sh(ns, &[tool, "-batch", file.to_str().unwrap()]);
    t0.elapsed()
}

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 5000]
    } else {
        sizes
    };
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let joins: u32 = std::env::var("JOINS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let agent = std::env::var("TRELLIS_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_trellis-agent").to_string());

    let ns = Namespace(format!("trl-bench-agent-{}", std::process::id()));
    let st = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap();
    assert!(st.success(), "ip netns add (root needed)");
    for cmd in [
        "ip link set lo up",
        "ip link add eth0 type veth peer name eth0-peer",
        "ip link set eth0-peer up",
        "ip addr add 192.0.2.1/24 dev eth0",
        "ip link set eth0 up",
    ] {
        sh(&ns.0, &cmd.split(' ').collect::<Vec<_>>());
    }
    let work = tempfile::Builder::new()
        .prefix("trl-bench-agent-")
        .tempdir()
        .unwrap();
    let dir = work.path();
    let data = dir.join("etcd");
    let _etcd = spawn_in(
        &ns.0,
        &[
            "etcd",
            "--name",
            "bench",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "bench=http://127.0.0.1:2380",
            "--max-txn-ops",
            "100000",
            "--max-request-bytes",
            "33554432",
            "--quota-backend-bytes",
            "4294967296",
            "--log-level",
            "error",
        ],
        &dir.join("etcd.log"),
        &[],
    );
    let nsfile = NetnsFile::open(&Path::new("/run/netns").join(&ns.0)).unwrap();
    let ns_name = ns.0.clone();
    let dir = dir.to_path_buf();
    run_in_netns(&nsfile, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(bench(&ns_name, &dir, &agent, &sizes, runs, joins));
    })
    .unwrap();
}

async fn bench(ns: &str, dir: &Path, agent: &str, sizes: &[u32], runs: usize, joins: u32) {
    let mut client = None;
    for _ in 0..100 {
        if let Ok(mut c) = Client::connect(["http://127.0.0.1:2379"], None).await {
            if c.status().await.is_ok() {
                client = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("etcd did not start");
    client
        .put(
            "/trellis/config",
            r#"{"network":"10.0.0.0/8","subnetLen":24,"vni":1,"port":8472}"#,
            None,
        )
        .await
        .unwrap();
    let state = dir.join("state");
    let agent = spawn_in(
        ns,
        &[
            agent,
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--node-name",
            "bench-node",
            "--iface",
            "eth0",
            "--state-dir",
            state.to_str().unwrap(),
            "--ip-masq=false",
            "--ipam-gc-interval",
            "0",
            "--metrics-addr",
            METRICS,
        ],
        &dir.join("agent.log"),
        &[("RUST_LOG", "warn")],
    );
    // `ip netns exec` execs the agent in place: the child is the agent.
    let pid = agent.0.id();
    let nl = Netlink::current().unwrap();
    let mut ifindex = None;
    for _ in 0..200 {
        if state.join("node.json").exists() {
            if let Ok(Some(dev)) = nl.vxlan_device(DEV).await {
                ifindex = Some(dev.index);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ifindex = ifindex.unwrap_or_else(|| {
        panic!(
            "agent did not start: {}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        )
    });

    println!(
        "{:>6} {:>9} {:>9} {:>13} {:>13} {:>13} {:>13} {:>9} {:>8}",
        "K",
        "add_ms",
        "del_ms",
        "agent_add_ms",
        "agent_del_ms",
        "ipbatch_add",
        "ipbatch_del",
        "add/ip",
        "rss_MiB"
    );
    for &k in sizes {
        assert!(k <= 65_000, "K at most 65000");
        let puts: Vec<TxnOp> = (1..=k)
            .map(|i| {
                let (subnet, public, mac, _) = fake(i);
                TxnOp::put(
                    format!("/trellis/nodes/fake-{i}"),
                    format!(r#"{{"subnet":"{subnet}","publicIP":"{public}","vtepMAC":"{mac}"}}"#),
                    None,
                )
            })
            .collect();
        let batches = write_batches(dir, k);
        let (mut adds, mut dels, mut agent_adds, mut agent_dels, mut ip_adds, mut ip_dels) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let t0 = Instant::now();
            client.txn(Txn::new().and_then(puts.clone())).await.unwrap();
            adds.push(
                wait_counts(&nl, ifindex, k as usize, t0)
                    .await
                    .as_secs_f64()
                    * 1e3,
            );
            agent_adds.push(last_reconcile_ms());
            let t0 = Instant::now();
            client
                .delete(
                    "/trellis/nodes/fake-",
                    Some(DeleteOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            dels.push(wait_counts(&nl, ifindex, 0, t0).await.as_secs_f64() * 1e3);
            agent_dels.push(last_reconcile_ms());

            // Reference: iproute2 batches, the agent frozen meanwhile.
            nix_kill(pid, "STOP");
            let add = timed_batch(ns, "bridge", &batches[0]) + timed_batch(ns, "ip", &batches[1]);
            let k = k as usize;
            assert_eq!(counts(&nl, ifindex).await, (k, k, k, k));
            let del = timed_batch(ns, "bridge", &batches[2]) + timed_batch(ns, "ip", &batches[3]);
            assert_eq!(counts(&nl, ifindex).await, (0, 0, 0, 0));
            nix_kill(pid, "CONT");
            ip_adds.push(add.as_secs_f64() * 1e3);
            ip_dels.push(del.as_secs_f64() * 1e3);
        }
        let (add, ipadd) = (median(adds), median(ip_adds));
        println!(
            "{:>6} {:>9.0} {:>9.0} {:>13.0} {:>13.0} {:>13.0} {:>13.0} {:>9.2} {:>8.1}",
            k,
            add,
            median(dels),
            median(agent_adds),
            median(agent_dels),
            ipadd,
            median(ip_dels),
            add / ipadd,
            rss_mib(pid, "VmRSS:")
        );
    }
    println!(
        "agent peak RSS (VmHWM) {:.1} MiB; medians of {runs} runs; add/del_ms: from the etcd write to the kernel dump showing all/none of the K FDB, neighbour, nexthop and route entries",
        rss_mib(pid, "VmHWM:")
    );
    if joins > 0 {
        let present = *sizes.iter().max().expect("at least one size");
        churn(&mut client, &nl, ifindex, pid, present, joins).await;
        println!(
            "agent peak RSS (VmHWM) {:.1} MiB after the joins",
            rss_mib(pid, "VmHWM:")
        );
    }
    drop(agent);
}

/// With `present` remote nodes in place, `joins` more nodes join one at a
/// time and each leaves again: from the etcd put (its own time taken off)
/// to the kernel routing the node's subnet over the VXLAN device, and from
/// the delete to the route gone. Looked up with one route request each
/// poll, not a dump.
async fn churn(
    client: &mut Client,
    nl: &Netlink,
    ifindex: u32,
    pid: u32,
    present: u32,
    joins: u32,
) {
    let puts: Vec<TxnOp> = (1..=present)
        .map(|i| TxnOp::put(record_key(i), record(i), None))
        .collect();
    client.txn(Txn::new().and_then(puts)).await.unwrap();
    wait_counts(nl, ifindex, present as usize, Instant::now()).await;
    // Let the agent finish with the bulk write before timing single joins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = cpu_ms(pid);
    let (mut join_ms, mut leave_ms) = (Vec::new(), Vec::new());
    for i in present + 1..=present + joins {
        let (_, _, _, vtep) = fake(i);
        let probe: std::net::IpAddr = vtep
            .parse::<std::net::Ipv4Addr>()
            .map(|a| std::net::Ipv4Addr::from(u32::from(a) + 1).into())
            .unwrap();
        let t0 = Instant::now();
        client.put(record_key(i), record(i), None).await.unwrap();
        let put = t0.elapsed();
        wait_route(nl, probe, ifindex, true, t0).await;
        join_ms.push((t0.elapsed() - put).as_secs_f64() * 1e3);
        let t0 = Instant::now();
        client.delete(record_key(i), None).await.unwrap();
        let del = t0.elapsed();
        wait_route(nl, probe, ifindex, false, t0).await;
        leave_ms.push((t0.elapsed() - del).as_secs_f64() * 1e3);
    }
    let cpu = cpu_ms(pid) - cpu0;
    client
        .delete(
            "/trellis/nodes/fake-",
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    wait_counts(nl, ifindex, 0, Instant::now()).await;
    println!(
        "{present} remote nodes present, {joins} joins one at a time: join {:.1} ms, leave {:.1} ms (medians, from the etcd write returning to the route there/gone; max {:.1} / {:.1} ms); agent CPU {:.2} ms per join and leave",
        median(join_ms.clone()),
        median(leave_ms.clone()),
        join_ms.iter().cloned().fold(0.0, f64::max),
        leave_ms.iter().cloned().fold(0.0, f64::max),
        cpu / joins as f64
    );
}

fn record_key(i: u32) -> String {
    format!("/trellis/nodes/fake-{i}")
}

fn record(i: u32) -> String {
    let (subnet, public, mac, _) = fake(i);
    format!(r#"{{"subnet":"{subnet}","publicIP":"{public}","vtepMAC":"{mac}"}}"#)
}

/// Poll until the route to `probe` leaves by the VXLAN device `ifindex`
/// (`there`) or no longer does.
async fn wait_route(nl: &Netlink, probe: std::net::IpAddr, ifindex: u32, there: bool, t0: Instant) {
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let route = nl.route_get(probe).await.unwrap();
        if route.and_then(|r| r.oif) == Some(ifindex) && there
            || route.and_then(|r| r.oif) != Some(ifindex) && !there
        {
            return;
        }
        assert!(Instant::now() < deadline, "route to {probe} never changed");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The agent's CPU time so far (user + system).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's HZ.
    ticks * 10.0
}

fn nix_kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
