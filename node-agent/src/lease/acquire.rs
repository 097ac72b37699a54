//! Taking a subnet: the node's own when it holds one, else a free one,
//! claimed in one etcd transaction with its grace key.

use super::choice::{choose_subnet, own_subnet, seed, taken_for, Scope};
use super::claims::{list_graces, list_subnets, named_networks, LeaseTimes, Leased, SubnetClaim};
use super::error::{LeaseError, MAX_ATTEMPTS};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnetwork::IpNetwork;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::keys::Keys;

/// Lease a subnet for `node`: its own when it has one (keeping the etcd lease
/// it is bound to), else `preferred` when free, else any free one (a subnet
/// in another node's grace is not free).
/// `require` demands exactly that subnet (after a lost lease: the pods have
/// its addresses).
#[allow(clippy::too_many_arguments)]
pub async fn acquire(
    client: &mut Client,
    keys: &Keys,
    config: &ClusterConfig,
    scope: Scope,
    node: &str,
    preferred: Option<IpNetwork>,
    require: bool,
    times: LeaseTimes,
) -> Result<Leased, LeaseError> {
    let mut attempt = Acquisition {
        client,
        keys,
        config,
        scope,
        node,
        times,
        granted: None,
        granted_grace: None,
    };
    let result = attempt.run(preferred, require).await;
    // A lease granted for a lost race (or an error) holds nothing: give it back.
    let kept = result.as_ref().ok().map(|l| [l.lease_id, l.grace_lease_id]);
    for id in [attempt.granted, attempt.granted_grace]
        .into_iter()
        .flatten()
    {
        if !kept.is_some_and(|k| k.contains(&id)) {
            let _ = attempt.client.lease_revoke(id).await;
        }
    }
    result
}

/// One call of [`acquire`]: its inputs and the etcd lease it granted, if any
/// (granted at most once, reused over lost races, revoked unless kept).
struct Acquisition<'a> {
    client: &'a mut Client,
    keys: &'a Keys,
    config: &'a ClusterConfig,
    scope: Scope,
    node: &'a str,
    times: LeaseTimes,
    granted: Option<i64>,
    granted_grace: Option<i64>,
}

impl Acquisition<'_> {
    async fn run(
        &mut self,
        preferred: Option<IpNetwork>,
        require: bool,
    ) -> Result<Leased, LeaseError> {
        let (keys, config, node, scope) = (self.keys, self.config, self.node, self.scope);
        let named = match scope {
            Scope::Default => named_networks(self.client, keys).await?,
            Scope::Named(_) => Vec::new(),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let listing = list_subnets(self.client, keys).await?;
            let graces = list_graces(self.client, keys).await?;
            // The revision of `subnet`'s grace key as listed (0: none).
            let grace_seen = |subnet: IpNetwork| {
                graces
                    .iter()
                    .find(|g| g.subnet == subnet)
                    .map_or(0, |g| g.mod_revision)
            };
            let (own, stale) = own_subnet(config, &listing, node, preferred, |s| {
                scope.holds(s, &named)
            });
            for s in stale {
                log::info!("releasing {} (no longer this node's subnet)", s.subnet);
                let key = keys.subnet(s.subnet);
                let grace = keys.subnet_grace(s.subnet);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        s.mod_revision,
                    )])
                    .and_then([
                        TxnOp::delete(key.as_str(), None),
                        TxnOp::delete(grace.as_str(), None),
                    ]);
                self.client.txn(txn).await?;
            }
            if let Some(own) = own.filter(|o| !require || Some(o.subnet) == preferred) {
                let unchanged = Compare::mod_revision(
                    keys.subnet(own.subnet),
                    CompareOp::Equal,
                    own.mod_revision,
                );
                let own_grace = graces
                    .iter()
                    .find(|g| g.subnet == own.subnet && g.owner.as_deref() == Some(node));
                let grace_kept = self.times.grace == 0 || own_grace.is_some_and(|g| g.lease != 0);
                if own.lease != 0 && grace_kept {
                    return Ok(Leased {
                        subnet: own.subnet,
                        lease_id: own.lease,
                        grace_lease_id: own_grace.map_or(0, |g| g.lease),
                        reused: true,
                    });
                }
                // Ours but bound to no lease (written by hand?) or without
                // its grace key (an older agent): bind both to new leases.
                if let Some(leased) = self
                    .claim(own.subnet, unchanged, grace_seen(own.subnet))
                    .await?
                {
                    return Ok(Leased {
                        reused: true,
                        ..leased
                    });
                }
                continue;
            }
            let taken = taken_for(node, &listing, &graces);
            if require {
                let wanted = preferred.expect("require comes with a preferred subnet");
                if taken.contains(&wanted) {
                    let holder = listing
                        .iter()
                        .chain(&graces)
                        .find(|s| s.subnet == wanted)
                        .and_then(|s| s.owner.clone());
                    return Err(LeaseError::SubnetTaken {
                        wanted,
                        owner: holder.unwrap_or_else(|| "?".into()),
                    });
                }
            }
            let candidate = choose_subnet(config, &taken, preferred, seed(node, attempt)).ok_or(
                LeaseError::Exhausted {
                    network: config.lease_network(),
                    subnet_len: config.lease_subnet_len(),
                    count: config.subnet_count(),
                },
            )?;
            let absent = Compare::create_revision(keys.subnet(candidate), CompareOp::Equal, 0);
            if let Some(leased) = self.claim(candidate, absent, grace_seen(candidate)).await? {
                return Ok(leased);
            }
            log::debug!("{candidate} was taken by another agent first; trying again");
        }
        Err(LeaseError::Contention)
    }

    /// Write this node's claim on `subnet` bound to the lease of this call,
    /// and its grace key bound to the grace lease of this call, if `when`
    /// holds and the grace key is still at revision `grace_seen` (0: none,
    /// else this node's: see [`taken_for`]); what it leased when it did.
    async fn claim(
        &mut self,
        subnet: IpNetwork,
        when: Compare,
        grace_seen: i64,
    ) -> Result<Option<Leased>, LeaseError> {
        let lease = match self.granted {
            Some(id) => id,
            None => {
                let id = self.client.lease_grant(self.times.ttl, None).await?.id();
                self.granted = Some(id);
                id
            }
        };
        let claim = serde_json::to_string(&SubnetClaim {
            node: self.node.to_string(),
        })
        .expect("claim serializes");
        let grace_key = self.keys.subnet_grace(subnet);
        let mut puts = vec![TxnOp::put(
            self.keys.subnet(subnet),
            claim.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let mut grace_lease = 0;
        if self.times.grace > 0 {
            grace_lease = match self.granted_grace {
                Some(id) => id,
                None => {
                    let ttl = self.times.ttl + self.times.grace;
                    let id = self.client.lease_grant(ttl, None).await?.id();
                    self.granted_grace = Some(id);
                    id
                }
            };
            puts.push(TxnOp::put(
                grace_key.as_str(),
                claim,
                Some(PutOptions::new().with_lease(grace_lease)),
            ));
        }
        let txn = Txn::new()
            .when([
                when,
                Compare::mod_revision(grace_key.as_str(), CompareOp::Equal, grace_seen),
            ])
            .and_then(puts);
        let done = self.client.txn(txn).await?.succeeded();
        Ok(done.then_some(Leased {
            subnet,
            lease_id: lease,
            grace_lease_id: grace_lease,
            reused: false,
        }))
    }
}
