//! Code shared by the trellis binaries: the CNI protocol (`cni`) and the
//! node record the agent publishes for the plugins (`node`).

pub mod cni;
pub mod naming;
pub mod node;
