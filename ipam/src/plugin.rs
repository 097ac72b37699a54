//! The CNI verbs of `trellis-ipam`. Each invocation is one short process:
//! a single-threaded runtime, one etcd connection, one overall deadline;
//! or, in cluster mode, one call of the node agent's IPAM service, which
//! runs the same verbs over the etcd client it keeps ([`etcd_verb`]).

use crate::allocation::{Allocation, Handle, Owner};
use crate::allocator::allocate;
use crate::config::{Backend, IpamConf};
use crate::cursor::{FileCursor, NodeCursor};
use crate::error::IpamError;
use crate::fence_keeper;
use crate::placement::{cluster_pool, local_record, node_name};
use crate::pool::Pool;
use crate::request::requested_address;
use crate::store::etcd::EtcdStore;
use crate::store::local::LocalStore;
use crate::store::Store;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use trellis_common::cni::delegate::find_plugin;
use trellis_common::cni::service::IPAM_PLUGIN;
use trellis_common::cni::{code, CniError, CniResult, Command, IpConfig, Plugin, Request, Route};
use trellis_common::etcd::{EtcdClient, EtcdSettings};

/// The most any verb spends waiting for etcd and for the node's lock, so a
/// stuck etcd turns into code 11 well within the runtime's patience.
pub const VERB_BUDGET: Duration = Duration::from_secs(3);

/// The `trellis-ipam` plugin.
pub struct IpamPlugin;

/// How an etcd verb reaches etcd.
#[derive(Clone, Copy)]
pub enum EtcdAccess<'a> {
    /// A connection of the call's own (the exec'd plugin).
    Own,
    /// A client kept for the life of the process (the agent's IPAM
    /// service), connected with the same settings as the call's.
    Shared(&'a EtcdClient),
}

pub fn conf_of(req: &Request) -> Result<IpamConf, CniError> {
    IpamConf::from_netconf(&req.conf.name, &req.conf.raw).map_err(CniError::from)
}

/// The attachment of `req` as the owner of an address of `node`.
fn owner_of(req: &Request, conf: &IpamConf, node: String) -> Owner {
    Owner {
        container_id: req.env.container_id.clone(),
        ifname: req.env.ifname.clone(),
        node,
        network: conf.network.clone(),
        plugin: req.conf.plugin_type.clone(),
        name: trellis_common::container_name::of_env(&req.env).unwrap_or_default(),
    }
}

fn handle_of(req: &Request) -> Handle {
    Handle {
        container_id: req.env.container_id.clone(),
        ifname: req.env.ifname.clone(),
    }
}

async fn connect(
    settings: &EtcdSettings,
    access: EtcdAccess<'_>,
    deadline: Instant,
) -> Result<EtcdStore, IpamError> {
    let store = match access {
        EtcdAccess::Own => EtcdStore::connect(settings).await?,
        EtcdAccess::Shared(client) => {
            EtcdStore::from_client(client, settings.keys(), settings.timeout).named_by(settings)
        }
    };
    Ok(store.with_deadline(deadline))
}

/// The fence keeper to start: this very binary when exec'd, else the one
/// in `CNI_PATH`.
fn keeper_program(req: &Request, access: EtcdAccess<'_>) -> Option<std::path::PathBuf> {
    let found = match access {
        EtcdAccess::Own => std::env::current_exe().map_err(|e| e.to_string()),
        EtcdAccess::Shared(_) => find_plugin(IPAM_PLUGIN, &req.env.path).map_err(|e| e.msg),
    };
    found
        .map_err(|e| log::warn!("cannot start the fence keeper: {e}"))
        .ok()
}

fn local_dir(conf: &IpamConf, data_dir: &Path) -> std::path::PathBuf {
    LocalStore::dir_for(data_dir, &conf.network)
}

/// The ADD result: the address with the subnet's prefix, the gateway, and a
/// default route via the gateway unless `routes` is configured (`::/0` in
/// an IPv6-only pool); in a dual-stack pool the IPv6 address too, with its
/// gateway and `::/0`.
fn result_for(conf: &IpamConf, pool: &Pool, a: &Allocation) -> CniResult {
    let gw = pool.gateway();
    let mut ips = vec![IpConfig {
        address: pool.address_of(a.ip),
        gateway: Some(gw),
        interface: None,
    }];
    let default = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
    let mut routes = vec![Route::new(
        default.parse().expect("valid network"),
        Some(gw),
    )];
    if let (Some(ip6), Some(gw6)) = (a.ip6, pool.gateway6()) {
        if let Some(address) = pool.address6_of(ip6) {
            ips.push(IpConfig {
                address: IpNetwork::V6(address),
                gateway: Some(IpAddr::V6(gw6)),
                interface: None,
            });
            routes.push(Route::new(
                "::/0".parse().expect("valid network"),
                Some(IpAddr::V6(gw6)),
            ));
        }
    }
    CniResult {
        ips,
        routes: conf.routes.clone().unwrap_or(routes),
        dns: conf.dns.clone(),
        interfaces: Vec::new(),
    }
}

async fn add_etcd(
    conf: &IpamConf,
    settings: &EtcdSettings,
    access: EtcdAccess<'_>,
    req: &Request,
    deadline: Instant,
) -> Result<CniResult, IpamError> {
    let started = Instant::now();
    let requested = requested_address(req)?;
    let mut store = connect(settings, access, deadline).await?;
    let (pool, node) = cluster_pool(conf, &store).await?;
    let owner = owner_of(req, conf, node);
    let ready = Instant::now();
    let mut cursor = NodeCursor::new(conf.node_lock_path(), deadline);
    let allocated = allocate(&mut store, &mut cursor, &pool, &owner, requested).await;
    // Whatever happened, no copy of a claim of this ADD may apply from now
    // on (one may sit in a frozen member). Revoked, its lease makes a
    // failed claim's fence needless; else the keeper fences it.
    let ended = store.end_claims().await;
    if let Err(e) = &ended {
        log::warn!("ADD {}: {e}", owner.container_id);
    }
    let out = match allocated {
        Ok(out) => out,
        Err(e) => {
            if let Some(fence) = store.unanswered_claim() {
                // Resolved now if etcd answers: the claim applied or it
                // never will. Else the keeper makes sure of it.
                let resolved = match ended {
                    Ok(()) => store.undo_claim(&fence).await.map(|undone| {
                        if undone {
                            log::info!(
                                "ADD {}: undid a claim that applied unanswered",
                                owner.container_id
                            );
                        }
                    }),
                    Err(e) => Err(e),
                };
                if resolved.is_err() {
                    if let Some(keeper) = keeper_program(req, access) {
                        fence_keeper::hand_over(&conf.state_dir, settings, fence, &keeper);
                    }
                }
            }
            return Err(e);
        }
    };
    log::debug!(
        "ADD {}: {} in {:?} (configuration {:?}, allocation {:?})",
        owner.container_id,
        out.allocation.ip,
        started.elapsed(),
        ready - started,
        ready.elapsed()
    );
    Ok(result_for(conf, &pool, &out.allocation))
}

fn add_local(
    conf: &IpamConf,
    data_dir: &Path,
    req: &Request,
    deadline: Instant,
) -> Result<CniResult, IpamError> {
    let requested = requested_address(req)?;
    let subnet = conf
        .subnet
        .ok_or_else(|| IpamError::Config("single-host mode needs \"subnet\"".into()))?;
    let pool = conf.pool(subnet)?.with_ipv6(conf.subnet6)?;
    let owner = owner_of(req, conf, String::new());
    let mut store = LocalStore::open(&local_dir(conf, data_dir), deadline)?;
    if requested.is_none() {
        // A repeated ADD: answered from memory, the cursor stays put.
        if let Some(held) = store.lookup(&owner.handle()) {
            return Ok(result_for(conf, &pool, &held));
        }
    }
    let mut cursor = FileCursor::new(store.cursor_path());
    let out = now_or_never(allocate(&mut store, &mut cursor, &pool, &owner, requested))?;
    Ok(result_for(conf, &pool, &out.allocation))
}

/// The local store never awaits anything: drive its futures to completion
/// without a runtime.
fn now_or_never<T>(f: impl Future<Output = T>) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("local store futures complete immediately"),
    }
}

/// CHECK: the attachment holds an address, and it is the one in prevResult.
fn verify(held: Option<Allocation>, req: &Request, store: &str) -> Result<(), IpamError> {
    let handle = handle_of(req);
    let a = held.ok_or_else(|| {
        IpamError::CheckFailed(format!(
            "no address is allocated to container {} interface {} in {store}",
            handle.container_id, handle.ifname
        ))
    })?;
    if let Some(prev) = &req.conf.prev_result {
        if !prev.ips.is_empty() && !prev.ips.iter().any(|c| c.address.ip() == a.ip) {
            return Err(IpamError::CheckFailed(format!(
                "container {} interface {} holds {} in {store}, but prevResult shows {}",
                handle.container_id,
                handle.ifname,
                a.ip,
                prev.ips
                    .iter()
                    .map(|c| c.address.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// GC: free every allocation of ours whose attachment the runtime no longer
/// lists. Each is freed only if unchanged since it was listed.
async fn collect_garbage<S: Store>(
    store: &mut S,
    ours: Vec<Allocation>,
    valid: &HashSet<Handle>,
) -> Result<(), IpamError> {
    let mut first_error = None;
    let mut freed = 0;
    for a in ours.iter().filter(|a| !valid.contains(&a.handle())) {
        match store.release_exact(a).await {
            Ok(true) => freed += 1,
            Ok(false) => {}
            Err(e) => {
                log::warn!("GC: freeing {} failed: {e}", a.ip);
                first_error.get_or_insert(e);
            }
        }
    }
    log::info!("GC: freed {freed} of {} allocations", ours.len());
    first_error.map_or(Ok(()), Err)
}

fn valid_attachments(req: &Request) -> Result<HashSet<Handle>, CniError> {
    Ok(req.conf.gc_valid_attachments()?.iter().cloned().collect())
}

/// STATUS: anything but a configuration error means "not ready yet".
fn not_ready(e: impl Into<CniError>) -> CniError {
    let e = e.into();
    match e.code {
        code::INVALID_CONFIG => e,
        _ => CniError::not_ready(e.msg),
    }
}

/// One verb in cluster mode, reaching etcd through `access`: what both the
/// exec'd plugin and the agent's IPAM service run. ADD's result, `None`
/// for the other verbs.
pub async fn etcd_verb(
    req: &Request,
    conf: &IpamConf,
    settings: &EtcdSettings,
    access: EtcdAccess<'_>,
) -> Result<Option<CniResult>, CniError> {
    let deadline = Instant::now() + VERB_BUDGET;
    let handle = handle_of(req);
    let done = match req.command() {
        Command::Add => return Ok(Some(add_etcd(conf, settings, access, req, deadline).await?)),
        Command::Del => {
            let store = connect(settings, access, deadline).await?;
            fence_keeper::apply_pending_for(&conf.state_dir, &store, &store.handle_key(&handle))
                .await?;
            store.release(&handle).await.map(|_| ())
        }
        Command::Check => {
            let store = connect(settings, access, deadline).await?;
            verify(store.lookup(&handle).await?, req, "etcd")
        }
        Command::Gc => {
            let valid = valid_attachments(req)?;
            gc_etcd(conf, settings, access, deadline, &valid).await
        }
        Command::Status => {
            return status_etcd(conf, settings, access, deadline)
                .await
                .map(|()| None)
                .map_err(not_ready)
        }
        Command::Version => Ok(()),
    };
    done.map(|()| None).map_err(CniError::from)
}

async fn gc_etcd(
    conf: &IpamConf,
    settings: &EtcdSettings,
    access: EtcdAccess<'_>,
    deadline: Instant,
    valid: &HashSet<Handle>,
) -> Result<(), IpamError> {
    let mut store = connect(settings, access, deadline).await?;
    let node = node_name(conf, local_record(conf)?.as_ref())?;
    let ours: Vec<Allocation> = store
        .list_node(&node)
        .await?
        .into_iter()
        .filter(|a| a.owner.network == conf.network)
        .collect();
    collect_garbage(&mut store, ours, valid).await?;
    let swept = store
        .sweep_handles(&node, &conf.network, |h| valid.contains(h))
        .await?;
    if swept > 0 {
        log::info!("GC: removed {swept} handles that held no address");
    }
    Ok(())
}

async fn status_etcd(
    conf: &IpamConf,
    settings: &EtcdSettings,
    access: EtcdAccess<'_>,
    deadline: Instant,
) -> Result<(), IpamError> {
    let store = connect(settings, access, deadline).await?;
    store.ping().await?;
    cluster_pool(conf, &store).await.map(|_| ())
}

/// A cluster-mode verb of the exec'd plugin: its own runtime and connection.
fn etcd_verb_own(
    req: &Request,
    conf: &IpamConf,
    settings: &EtcdSettings,
) -> Result<Option<CniResult>, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot start a runtime: {e}")))?;
    rt.block_on(etcd_verb(req, conf, settings, EtcdAccess::Own))
}

impl Plugin for IpamPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let deadline = Instant::now() + VERB_BUDGET;
        let conf = conf_of(req)?;
        match &conf.backend {
            Backend::Etcd(s) => etcd_verb_own(req, &conf, s)?
                .ok_or_else(|| CniError::new(code::IO_FAILURE, "ADD gave no result")),
            Backend::Local { data_dir } => Ok(add_local(&conf, data_dir, req, deadline)?),
        }
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let deadline = Instant::now() + VERB_BUDGET;
        let conf = conf_of(req)?;
        let handle = handle_of(req);
        match &conf.backend {
            Backend::Etcd(s) => etcd_verb_own(req, &conf, s).map(|_| ()),
            Backend::Local { data_dir } => {
                match LocalStore::open_existing(&local_dir(&conf, data_dir), deadline)? {
                    Some(mut store) => store.release(&handle).map(|_| ()).map_err(Into::into),
                    None => Ok(()),
                }
            }
        }
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let deadline = Instant::now() + VERB_BUDGET;
        let conf = conf_of(req)?;
        let handle = handle_of(req);
        match &conf.backend {
            Backend::Etcd(s) => etcd_verb_own(req, &conf, s).map(|_| ()),
            Backend::Local { data_dir } => {
                let dir = local_dir(&conf, data_dir);
                let held =
                    LocalStore::open_existing(&dir, deadline)?.and_then(|s| s.lookup(&handle));
                Ok(verify(held, req, &dir.display().to_string())?)
            }
        }
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let deadline = Instant::now() + VERB_BUDGET;
        let conf = conf_of(req)?;
        match &conf.backend {
            Backend::Etcd(s) => etcd_verb_own(req, &conf, s).map(|_| ()),
            Backend::Local { data_dir } => {
                let valid = valid_attachments(req)?;
                let Some(mut store) =
                    LocalStore::open_existing(&local_dir(&conf, data_dir), deadline)?
                else {
                    return Ok(());
                };
                let ours = store.list_all();
                Ok(now_or_never(collect_garbage(&mut store, ours, &valid))?)
            }
        }
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let deadline = Instant::now() + VERB_BUDGET;
        let conf = conf_of(req)?;
        match &conf.backend {
            Backend::Etcd(s) => etcd_verb_own(req, &conf, s).map(|_| ()),
            Backend::Local { data_dir } => {
                let store =
                    LocalStore::open(&local_dir(&conf, data_dir), deadline).map_err(not_ready)?;
                store.check_writable().map_err(not_ready)
            }
        }
    }
}
