//! The command line of every subcommand (`run`, `cleanup`, `install-cni`):
//! every flag of `../shared/INTERFACES.md`, each also read from an
//! environment variable so that a DaemonSet can set it.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
pub use trellis_common::etcd_flags::{EtcdArgs, REQUEST_TIMEOUT};

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
    InstallCni(InstallOptions),
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
    pub public_ip: Option<std::net::IpAddr>,
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
    /// Transmit checksum offload on the VXLAN device (`ethtool -K DEV tx`);
    /// `=false` where a NIC or hypervisor corrupts offloaded VXLAN
    /// checksums (everything but ICMP fails between nodes).
    #[arg(
        long,
        env = "TRELLIS_VXLAN_TX_CHECKSUM_OFFLOAD",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub vxlan_tx_checksum_offload: bool,
    /// How often (seconds) this node's leaked IP allocations are reclaimed;
    /// 0 turns the reclaim off.
    #[arg(long, env = "TRELLIS_IPAM_GC_INTERVAL", default_value_t = 300)]
    pub ipam_gc_interval: u64,
    /// How often (seconds) the agent reports this node's attachments (each
    /// allocation and whether its veth is there) to etcd for `trellisctl
    /// ipam check`; 0 turns the report off. The leak check runs at the
    /// shorter of this and --ipam-gc-interval.
    #[arg(long, env = "TRELLIS_ATTACHMENT_REPORT_INTERVAL", default_value_t = 10)]
    pub attachment_report_interval: u64,
    /// The runtime's CNI configuration directory, checked by `trellisctl
    /// doctor` against this agent (bridge, state dir, etcd prefix), where
    /// the agent writes one conflist per named network (made from the
    /// node's trellis conflist) and removes it when the network goes;
    /// unset: neither.
    #[arg(long, env = "TRELLIS_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// UDP port of the agents' probe protocol (echoes for `trellisctl
    /// doctor`), on every address of the node; 0 turns it off.
    #[arg(long, env = "TRELLIS_PROBE_PORT", default_value_t = 8473)]
    pub probe_port: u16,
    /// Serve /healthz, Prometheus /metrics and /doctor on this address.
    #[arg(long, env = "TRELLIS_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// TTL (seconds) of the etcd lease holding this node's subnet and record:
    /// how long they outlive an agent that stopped renewing them.
    #[arg(long, env = "TRELLIS_LEASE_TTL", default_value_t = 86_400)]
    pub lease_ttl: i64,
    /// Seconds a dead node's subnet stays reserved after its lease expired:
    /// no other node is given it, and its pod addresses are released only
    /// after it (the node itself takes its subnet back if it returns
    /// within it). 0: the subnet is free, and the addresses reclaimed, as
    /// soon as the lease expires.
    #[arg(long, env = "TRELLIS_SUBNET_GRACE", default_value_t = 3600)]
    pub subnet_grace: i64,
    /// How often (seconds) the agent looks for the pod addresses of dead
    /// nodes (record, subnet and grace keys gone) and releases them; 0
    /// turns this off.
    #[arg(long, env = "TRELLIS_DEAD_NODE_INTERVAL", default_value_t = 60)]
    pub dead_node_interval: u64,
    /// Full resync of the kernel entries every so many seconds, on top of
    /// the resync after every change.
    #[arg(long, env = "TRELLIS_RESYNC_INTERVAL", default_value_t = 60)]
    pub resync_interval: u64,
    /// This node is a Kubernetes Node and the agent runs in its pod: the
    /// record says so, and the agent follows the Nodes (the Kubernetes API,
    /// in-cluster) to release from etcd every such node whose Node was
    /// deleted (`--deleted-node-grace` after the deletion).
    #[arg(
        long,
        env = "TRELLIS_KUBERNETES",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub kubernetes: bool,
    /// Seconds a deleted Kubernetes Node stays in trellis before its subnet,
    /// record and pod addresses are released (a Node re-registered meanwhile
    /// keeps them).
    #[arg(long, env = "TRELLIS_DELETED_NODE_GRACE", default_value_t = 30)]
    pub deleted_node_grace: u64,
    /// Serve this node's `trellis-ipam` calls on `<state-dir>/ipam.sock`
    /// over the agent's etcd connection (plugins run `trellis-ipam`
    /// themselves when it is off or the agent is down).
    #[arg(
        long,
        env = "TRELLIS_IPAM_SERVICE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub ipam_service: bool,
    /// Serve DNS on the bridge's gateway addresses (port --dns-port, UDP
    /// and TCP): the names of the cluster's containers (`K8S_POD_NAME`, as
    /// podman sets it) on every node, other names forwarded to
    /// --dns-upstream. The plugins then name the gateway as the
    /// containers' nameserver.
    #[arg(
        long,
        env = "TRELLIS_DNS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub dns: bool,
    #[arg(long, env = "TRELLIS_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
    /// Where names that are not the containers' go: `IP` or `IP:PORT`,
    /// comma-separated; default: the nameservers of the node's
    /// /etc/resolv.conf.
    #[arg(long, env = "TRELLIS_DNS_UPSTREAM", value_delimiter = ',', value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
}

/// `IP` (port 53), `IP:PORT` or `[IPv6]:PORT`.
fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
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

pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_CONFLIST_NAME: &str = "10-trellis.conflist";

/// The options of `install-cni` (clap flags, each also an environment
/// variable; the etcd ones are the agent's own).
#[derive(Debug, Clone, clap::Args)]
pub struct InstallOptions {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Directory holding the `trellis` and `trellis-ipam` binaries to
    /// install; default: the directory of this executable.
    #[arg(long, env = "TRELLIS_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// The runtime's CNI plugin directory.
    #[arg(long, env = "TRELLIS_CNI_BIN_DIR", default_value = DEFAULT_CNI_BIN_DIR)]
    pub cni_bin_dir: PathBuf,
    /// The runtime's CNI configuration directory.
    #[arg(long, env = "TRELLIS_CNI_CONF_DIR", default_value = DEFAULT_CNI_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// File name of the conflist in the conf dir (runtimes use the first
    /// file in lexical order).
    #[arg(long, env = "TRELLIS_CONFLIST_NAME", default_value = DEFAULT_CONFLIST_NAME)]
    pub conflist_name: String,
    /// Conflist template (the ConfigMap's); default: the built-in one.
    #[arg(long, env = "TRELLIS_CONFLIST_TEMPLATE")]
    pub conflist_template: Option<PathBuf>,
    /// Where the plugins find the etcd TLS files on the host; default:
    /// `<cni-conf-dir>/trellis-tls`.
    #[arg(long, env = "TRELLIS_CNI_TLS_DIR")]
    pub cni_tls_dir: Option<PathBuf>,
    /// The agent's state dir, written as the conflist's `stateDir`.
    #[arg(long, env = "TRELLIS_STATE_DIR", default_value = trellis_common::node::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The node bridge, written as the conflist's `bridge`.
    #[arg(long, env = "TRELLIS_BRIDGE", default_value = trellis_common::node::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Cluster config (JSON: network, subnetLen, vni, port) to write to
    /// `<prefix>/config` when that key is absent.
    #[arg(long, env = "TRELLIS_CLUSTER_CONFIG")]
    pub cluster_config: Option<PathBuf>,
    /// The etcd user the plugins connect as (its role: README, "etcd
    /// permissions"), written as the conflist's `etcdUsername`; the
    /// conflist is then readable by root only.
    #[arg(
        long,
        env = "TRELLIS_CNI_ETCD_USERNAME",
        requires = "cni_etcd_password"
    )]
    pub cni_etcd_username: Option<String>,
    /// Password of --cni-etcd-username (prefer the environment variable).
    #[arg(
        long,
        env = "TRELLIS_CNI_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "cni_etcd_username"
    )]
    pub cni_etcd_password: Option<String>,
    /// Remove the conflist, the plugins and the TLS copies instead.
    #[arg(long)]
    pub uninstall: bool,
}

impl InstallOptions {
    /// Options with every default, for `etcd`.
    pub fn new(etcd: EtcdArgs) -> InstallOptions {
        InstallOptions {
            etcd,
            plugin_dir: None,
            cni_bin_dir: DEFAULT_CNI_BIN_DIR.into(),
            cni_conf_dir: DEFAULT_CNI_CONF_DIR.into(),
            conflist_name: DEFAULT_CONFLIST_NAME.into(),
            conflist_template: None,
            cni_tls_dir: None,
            state_dir: trellis_common::node::DEFAULT_STATE_DIR.into(),
            bridge: trellis_common::node::DEFAULT_BRIDGE.into(),
            cluster_config: None,
            cni_etcd_username: None,
            cni_etcd_password: None,
            uninstall: false,
        }
    }
}
