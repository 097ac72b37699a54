//! Code shared by the trellis binaries: the CNI protocol (`cni`), the
//! cluster contract every binary reads the same way (`keys`: the etcd key
//! layout under its one prefix rule; `etcd`: settings, TLS checks and the
//! connection; `etcd_failover`: one client per endpoint and moving on to
//! the next when one is away; `etcd_flags`: the etcd flags of every
//! command line; `cluster_config`; the named networks beside it
//! (`network`); `node_name`), files shared between
//! processes (`fs`), the node record the agent publishes for the plugins
//! (`node`), the container names its DNS answers (`container_name`) and
//! its report of the attachments on its node
//! (`attachment_report`), and what its probes of the other nodes found
//! (`probe_report`).

pub mod attachment_report;
pub mod cluster_config;
pub mod cni;
pub mod container_name;
pub mod etcd;
pub mod etcd_errors;
pub mod etcd_failover;
pub mod etcd_flags;
pub mod fs;
pub mod keys;
pub mod naming;
pub mod network;
pub mod node;
pub mod node_name;
pub mod probe_report;
