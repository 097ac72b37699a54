//! A node leaving the cluster, in etcd: its pods' addresses first, then its
//! subnet keys and record and the lease behind them (a node that leases the
//! subnet next must never find its addresses taken). Every step can be run
//! again. `cleanup --release` runs it on the node itself; with
//! `--kubernetes`, the other nodes' agents run it for a Node that
//! Kubernetes deleted.

use crate::flags::REQUEST_TIMEOUT;
use crate::lease::{self, LeaseError};
use std::net::IpAddr;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;

#[derive(Debug, thiserror::Error)]
pub enum DepartureError {
    #[error("releasing the pod addresses of node {node}: {source}")]
    Ipam {
        node: String,
        #[source]
        source: trellis_ipam::IpamError,
    },
    #[error("releasing node {node}'s subnet and record: {source}")]
    Lease {
        node: String,
        #[source]
        source: LeaseError,
    },
}

/// What was released.
#[derive(Debug, Default)]
pub struct Departed {
    pub subnets: Vec<ipnetwork::IpNetwork>,
    pub addresses: Vec<IpAddr>,
}

/// Releases everything of `node` in etcd. Each address goes only if it is
/// unchanged since it was listed.
pub async fn release_node(
    client: &EtcdClient,
    keys: &Keys,
    node: &str,
) -> Result<Departed, DepartureError> {
    let ipam_error = |source| DepartureError::Ipam {
        node: node.to_owned(),
        source,
    };
    let store = trellis_ipam::EtcdStore::from_client(client, keys.clone(), REQUEST_TIMEOUT);
    let mut departed = Departed::default();
    for a in store.list_node(node).await.map_err(ipam_error)? {
        if store.release_exact(&a).await.map_err(ipam_error)? {
            departed.addresses.push(a.ip);
        }
    }
    let mut picked = client.pick().await;
    departed.subnets = lease::release(&mut picked.client, keys, node)
        .await
        .map_err(|source| {
            client.failed(picked.index);
            DepartureError::Lease {
                node: node.to_owned(),
                source,
            }
        })?;
    Ok(departed)
}
