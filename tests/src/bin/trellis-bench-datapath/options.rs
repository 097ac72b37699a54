//! The command line.

use anyhow::{bail, Context, Result};

use crate::measure::Iperf;

pub struct Options {
    pub seconds: u32,
    pub reps: usize,
    pub streams: u32,
    pub ab_notrack: bool,
    /// CPUs of the iperf3 client and server (`iperf3 -A c,s`).
    pub pin: Option<(usize, usize)>,
    /// `iperf3 -C`: the senders' congestion control (default: CUBIC, then
    /// BBR).
    pub congestion: Option<String>,
}

impl Options {
    pub fn iperf(&self, congestion: Option<String>) -> Iperf {
        Iperf {
            seconds: self.seconds,
            streams: self.streams,
            pin: self.pin,
            congestion,
        }
    }
}

pub fn parse_args() -> Result<Options> {
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
