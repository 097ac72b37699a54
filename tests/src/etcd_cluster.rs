//! etcd as a cluster of members for fault tests: each member in its own
//! namespace hanging off the underlay bridge (so that a partition is a
//! matter of the bridge's ports), the faults a three-member etcd exists to
//! survive, and reads that go to whichever member can answer.
//!
//! ```text
//!  underlay ns: br0 ── e1 ── member ns etcd1 192.0.2.251:2379/2380
//!                   ── e2 ── member ns etcd2 192.0.2.252
//!                   ── e3 ── member ns etcd3 192.0.2.253
//! ```
//!
//! A partition is an nftables table of the bridge family in the underlay
//! namespace dropping what the member's port forwards (peer traffic only,
//! or clients too). A single etcd (the default of [`crate::cluster`]) is a
//! cluster of one member living in the underlay namespace itself.

use crate::etcd::Etcd;
use crate::netns::{attach_to_bridge, Netns};
use anyhow::{bail, Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Where member `i` (from 0) listens.
pub fn member_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 251 + i as u8)
}

/// The nftables table of the partitions, in the underlay namespace.
const PARTITION_TABLE: &str = "trl_partition";

/// What a partition cuts off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The member's peer traffic (port 2380): clients still reach it and
    /// get "no leader" once it noticed.
    Peers,
    /// Everything to and from the member.
    All,
}

struct Member {
    // Dropped first: the process, then its namespace.
    etcd: Etcd,
    netns: Option<Netns>,
    cut: Option<Cut>,
}

/// The members of one etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// The namespace whose bridge connects the members (`ip netns` name).
    underlay: String,
}

impl EtcdCluster {
    /// One etcd inside `underlay` itself, on `ip`.
    pub fn single(underlay: &Netns, ip: IpAddr) -> Result<EtcdCluster> {
        let etcd = Etcd::start_in_named(underlay.name(), ip)
            .context("starting etcd in the underlay namespace")?;
        Ok(EtcdCluster {
            members: vec![Member {
                etcd,
                netns: None,
                cut: None,
            }],
            underlay: underlay.name().to_string(),
        })
    }

    /// `n` members, each in its own namespace attached to `bridge` of
    /// `underlay` at [`member_ip`], started together; returns once every
    /// member is healthy (a leader elected).
    pub fn start(underlay: &Netns, bridge: &str, n: usize) -> Result<EtcdCluster> {
        if n == 0 || n > 3 {
            bail!("1 to 3 etcd members, not {n}");
        }
        let peers: Vec<String> = (0..n)
            .map(|i| format!("etcd{}=http://{}:2380", i + 1, member_ip(i)))
            .collect();
        let initial = peers.join(",");
        let mut members = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("etcd{}", i + 1))?;
            let addr = IpNetwork::V4(Ipv4Network::new(member_ip(i), 24).expect("/24"));
            attach_to_bridge(underlay, bridge, &port(i), &ns, "eth0", Some(addr))?;
            let etcd = Etcd::spawn_member(
                ns.name(),
                &format!("etcd{}", i + 1),
                IpAddr::V4(member_ip(i)),
                &initial,
            )?;
            members.push(Member {
                etcd,
                netns: Some(ns),
                cut: None,
            });
        }
        let mut cluster = EtcdCluster {
            members,
            underlay: underlay.name().to_string(),
        };
        for m in &mut cluster.members {
            m.etcd.wait_healthy()?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, as the clients are given them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.etcd.endpoint()).collect()
    }

    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i].etcd
    }

    pub fn member_mut(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i].etcd
    }

    /// Run every later `etcdctl` of every member as `user:password` (after
    /// `etcdctl auth enable`), or without a user.
    pub fn set_etcdctl_user(&mut self, user: Option<&str>) {
        for m in &mut self.members {
            m.etcd.set_etcdctl_user(user);
        }
    }

    /// Members that run, are not frozen and not cut off: those a read can
    /// ask.
    fn reachable(&self) -> impl Iterator<Item = (usize, &Etcd)> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.etcd.running() && !m.etcd.paused() && m.cut.is_none())
            .map(|(i, m)| (i, &m.etcd))
    }

    /// The index of the member that is leader now, as the reachable
    /// members see it (they must agree).
    pub fn leader(&self) -> Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, etcd) in self.reachable() {
            let out = etcd.run_etcdctl(&["endpoint", "status", "-w", "json"])?;
            let status: serde_json::Value = serde_json::from_str(&out)
                .with_context(|| format!("endpoint status of {}: {out}", etcd.name()))?;
            let header = &status[0]["Status"]["header"];
            let id = header["member_id"].as_u64().context("member_id")?;
            let says = status[0]["Status"]["leader"].as_u64().unwrap_or(0);
            ids.push((i, id));
            match leader {
                None => leader = Some(says),
                Some(l) if l != says => bail!("members disagree on the leader"),
                Some(_) => {}
            }
        }
        let leader = leader.context("no reachable member")?;
        match ids.iter().find(|(_, id)| *id == leader) {
            Some((i, _)) => Ok(*i),
            None => bail!("the leader ({leader:x}) is not reachable"),
        }
    }

    /// Wait (bounded) until the reachable members agree on a reachable
    /// leader; its index.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.leader() {
                Ok(i) => return Ok(i),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("no leader after {timeout:?}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A member that is not the leader.
    pub fn follower(&self) -> Result<usize> {
        let leader = self.leader()?;
        self.reachable()
            .map(|(i, _)| i)
            .find(|i| *i != leader)
            .context("no reachable follower")
    }

    /// SIGKILL member `i` (its data stays).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.members[i].etcd.kill()
    }

    /// Start a killed or stopped member again and wait until it serves.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].etcd.restart()
    }

    /// SIGSTOP member `i`.
    pub fn freeze(&mut self, i: usize) -> Result<()> {
        self.members[i].etcd.pause()
    }

    /// SIGCONT member `i`.
    pub fn thaw(&mut self, i: usize) -> Result<()> {
        self.members[i].etcd.resume()
    }

    /// Cut member `i` off (see [`Cut`]) with nftables in the underlay.
    pub fn partition(&mut self, i: usize, cut: Cut) -> Result<()> {
        if self.members[i].netns.is_none() {
            bail!("a single etcd in the underlay namespace cannot be partitioned");
        }
        let port = port(i);
        let only = match cut {
            Cut::Peers => "tcp dport 2380",
            Cut::All => "",
        };
        let only_back = match cut {
            Cut::Peers => "tcp sport 2380",
            Cut::All => "",
        };
        let script = format!(
            "nft add table bridge {PARTITION_TABLE}\n\
             nft add chain bridge {PARTITION_TABLE} forward '{{ type filter hook forward priority 0; }}'\n\
             nft add rule bridge {PARTITION_TABLE} forward iifname {port} {only} drop\n\
             nft add rule bridge {PARTITION_TABLE} forward iifname {port} {only_back} drop\n\
             nft add rule bridge {PARTITION_TABLE} forward oifname {port} {only} drop\n\
             nft add rule bridge {PARTITION_TABLE} forward oifname {port} {only_back} drop\n"
        );
        self.underlay_sh(&script)?;
        self.members[i].cut = Some(cut);
        Ok(())
    }

    /// Remove every partition.
    pub fn heal(&mut self) -> Result<()> {
        if self.members.iter().any(|m| m.cut.is_some()) {
            self.underlay_sh(&format!("nft delete table bridge {PARTITION_TABLE}"))?;
        }
        for m in &mut self.members {
            m.cut = None;
        }
        Ok(())
    }

    fn underlay_sh(&self, script: &str) -> Result<()> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.underlay, "sh", "-ec", script])
            .output()
            .context("running nft in the underlay namespace")?;
        crate::netns::check(&out).map(drop)
    }

    /// Run `etcdctl <args>` against the first reachable member that
    /// answers; a failure carries the last member's error.
    pub fn run_etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut last = None;
        for (_, etcd) in self.reachable() {
            match etcd.run_etcdctl(args) {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd member is reachable")))
    }

    /// Every key under `prefix` with its value, in one read (values are
    /// single-line JSON).
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let text = self.run_etcdctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = text.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect())
    }

    /// The data directories of the members.
    pub fn data_dirs(&self) -> Vec<std::path::PathBuf> {
        self.members.iter().map(|m| m.etcd.data_dir()).collect()
    }

    /// The members' namespaces (a single etcd has none of its own).
    pub fn namespaces(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(|m| m.netns.as_ref().map(|n| n.name().to_string()))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Frozen members are killed by `Etcd`'s own drop; the partition
        // table goes with the underlay namespace.
        for m in &mut self.members {
            let _ = m.etcd.kill();
        }
    }
}

/// The underlay bridge port of member `i`.
fn port(i: usize) -> String {
    format!("e{}", i + 1)
}
