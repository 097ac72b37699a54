//! Which node this is and which subnet its containers get (cluster mode):
//! the record the agent publishes in `stateDir`, else the one it keeps in
//! etcd (the named network's when the configuration selects one), unless
//! the configuration pins a `subnet`.

use crate::config::IpamConf;
use crate::error::IpamError;
use crate::pool::Pool;
use crate::store::etcd::EtcdStore;
use ipnetwork::IpNetwork;
use trellis_common::node::{read_node_record_for, record_path_for, NodeRecord};

/// The agent's record for the network, if it wrote it:
/// `<stateDir>/node.json`, or a named network's
/// `<stateDir>/networks/<name>.json`.
pub fn local_record(conf: &IpamConf) -> Result<Option<NodeRecord>, IpamError> {
    let path = record_path_for(&conf.state_dir, conf.named.as_deref());
    read_node_record_for(&conf.state_dir, conf.named.as_deref()).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => IpamError::Corrupt {
            key: path.display().to_string(),
            reason: e.to_string(),
        },
        _ => IpamError::store(&path)(e),
    })
}

/// This node's name: `ipam.nodeName`, else the agent's record, else
/// `NODE_NAME`, else the host name (`trellis_common::node_name`, the
/// agent's own rule); none of them is a configuration error.
pub fn node_name(conf: &IpamConf, record: Option<&NodeRecord>) -> Result<String, IpamError> {
    let explicit = conf
        .node_name
        .as_deref()
        .or_else(|| record.and_then(|r| r.node_name.as_deref()));
    trellis_common::node_name::node_name(explicit)
        .map_err(|e| IpamError::Config(format!("{e}: set nodeName")))
}

/// The pool this node allocates from and the node's name.
pub async fn cluster_pool(conf: &IpamConf, store: &EtcdStore) -> Result<(Pool, String), IpamError> {
    let record = local_record(conf)?;
    let node = node_name(conf, record.as_ref())?;
    if let Some(subnet) = conf.subnet {
        return Ok((conf.pool(subnet)?.with_ipv6(conf.subnet6)?, node));
    }
    let record = match record {
        Some(r) => r,
        None => store
            .node_record(&node, conf.named.as_deref())
            .await?
            .ok_or_else(|| IpamError::NoNodeRecord {
                path: record_path_for(&conf.state_dir, conf.named.as_deref()),
                node: node.clone(),
                network: conf.named.clone(),
            })?,
    };
    // The IPv4 subnet with its IPv6 twin, or (IPv6-only) the IPv6 one.
    let pool = match (record.subnet, record.ipv6_subnet) {
        (Some(v4), twin) => conf.pool(IpNetwork::V4(v4))?.with_ipv6(twin)?,
        (None, Some(v6)) => conf.pool(IpNetwork::V6(v6))?,
        (None, None) => {
            return Err(IpamError::Config(format!(
                "the record of node {node} holds no subnet"
            )))
        }
    };
    Ok((pool, node))
}
