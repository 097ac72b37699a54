//! What `ipam check` finds and prints (`-o json`), and what `ipam release
//! --from-report` reads back.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Its node's agent has seen it without its host veth for long enough.
    Leaked,
    /// A second address of one attachment, not the one its handle names.
    Duplicate,
    /// A handle naming an address that is absent or someone else's.
    OrphanedHandle,
    /// Held for a node that has no record (left or dead): its agent's
    /// dead-node reclaim frees it after the grace; not released here.
    UnknownNode,
    /// An address key that does not decode.
    Unreadable,
    /// An IPv6 address key that neither a handle nor an IPv4 address of
    /// the same attachment goes with (ADD writes the three in one
    /// transaction, so this is never an ADD in progress).
    LoneIpv6,
}

/// One finding, as `-o json` prints it and `release --from-report` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: Kind,
    /// The key to free, and its modification revision when checked.
    pub key: String,
    pub mod_revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub node: String,
    #[serde(default, rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// The attachment's handle, freed with the address when it names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_key: Option<String>,
    #[serde(default)]
    pub handle_mod_revision: i64,
    /// The IPv6 twin's key of a dual-stack allocation (written with the
    /// address at its revision), freed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_key: Option<String>,
    pub releasable: bool,
    pub detail: String,
}

/// What `ipam check -o json` prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub findings: Vec<Finding>,
    pub allocations: usize,
    /// Allocations newer than their node's last report (judged next time).
    pub unchecked: Vec<IpAddr>,
    /// Nodes with allocations of trellis attachments but no report (agent
    /// down, or its report turned off).
    pub unreported_nodes: Vec<String>,
    /// Handles that are fence markers (no address): left alone, since each
    /// may be what makes a late claim of its attachment fail; the runtime's
    /// CNI GC removes them.
    #[serde(default)]
    pub fence_markers: Vec<String>,
}

/// A kind as it is printed (`orphaned-handle`).
pub fn kind_name(k: Kind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
