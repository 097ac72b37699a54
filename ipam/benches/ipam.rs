//! Allocation speed, printed side by side with the reference `host-local`
//! in the same run (never asserted). Run through `scripts/bench-ipam.sh`;
//! it starts its own etcd on 127.0.0.1 (the test harness's) and reads:
//!   TRELLIS_BENCH_IPAM        the trellis-ipam binary (release build)
//!   TRELLIS_BENCH_HOST_LOCAL  host-local (default /usr/lib/cni/host-local)
//!   TRELLIS_BENCH_N           calls per measurement (default 200)
//!   TRELLIS_BENCH_ROUNDS      bursts per plugin (default 3, median shown)
//!
//! Every measurement interleaves the contenders call by call (and burst by
//! burst), so a busy moment of the machine hits all of them alike.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One plugin invocation; panics on failure (a benchmark of failures is
/// worthless).
fn invoke(bin: &Path, command: &str, id: &str, conf: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_PATH", bin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin starts");
    child.stdin.take().unwrap().write_all(conf).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} {command} {id} failed: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// A plugin and its configuration.
struct Contender {
    name: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
    add: Vec<Duration>,
    del: Vec<Duration>,
    bursts: Vec<Duration>,
}

impl Contender {
    fn new(name: &'static str, bin: &Path, conf: Value) -> Contender {
        Contender {
            name,
            bin: bin.to_path_buf(),
            conf: conf.to_string().into_bytes(),
            add: Vec::new(),
            del: Vec::new(),
            bursts: Vec::new(),
        }
    }

    fn call(&self, command: &str, id: &str) -> Duration {
        invoke(&self.bin, command, id, &self.conf)
    }

    /// `n` concurrent calls, one process each; the wall time of all.
    fn burst(&self, command: &str, ids: &[String]) -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for id in ids {
                s.spawn(move || self.call(command, id));
            }
        });
        start.elapsed()
    }
}

/// `<bench> --put-once <endpoint> <key>`: the least an exec'd etcd client
/// does (runtime, connection, one put), the reference for one ADD.
fn put_once(endpoint: &str, key: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        c.put(key, r#"{"containerID":"x","ifname":"eth0"}"#, None)
            .await
            .unwrap();
    });
}

fn put_in_new_process(endpoint: &str, key: &str) -> Duration {
    let start = Instant::now();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--put-once", endpoint, key])
        .status()
        .unwrap();
    assert!(status.success());
    start.elapsed()
}

/// Round trips of a bare etcd put on a warm connection and with a fresh
/// connection each time, in this process.
fn etcd_put_rtt(endpoint: &str, n: usize) -> (Stats, Stats) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        for i in 0..20 {
            client
                .put(format!("/bench/warmup/{i}"), "x", None)
                .await
                .unwrap();
        }
        let mut warm = Vec::new();
        let mut cold = Vec::new();
        for i in 0..n {
            let start = Instant::now();
            client
                .put(
                    format!("/bench/put/{i}"),
                    r#"{"containerID":"x","ifname":"eth0"}"#,
                    None,
                )
                .await
                .unwrap();
            warm.push(start.elapsed());
            let start = Instant::now();
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            c.put(format!("/bench/cold/{i}"), "x", None).await.unwrap();
            cold.push(start.elapsed());
        }
        (stats(warm), stats(cold))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--put-once") {
        put_once(&args[2], &args[3]);
        return;
    }
    let etcd = trellis_tests::etcd::Etcd::start().expect("etcd starts");
    let endpoint = etcd.endpoint();
    let ipam = PathBuf::from(env_or("TRELLIS_BENCH_IPAM", "target/release/trellis-ipam"));
    let host_local = PathBuf::from(env_or(
        "TRELLIS_BENCH_HOST_LOCAL",
        "/usr/lib/cni/host-local",
    ));
    let n: usize = env_or("TRELLIS_BENCH_N", "200")
        .parse()
        .expect("TRELLIS_BENCH_N");
    let rounds: usize = env_or("TRELLIS_BENCH_ROUNDS", "3")
        .parse()
        .expect("TRELLIS_BENCH_ROUNDS");
    let scratch = tempfile::Builder::new()
        .prefix("trellis-bench-ipam-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();

    let state = dir.join("state");
    trellis_common::node::write_node_record(
        &state,
        &serde_json::from_value(json!({"subnet": "10.244.0.0/22", "publicIP": "192.0.2.7",
            "vtepMAC": "02:00:00:00:00:07", "nodeName": "bench-node"}))
        .unwrap(),
    )
    .unwrap();
    // Debian's host-local speaks up to 1.0.0: everyone gets 1.0.0.
    let mut contenders = [
        Contender::new(
            "trellis-ipam (etcd)",
            &ipam,
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "trellis", "stateDir": state,
                   "ipam": {"type": "trellis-ipam", "etcdEndpoints": [endpoint]}}),
        ),
        Contender::new(
            "trellis-ipam (local)",
            &ipam,
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "trellis",
                   "ipam": {"type": "trellis-ipam", "subnet": "10.91.0.0/16",
                            "dataDir": dir.join("local")}}),
        ),
        Contender::new(
            "host-local",
            &host_local,
            json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
                   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.92.0.0/16"}]],
                            "dataDir": dir.join("host-local")}}),
        ),
    ];

    println!("trellis-ipam benchmark: {n} calls per measurement, one process per call,");
    println!("contenders interleaved call by call; bursts: median of {rounds}");
    println!("  trellis-ipam: {}", ipam.display());
    println!("  host-local:   {}", host_local.display());
    println!(
        "  etcd:         {endpoint}, data in {}",
        etcd.data_dir().display()
    );
    println!("  stores:       {}", dir.display());
    println!();

    let (warm, cold) = etcd_put_rtt(&endpoint, n);
    // Warm-up: page cache, etcd's first compactions, host-local's directory.
    for c in &contenders {
        for i in 0..5 {
            c.call("ADD", &format!("warm-{i}"));
            c.call("DEL", &format!("warm-{i}"));
        }
    }
    let mut process_put = Vec::new();
    let mut floor_ipam = Vec::new();
    let mut floor_hl = Vec::new();
    for i in 0..n {
        let id = format!("seq-{i}");
        for c in contenders.iter_mut() {
            let t = c.call("ADD", &id);
            c.add.push(t);
        }
        process_put.push(put_in_new_process(
            &endpoint,
            &format!("/bench/process/{i}"),
        ));
        floor_ipam.push(invoke(&ipam, "VERSION", "-", b""));
        floor_hl.push(invoke(&host_local, "VERSION", "-", b""));
    }
    for i in 0..n {
        let id = format!("seq-{i}");
        for c in contenders.iter_mut() {
            let t = c.call("DEL", &id);
            c.del.push(t);
        }
    }
    for round in 0..rounds {
        let ids: Vec<String> = (0..n).map(|i| format!("burst{round}-{i}")).collect();
        for c in contenders.iter_mut() {
            let t = c.burst("ADD", &ids);
            c.bursts.push(t);
            c.burst("DEL", &ids);
        }
    }

    let process_put = stats(process_put);
    let row = |name: &str, s: &Stats| {
        println!("{:<30} {:>10.3} {:>10.3}", name, ms(s.median), ms(s.p99));
    };
    println!("{:<30} {:>10} {:>10}", "reference", "median ms", "p99 ms");
    row("etcd put, warm connection", &warm);
    row("etcd put, new connection", &cold);
    row("etcd put, new process", &process_put);
    row("trellis-ipam VERSION (exec)", &stats(floor_ipam));
    row("host-local VERSION (exec)", &stats(floor_hl));
    println!();
    println!(
        "{:<22} {:>11} {:>9} {:>11} {:>9} {:>13}",
        "plugin", "ADD median", "ADD p99", "DEL median", "DEL p99", "burst ms"
    );
    let mut summary = Vec::new();
    for c in &contenders {
        let (add, del) = (stats(c.add.clone()), stats(c.del.clone()));
        let burst = stats(c.bursts.clone()).median;
        println!(
            "{:<22} {:>11.3} {:>9.3} {:>11.3} {:>9.3} {:>13.1}",
            c.name,
            ms(add.median),
            ms(add.p99),
            ms(del.median),
            ms(del.p99),
            ms(burst)
        );
        summary.push((c.name, add, burst));
    }
    let (_, hl_add, hl_burst) = &summary[2];
    println!();
    for (name, add, burst) in &summary[..2] {
        println!(
            "{name}: ADD median {:.2}x host-local's; burst of {n} {:.2}x host-local's ({})",
            ms(add.median) / ms(hl_add.median),
            ms(*burst) / ms(*hl_burst),
            if burst < hl_burst { "faster" } else { "slower" }
        );
    }
    let etcd_add = &summary[0].1;
    println!(
        "trellis-ipam (etcd): ADD median {:+.3} ms from a bare etcd put in a new process (target: within 2 ms), {:+.3} ms from a warm put round trip",
        ms(etcd_add.median) - ms(process_put.median),
        ms(etcd_add.median) - ms(warm.median),
    );
}
