//! Allocations in etcd v3.
//!
//! Keys (prefix default `/trellis`):
//! - `<prefix>/ipam/ips/<ip>`: `{"containerID","ifname","node","network"}`,
//!   exactly one per allocated address;
//! - `<prefix>/ipam/handles/<containerID>/<ifname>`: `{"ip","node","network"}`,
//!   which address an attachment holds.
//!
//! Both keys are written by one transaction that requires both to be absent,
//! and removed by one transaction that requires both to be unchanged, so an
//! address and its owner never disagree and a stale release never frees an
//! address that somebody else holds now. Every call has a deadline.

use crate::allocation::{Allocation, Claim, Handle, Owner};
use crate::error::{outcome_unknown, IpamError};
use crate::store::fence::Fence;
use crate::store::Store;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use trellis_common::etcd::{describe, EtcdSettings};
use trellis_common::keys::Keys;
use trellis_common::node::NodeRecord;

/// The value of a handle key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HandleRecord {
    ip: Ipv4Addr,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
}

/// Any handle value, for the GC sweep.
#[derive(Debug, Clone, Deserialize)]
struct AnyHandleRecord {
    #[serde(default)]
    ip: Option<Ipv4Addr>,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
}

/// etcd as an allocation store.
pub struct EtcdStore {
    kv: KvClient,
    keys: Keys,
    endpoints: String,
    timeout: Duration,
    deadline: Option<Instant>,
    /// The last claim that got no answer (see `unanswered_claim`).
    unanswered: Mutex<Option<Fence>>,
}

impl EtcdStore {
    /// Connect (lazily: the first call opens the connection, within its
    /// deadline). Bad settings or TLS files are a configuration error (7).
    pub async fn connect(settings: &EtcdSettings) -> Result<EtcdStore, IpamError> {
        let client = settings.connect().await?;
        let endpoints = settings.endpoints.join(",");
        Ok(Self::from_client(&client, settings.keys(), settings.timeout).named(endpoints))
    }

    /// A store over an existing client (the agent's) and its keys, each
    /// call bounded by `timeout`.
    pub fn from_client(client: &Client, keys: Keys, timeout: Duration) -> EtcdStore {
        EtcdStore {
            kv: client.kv_client(),
            keys,
            endpoints: "etcd".to_string(),
            timeout,
            deadline: None,
            unanswered: Mutex::default(),
        }
    }

    fn named(mut self, endpoints: String) -> EtcdStore {
        self.endpoints = endpoints;
        self
    }

    /// Bound every later call by `deadline` too (a CNI verb's whole budget).
    pub fn with_deadline(mut self, deadline: Instant) -> EtcdStore {
        self.deadline = Some(deadline);
        self
    }

    /// The narrowest key prefix covering every address of `subnet`: its
    /// whole leading octets (`10.244.3.` for a /24), then filtered exactly.
    fn scan_prefix(&self, subnet: Ipv4Network) -> String {
        let whole = (subnet.prefix() / 8) as usize;
        let octets = subnet.network().octets();
        let mut p = self.keys.ips();
        for o in &octets[..whole] {
            p.push_str(&o.to_string());
            p.push('.');
        }
        p
    }

    /// Run one etcd call within the per-call timeout and the deadline.
    async fn call<T>(
        &self,
        doing: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, IpamError> {
        let mut budget = self.timeout;
        if let Some(d) = self.deadline {
            budget = budget.min(d.saturating_duration_since(Instant::now()));
        }
        match tokio::time::timeout(budget, fut).await {
            Err(_) => Err(IpamError::EtcdTimeout {
                endpoints: self.endpoints.clone(),
                doing,
                after: budget,
            }),
            Ok(Err(e)) => Err(IpamError::Etcd {
                endpoints: self.endpoints.clone(),
                doing,
                detail: describe(&e),
                outcome_unknown: outcome_unknown(&e),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    pub(crate) async fn txn(
        &self,
        doing: &'static str,
        txn: Txn,
    ) -> Result<TxnResponse, IpamError> {
        let mut kv = self.kv.clone();
        self.call(doing, async move { kv.txn(txn).await }).await
    }

    async fn get(
        &self,
        doing: &'static str,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, IpamError> {
        let mut kv = self.kv.clone();
        let mut resp = self
            .call(doing, async move { kv.get(key, options).await })
            .await?;
        Ok(resp.take_kvs())
    }

    /// This node's record as its agent published it (`<prefix>/nodes/<node>`).
    pub async fn node_record(&self, node: &str) -> Result<Option<NodeRecord>, IpamError> {
        let key = self.keys.node(node);
        let kvs = self
            .get("reading the node record", key.clone(), None)
            .await?;
        kvs.first()
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|e| IpamError::Corrupt {
                    key,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Every allocation held by containers of `node` (for leak GC).
    pub async fn list_node(&self, node: &str) -> Result<Vec<Allocation>, IpamError> {
        let mut all = self.list_all().await?;
        all.retain(|a| a.owner.node == node);
        Ok(all)
    }

    /// Every allocation in the cluster.
    pub async fn list_all(&self) -> Result<Vec<Allocation>, IpamError> {
        let kvs = self
            .get(
                "listing allocations",
                self.keys.ips(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(self.decode_allocations(kvs, |_| true))
    }

    fn decode_allocations(
        &self,
        kvs: Vec<KeyValue>,
        keep: impl Fn(Ipv4Addr) -> bool,
    ) -> Vec<Allocation> {
        let dir = self.keys.ips();
        kvs.iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let ip: Ipv4Addr = key.strip_prefix(&dir)?.parse().ok()?;
                if !keep(ip) {
                    return None;
                }
                match serde_json::from_slice::<Owner>(kv.value()) {
                    Ok(owner) => Some(Allocation {
                        ip,
                        owner,
                        revision: kv.mod_revision(),
                    }),
                    Err(e) => {
                        log::warn!("ignoring undecodable allocation {key}: {e}");
                        None
                    }
                }
            })
            .collect()
    }

    /// The handle key of `handle`, as stored.
    async fn read_handle(&self, handle: &Handle) -> Result<Option<KeyValue>, IpamError> {
        let kvs = self
            .get(
                "reading the attachment's handle",
                self.keys.handle(handle),
                None,
            )
            .await?;
        Ok(kvs.into_iter().next())
    }

    /// Free whatever `handle` holds (DEL). Idempotent: a handle that holds
    /// nothing is `Ok(None)`. An address now owned by another attachment is
    /// left alone; only the stale handle goes.
    pub async fn release(&self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        let hkey = self.keys.handle(handle);
        for _ in 0..3 {
            let Some(hkv) = self.read_handle(handle).await? else {
                return Ok(None);
            };
            let hrev = hkv.mod_revision();
            let Some(record) = handle_record(&hkv) else {
                self.delete_handle_if(&hkey, hrev).await?;
                return Ok(None);
            };
            let ikey = self.keys.ip(record.ip);
            let resp = self
                .txn(
                    "releasing the address",
                    Txn::new()
                        .when([
                            Compare::mod_revision(hkey.as_str(), CompareOp::Equal, hrev),
                            Compare::mod_revision(ikey.as_str(), CompareOp::Equal, hrev),
                        ])
                        .and_then([
                            TxnOp::delete(hkey.as_str(), None),
                            TxnOp::delete(ikey.as_str(), None),
                        ])
                        .or_else([
                            TxnOp::get(hkey.as_str(), None),
                            TxnOp::get(ikey.as_str(), None),
                        ]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(Some(Allocation {
                    ip: record.ip,
                    owner: Owner {
                        container_id: handle.container_id.clone(),
                        ifname: handle.ifname.clone(),
                        node: record.node,
                        network: record.network,
                    },
                    revision: hrev,
                }));
            }
            let got = gets(&resp);
            match got.first().and_then(|kv| kv.as_ref()) {
                Some(h) if h.mod_revision() == hrev => {}
                _ => continue, // the handle changed under us: read again
            }
            let ip_kv = got.get(1).and_then(Option::as_ref);
            match ip_kv.and_then(|kv| held_by(kv, record.ip, handle)) {
                Some(a) => {
                    // Ours, written separately (a restored backup): free it exactly.
                    if self.release_pair(&a, hrev).await? {
                        return Ok(Some(a));
                    }
                }
                None => {
                    log::warn!(
                        "handle {hkey} points at {} which {} holds: removing only the stale handle",
                        record.ip,
                        if ip_kv.is_some() {
                            "another attachment"
                        } else {
                            "nobody"
                        }
                    );
                    self.delete_handle_if(&hkey, hrev).await?;
                    return Ok(None);
                }
            }
        }
        Err(IpamError::Contended(format!(
            "releasing the address: {hkey} kept changing"
        )))
    }

    /// Free `allocation` only if its address key is unchanged since it was
    /// read (its handle goes with it when it was written together). `false`
    /// when something rewrote or removed it meanwhile.
    pub async fn release_exact(&self, allocation: &Allocation) -> Result<bool, IpamError> {
        self.release_pair(allocation, allocation.revision).await
    }

    async fn release_pair(&self, a: &Allocation, handle_rev: i64) -> Result<bool, IpamError> {
        let ikey = self.keys.ip(a.ip);
        let hkey = self.keys.handle(&a.handle());
        let resp = self
            .txn(
                "releasing the address",
                Txn::new()
                    .when([Compare::mod_revision(
                        ikey.as_str(),
                        CompareOp::Equal,
                        a.revision,
                    )])
                    .and_then([
                        TxnOp::delete(ikey.as_str(), None),
                        TxnOp::txn(
                            Txn::new()
                                .when([Compare::mod_revision(
                                    hkey.as_str(),
                                    CompareOp::Equal,
                                    handle_rev,
                                )])
                                .and_then([TxnOp::delete(hkey.as_str(), None)]),
                        ),
                    ]),
            )
            .await?;
        Ok(resp.succeeded())
    }

    async fn delete_handle_if(&self, hkey: &str, hrev: i64) -> Result<(), IpamError> {
        self.txn(
            "removing a stale handle",
            Txn::new()
                .when([Compare::mod_revision(hkey, CompareOp::Equal, hrev)])
                .and_then([TxnOp::delete(hkey, None)]),
        )
        .await?;
        Ok(())
    }

    /// The allocation `handle` holds, checked against its address key.
    pub async fn lookup(&self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        Ok(match self.lookup_raw(handle).await? {
            HandleState::Holds(a) => Some(a),
            HandleState::Absent | HandleState::Dangling(_) => None,
        })
    }

    async fn lookup_raw(&self, handle: &Handle) -> Result<HandleState, IpamError> {
        let hkv = self.read_handle(handle).await?;
        self.resolve(handle, hkv.as_ref()).await
    }

    /// What the handle key `hkv` (as read) holds, checked against its
    /// address key.
    async fn resolve(
        &self,
        handle: &Handle,
        hkv: Option<&KeyValue>,
    ) -> Result<HandleState, IpamError> {
        let Some(hkv) = hkv else {
            return Ok(HandleState::Absent);
        };
        let hrev = hkv.mod_revision();
        let Some(record) = handle_record(hkv) else {
            return Ok(HandleState::Dangling(hrev));
        };
        let kvs = self
            .get("reading the address", self.keys.ip(record.ip), None)
            .await?;
        Ok(
            match kvs.first().and_then(|kv| held_by(kv, record.ip, handle)) {
                Some(a) => HandleState::Holds(a),
                None => HandleState::Dangling(hrev),
            },
        )
    }

    /// Give `ip` to `owner` in one transaction: the address key and the
    /// handle key are created together, only if both are absent.
    pub async fn claim(&self, ip: Ipv4Addr, owner: &Owner) -> Result<Claim, IpamError> {
        let handle = owner.handle();
        let ikey = self.keys.ip(ip);
        let hkey = self.keys.handle(&handle);
        let ivalue = serde_json::to_vec(owner).expect("owner serializes");
        let hvalue = serde_json::to_vec(&HandleRecord {
            ip,
            node: owner.node.clone(),
            network: owner.network.clone(),
        })
        .expect("handle serializes");
        for _ in 0..2 {
            let claim = Txn::new()
                .when([
                    Compare::create_revision(ikey.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(hkey.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(ikey.as_str(), ivalue.clone(), None),
                    TxnOp::put(hkey.as_str(), hvalue.clone(), None),
                ])
                .or_else([
                    TxnOp::get(hkey.as_str(), None),
                    TxnOp::get(ikey.as_str(), None),
                ]);
            let mut resp = match self.txn("allocating an address", claim).await {
                Ok(resp) => resp,
                Err(e) if e.may_have_applied() => {
                    *self.unanswered.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Fence::for_claim(owner, (&ikey, &ivalue), (&hkey, &hvalue)));
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if resp.succeeded() {
                let revision = resp.take_header().map(|h| h.revision()).unwrap_or(0);
                return Ok(Claim::Claimed(Allocation {
                    ip,
                    owner: owner.clone(),
                    revision,
                }));
            }
            let got = gets(&resp);
            if let Some(hkv) = got.first().and_then(Option::as_ref) {
                // A repeated ADD, or a handle left dangling: look closer at
                // the handle the failed transaction read already.
                match self.resolve(&handle, Some(hkv)).await? {
                    HandleState::Holds(a) => return Ok(Claim::AlreadyHeld(a)),
                    HandleState::Absent => continue,
                    HandleState::Dangling(hrev) => {
                        log::warn!("removing dangling handle {hkey}");
                        self.delete_handle_if(&hkey, hrev).await?;
                        continue;
                    }
                }
            }
            match got.get(1).and_then(Option::as_ref) {
                // Freed between our compare and the read: try again.
                None => continue,
                Some(kv) => {
                    return Ok(Claim::Taken {
                        ip,
                        owner: owner_of(kv),
                    })
                }
            }
        }
        Err(IpamError::Contended(format!(
            "allocating an address: {ikey} and {hkey} kept changing"
        )))
    }

    /// The claim that failed without saying it was refused (a timeout, a
    /// dropped connection: `IpamError::may_have_applied`), if one did. It may
    /// still sit unread in a stopped etcd's socket and apply when etcd resumes,
    /// after the runtime was told nothing was allocated: apply its `Fence`
    /// (from a process that waits for the answer) to make sure it cannot.
    pub fn unanswered_claim(&self) -> Option<Fence> {
        self.unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remove the handle keys of `node` in `network` that hold no address
    /// (fences, or handles whose address record is gone or someone else's)
    /// and whose attachment `keep` does not claim. Returns how many went.
    pub async fn sweep_handles(
        &self,
        node: &str,
        network: &str,
        keep: impl Fn(&Handle) -> bool,
    ) -> Result<usize, IpamError> {
        let dir = self.keys.handles();
        let kvs = self
            .get(
                "listing handles",
                dir.clone(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut removed = 0;
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some((container_id, ifname)) =
                key.strip_prefix(&dir).and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let handle = Handle {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            };
            let Ok(record) = serde_json::from_slice::<AnyHandleRecord>(kv.value()) else {
                continue;
            };
            if record.node != node || record.network != network || keep(&handle) {
                continue;
            }
            let holds = match record.ip {
                None => false,
                Some(ip) => self
                    .get("reading the address", self.keys.ip(ip), None)
                    .await?
                    .first()
                    .is_some_and(|kv| held_by(kv, ip, &handle).is_some()),
            };
            if !holds {
                self.delete_handle_if(&key, kv.mod_revision()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The addresses held inside `subnet` (keys only: one cheap range read).
    pub async fn used_in(&self, subnet: Ipv4Network) -> Result<HashSet<Ipv4Addr>, IpamError> {
        let dir = self.keys.ips();
        let kvs = self
            .get(
                "listing allocated addresses",
                self.scan_prefix(subnet),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(&dir)?
                    .parse::<Ipv4Addr>()
                    .ok()
            })
            .filter(|ip| subnet.contains(*ip))
            .collect())
    }

    /// Every decodable allocation inside `subnet`.
    pub async fn list_in(&self, subnet: Ipv4Network) -> Result<Vec<Allocation>, IpamError> {
        let kvs = self
            .get(
                "listing allocations",
                self.scan_prefix(subnet),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(self.decode_allocations(kvs, |ip| subnet.contains(ip)))
    }

    /// One linearizable read: etcd has a leader and answers.
    pub async fn ping(&self) -> Result<(), IpamError> {
        self.get(
            "checking etcd",
            self.keys.config(),
            Some(GetOptions::new().with_count_only()),
        )
        .await
        .map(|_| ())
    }
}

enum HandleState {
    Absent,
    Holds(Allocation),
    /// The handle exists (at this revision) but its address record is
    /// missing, undecodable or someone else's.
    Dangling(i64),
}

fn handle_record(kv: &KeyValue) -> Option<HandleRecord> {
    serde_json::from_slice(kv.value()).ok()
}

/// The allocation the address key `kv` of `ip` records, if it belongs to
/// `handle`.
fn held_by(kv: &KeyValue, ip: Ipv4Addr, handle: &Handle) -> Option<Allocation> {
    owner_of(kv)
        .filter(|o| o.holds(handle))
        .map(|owner| Allocation {
            ip,
            owner,
            revision: kv.mod_revision(),
        })
}

fn owner_of(kv: &KeyValue) -> Option<Owner> {
    serde_json::from_slice(kv.value()).ok()
}

/// The first key of each `get` in a transaction's responses.
fn gets(resp: &TxnResponse) -> Vec<Option<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        })
        .collect()
}

impl Store for EtcdStore {
    async fn lookup(&mut self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        EtcdStore::lookup(self, handle).await
    }
    async fn claim(&mut self, ip: Ipv4Addr, owner: &Owner) -> Result<Claim, IpamError> {
        EtcdStore::claim(self, ip, owner).await
    }
    async fn used_in(&mut self, subnet: Ipv4Network) -> Result<HashSet<Ipv4Addr>, IpamError> {
        EtcdStore::used_in(self, subnet).await
    }
    async fn list_in(&mut self, subnet: Ipv4Network) -> Result<Vec<Allocation>, IpamError> {
        EtcdStore::list_in(self, subnet).await
    }
    async fn release(&mut self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        EtcdStore::release(self, handle).await
    }
    async fn release_exact(&mut self, allocation: &Allocation) -> Result<bool, IpamError> {
        EtcdStore::release_exact(self, allocation).await
    }
    async fn ping(&mut self) -> Result<(), IpamError> {
        EtcdStore::ping(self).await
    }
}
