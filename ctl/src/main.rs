//! `trellisctl`: the operator's view of a trellis cluster, read from (and,
//! for `config set` and `network create|rm`, written to) etcd with the
//! agent's etcd flags.
//!
//! Exit status: 0 done; 1 an error (etcd unreachable, a refused or invalid
//! value, records that cannot be read, listed beside the rest), findings of
//! `ipam check`, releases `ipam release` skipped; 2 bad usage; 3 nothing
//! found (`ipam show`, `config get` with no config, `network inspect|rm`
//! of no such network).

mod config;
mod doctor;
mod etcd;
mod health;
mod ipam;
mod ipam_check;
mod network;
mod nodes;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use trellis_common::etcd_flags::EtcdArgs;

#[derive(Debug, Parser)]
#[command(
    name = "trellisctl",
    version,
    about = "trellis operator CLI: nodes, IPAM allocations, the cluster config in etcd, and a doctor for the overlay"
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Output: a table for people, or JSON for scripts.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every node: name, public address, subnet, VTEP MAC, lease time left,
    /// and its agent's health where its status endpoint answers.
    Nodes,
    /// IPAM allocations.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// The cluster config at <prefix>/config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Named networks (<prefix>/networks/NAME), beside the default one.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Every agent (or one) probes every other node: a matrix and findings
    /// with their remedies (VXLAN or probe port blocked, path MTU too low,
    /// leases about to expire, agents that cannot be asked, etcd slow).
    /// Exit 1 with findings.
    Doctor {
        /// Ask only this node's agent (it still probes every other node).
        #[arg(long)]
        node: Option<String>,
        /// Apply the safe fixes: a full resync of every agent whose kernel
        /// differs from etcd; then look again.
        #[arg(long)]
        fix: bool,
    },
}

#[derive(Debug, Subcommand)]
enum IpamCommand {
    /// Every allocated address and who holds it.
    Ls {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Only this CNI network's.
        #[arg(long)]
        network: Option<String>,
    },
    /// One address, or every address of one container (ID or a unique
    /// prefix of it), with its handle.
    Show { what: String },
    /// Compare every allocation and handle with the agents' reports of the
    /// attachments on their nodes: leaked, duplicate, orphaned-handle,
    /// unknown-node, lone-ipv6, unreadable. Exit 1 with findings. `-o json` prints the
    /// report that `release --from-report` takes.
    Check {
        /// Seconds an allocation must have been seen without its veth by its
        /// node's agent to count as leaked.
        #[arg(long, default_value_t = 60)]
        leak_after: u64,
    },
    /// Free what a report of `ipam check -o json` names as releasable, each
    /// only if unchanged since the report (exit 1 when some were skipped).
    Release {
        /// The report file (`-` for standard input).
        #[arg(long)]
        from_report: String,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// Create a network: its own pod network, node subnets, VXLAN id and
    /// bridge on every node. Refused when the VNI is taken or the subnet
    /// overlaps another network's (the default's included).
    Create(network::CreateArgs),
    /// Every network, the default first: pod networks, VNI, nodes holding
    /// a subnet of it, addresses allocated in it. Records the agents ignore
    /// are named on standard error (exit 1).
    Ls,
    /// One network's record, its nodes' subnets and their addresses.
    Inspect { name: String },
    /// Remove a network: refused while addresses are allocated in it,
    /// naming their nodes (unless --force).
    Rm {
        name: String,
        /// Take it down even with containers attached (they lose it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the cluster config.
    Get,
    /// Write the cluster config, checked as the agents check it: VALUE is
    /// the JSON, `@FILE`, or `-` for standard input. Refused when a node's
    /// subnet would no longer fit (unless --force).
    Set {
        value: String,
        /// Write it even though leased node subnets do not fit it.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellisctl: {e}");
            return ExitCode::from(1);
        }
    };
    use output::Outcome;
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Findings) => ExitCode::from(1),
        Ok(Outcome::NotFound) => ExitCode::from(3),
        Err(e) => {
            eprintln!("trellisctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<output::Outcome> {
    let etcd = etcd::Etcd::connect(&cli.etcd.settings()).await?;
    let format = cli.output;
    match cli.command {
        Command::Nodes => nodes::list(&etcd, format).await,
        Command::Ipam(IpamCommand::Ls { node, network }) => {
            ipam::list(&etcd, format, node.as_deref(), network.as_deref()).await
        }
        Command::Ipam(IpamCommand::Show { what }) => ipam::show(&etcd, format, &what).await,
        Command::Ipam(IpamCommand::Check { leak_after }) => {
            ipam_check::run_check(&etcd, format, leak_after).await
        }
        Command::Ipam(IpamCommand::Release { from_report }) => {
            ipam_check::run_release(&etcd, format, &from_report).await
        }
        Command::Doctor { node, fix } => doctor::run(&etcd, format, node.as_deref(), fix).await,
        Command::Network(NetworkCommand::Create(args)) => {
            network::create(&etcd, format, &args).await
        }
        Command::Network(NetworkCommand::Ls) => network::list(&etcd, format).await,
        Command::Network(NetworkCommand::Inspect { name }) => {
            network::inspect(&etcd, format, &name).await
        }
        Command::Network(NetworkCommand::Rm { name, force }) => {
            network::remove(&etcd, format, &name, force).await
        }
        Command::Config(ConfigCommand::Get) => config::get(&etcd, format).await,
        Command::Config(ConfigCommand::Set { value, force }) => {
            config::set(&etcd, format, &value, force).await
        }
    }
}
