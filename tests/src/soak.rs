//! The soak: a three-member etcd and three nodes with their agents, waves
//! of concurrent ADDs on every node (each wave's pods DELeted with the
//! next wave), faults at random waves, invariants checked after every
//! wave and every repair, figures printed at the end
//! (`trellis-soak`, `scripts/soak.sh`).
//!
//! A fault hits at a random moment of a wave, while its ADDs run
//! (SIGKILL of the leader, of a follower or of an agent, SIGSTOP of every
//! member), or, for a partition, just before it; it is repaired after that
//! wave or the next (a frozen etcd after the wave, at least 3.5 s after the
//! freeze: longer than the plugin's 3 s deadline). Checked all along: no address on two live
//! pods' interfaces; a failed ADD leaves no veth; after every repair,
//! once settled, etcd holds exactly the live pods' allocations and
//! handles and no claim guard. At the end: every pod DELeted, nothing
//! allocated, no handle, guard or fence left, every node's overlay
//! routes and FDB entries match the node records in etcd.

use crate::churn::{add_round, del_all, failed_adds_left_no_veth, no_address_twice};
use crate::cluster::{Cluster, ClusterSpec, FailedAdd, Pod};
use crate::etcd_cluster::Cut;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// ADD/DEL pairs in all.
    pub pairs: usize,
    /// Concurrent ADDs per node and wave.
    pub per_node: usize,
    /// Seed of the fault schedule.
    pub seed: u64,
}

/// The faults, injected in a shuffled round-robin (so that every kind
/// comes up) at random waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillFollower,
    KillLeader,
    /// A random member cut off from everything (clients and peers).
    PartitionMember,
    /// A random node's agent SIGKILLed, started again at the repair.
    KillAgent,
    /// Every member SIGSTOPped for a whole wave: longer than the plugin's
    /// 3 s deadline.
    FreezeEtcd,
}

const FAULTS: [Fault; 5] = [
    Fault::KillFollower,
    Fault::KillLeader,
    Fault::PartitionMember,
    Fault::KillAgent,
    Fault::FreezeEtcd,
];

/// A fault in place: what to undo, and after which wave.
#[derive(Debug)]
struct Active {
    fault: Fault,
    hit: usize,
    /// The etcd leader was hit: the wave runs into an election.
    election: bool,
    until_wave: usize,
    /// Processes to signal during the wave (none: in place already).
    signal: Option<(Vec<i32>, Signal)>,
    /// When the signal went.
    hit_at: Option<Instant>,
}

/// The figures of a run.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub adds: usize,
    pub adds_failed: usize,
    pub dels: usize,
    pub waves: usize,
    /// Failed ADDs by CNI code.
    pub codes: BTreeMap<u32, usize>,
    /// ADDs that failed in a wave with no fault in place.
    pub failed_without_fault: usize,
    pub faults: BTreeMap<String, usize>,
    pub longest_add: Duration,
    /// The longest ADD of the waves that ran into a leader election.
    pub longest_add_in_election: Duration,
    /// From the last repair until etcd held exactly the live pods'.
    pub settle_after_last_fault: Duration,
    pub longest_settle: Duration,
    pub elapsed: Duration,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "operations: {} ADDs ({} failed), {} DELs, {} waves, in {:.0?}",
            self.adds, self.adds_failed, self.dels, self.waves, self.elapsed
        )?;
        writeln!(f, "faults: {:?}", self.faults)?;
        writeln!(
            f,
            "failed ADDs by CNI code: {:?} ({} in waves with no fault in place)",
            self.codes, self.failed_without_fault
        )?;
        writeln!(
            f,
            "longest ADD: {:.2?}; longest ADD during a leader election: {:.2?}",
            self.longest_add, self.longest_add_in_election
        )?;
        write!(
            f,
            "settled (etcd = live pods) {:.2?} after the last fault; longest settle {:.2?}",
            self.settle_after_last_fault, self.longest_settle
        )
    }
}

/// xorshift64*: the schedule's randomness (no dependency for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The cluster of the soak: three members, three nodes with agents.
pub fn start_cluster() -> Result<Cluster> {
    Cluster::start(ClusterSpec {
        chain: Vec::new(),
        ..ClusterSpec::default().nodes(3).etcd_members(3)
    })
}

/// Runs the soak on `cluster`; an invariant broken is an error.
pub fn run(cluster: &mut Cluster, opts: &SoakOptions) -> Result<SoakReport> {
    let started = Instant::now();
    let mut rng = Rng(opts.seed | 1);
    let mut order: Vec<Fault> = Vec::new();
    let mut report = SoakReport::default();
    let mut live: Vec<Pod> = Vec::new();
    let mut active: Option<Active> = None;
    let mut last_repair: Option<Instant> = None;
    let mut wave = 0;
    while report.adds < opts.pairs {
        wave += 1;
        let mut election = false;
        if active.is_none() && wave > 1 && rng.below(3) == 0 {
            if order.is_empty() {
                order = FAULTS.to_vec();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i + 1));
                }
            }
            let fault = order.pop().expect("refilled");
            let a = plan(cluster, fault, &mut rng, wave)
                .with_context(|| format!("injecting {fault:?}"))?;
            election = a.election;
            eprintln!("wave {wave}: {fault:?} (member/node {})", a.hit);
            *report.faults.entry(format!("{fault:?}")).or_default() += 1;
            active = Some(a);
        }
        let per_node = opts
            .per_node
            .min((opts.pairs - report.adds).div_ceil(cluster.nodes.len()));
        let delay = Duration::from_millis(rng.below(600) as u64);
        let to_signal = active.as_mut().and_then(|a| a.signal.take());
        let (round, hit_at) = std::thread::scope(|s| {
            let signaller = to_signal.map(|(pids, sig)| {
                s.spawn(move || {
                    std::thread::sleep(delay);
                    for pid in pids {
                        let _ = kill(Pid::from_raw(pid), sig);
                    }
                    Instant::now()
                })
            });
            let round = add_round(cluster, per_node, &format!("w{wave}"));
            (round, signaller.map(|h| h.join().expect("signal thread")))
        });
        let round = round?;
        if let Some(a) = active.as_mut() {
            a.hit_at = a.hit_at.or(hit_at);
            record(cluster, a)?;
        }
        report.waves += 1;
        report.adds += round.pods.len() + round.failed.len();
        report.adds_failed += round.failed.len();
        for (code, n) in round.codes() {
            *report.codes.entry(code).or_default() += n;
        }
        if active.is_none() {
            report.failed_without_fault += round.failed.len();
        }
        report.longest_add = report.longest_add.max(round.longest);
        if election {
            report.longest_add_in_election = report.longest_add_in_election.max(round.longest);
        }
        failed_adds_left_no_veth(cluster, &round.failed).with_context(|| format!("wave {wave}"))?;
        let all: Vec<&Pod> = live.iter().chain(&round.pods).collect();
        no_address_twice(&all).with_context(|| format!("wave {wave}"))?;
        if !round.failed.is_empty() {
            eprintln!(
                "wave {wave}: {} of {} ADDs failed {:?}; first: {}",
                round.failed.len(),
                round.failed.len() + round.pods.len(),
                round.codes(),
                round.failed[0].failure
            );
        }
        // A frozen etcd is thawed before the DELs (they would wait it out).
        if active
            .as_ref()
            .is_some_and(|a| a.fault == Fault::FreezeEtcd)
        {
            repair(cluster, active.take().expect("active"))?;
            last_repair = Some(Instant::now());
        }
        let previous = std::mem::replace(&mut live, round.pods);
        report.dels += previous.len() + round.failed.len();
        del_everything(cluster, previous, round.failed)?;
        if active.as_ref().is_some_and(|a| a.until_wave <= wave) {
            repair(cluster, active.take().expect("active"))?;
            last_repair = Some(Instant::now());
        }
        if let Some(at) = last_repair.filter(|_| active.is_none()) {
            settled(cluster, &live, Duration::from_secs(30))
                .with_context(|| format!("after the repair following wave {wave}"))?;
            let took = at.elapsed();
            report.settle_after_last_fault = took;
            report.longest_settle = report.longest_settle.max(took);
            last_repair = None;
        }
    }
    if let Some(a) = active.take() {
        repair(cluster, a)?;
        let at = Instant::now();
        settled(cluster, &live, Duration::from_secs(30)).context("after the last repair")?;
        report.settle_after_last_fault = at.elapsed();
        report.longest_settle = report.longest_settle.max(report.settle_after_last_fault);
    }
    report.dels += live.len();
    del_everything(cluster, std::mem::take(&mut live), Vec::new())?;
    settled(cluster, &[], Duration::from_secs(30)).context("at the end")?;
    overlay_matches_etcd(cluster, Duration::from_secs(30)).context("at the end")?;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn del_everything(cluster: &Cluster, pods: Vec<Pod>, failed: Vec<FailedAdd>) -> Result<()> {
    del_all(cluster, pods, failed, Duration::from_secs(60))
}

/// Chooses whom `fault` hits; a partition is put in place at once, the
/// other faults are signals sent during the coming wave.
fn plan(cluster: &mut Cluster, fault: Fault, rng: &mut Rng, wave: usize) -> Result<Active> {
    let until_wave = wave + rng.below(2);
    let nodes = cluster.nodes.len();
    let etcd = cluster.etcd_cluster_mut();
    let leader = etcd.wait_leader(Duration::from_secs(20))?;
    let pid = |i: usize| -> Result<i32> {
        Ok(etcd.member(i).pid().context("member not running")? as i32)
    };
    let (hit, election, signal) = match fault {
        Fault::KillFollower => {
            let f = etcd.follower()?;
            (f, false, Some((vec![pid(f)?], Signal::SIGKILL)))
        }
        Fault::KillLeader => (leader, true, Some((vec![pid(leader)?], Signal::SIGKILL))),
        Fault::FreezeEtcd => {
            let pids = (0..etcd.len()).map(pid).collect::<Result<_>>()?;
            (0, false, Some((pids, Signal::SIGSTOP)))
        }
        Fault::PartitionMember => {
            let m = rng.below(etcd.len());
            etcd.partition(m, Cut::All)?;
            (m, m == leader, None)
        }
        Fault::KillAgent => {
            let n = rng.below(nodes);
            let pid = agent_pid(cluster, n).context("the agent is not running")?;
            (n, false, Some((vec![pid], Signal::SIGKILL)))
        }
    };
    Ok(Active {
        fault,
        hit,
        election,
        until_wave,
        signal,
        hit_at: None,
    })
}

/// The pid of node `n`'s agent.
fn agent_pid(cluster: &Cluster, n: usize) -> Option<i32> {
    cluster.nodes[n].netns.pids().into_iter().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .is_ok_and(|c| c.trim() == "trellis-agent")
    })
}

/// Tells the harness what the signals of the wave did (reaps a killed
/// process, marks frozen members).
fn record(cluster: &mut Cluster, a: &Active) -> Result<()> {
    if a.hit_at.is_none() {
        return Ok(());
    }
    let etcd = cluster.etcd_cluster_mut();
    match a.fault {
        Fault::KillFollower | Fault::KillLeader => etcd.kill(a.hit)?,
        Fault::FreezeEtcd => {
            for m in 0..etcd.len() {
                etcd.freeze(m)?;
            }
        }
        Fault::KillAgent => cluster.nodes[a.hit].kill_agent()?,
        Fault::PartitionMember => {}
    }
    Ok(())
}

fn repair(cluster: &mut Cluster, a: Active) -> Result<()> {
    if a.fault == Fault::FreezeEtcd {
        // Frozen for longer than the plugin's deadline.
        if let Some(at) = a.hit_at {
            let thaw_at = at + Duration::from_millis(3500);
            std::thread::sleep(thaw_at.saturating_duration_since(Instant::now()));
        }
    }
    let etcd = cluster.etcd_cluster_mut();
    match a.fault {
        Fault::KillFollower | Fault::KillLeader => etcd.restart(a.hit)?,
        Fault::PartitionMember => etcd.heal()?,
        Fault::FreezeEtcd => {
            for m in 0..etcd.len() {
                etcd.thaw(m)?;
            }
        }
        Fault::KillAgent => cluster.nodes[a.hit].start_agent()?,
    }
    cluster
        .etcd_cluster()
        .wait_leader(Duration::from_secs(20))
        .with_context(|| format!("repairing {:?}", a.fault))?;
    Ok(())
}

/// Waits (bounded) until etcd holds exactly the allocations and handles of
/// `live` and no claim guard.
pub fn settled(cluster: &Cluster, live: &[Pod], timeout: Duration) -> Result<()> {
    let want_ips: BTreeSet<IpAddr> = live.iter().map(|p| p.ip).collect();
    let want_handles: BTreeSet<String> = live
        .iter()
        .map(|p| format!("{}/{}", p.container_id, p.ifname))
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let got = (|| -> Result<_> {
            let ips: BTreeSet<IpAddr> = cluster.allocations()?.into_iter().collect();
            let prefix = format!("{}/ipam/handles/", cluster.key_prefix());
            let handles: BTreeSet<String> = cluster
                .etcd_entries("ipam/handles/")?
                .into_iter()
                .map(|(k, _)| k.strip_prefix(&prefix).unwrap_or(&k).to_owned())
                .collect();
            let guards = cluster.etcd_entries("ipam/guards/")?.len();
            Ok((ips, handles, guards))
        })();
        match &got {
            Ok((ips, handles, 0)) if *ips == want_ips && *handles == want_handles => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok((ips, handles, guards)) => bail!(
                "etcd does not match the {} live pods after {timeout:?}: addresses not of a \
                 live pod {:?}, live pods' addresses missing {:?}, orphaned handles {:?}, \
                 missing handles {:?}, {guards} claim guards",
                live.len(),
                ips.difference(&want_ips).collect::<Vec<_>>(),
                want_ips.difference(ips).collect::<Vec<_>>(),
                handles.difference(&want_handles).collect::<Vec<_>>(),
                want_handles.difference(handles).collect::<Vec<_>>(),
            ),
            Err(e) => bail!("reading etcd: {e:#}"),
        }
    }
}

/// Every node's overlay routes and FDB destinations are the other nodes'
/// subnets and public IPs as their records in etcd say (polled, bounded).
pub fn overlay_matches_etcd(cluster: &Cluster, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let check = (|| -> Result<()> {
            let records: Vec<(String, Value)> = cluster
                .etcd_entries("nodes/")?
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        k.rsplit('/').next().unwrap_or("").to_owned(),
                        serde_json::from_str(&v)?,
                    ))
                })
                .collect::<Result<_>>()?;
            if records.len() != cluster.nodes.len() {
                bail!(
                    "{} node records for {} nodes",
                    records.len(),
                    cluster.nodes.len()
                );
            }
            for node in &cluster.nodes {
                let want_routes: BTreeSet<String> = records
                    .iter()
                    .filter(|(n, _)| *n != node.name)
                    .filter_map(|(_, r)| r["subnet"].as_str().map(str::to_owned))
                    .collect();
                let want_fdb: BTreeSet<String> = records
                    .iter()
                    .filter(|(n, _)| *n != node.name)
                    .filter_map(|(_, r)| r["publicIP"].as_str().map(str::to_owned))
                    .collect();
                let routes: Vec<Value> = serde_json::from_str(&node.netns.ok(&[
                    "ip",
                    "-j",
                    "route",
                    "show",
                    "dev",
                    "trellis.1",
                ])?)?;
                let routes: BTreeSet<String> = routes
                    .iter()
                    .filter_map(|r| r["dst"].as_str().map(str::to_owned))
                    .collect();
                let fdb: Vec<Value> = serde_json::from_str(&node.netns.ok(&[
                    "bridge",
                    "-j",
                    "fdb",
                    "show",
                    "dev",
                    "trellis.1",
                ])?)?;
                let fdb: BTreeSet<String> = fdb
                    .iter()
                    .filter_map(|e| e["dst"].as_str().map(str::to_owned))
                    .collect();
                if routes != want_routes || fdb != want_fdb {
                    bail!(
                        "{}: routes {routes:?} (etcd: {want_routes:?}), FDB {fdb:?} (etcd: {want_fdb:?})",
                        node.name
                    );
                }
            }
            Ok(())
        })();
        match check {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
