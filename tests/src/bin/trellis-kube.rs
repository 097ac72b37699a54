//! The Kubernetes test cluster in network namespaces (wrapped by
//! scripts/kube-cluster.sh, which installs and builds first).
//!
//!   trellis-kube up [--nodes N] [--no-trellis]   bring it up, print the env
//!   trellis-kube env                             print KUBECONFIG and KUBE_BIN
//!   trellis-kube down                            remove all of it
//!   trellis-kube e2e [ginkgo flags] [-- e2e.test flags]
//!                                                run the Kubernetes e2e suite
//!                                                against it, from the underlay
//!   trellis-kube bench-startup [--pods N]        pod startup latency, the
//!                                                reference conflist against
//!                                                trellis (up --no-trellis)
//!   trellis-kube forward NETNS ADDR              (internal) the API forwarder

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use trellis_tests::kube::{self, layout::Layout, ClusterInfo, Spec};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kube-cluster: {err:#}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: trellis-kube up [--nodes N] [--no-trellis] | env | down | \
                     e2e [ginkgo flags] [-- e2e.test flags] | bench-startup [--pods N]";

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layout = Layout::from_env();
    match args.first().map(String::as_str) {
        Some("up") => {
            let mut spec = Spec::from_env();
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--nodes" => {
                        spec.nodes = rest
                            .next()
                            .and_then(|n| n.parse().ok())
                            .context("--nodes needs a number")?
                    }
                    "--no-trellis" => spec.install_trellis = false,
                    other => bail!("unknown argument {other:?}\n{USAGE}"),
                }
            }
            let info = kube::up(&layout, &spec)?;
            print!("{}", kube::env_text(&layout, &info));
            eprintln!(
                "kube-cluster: {} nodes ({}); `eval $(scripts/kube-cluster.sh env)` then \
                 `$KUBE_BIN/kubectl get nodes`",
                info.nodes.len(),
                info.nodes.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("env") => {
            let info = ClusterInfo::load(&layout)?;
            print!("{}", kube::env_text(&layout, &info));
            Ok(ExitCode::SUCCESS)
        }
        Some("down") => {
            kube::down(&layout)?;
            eprintln!("kube-cluster: removed");
            Ok(ExitCode::SUCCESS)
        }
        Some("e2e") => {
            let info = ClusterInfo::load(&layout)?;
            let status = kube::e2e::command(&layout, &info, &args[1..])?
                .status()
                .context("running ginkgo")?;
            Ok(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
        }
        Some("bench-startup") => {
            let pods = match args.get(1).map(String::as_str) {
                None => 100,
                Some("--pods") => args
                    .get(2)
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--pods needs a number above 0")?,
                Some(other) => bail!("unknown argument {other:?}\n{USAGE}"),
            };
            let info = ClusterInfo::load(&layout)?;
            let (reference, trellis) = kube::bench::run(&layout, &info, pods)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            println!(
                "pod startup, created to Ready, {pods} pods at once on {} nodes (ms):",
                info.nodes.len()
            );
            println!("{:<12} {:>8} {:>8} {:>10}", "", "p50", "p99", "all Ready");
            for (name, b) in [("reference", &reference), ("trellis", &trellis)] {
                println!(
                    "{name:<12} {:>8.0} {:>8.0} {:>10.0}",
                    ms(b.percentile(50.0)),
                    ms(b.percentile(99.0)),
                    ms(b.total)
                );
            }
            println!(
                "{:<12} {:>8.2} {:>8.2} {:>10.2}",
                "ratio",
                ms(trellis.percentile(50.0)) / ms(reference.percentile(50.0)),
                ms(trellis.percentile(99.0)) / ms(reference.percentile(99.0)),
                ms(trellis.total) / ms(reference.total)
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("forward") => {
            let (Some(netns), Some(addr)) = (args.get(1), args.get(2)) else {
                bail!("usage: trellis-kube forward NETNS ADDR:PORT");
            };
            let addr: SocketAddr = addr.parse().context("ADDR:PORT")?;
            kube::forward::serve(netns, addr)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("{USAGE}"),
    }
}
