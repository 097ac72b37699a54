//! Pod addresses of dead nodes are given back. A node that dies without
//! cleanup (switched off, its agent killed and never restarted) keeps its
//! record and subnet key for its lease TTL, and its subnet's grace key for
//! `--subnet-grace` more ([`crate::lease`]). Once all three are gone, its
//! allocations in the cluster network hold addresses nobody uses: every
//! agent looks for them every `interval` (shifted per agent so that
//! usually one does it) and releases each one only if it is unchanged
//! since it was listed (a revision-guarded delete, so agents doing it at
//! once, or a node coming back and allocating again, lose nothing).
//!
//! The allocations are listed before the node keys: an allocation made
//! by a node that came back is listed only after its keys are there. A
//! node cut off from etcd for longer than TTL + grace is dead to the
//! others: its subnet may be leased again and its addresses reclaimed.

use crate::lease;
use crate::metrics::Metrics;
use etcd_client::GetOptions;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use trellis_common::etcd::EtcdClient;
use trellis_common::keys::Keys;
use trellis_ipam::{Allocation, EtcdStore};

/// The allocations of nodes not `alive` (and not `me`) in `network`.
pub fn orphaned<'a>(
    allocations: &'a [Allocation],
    alive: &HashSet<String>,
    me: &str,
    network: IpNetwork,
) -> Vec<&'a Allocation> {
    allocations
        .iter()
        .filter(|a| {
            let node = a.owner.node.as_str();
            !node.is_empty() && node != me && !alive.contains(node) && network.contains(a.ip)
        })
        .collect()
}

/// Every `interval` (plus up to one more, per agent), one pass.
pub async fn run(
    client: EtcdClient,
    keys: Keys,
    store: EtcdStore,
    me: String,
    network: IpNetwork,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let shift = jitter(&me, interval);
    loop {
        tokio::time::sleep(interval + shift).await;
        match pass(&client, &keys, &store, &me, network).await {
            Ok(released) if released.is_empty() => {}
            Ok(released) => log::info!(
                "released {} pod addresses of dead nodes: {released:?}",
                released.len()
            ),
            Err(e) => {
                metrics.etcd_errors.inc();
                log::warn!("reclaiming the addresses of dead nodes: {e}");
            }
        }
    }
}

/// Releases the addresses of dead nodes; the ones it released.
pub async fn pass(
    client: &EtcdClient,
    keys: &Keys,
    store: &EtcdStore,
    me: &str,
    network: IpNetwork,
) -> Result<Vec<(String, IpAddr)>, String> {
    let allocations = store.list_all().await.map_err(|e| e.to_string())?;
    if orphaned(&allocations, &HashSet::new(), me, network).is_empty() {
        return Ok(Vec::new());
    }
    let alive = alive_nodes(client, keys).await?;
    let mut released = Vec::new();
    for a in orphaned(&allocations, &alive, me, network) {
        if store.release_exact(a).await.map_err(|e| e.to_string())? {
            released.push((a.owner.node.clone(), a.ip));
        }
    }
    Ok(released)
}

/// The nodes with a record, a subnet key or a grace key.
async fn alive_nodes(client: &EtcdClient, keys: &Keys) -> Result<HashSet<String>, String> {
    let mut picked = client.pick().await;
    let listed = async {
        let records = picked
            .client
            .get(
                keys.nodes(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(lease::LeaseError::from)?;
        let subnets = lease::list_subnets(&mut picked.client, keys).await?;
        let graces = lease::list_graces(&mut picked.client, keys).await?;
        let mut alive: HashSet<String> = records
            .kvs()
            .iter()
            .filter_map(|kv| keys.node_name_of(kv.key_str().ok()?).map(str::to_owned))
            .collect();
        alive.extend(subnets.into_iter().chain(graces).filter_map(|s| s.owner));
        Ok::<_, lease::LeaseError>(alive)
    }
    .await;
    listed.map_err(|e| {
        client.failed(picked.index);
        format!("listing the nodes at {}: {e}", picked.endpoint)
    })
}

/// Up to `interval` more, different per agent.
fn jitter(me: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(me.as_bytes());
    Duration::from_millis(h.finish() % (interval.as_millis().max(1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_ipam::Owner;

    fn alloc(ip: &str, node: &str) -> Allocation {
        Allocation {
            ip: ip.parse().unwrap(),
            ip6: None,
            owner: Owner {
                container_id: format!("c-{ip}"),
                ifname: "eth0".into(),
                node: node.into(),
                network: "net".into(),
                plugin: "trellis".into(),
                name: String::new(),
            },
            revision: 7,
        }
    }

    #[test]
    fn only_addresses_of_gone_nodes_in_the_network_are_orphaned() {
        let all = [
            alloc("10.244.1.2", "alive"),
            alloc("10.244.2.2", "dead"),
            alloc("10.244.3.2", "me"),
            alloc("10.244.4.2", ""),
            alloc("192.168.0.2", "pinned"),
        ];
        let alive: HashSet<String> = ["alive".to_string()].into();
        let net: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let got: Vec<_> = orphaned(&all, &alive, "me", net)
            .iter()
            .map(|a| a.ip.to_string())
            .collect();
        assert_eq!(got, vec!["10.244.2.2"]);
    }

    #[test]
    fn jitter_stays_within_the_interval() {
        assert!(jitter("n", Duration::from_secs(3)) < Duration::from_secs(3));
    }
}
