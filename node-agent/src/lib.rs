//! trellis-agent: the node agent, as a library so that its parts are tested
//! on their own. `main.rs` is the command line.
//!
//! - [`lease`]: the node subnet, leased in etcd; [`membership`] keeps the
//!   lease alive and the node record published.
//! - [`node_network`]: this node's VXLAN device and bridge; [`pod_mtu`]:
//!   the pods' MTU against what the paths carry.
//! - [`registry`]: every node record, followed ([`etcd_follow`]);
//!   [`config_follow`]: the cluster config, followed (direct routing).
//! - [`names`]: the containers' names, followed; [`dns`] answers them.
//! - [`networks`]: the named networks, followed and judged;
//!   [`network_runner`] serves them on this node.
//! - [`overlay`]: FDB, neighbour and route entries for the remote nodes
//!   (and direct routes over the underlay), desired vs actual, reconciled.
//! - [`node_table`] (masquerade, untracked tunnel packets), [`ipam_gc`], [`metrics`] + [`status_server`].
//! - [`deleted_nodes`] (with `--kubernetes`, over [`kube_api`]): nodes
//!   Kubernetes deleted leave trellis ([`departure`], also `cleanup --release`).
//! - [`agent`] (`run`), [`cleanup`] (`cleanup`), [`install_cni`] (`install-cni`).

pub mod agent;
pub mod backoff;
pub mod cleanup;
pub mod config_follow;
pub mod dead_nodes;
pub mod deleted_nodes;
pub mod departure;
pub mod dns;
pub mod etcd_follow;
pub mod etcd_retry;
pub mod flags;
pub mod icmp_echo;
pub mod install_cni;
pub mod ipam_gc;
pub mod ipam_service;
pub mod kube_api;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod names;
pub mod network_runner;
pub mod networks;
pub mod node_network;
pub mod node_table;
pub mod overlay;
pub mod pod_mtu;
pub mod probe;
pub mod registry;
pub mod status_server;
