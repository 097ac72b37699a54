//! `trellis-agent`: the node agent's command line.

use anyhow::Context;
use clap::Parser;
use trellis_agent::flags::{Cli, Command};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    // One thread: the agent's work is I/O bound, and setns never happens on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        None => runtime.block_on(trellis_agent::agent::run(cli.run))?,
        Some(Command::Run(args)) => runtime.block_on(trellis_agent::agent::run(args))?,
        Some(Command::Cleanup(args)) => runtime.block_on(trellis_agent::cleanup::run(args))?,
        Some(Command::InstallCni(opts)) => {
            let report = if opts.uninstall {
                trellis_agent::install_cni::uninstall(&opts)?
            } else {
                runtime.block_on(trellis_agent::install_cni::run(&opts))?
            };
            eprintln!("{report}");
        }
    }
    Ok(())
}
