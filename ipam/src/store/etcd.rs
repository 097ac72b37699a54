//! Allocations in etcd v3.
//!
//! Keys (prefix default `/trellis`):
//! - `<prefix>/ipam/ips/<ip>`: `{"containerID","ifname","node","network"}`,
//!   exactly one per allocated address;
//! - `<prefix>/ipam/handles/<containerID>/<ifname>`: `{"ip","node","network"}`,
//!   which address an attachment holds;
//! - `<prefix>/ipam/guards/<containerID>/<ifname>`: empty, under the short
//!   lease of one ADD, written with each of its claims and revoked when the
//!   ADD ends (`end_claims`), so that no copy of a claim still held by a
//!   frozen member can apply later.
//!
//! Both keys are written by one transaction that requires both to be absent,
//! and removed by one transaction that requires both to be unchanged, so an
//! address and its owner never disagree and a stale release never frees an
//! address that somebody else holds now. Every call has a deadline. A claim
//! that got no answer leaves a `Fence` behind, and `apply_fence` runs its
//! transaction (see `fence`, which also holds the
//! store's fence transactions). What the keys hold is decoded in `records`;
//! reads over many keys are in `etcd_listing`.

use crate::allocation::{Allocation, Claim, Handle, Owner};
use crate::error::IpamError;
use crate::store::access::{Identity, Touched};
use crate::store::fence::{fence_for, Fence};
use crate::store::records::{gets, held_by, owner_of, HandleValue};
use crate::store::Store;
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnResponse};
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use trellis_common::etcd::{Denial, EtcdClient, EtcdSettings};
use trellis_common::etcd_failover::{Attempt, Failed};
use trellis_common::keys::Keys;

/// etcd as an allocation store.
pub struct EtcdStore {
    client: EtcdClient,
    pub(super) keys: Keys,
    /// Endpoints and user, to name in errors.
    who: Identity,
    timeout: Duration,
    deadline: Option<Instant>,
    /// The last claim that got no answer (see `unanswered_claim`).
    unanswered: Mutex<Option<Fence>>,
    /// The lease guarding this store's claims (see `Keys::claim_guard`),
    /// granted with the first claim.
    guard: Mutex<Option<i64>>,
}

/// How long a claim guard outlives an ADD whose end could not revoke it.
const GUARD_TTL: i64 = 10;

impl EtcdStore {
    /// Connect (lazily: the first call opens the connection, within its
    /// deadline; with a user, at once). Bad settings or TLS files are a
    /// configuration error (7), a refused user 106.
    pub async fn connect(settings: &EtcdSettings) -> Result<EtcdStore, IpamError> {
        let client = settings.connect().await?;
        Ok(Self::from_client(&client, settings.keys(), settings.timeout).named_by(settings))
    }

    /// A store over an existing client (the agent's) and its keys, each
    /// call bounded by `timeout` (every endpoint it tries included).
    pub fn from_client(client: &EtcdClient, keys: Keys, timeout: Duration) -> EtcdStore {
        EtcdStore {
            client: client.clone(),
            keys,
            who: Identity::of(client),
            timeout,
            deadline: None,
            unanswered: Mutex::default(),
            guard: Mutex::default(),
        }
    }

    /// Name the user and the settings that give it as `settings` do, in
    /// errors (a client shared by the agent was made from these).
    pub fn named_by(mut self, settings: &EtcdSettings) -> EtcdStore {
        self.who.user = settings.username.clone();
        self.who.credentials_setting = settings.source.credentials();
        self
    }

    /// Bound every later call by `deadline` too (a CNI verb's whole budget).
    pub fn with_deadline(mut self, deadline: Instant) -> EtcdStore {
        self.deadline = Some(deadline);
        self
    }

    /// Run one etcd call within the per-call timeout and the deadline, on
    /// one endpoint after another while a member cannot serve it (see
    /// `trellis_common::etcd_failover`; a `write` goes only to a member
    /// that answered just before). Every write here is a transaction
    /// guarded by what it read, so one that applied on a member given up
    /// on and is sent again elsewhere finds its guard changed.
    async fn call<T, F, Fut>(
        &self,
        doing: &'static str,
        touched: Touched<'_>,
        op: F,
    ) -> Result<T, IpamError>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut deadline = started + self.timeout;
        if let Some(d) = self.deadline {
            deadline = deadline.min(d);
        }
        let result = if matches!(touched, Touched::Write(_)) {
            self.client.call_write(deadline, op).await
        } else {
            self.client.call(deadline, op).await
        };
        match result {
            Ok(v) => Ok(v),
            Err(failed) => Err(self.failure(doing, touched, started, failed).await),
        }
    }

    async fn failure(
        &self,
        doing: &'static str,
        touched: Touched<'_>,
        started: Instant,
        failed: Failed,
    ) -> IpamError {
        if let Attempt::Etcd(e) = &failed.last {
            if Denial::of(e).is_some() {
                let kv = self.client.pick().await.client.kv_client();
                let budget = self.client.attempt_timeout();
                return self.who.access_denied(&kv, budget, doing, e, touched).await;
            }
        }
        if failed.timed_out() && failed.attempts.len() == 1 {
            return IpamError::EtcdTimeout {
                endpoints: self.who.endpoints.clone(),
                doing,
                after: started.elapsed(),
            };
        }
        IpamError::Etcd {
            endpoints: self.who.endpoints.clone(),
            doing,
            detail: failed.describe(),
            outcome_unknown: failed.outcome_unknown,
        }
    }

    /// Run `txn`, which writes `writes`.
    pub(super) async fn txn(
        &self,
        doing: &'static str,
        writes: &[&str],
        txn: Txn,
    ) -> Result<TxnResponse, IpamError> {
        self.call(doing, Touched::Write(writes), |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })
        .await
    }

    pub(super) async fn get(
        &self,
        doing: &'static str,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, IpamError> {
        let read = key.clone();
        let mut resp = self
            .call(doing, Touched::Read(&read), |client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.kv_client().get(key, options).await }
            })
            .await?;
        Ok(resp.take_kvs())
    }

    /// The key of `handle`.
    pub fn handle_key(&self, handle: &Handle) -> String {
        self.keys.handle(handle)
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
            let Some((ip, ip6, node, network)) =
                HandleValue::decode(&hkv).and_then(HandleValue::held)
            else {
                self.delete_handle_if(&hkey, hrev).await?;
                return Ok(None);
            };
            let ikey = self.keys.ip(ip);
            let ikey6 = ip6.map(|v6| self.keys.ip(v6));
            let mut when = vec![
                Compare::mod_revision(hkey.as_str(), CompareOp::Equal, hrev),
                Compare::mod_revision(ikey.as_str(), CompareOp::Equal, hrev),
            ];
            let mut ops = vec![
                TxnOp::delete(hkey.as_str(), None),
                TxnOp::delete(ikey.as_str(), None),
            ];
            if let Some(k6) = &ikey6 {
                when.push(Compare::mod_revision(k6.as_str(), CompareOp::Equal, hrev));
                ops.push(TxnOp::delete(k6.as_str(), None));
            }
            let mut touched = vec![hkey.as_str(), ikey.as_str()];
            touched.extend(ikey6.as_deref());
            let resp = self
                .txn(
                    "releasing the address",
                    &touched,
                    Txn::new().when(when).and_then(ops).or_else([
                        TxnOp::get(hkey.as_str(), None),
                        TxnOp::get(ikey.as_str(), None),
                    ]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(Some(Allocation {
                    ip,
                    ip6,
                    owner: Owner {
                        container_id: handle.container_id.clone(),
                        ifname: handle.ifname.clone(),
                        node,
                        network,
                        // The handle does not say: only the address key does.
                        plugin: String::new(),
                        name: String::new(),
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
            match ip_kv.and_then(|kv| held_by(kv, ip, ip6, handle)) {
                Some(a) => {
                    // Ours, written separately (a restored backup): free it exactly.
                    if self.release_pair(&a, hrev).await? {
                        return Ok(Some(a));
                    }
                }
                None => {
                    log::warn!(
                        "handle {hkey} points at {} which {} holds: removing only the stale handle",
                        ip,
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
        let ikey6 = a.ip6.map(|v6| self.keys.ip(v6));
        let mut ops = vec![
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
        ];
        if let Some(k6) = &ikey6 {
            // The twin, written with the address, goes with it.
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        k6.as_str(),
                        CompareOp::Equal,
                        a.revision,
                    )])
                    .and_then([TxnOp::delete(k6.as_str(), None)]),
            ));
        }
        let mut touched = vec![ikey.as_str(), hkey.as_str()];
        touched.extend(ikey6.as_deref());
        let resp = self
            .txn(
                "releasing the address",
                &touched,
                Txn::new()
                    .when([Compare::mod_revision(
                        ikey.as_str(),
                        CompareOp::Equal,
                        a.revision,
                    )])
                    .and_then(ops),
            )
            .await?;
        Ok(resp.succeeded())
    }

    pub(super) async fn delete_handle_if(&self, hkey: &str, hrev: i64) -> Result<(), IpamError> {
        self.txn(
            "removing a stale handle",
            &[hkey],
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
        let value = HandleValue::decode(hkv);
        let Some(ip) = value.as_ref().and_then(HandleValue::ip) else {
            return Ok(HandleState::Dangling(hrev));
        };
        let ip6 = value.as_ref().and_then(HandleValue::ip6);
        let kvs = self
            .get("reading the address", self.keys.ip(ip), None)
            .await?;
        Ok(
            match kvs.first().and_then(|kv| held_by(kv, ip, ip6, handle)) {
                Some(a) => HandleState::Holds(a),
                None => HandleState::Dangling(hrev),
            },
        )
    }

    /// The lease of this store's claim guard, granted the first time.
    async fn guard_lease(&self) -> Result<i64, IpamError> {
        if let Some(id) = *self.guard.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(id);
        }
        let granted = self
            .call(
                "granting the claim's lease",
                Touched::Write(&[]),
                |client| async move { client.lease_client().grant(GUARD_TTL, None).await },
            )
            .await?;
        *self.guard.lock().unwrap_or_else(|p| p.into_inner()) = Some(granted.id());
        Ok(granted.id())
    }

    /// End the guard of this store's claims (the ADD is over): a copy of a
    /// claim that etcd applies from now on fails. Without an answer the
    /// lease ends by itself after `GUARD_TTL`.
    pub async fn end_claims(&self) -> Result<(), IpamError> {
        let Some(id) = self.guard.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        self.call(
            "revoking the claim's lease",
            Touched::Write(&[]),
            |client| async move {
                match client.lease_client().revoke(id).await {
                    Ok(_) => Ok(()),
                    // Revoked already by an earlier attempt, or expired.
                    Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            },
        )
        .await
    }

    /// Give `ip` to `owner` in one transaction: the address key and the
    /// handle key are created together, only if both are absent, and the
    /// claim guard is written under this ADD's lease.
    pub async fn claim(
        &self,
        ip: IpAddr,
        ip6: Option<Ipv6Addr>,
        owner: &Owner,
    ) -> Result<Claim, IpamError> {
        let handle = owner.handle();
        let guard = self.guard_lease().await?;
        let gkey = self.keys.claim_guard(&handle);
        let ikey = self.keys.ip(ip);
        let ikey6 = ip6.map(|v6| self.keys.ip(v6));
        let hkey = self.keys.handle(&handle);
        let ivalue = serde_json::to_vec(owner).expect("owner serializes");
        let hvalue = HandleValue::Holds {
            ip,
            ip6,
            node: owner.node.clone(),
            network: owner.network.clone(),
        }
        .encode();
        let mut touched = vec![ikey.as_str(), hkey.as_str(), gkey.as_str()];
        touched.extend(ikey6.as_deref());
        for _ in 0..2 {
            let mut when = vec![
                Compare::create_revision(ikey.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(hkey.as_str(), CompareOp::Equal, 0),
            ];
            let mut puts = vec![
                TxnOp::put(ikey.as_str(), ivalue.clone(), None),
                TxnOp::put(hkey.as_str(), hvalue.clone(), None),
                TxnOp::put(
                    gkey.as_str(),
                    Vec::new(),
                    Some(PutOptions::new().with_lease(guard)),
                ),
            ];
            let mut reads = vec![
                TxnOp::get(hkey.as_str(), None),
                TxnOp::get(ikey.as_str(), None),
            ];
            if let Some(k6) = &ikey6 {
                when.push(Compare::create_revision(k6.as_str(), CompareOp::Equal, 0));
                puts.push(TxnOp::put(k6.as_str(), ivalue.clone(), None));
                reads.push(TxnOp::get(k6.as_str(), None));
            }
            let claim = Txn::new().when(when).and_then(puts).or_else(reads);
            let mut resp = match self.txn("allocating an address", &touched, claim).await {
                Ok(resp) => resp,
                Err(e) if e.may_have_applied() => {
                    let mut fence = fence_for(owner, (&ikey, &ivalue), (&hkey, &hvalue));
                    fence.ip6_key = ikey6.clone();
                    *self.unanswered.lock().unwrap_or_else(|p| p.into_inner()) = Some(fence);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if resp.succeeded() {
                let revision = resp.take_header().map(|h| h.revision()).unwrap_or(0);
                return Ok(Claim::Claimed(Allocation {
                    ip,
                    ip6,
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
            let taken6 = ip6.zip(got.get(2).and_then(Option::as_ref));
            match (got.get(1).and_then(Option::as_ref), taken6) {
                (Some(kv), _) => {
                    return Ok(Claim::Taken {
                        ip,
                        owner: owner_of(kv),
                    })
                }
                (None, Some((v6, kv))) => {
                    return Ok(Claim::Taken {
                        ip: IpAddr::V6(v6),
                        owner: owner_of(kv),
                    })
                }
                // Freed between our compare and the read: try again.
                (None, None) => continue,
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
}

enum HandleState {
    Absent,
    Holds(Allocation),
    /// The handle exists (at this revision) but its address record is
    /// missing, undecodable or someone else's.
    Dangling(i64),
}

impl Store for EtcdStore {
    async fn lookup(&mut self, handle: &Handle) -> Result<Option<Allocation>, IpamError> {
        EtcdStore::lookup(self, handle).await
    }
    async fn claim(
        &mut self,
        ip: IpAddr,
        ip6: Option<Ipv6Addr>,
        owner: &Owner,
    ) -> Result<Claim, IpamError> {
        EtcdStore::claim(self, ip, ip6, owner).await
    }
    async fn used_in(&mut self, subnet: IpNetwork) -> Result<HashSet<IpAddr>, IpamError> {
        EtcdStore::used_in(self, subnet).await
    }
    async fn release_exact(&mut self, allocation: &Allocation) -> Result<bool, IpamError> {
        EtcdStore::release_exact(self, allocation).await
    }
}
