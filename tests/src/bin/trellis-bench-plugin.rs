//! Pod setup and teardown: trellis against the reference `bridge` +
//! `host-local`, through the same libcni client, on one node, in the same
//! run. The node is a simulated cluster's (etcd, its agent), so trellis runs
//! in cluster mode as on a real node, and in single-host mode beside it.
//!
//!   trellis-bench-plugin [--n 40] [--rounds 3] [--burst 200] [--ip-masq] [--dual-stack]
//!
//! With `--dual-stack` the cluster has an `ipv6Network` and cluster mode
//! runs twice: dual-stack (an address of each family per ADD) and IPv4 only
//! (the same node's subnet pinned as `ipam.subnet`, which leaves the IPv6
//! twin out), so the cost of the second family is measured in one run.
//!
//! Sequential rounds (N ADDs, then N DELs; the contenders alternate, round
//! by round) give per-operation medians; a burst (B ADDs at once, then B
//! DELs at once, as a runtime starting many pods) gives wall times,
//! failures and addresses handed out twice. Wrapped by
//! scripts/bench-plugin.sh (release binaries).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use trellis_tests::bins;
use trellis_tests::cluster::{Cluster, ClusterSpec};
use trellis_tests::libcni::{median, write_conflist, BenchTimings, Driver};
use trellis_tests::netns::Netns;

struct Options {
    n: usize,
    rounds: usize,
    burst: usize,
    ip_masq: bool,
    dual_stack: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        n: 40,
        rounds: 3,
        burst: 200,
        ip_masq: false,
        dual_stack: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<usize> {
            args.next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--n" => o.n = number("--n")?,
            "--rounds" => o.rounds = number("--rounds")?,
            "--burst" => o.burst = number("--burst")?,
            "--ip-masq" => o.ip_masq = true,
            "--dual-stack" => o.dual_stack = true,
            "-h" | "--help" => {
                println!(
                    "usage: trellis-bench-plugin [--n N] [--rounds N] [--burst N] [--ip-masq] [--dual-stack]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if o.n == 0 || o.rounds == 0 {
        bail!("--n and --rounds must be at least 1");
    }
    Ok(o)
}

struct Contender {
    name: &'static str,
    conflist: PathBuf,
    rounds: Vec<BenchTimings>,
    burst: Option<BenchTimings>,
}

fn main() {
    if let Err(err) = run() {
        eprintln!("trellis-bench-plugin: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let o = options()?;
    eprintln!("starting etcd and a node with its agent...");
    let mut spec = ClusterSpec {
        nodes: 1,
        ip_masq: o.ip_masq,
        chain: Vec::new(),
        ..ClusterSpec::default()
    };
    if o.dual_stack {
        spec.config.ipv6_network = Some("fd10:244::/56".parse()?);
    }
    let cluster = Cluster::start(spec)?;
    let node = &cluster.nodes[0];
    let count = o.n.max(o.burst);
    eprintln!("making {count} pod namespaces...");
    let pods: Vec<Netns> = (0..count)
        .map(|_| Netns::new("bp"))
        .collect::<Result<_>>()?;
    let paths: Vec<PathBuf> = pods.iter().map(Netns::path).collect();

    // The reference plugins: the current release built for the Kubernetes
    // cluster when there, else Debian's.
    let kube_cni = bins::target_dir().join("kube/cni");
    let (reference_dir, reference_name) = if kube_cni.join("bridge").is_file() {
        (kube_cni, "v1.9.0 (target/kube/cni)")
    } else {
        (PathBuf::from(bins::REFERENCE_PLUGIN_DIR), "Debian's 1.1.1")
    };
    let driver = Driver::new(&node.netns, &[&reference_dir, cluster.cni_bin_dir()])?;
    let work = cluster.work_dir();

    let mut cluster_conf = cluster.conflist_for(&node.state_dir);
    cluster_conf["name"] = json!("bench-cluster");
    let single_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-single", "plugins": [{
            "type": "trellis", "bridge": "trellis1", "stateDir": work.join("single-state"),
            "ipMasq": o.ip_masq, "hairpinMode": true,
            "ipam": {"type": "trellis-ipam", "subnet": "10.88.0.0/16",
                     "dataDir": work.join("single-ipam")}}]});
    let reference_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-reference", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": true,
            "ipMasq": o.ip_masq, "hairpinMode": true,
            "ipam": {"type": "host-local", "subnet": "10.89.0.0/16",
                     "dataDir": work.join("host-local")}}]});
    let mut all = vec![("trellis, cluster mode (etcd)", cluster_conf.clone())];
    if o.dual_stack {
        all[0].0 = "trellis, cluster, dual-stack";
        let mut v4_only = cluster_conf;
        v4_only["name"] = json!("bench-cluster-v4");
        v4_only["plugins"][0]["ipam"]["subnet"] = json!(node.subnet()?.to_string());
        all.push(("trellis, cluster, IPv4 only", v4_only));
    }
    all.push(("trellis, single host", single_conf));
    all.push(("reference bridge + host-local", reference_conf));
    let mut contenders = Vec::new();
    for (name, conf) in all {
        let file = write_conflist(work, &file_name(name), &conf)?;
        contenders.push(Contender {
            name,
            conflist: file,
            rounds: Vec::new(),
            burst: None,
        });
    }

    eprintln!("warming up...");
    for c in &contenders {
        driver.bench(&c.conflist, &paths, 1)?;
    }
    for round in 0..o.rounds {
        eprintln!(
            "round {}/{}: {} ADDs then {} DELs each",
            round + 1,
            o.rounds,
            o.n,
            o.n
        );
        // Alternate who goes first, so that no contender always gets the
        // quieter moment.
        let mut order: Vec<usize> = (0..contenders.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let t = driver.bench(&contenders[i].conflist, &paths, o.n)?;
            contenders[i].rounds.push(t);
        }
    }
    if o.burst > 0 {
        for c in &mut contenders {
            eprintln!(
                "burst: {} ADDs at once, then {} DELs at once: {}",
                o.burst, o.burst, c.name
            );
            // Let the previous burst's namespaces and veths settle.
            std::thread::sleep(Duration::from_secs(1));
            c.burst = Some(driver.burst(&c.conflist, &paths, o.burst)?);
        }
    }
    print_report(&o, &contenders, reference_name);
    let left = cluster.allocations()?;
    if !left.is_empty() {
        bail!(
            "{} allocations left in etcd after the runs: {left:?}",
            left.len()
        );
    }
    Ok(())
}

fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn print_report(o: &Options, contenders: &[Contender], reference_name: &str) {
    println!(
        "\n{} ADDs then {} DELs per round, {} rounds; a burst of {}; ipMasq={}; reference plugins {reference_name}",
        o.n, o.n, o.rounds, o.burst, o.ip_masq
    );
    println!(
        "{:<32} {:>11} {:>11} {:>12} {:>12} {:>12} {:>9}",
        "", "ADD median", "DEL median", "round", "burst ADD", "burst DEL", "failures"
    );
    let figures: Vec<(f64, f64, f64, f64, f64)> = contenders.iter().map(figures).collect();
    for (c, f) in contenders.iter().zip(&figures) {
        let failures = c.burst.as_ref().map_or(0, |b| b.failures.len());
        println!(
            "{:<32} {:>9.2}ms {:>9.2}ms {:>10.1}ms {:>10.0}ms {:>10.0}ms {:>9}",
            c.name, f.0, f.1, f.2, f.3, f.4, failures
        );
    }
    if o.dual_stack {
        let (dual, v4) = (figures[0], figures[1]);
        println!(
            "ratio dual-stack / IPv4 only (cluster mode): ADD {:.2}  DEL {:.2}  round {:.2}  (target ADD <= 1.2)",
            dual.0 / v4.0,
            dual.1 / v4.1,
            dual.2 / v4.2
        );
    }
    let reference = figures.last().copied().unwrap_or_default();
    for (c, f) in contenders.iter().zip(&figures).take(contenders.len() - 1) {
        println!(
            "ratio {} / reference: ADD {:.2}  DEL {:.2}  round {:.2}  burst ADD {:.2}  burst DEL {:.2}  (target <= 0.5)",
            c.name,
            f.0 / reference.0,
            f.1 / reference.1,
            f.2 / reference.2,
            f.3 / reference.3,
            f.4 / reference.4
        );
    }
    for c in contenders {
        if let Some(b) = &c.burst {
            for line in b.failures.iter().chain(&b.duplicates).take(5) {
                println!("{}: {line}", c.name);
            }
            if !b.duplicates.is_empty() {
                println!(
                    "{}: {} addresses handed out twice",
                    c.name,
                    b.duplicates.len()
                );
            }
        }
    }
}

/// ADD and DEL medians, the median round, the burst's wall times.
fn figures(c: &Contender) -> (f64, f64, f64, f64, f64) {
    let adds: Vec<f64> = c.rounds.iter().flat_map(|t| t.add_ms.clone()).collect();
    let dels: Vec<f64> = c.rounds.iter().flat_map(|t| t.del_ms.clone()).collect();
    let rounds: Vec<f64> = c
        .rounds
        .iter()
        .map(|t| t.add_ms.iter().sum::<f64>() + t.del_ms.iter().sum::<f64>())
        .collect();
    let (burst_add, burst_del) = c
        .burst
        .as_ref()
        .map_or((f64::NAN, f64::NAN), |b| (b.burst_add_ms, b.burst_del_ms));
    (
        median(&adds),
        median(&dels),
        median(&rounds),
        burst_add,
        burst_del,
    )
}
