//! The soak (`scripts/soak.sh`): a three-member etcd, three nodes with
//! their agents, concurrent ADD/DEL from every node under faults at random
//! waves, invariants checked all along ([`trellis_tests::soak`]).
//!
//!   trellis-soak [--quick] [--pairs N] [--per-node N] [--seed N]

use anyhow::{bail, Context, Result};
use trellis_tests::netns::is_root;
use trellis_tests::soak::{self, SoakOptions};

fn main() {
    if let Err(err) = run() {
        eprintln!("trellis-soak: FAILED: {err:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<SoakOptions> {
    let mut opts = SoakOptions {
        pairs: 10_000,
        per_node: 6,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} {v}: not a number"))
        };
        match arg.as_str() {
            "--quick" => opts.pairs = 600,
            "--pairs" => opts.pairs = number("--pairs")? as usize,
            "--per-node" => opts.per_node = number("--per-node")? as usize,
            "--seed" => opts.seed = number("--seed")?,
            "-h" | "--help" => {
                println!("trellis-soak [--quick] [--pairs N] [--per-node N] [--seed N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if opts.pairs == 0 || opts.per_node == 0 {
        bail!("--pairs and --per-node must be at least 1");
    }
    Ok(opts)
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    if !is_root() {
        bail!("the soak builds network namespaces: run it as root");
    }
    println!(
        "soak: {} ADD/DEL pairs, {} concurrent ADDs per node and wave, seed {}",
        opts.pairs, opts.per_node, opts.seed
    );
    let mut cluster = soak::start_cluster().context("starting the cluster")?;
    let report =
        soak::run(&mut cluster, &opts).map_err(|e| e.context(format!("seed {}", opts.seed)))?;
    println!("{report}");
    Ok(())
}
