//! The node's record under its lease, and giving subnets back.

use super::choice::Scope;
use super::claims::{list_graces, list_subnets};
use super::error::LeaseError;
use etcd_client::{Client, PutOptions};
use ipnetwork::IpNetwork;
use trellis_common::keys::Keys;
use trellis_common::node::NodeRecord;

/// Write this node's record at `key` (`<prefix>/nodes/<node>`, or a named
/// network's `<prefix>/network-nodes/<network>/<node>`) under its lease.
pub async fn publish_record(
    client: &mut Client,
    key: &str,
    record: &NodeRecord,
    lease_id: i64,
) -> Result<(), LeaseError> {
    let json = serde_json::to_string(record).expect("node record serializes");
    client
        .put(key, json, Some(PutOptions::new().with_lease(lease_id)))
        .await?;
    Ok(())
}

/// Whether the etcd lease still exists (keys bound to it are still there).
pub async fn lease_alive(client: &mut Client, lease_id: i64) -> Result<bool, LeaseError> {
    let resp = client.lease_time_to_live(lease_id, None).await?;
    Ok(resp.ttl() > 0)
}

/// Delete this node's record, subnet and grace keys and revoke their leases
/// (the node leaves the cluster: its subnet is free at once).
pub async fn release(
    client: &mut Client,
    keys: &Keys,
    node: &str,
) -> Result<Vec<IpNetwork>, LeaseError> {
    release_where(client, keys, node, |_| true, &keys.node(node)).await
}

/// Take this node out of named network `network` (the network was
/// removed): its subnet there is free at once, its record there is gone.
pub async fn release_named(
    client: &mut Client,
    keys: &Keys,
    node: &str,
    network: IpNetwork,
    record_key: &str,
) -> Result<Vec<IpNetwork>, LeaseError> {
    let scope = Scope::Named(network);
    release_where(client, keys, node, |s| scope.holds(s, &[]), record_key).await
}

/// Delete `node`'s subnet and grace keys that `in_scope` holds, revoke
/// their leases, and delete the record at `record_key`.
async fn release_where(
    client: &mut Client,
    keys: &Keys,
    node: &str,
    in_scope: impl Fn(IpNetwork) -> bool,
    record_key: &str,
) -> Result<Vec<IpNetwork>, LeaseError> {
    let listing = list_subnets(client, keys).await?;
    let mut released = Vec::new();
    let mine = |owner: &Option<String>, subnet| owner.as_deref() == Some(node) && in_scope(subnet);
    for s in listing.iter().filter(|s| mine(&s.owner, s.subnet)) {
        client.delete(keys.subnet(s.subnet), None).await?;
        if s.lease != 0 {
            let _ = client.lease_revoke(s.lease).await;
        }
        released.push(s.subnet);
    }
    for g in list_graces(client, keys).await? {
        if mine(&g.owner, g.subnet) {
            client.delete(keys.subnet_grace(g.subnet), None).await?;
            if g.lease != 0 {
                let _ = client.lease_revoke(g.lease).await;
            }
        }
    }
    client.delete(record_key, None).await?;
    Ok(released)
}
