//! What etcd holds of the leases: the cluster config, the named networks,
//! and every subnet and grace key with its owner, etcd lease and revision.

use super::error::LeaseError;
use etcd_client::{Client, GetOptions};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::keys::Keys;
use trellis_common::network::NetworkRecord;

/// The value of a subnet key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetClaim {
    pub node: String,
}

/// A subnet key as found in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedSubnet {
    pub subnet: IpNetwork,
    /// The node named in the key's value; `None` when unreadable.
    pub owner: Option<String>,
    /// The etcd lease the key is bound to (0: none).
    pub lease: i64,
    pub mod_revision: i64,
}

/// The subnet this agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    pub subnet: IpNetwork,
    pub lease_id: i64,
    /// The etcd lease of the subnet's grace key (0: no grace).
    pub grace_lease_id: i64,
    /// The subnet (and etcd lease) were this node's already.
    pub reused: bool,
}

/// Read and check `<prefix>/config`.
pub async fn read_config(client: &mut Client, keys: &Keys) -> Result<ClusterConfig, LeaseError> {
    let key = keys.config();
    let resp = client.get(key.as_str(), None).await?;
    let kv = resp
        .kvs()
        .first()
        .ok_or_else(|| LeaseError::MissingConfig { key: key.clone() })?;
    ClusterConfig::parse(kv.value()).map_err(|e| LeaseError::InvalidConfig {
        key,
        reason: e.to_string(),
    })
}

/// The IPv4 networks of the records under `<prefix>/networks/` (all that
/// parse, usable or not: a subnet of a network some agent may serve is
/// never released as stale by the default network's lease).
pub async fn named_networks(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<IpNetwork>, LeaseError> {
    let resp = client
        .get(keys.networks(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = keys.network_name_of(kv.key_str().ok()?)?;
            let record = NetworkRecord::parse(name, kv.value()).ok()?;
            Some(record.config.lease_network())
        })
        .collect())
}

/// Every subnet key.
pub async fn list_subnets(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<LeasedSubnet>, LeaseError> {
    list_claims(client, keys.subnets(), |k| keys.subnet_of(k)).await
}

/// Every subnet grace key.
pub async fn list_graces(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<LeasedSubnet>, LeaseError> {
    list_claims(client, keys.subnet_graces(), |k| keys.subnet_grace_of(k)).await
}

/// The subnets held under `prefix` (subnet or grace keys).
async fn list_claims(
    client: &mut Client,
    prefix: String,
    subnet_of: impl Fn(&str) -> Option<IpNetwork>,
) -> Result<Vec<LeasedSubnet>, LeaseError> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let subnet = subnet_of(kv.key_str().ok()?)?;
            let owner = serde_json::from_slice::<SubnetClaim>(kv.value())
                .ok()
                .map(|c| c.node);
            Some(LeasedSubnet {
                subnet,
                owner,
                lease: kv.lease(),
                mod_revision: kv.mod_revision(),
            })
        })
        .collect())
}

/// The TTLs of a node's subnet lease and of its grace key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// Seconds the subnet key and record outlive a silent agent.
    pub ttl: i64,
    /// Seconds the grace key outlives the subnet key (0: no grace key).
    pub grace: i64,
}
