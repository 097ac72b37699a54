//! Why the agent could not start or had to stop.

use crate::lease::LeaseError;
use crate::node_network::NodeNetworkError;
use trellis_common::etcd::EtcdError;
use trellis_common::node_name::NodeNameError;
use trellis_kernel::KernelError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}: pass --node-name or set NODE_NAME")]
    NodeName(#[from] NodeNameError),
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("probe port UDP {port}: {source}")]
    Probe {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    NodeNetwork(#[from] NodeNetworkError),
    #[error("setting up the node: {0}")]
    Kernel(#[from] KernelError),
    #[error("writing {path}: {source}")]
    StateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("--lease-ttl must be at least 5 seconds (got {0})")]
    LeaseTtl(i64),
    #[error("--subnet-grace must not be negative (got {0})")]
    SubnetGrace(i64),
    #[error("--kubernetes: {0}")]
    Kube(#[from] crate::kube_api::KubeError),
    #[error(transparent)]
    IpamService(#[from] crate::ipam_service::ServiceError),
    #[error(transparent)]
    PodMtu(#[from] crate::pod_mtu::PodMtuError),
}
