//! What every network served on this node shares.

use crate::dns;
use crate::lease::LeaseTimes;
use crate::metrics::Metrics;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_kernel::{Link, Netlink};

/// The node's side of every named network.
pub struct NodeContext {
    pub client: EtcdClient,
    pub keys: Keys,
    pub node: String,
    pub nl: Netlink,
    pub underlay: Link,
    pub public_ip: IpAddr,
    pub state_dir: PathBuf,
    pub times: LeaseTimes,
    pub resync: Duration,
    pub tx_checksum_offload: bool,
    /// The default network, which every named one is kept apart from.
    pub default: ClusterConfig,
    /// `--ip-masq`: the named networks' egress is masqueraded too (but an
    /// internal network's, which has none).
    pub ip_masq: bool,
    /// `--cni-conf-dir`: each network's conflist is written there.
    pub cni_conf_dir: Option<PathBuf>,
    /// With `--dns`: each network's DNS on its gateways, answering its
    /// containers' names.
    pub dns: Option<dns::On>,
    /// The agent's metrics: etcd errors of every network count there, and
    /// the number of networks served.
    pub metrics: Arc<Metrics>,
}
