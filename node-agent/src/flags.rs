//! The command line: every flag of `../shared/INTERFACES.md`, each also read
//! from an environment variable so that a DaemonSet can set it.

use clap::{Args, Parser, Subcommand};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    args_conflicts_with_subcommands = true,
    name = "trellis-agent",
    version,
    about = "trellis node agent: node subnet lease, VXLAN overlay, FDB/neighbour/route entries for every remote node, leaked-IP reclaim"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, the default command.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lease the node subnet, set up the overlay and keep it in step with etcd (default).
    Run(RunArgs),
    /// Remove everything the agent created on this node: VXLAN device, bridge,
    /// entries, nftables table, state file; with --release also its etcd record.
    Cleanup(CleanupArgs),
    /// Install the CNI plugins, their conflist and etcd TLS files on this
    /// node (what the DaemonSet's init container runs).
    InstallCni(crate::install_cni::InstallOptions),
}

#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd cluster, comma separated.
    #[arg(
        long,
        env = "TRELLIS_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of every trellis key.
    #[arg(long, env = "TRELLIS_ETCD_PREFIX", default_value = trellis_common::keys::DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate that signed etcd's server certificate.
    #[arg(long, env = "TRELLIS_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-keyfile).
    #[arg(long, env = "TRELLIS_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd (with --etcd-certfile).
    #[arg(long, env = "TRELLIS_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This node's name; default: the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Underlay interface; default: the one holding the IPv4 default route
    /// (or the one holding --public-ip).
    #[arg(long, env = "TRELLIS_IFACE")]
    pub iface: Option<String>,
    /// Underlay address published for this node; default: the first IPv4
    /// address of the underlay interface.
    #[arg(long, env = "TRELLIS_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where this node's record is written for the CNI plugins; must match
    /// the conflist's stateDir.
    #[arg(long, env = "TRELLIS_STATE_DIR", default_value = trellis_common::node::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The node bridge the pods hang off (the conflist's `bridge`).
    #[arg(long, env = "TRELLIS_BRIDGE", default_value = trellis_common::node::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Masquerade pod traffic leaving the cluster network.
    #[arg(
        long,
        env = "TRELLIS_IP_MASQ",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub ip_masq: bool,
    /// Leave the outer VXLAN packets (UDP to the cluster's VXLAN port, to and
    /// from this node's public IP) out of conntrack; the pods' connections
    /// stay tracked.
    #[arg(
        long,
        env = "TRELLIS_VXLAN_NOTRACK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub vxlan_notrack: bool,
    /// How often (seconds) this node's leaked IP allocations are reclaimed;
    /// 0 turns the reclaim off.
    #[arg(long, env = "TRELLIS_IPAM_GC_INTERVAL", default_value_t = 300)]
    pub ipam_gc_interval: u64,
    /// Serve /healthz and Prometheus /metrics on this address.
    #[arg(long, env = "TRELLIS_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// TTL (seconds) of the etcd lease holding this node's subnet and record:
    /// how long they outlive an agent that stopped renewing them.
    #[arg(long, env = "TRELLIS_LEASE_TTL", default_value_t = 86_400)]
    pub lease_ttl: i64,
    /// Full resync of the kernel entries every so many seconds, on top of
    /// the resync after every change.
    #[arg(long, env = "TRELLIS_RESYNC_INTERVAL", default_value_t = 60)]
    pub resync_interval: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    #[arg(long, env = "TRELLIS_STATE_DIR", default_value = trellis_common::node::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[arg(long, env = "TRELLIS_BRIDGE", default_value = trellis_common::node::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Also delete this node's record and subnet lease from etcd (the node
    /// leaves the cluster; other nodes remove its entries).
    #[arg(long)]
    pub release: bool,
}

/// The node name: the flag, else the host name.
pub fn node_name_or_hostname(flag: Option<&str>) -> std::io::Result<String> {
    if let Some(name) = flag.filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    let host = nix::unistd::gethostname().map_err(std::io::Error::from)?;
    Ok(host.to_string_lossy().into_owned())
}
