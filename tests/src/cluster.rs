//! A simulated cluster in network namespaces.
//!
//! ```text
//!                 outside (198.51.100.2)          a host beyond the cluster
//!                    |
//!  underlay ns: br0 192.0.2.254 + 198.51.100.1, forwarding, etcd on :2379
//!        |              |              |
//!   node1 eth0     node2 eth0     node3 eth0      192.0.2.1, .2, .3
//!   trellis-agent  trellis-agent  trellis-agent   own state dir, conf dir
//!     pods           pods           pods          namespaces, via libcni
//! ```
//!
//! The outside host has a route back to the underlay (192.0.2.0/24) but none
//! to the pod network: pods reach it only masqueraded behind their node.
//! Everything lives in namespaces named `trl-...-<pid>-<n>` and temporary
//! directories; dropping the [`Cluster`] (also on panic) stops the agents,
//! etcd and every namespace. Pods are owned by the test; dropping a [`Pod`]
//! removes its namespace (without a CNI DEL: use [`Cluster::del_pod`]).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};
use tempfile::TempDir;
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::node::{NodeRecord, NODE_RECORD_FILE};

use crate::bins::{self, CniBinDir};
use crate::etcd::Etcd;
use crate::etcd_cluster::EtcdCluster;
use crate::libcni::{write_conflist, Attachment, CniFailure, Driver};
use crate::netns::{attach_to_bridge, veth_pair, Netns};

/// The underlay bridge's address, where etcd listens.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The prefix length of the underlay network 192.0.2.0/24.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The outside host, beyond the cluster.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The underlay namespace's address on the outside link.
pub const OUTSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The IPv6 underlay of a cluster with [`ClusterSpec::underlay6`]: the
/// bridge's address (nodes are 2001:db8:2::<index+1>/64) ...
pub const UNDERLAY6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe);
/// ... the outside host's IPv6 address ...
pub const OUTSIDE6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x51, 0, 0, 0, 0, 2);
/// ... and the underlay namespace's on the outside link.
pub const OUTSIDE6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x51, 0, 0, 0, 0, 1);
/// The CNI network name of the cluster's conflists.
pub const NETWORK_NAME: &str = "trellis";

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: usize,
    /// Written to `<prefix>/config` before the agents start.
    pub config: ClusterConfig,
    pub etcd_prefix: String,
    /// `ipMasq` in the conflists and `--ip-masq` of the agents.
    pub ip_masq: bool,
    /// Start a `trellis-agent` on every node (off: the test plays the agent).
    pub agents: bool,
    /// Extra agent flags, e.g. `--ipam-gc-interval 1`.
    pub agent_args: Vec<String>,
    /// The conflists' cniVersion. The runtimes of Debian 12 (libcni 1.1.x)
    /// speak up to 1.0.0.
    pub cni_version: String,
    /// Plugins chained after `trellis` in the conflists.
    pub chain: Vec<Value>,
    /// MTU of the node's underlay interfaces.
    pub underlay_mtu: u32,
    /// How long to wait for every agent to publish its node and for every
    /// node to have a route to every other node's subnet.
    pub converge_timeout: Duration,
    /// Name the namespaces `<prefix>-underlay`, `<prefix>-node1`,
    /// `<prefix>-<pod>` instead of unique test names (the demo).
    pub name_prefix: Option<String>,
    /// Give the underlay, the nodes and the outside host IPv6 addresses
    /// too (2001:db8:2::/64 and 2001:db8:51::/64), beside the IPv4 ones.
    pub underlay6: bool,
    /// Run the tunnel over the IPv6 underlay: every agent gets
    /// `--public-ip <its IPv6 underlay address>` (needs `underlay6`).
    pub tunnel6: bool,
    /// etcd members: 1 (in the underlay namespace, at
    /// [`UNDERLAY_GATEWAY`]) or 3 (see [`crate::etcd_cluster`]); every
    /// agent and conflist is given every member.
    pub etcd_members: usize,
    /// Nodes (by index) behind a router rather than on the underlay
    /// bridge: node `i` on a link of its own to the underlay namespace,
    /// which routes, as 198.18.<i+1>.1/24 (see [`routed_ip`]). IPv4 only.
    pub routed: Vec<usize>,
}

/// The underlay address of node `index` placed behind the router
/// ([`ClusterSpec::routed`]); the router's is 198.18.<index+1>.254.
pub fn routed_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (index + 1) as u8, 1)
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            config: ClusterConfig {
                network: Some("10.244.0.0/16".parse().expect("valid network")),
                subnet_len: 24,
                vni: 1,
                port: 8472,
                ipv6_network: None,
                ipv6_subnet_len: 64,
                direct_routing: false,
                mtu: None,
            },
            etcd_prefix: trellis_common::keys::DEFAULT_ETCD_PREFIX.to_owned(),
            ip_masq: true,
            agents: true,
            agent_args: Vec::new(),
            cni_version: "1.0.0".to_owned(),
            chain: vec![json!({"type": "portmap", "capabilities": {"portMappings": true}})],
            underlay_mtu: 1500,
            converge_timeout: Duration::from_secs(60),
            name_prefix: None,
            etcd_members: 1,
            underlay6: false,
            tunnel6: false,
            routed: Vec::new(),
        }
    }
}

impl ClusterSpec {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn ip_masq(mut self, on: bool) -> Self {
        self.ip_masq = on;
        self
    }

    pub fn agents(mut self, on: bool) -> Self {
        self.agents = on;
        self
    }

    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = n;
        self
    }

    /// A namespace for `tag`: unique test name, or `<prefix>-<tag>`.
    fn netns(&self, tag: &str) -> Result<Netns> {
        match &self.name_prefix {
            Some(prefix) => Netns::named(&format!("{prefix}-{tag}")),
            None => Netns::new(tag),
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct Node {
    /// The node name (`node1`, `node2`, ...), as registered in etcd.
    pub name: String,
    pub netns: Netns,
    /// Its address on the underlay, 192.0.2.<index+1> (or [`routed_ip`]).
    pub underlay_ip: Ipv4Addr,
    /// Its IPv6 underlay address, 2001:db8:2::<index+1> (with
    /// [`ClusterSpec::underlay6`]).
    pub underlay_ip6: Option<Ipv6Addr>,
    /// The agent's `--state-dir`, the conflist's `stateDir`.
    pub state_dir: PathBuf,
    /// The CNI conf dir holding [`Node::conflist`].
    pub conf_dir: PathBuf,
    pub conflist: PathBuf,
    /// The libcni client of this node, with its own result cache.
    pub driver: Driver,
    agent: Option<Child>,
    agent_log: PathBuf,
    agent_cmd: Vec<String>,
}

impl Node {
    /// The record the agent published in `<stateDir>/node.json`.
    pub fn record(&self) -> Result<NodeRecord> {
        let path = self.state_dir.join(NODE_RECORD_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        serde_json::from_str(&text).with_context(|| path.display().to_string())
    }

    /// The conflist this node's agent writes for named network `network`
    /// beside the node's own (`--cni-conf-dir`).
    pub fn network_conflist(&self, network: &str) -> PathBuf {
        self.conf_dir
            .join(format!("10-trellis.net-{network}.conflist"))
    }

    /// The agent's record for named network `network`
    /// (`<stateDir>/networks/<network>.json`), once it serves it.
    pub fn network_record(&self, network: &str) -> Option<NodeRecord> {
        let path = trellis_common::node::record_path_for(&self.state_dir, Some(network));
        let text = std::fs::read_to_string(path).ok()?;
        NodeRecord::parse(text.as_bytes()).ok()
    }

    /// This node's IPv4 pod subnet (from its record).
    pub fn subnet(&self) -> Result<Ipv4Network> {
        self.record()?
            .subnet
            .ok_or_else(|| anyhow::anyhow!("the node's record has no IPv4 subnet"))
    }

    /// The host ends of pod veths on this node (every veth but the
    /// node's own underlay `eth0`).
    pub fn host_veths(&self) -> Result<Vec<String>> {
        let out = self
            .netns
            .ok(&["ip", "-j", "link", "show", "type", "veth"])?;
        let links: Vec<Value> = serde_json::from_str(&out)?;
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| *n != "eth0")
            .map(str::to_owned)
            .collect())
    }

    /// A counter of the agent's /metrics, served on `addr` (its
    /// `--metrics-addr`) inside the node.
    pub fn agent_counter(&self, addr: &str, name: &str) -> Result<u64> {
        let url = format!("http://{addr}/metrics");
        let text = self.netns.ok(&["busybox", "wget", "-q", "-O", "-", &url])?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .with_context(|| format!("{name} missing in\n{text}"))?
            .parse()
            .with_context(|| format!("{name} in\n{text}"))
    }

    /// What the agent logged so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    /// Whether the agent process is running.
    pub fn agent_running(&mut self) -> bool {
        matches!(self.agent.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts the agent (again), appending to its log.
    pub fn start_agent(&mut self) -> Result<()> {
        if self.agent_running() {
            bail!("the agent of {} is already running", self.name);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.agent_log)?;
        let mut cmd = self.netns.command(&self.agent_cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", agent_log_level());
        self.agent = Some(self.netns.spawn_command(cmd)?);
        Ok(())
    }

    /// Runs `trellis-agent cleanup --state-dir <this node's> <extra...>` in
    /// the node; an error carries the command's stderr.
    pub fn agent_cleanup(&self, extra: &[String]) -> Result<()> {
        let mut args = vec![
            // The agent's own snapshot of the binary, as it runs.
            self.agent_cmd[0].clone(),
            "cleanup".into(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
        ];
        args.extend_from_slice(extra);
        let out = self.netns.command(&args).output()?;
        if !out.status.success() {
            bail!(
                "trellis-agent cleanup on {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops the agent: SIGTERM (a graceful stop), SIGKILL after `grace`.
    pub fn stop_agent(&mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.agent.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Freezes the agent (SIGSTOP) until the guard is dropped (SIGCONT),
    /// also when the test fails.
    pub fn freeze_agent(&self) -> Result<FrozenAgent> {
        let pid = self
            .netns
            .pids()
            .into_iter()
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "trellis-agent")
            })
            .with_context(|| format!("no trellis-agent runs in {}", self.name))?;
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
        Ok(FrozenAgent(pid))
    }

    /// Kills the agent at once (SIGKILL), as a crash would.
    pub fn kill_agent(&mut self) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// A frozen agent, thawed when dropped.
#[derive(Debug)]
pub struct FrozenAgent(nix::unistd::Pid);

impl Drop for FrozenAgent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A pod: a namespace attached to a node's network through the libcni
/// driver.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// Index of its node in [`Cluster::nodes`].
    pub node: usize,
    pub container_id: String,
    pub ifname: String,
    pub netns: Netns,
    /// Its address, from the CNI result.
    pub ip: IpAddr,
    /// The CNI result the runtime got.
    pub result: Value,
    /// The conflist it was added with (every verb uses it).
    pub conflist: PathBuf,
}

impl Pod {
    /// The attachment as the runtime passes it to every verb.
    pub fn attachment(&self) -> Attachment {
        pod_attachment(
            &self.container_id,
            &self.netns.path(),
            &self.ifname,
            &self.name,
        )
    }
}

/// An ADD the plugin failed: its error and what the runtime still holds.
#[derive(Debug)]
pub struct FailedAdd {
    pub name: String,
    pub node: usize,
    pub container_id: String,
    pub netns: Netns,
    pub failure: CniFailure,
    pub conflist: PathBuf,
}

impl FailedAdd {
    pub fn attachment(&self) -> Attachment {
        pod_attachment(&self.container_id, &self.netns.path(), "eth0", &self.name)
    }
}

fn pod_attachment(container_id: &str, netns: &Path, ifname: &str, name: &str) -> Attachment {
    Attachment::new(container_id, netns, ifname)
        .arg("IgnoreUnknown", "1")
        .arg("K8S_POD_NAMESPACE", "default")
        .arg("K8S_POD_NAME", name)
        .arg("K8S_POD_INFRA_CONTAINER_ID", container_id)
}

/// The simulated cluster. Field order is drop order: nodes (agents) first,
/// then the outside host, etcd, the underlay, the plugin dir, the files.
pub struct Cluster {
    pub nodes: Vec<Node>,
    outside: Netns,
    outside_server: Mutex<Option<Child>>,
    outside_server6: Mutex<Option<Child>>,
    etcd: EtcdCluster,
    underlay: Netns,
    bins: CniBinDir,
    spec: ClusterSpec,
    pods_made: AtomicUsize,
    dir: TempDir,
}

impl Cluster {
    /// The default cluster: 3 nodes with agents, ipMasq on.
    pub fn start_default() -> Result<Cluster> {
        Cluster::start(ClusterSpec::default())
    }

    /// Builds the topology, starts etcd, writes the cluster config, starts
    /// the agents and waits until every node knows every other.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.nodes == 0 || spec.nodes > 200 {
            bail!("a cluster has 1 to 200 nodes, not {}", spec.nodes);
        }
        let dir = tempfile::Builder::new().prefix("trl-cluster-").tempdir()?;
        let bins = CniBinDir::new()?;

        let underlay = spec.netns("underlay")?;
        underlay.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        underlay.add_bridge("br0", Some(v4net(UNDERLAY_GATEWAY, UNDERLAY_PREFIX)))?;
        let outside = spec.netns("outside")?;
        veth_pair(
            &underlay,
            "out0",
            Some(v4net(OUTSIDE_GATEWAY, 24)),
            &outside,
            "eth0",
            Some(v4net(OUTSIDE_IP, 24)),
        )?;
        // Back to the underlay (and the routed nodes' links), not to the
        // pod network.
        for back in ["192.0.2.0/24", "198.18.0.0/16"] {
            outside.ok(&[
                "ip",
                "route",
                "add",
                back,
                "via",
                &OUTSIDE_GATEWAY.to_string(),
            ])?;
        }
        if !spec.routed.is_empty() && spec.underlay6 {
            bail!("routed nodes have no IPv6 underlay");
        }
        if spec.underlay6 {
            underlay.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
            underlay.add_addr("br0", v6net(UNDERLAY6_GATEWAY, 64))?;
            underlay.add_addr("out0", v6net(OUTSIDE6_GATEWAY, 64))?;
            outside.add_addr("eth0", v6net(OUTSIDE6_IP, 64))?;
            outside.ok(&[
                "ip",
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                &OUTSIDE6_GATEWAY.to_string(),
            ])?;
        }

        let etcd = match spec.etcd_members {
            1 => EtcdCluster::single(&underlay, IpAddr::V4(UNDERLAY_GATEWAY))?,
            n => EtcdCluster::start(&underlay, "br0", n)
                .with_context(|| format!("starting {n} etcd members"))?,
        };

        let mut cluster = Cluster {
            nodes: Vec::new(),
            outside,
            outside_server: Mutex::new(None),
            outside_server6: Mutex::new(None),
            etcd,
            underlay,
            bins,
            spec: spec.clone(),
            pods_made: AtomicUsize::new(0),
            dir,
        };
        cluster.etcdctl(&[
            "put",
            &format!("{}/config", cluster.key_prefix()),
            &serde_json::to_string(&spec.config)?,
        ])?;
        for index in 0..spec.nodes {
            let node = cluster.make_node(index)?;
            cluster.nodes.push(node);
        }
        if spec.agents {
            for node in &mut cluster.nodes {
                node.start_agent()?;
            }
            cluster.wait_converged(spec.converge_timeout)?;
        }
        Ok(cluster)
    }

    fn make_node(&self, index: usize) -> Result<Node> {
        let name = format!("node{}", index + 1);
        let netns = self.spec.netns(&name)?;
        let port = format!("n{}", index + 1);
        let (underlay_ip, gateway) = if self.spec.routed.contains(&index) {
            // Its own link to the underlay namespace, which routes.
            let ip = routed_ip(index);
            let router = Ipv4Addr::new(198, 18, (index + 1) as u8, 254);
            veth_pair(
                &self.underlay,
                &port,
                Some(v4net(router, 24)),
                &netns,
                "eth0",
                None,
            )?;
            netns.add_addr("eth0", v4net(ip, 24))?;
            (ip, router)
        } else {
            let ip = Ipv4Addr::new(192, 0, 2, (index + 1) as u8);
            attach_to_bridge(&self.underlay, "br0", &port, &netns, "eth0", None)?;
            netns.add_addr("eth0", v4net(ip, UNDERLAY_PREFIX))?;
            (ip, UNDERLAY_GATEWAY)
        };
        let mtu = self.spec.underlay_mtu.to_string();
        self.underlay
            .ok(&["ip", "link", "set", &port, "mtu", &mtu])?;
        netns.ok(&["ip", "link", "set", "eth0", "mtu", &mtu])?;
        netns.ok(&["ip", "route", "add", "default", "via", &gateway.to_string()])?;
        let underlay_ip6 = self
            .spec
            .underlay6
            .then(|| Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, (index + 1) as u16));
        if let Some(ip6) = underlay_ip6 {
            netns.add_addr("eth0", v6net(ip6, 64))?;
            netns.ok(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &UNDERLAY6_GATEWAY.to_string(),
            ])?;
        }

        let root = self.dir.path().join(&name);
        let state_dir = root.join("state");
        let conf_dir = root.join("net.d");
        std::fs::create_dir_all(&state_dir)?;
        std::fs::create_dir_all(&conf_dir)?;
        let conflist = write_conflist(&conf_dir, "10-trellis", &self.conflist_for(&state_dir))?;
        let driver = Driver::new(&netns, &[self.bins.path()])?;

        // The agent as built now (a rebuild during the test must not swap
        // it under a restart).
        let agent = self.dir.path().join("trellis-agent");
        if !agent.exists() {
            bins::snapshot_file(&bins::bin("trellis-agent"), &agent)?;
        }
        let mut agent_cmd = vec![
            agent.display().to_string(),
            "--etcd-endpoints".into(),
            self.etcd.endpoints().join(","),
            "--etcd-prefix".into(),
            self.spec.etcd_prefix.clone(),
            "--node-name".into(),
            name.clone(),
            "--iface".into(),
            "eth0".into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            // Only `trellisctl doctor` reads it: the runtime's config
            // against the agent.
            "--cni-conf-dir".into(),
            conf_dir.display().to_string(),
            format!("--ip-masq={}", self.spec.ip_masq),
            // Names the agent's DNS does not know go to the outside host
            // (never to the machine's own resolvers).
            format!("--dns-upstream={OUTSIDE_IP}:53"),
        ];
        if let (true, Some(ip6)) = (self.spec.tunnel6, underlay_ip6) {
            agent_cmd.extend(["--public-ip".into(), ip6.to_string()]);
        }
        agent_cmd.extend(self.spec.agent_args.iter().cloned());
        Ok(Node {
            agent_log: root.join("agent.log"),
            name,
            netns,
            underlay_ip,
            underlay_ip6,
            state_dir,
            conf_dir,
            conflist,
            driver,
            agent: None,
            agent_cmd,
        })
    }

    /// The conflist of a node whose agent publishes in `state_dir`.
    pub fn conflist_for(&self, state_dir: &Path) -> Value {
        let mut plugins = vec![json!({
            "type": "trellis",
            "bridge": trellis_common::node::DEFAULT_BRIDGE,
            "stateDir": state_dir,
            "ipMasq": self.spec.ip_masq,
            "hairpinMode": true,
            "ipam": {
                "type": "trellis-ipam",
                "etcdEndpoints": self.etcd.endpoints(),
                "etcdPrefix": self.spec.etcd_prefix,
            },
        })];
        plugins.extend(self.spec.chain.iter().cloned());
        json!({"cniVersion": self.spec.cni_version, "name": NETWORK_NAME, "plugins": plugins})
    }

    /// Writes node `node`'s conflist for named network `network` (as a
    /// user writes it: `"network"` and nothing else network-specific) in
    /// its conf dir; its path.
    pub fn named_conflist(&self, node: usize, network: &str) -> Result<PathBuf> {
        let n = self.node(node)?;
        let mut conf = self.conflist_for(&n.state_dir);
        conf["name"] = json!(network);
        let plugin = &mut conf["plugins"][0];
        plugin["network"] = json!(network);
        plugin
            .as_object_mut()
            .context("the trellis plugin's config")?
            .remove("bridge");
        write_conflist(&n.conf_dir, &format!("20-{network}"), &conf)
    }

    /// Waits until every agent published its record and every node has a
    /// route to every other node's subnet.
    pub fn wait_converged(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.converged() {
                Ok(()) => return Ok(()),
                Err(err) => last = format!("{err:#}"),
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "cluster not converged after {timeout:?}: {last}\n{}",
            self.agent_logs()
        )
    }

    fn converged(&self) -> Result<()> {
        // The lease subnet: the IPv4 one, an IPv6-only cluster's IPv6 one.
        let subnets = self
            .nodes
            .iter()
            .map(|n| {
                n.record()
                    .ok()
                    .and_then(|r| r.lease_subnet())
                    .with_context(|| format!("{} has no record", n.name))
            })
            .collect::<Result<Vec<_>>>()?;
        let family = if subnets.iter().all(IpNetwork::is_ipv4) {
            "-4"
        } else {
            "-6"
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let routes: Vec<Value> =
                serde_json::from_str(&node.netns.ok(&["ip", family, "-j", "route", "show"])?)?;
            for (j, subnet) in subnets.iter().enumerate() {
                if i == j {
                    continue;
                }
                let dst = subnet.to_string();
                if !routes.iter().any(|r| r["dst"] == dst.as_str()) {
                    bail!(
                        "{} has no route to {} ({dst})",
                        node.name,
                        self.nodes[j].name
                    );
                }
            }
        }
        Ok(())
    }

    /// Every agent's log, for failure messages.
    pub fn agent_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} agent log ---\n{}", n.name, tail(&n.agent_log(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Attaches a new pod to node `node` through the libcni driver.
    pub fn add_pod(&self, node: usize, name: &str) -> Result<Pod> {
        self.try_add_pod(node, name)?.map_err(|f| {
            anyhow::anyhow!(
                "ADD of pod {name} on {}: {}",
                self.nodes[node].name,
                f.failure
            )
        })
    }

    /// Like [`Cluster::add_pod`], but an ADD the plugin failed is handed
    /// back with its CNI error and its namespace, for the test to look at
    /// and DEL as a runtime would ([`Cluster::del_failed`]). `Err` only
    /// for a harness failure.
    pub fn try_add_pod(&self, node: usize, name: &str) -> Result<Result<Pod, FailedAdd>> {
        let conflist = self.node(node)?.conflist.clone();
        self.try_add_pod_with(node, name, &conflist)
    }

    /// Like [`Cluster::try_add_pod`], with another conflist (a named
    /// network's, say).
    pub fn try_add_pod_with(
        &self,
        node: usize,
        name: &str,
        conflist: &Path,
    ) -> Result<Result<Pod, FailedAdd>> {
        let n = self.pods_made.fetch_add(1, Ordering::Relaxed);
        let container_id = format!("{name}-{}-{n}", std::process::id());
        let netns = match self.spec.name_prefix {
            Some(_) => self.spec.netns(name)?,
            None => Netns::new("pod")?,
        };
        let ifname = "eth0".to_owned();
        let att = pod_attachment(&container_id, &netns.path(), &ifname, name);
        let node_ref = self.node(node)?;
        let result = match node_ref.driver.add(conflist, &att) {
            Ok(result) => result,
            Err(failure) => {
                return Ok(Err(FailedAdd {
                    name: name.to_owned(),
                    node,
                    container_id,
                    netns,
                    failure,
                    conflist: conflist.to_owned(),
                }))
            }
        };
        let ip = result_ip(&result)
            .with_context(|| format!("ADD of pod {name}: no address in {result}"))?;
        Ok(Ok(Pod {
            name: name.to_owned(),
            node,
            container_id,
            ifname,
            netns,
            ip,
            result,
            conflist: conflist.to_owned(),
        }))
    }

    /// Attaches `pod` to one more network: interface `ifname` through
    /// `conflist` (a container on several networks); the CNI result.
    pub fn add_interface(&self, pod: &Pod, conflist: &Path, ifname: &str) -> Result<Value> {
        let att = pod_attachment(&pod.container_id, &pod.netns.path(), ifname, &pod.name);
        let node = self.node(pod.node)?;
        node.driver
            .add(conflist, &att)
            .map_err(|f| anyhow::anyhow!("ADD of {ifname} to pod {}: {f}", pod.name))
    }

    /// CNI DEL of an interface [`Cluster::add_interface`] added.
    pub fn del_interface(&self, pod: &Pod, conflist: &Path, ifname: &str) -> Result<()> {
        let att = pod_attachment(&pod.container_id, &pod.netns.path(), ifname, &pod.name);
        let node = self.node(pod.node)?;
        node.driver
            .del(conflist, &att)
            .map_err(|f| anyhow::anyhow!("DEL of {ifname} of pod {}: {f}", pod.name))?;
        Ok(())
    }

    /// CNI DEL of a failed ADD's attachment (what a runtime does after a
    /// failed ADD).
    pub fn del_failed(&self, failed: &FailedAdd) -> Result<(), CniFailure> {
        let node = &self.nodes[failed.node];
        node.driver.del(&failed.conflist, &failed.attachment())?;
        Ok(())
    }

    /// CNI DEL of a pod, then its namespace goes.
    pub fn del_pod(&self, pod: Pod) -> Result<(), CniFailure> {
        let node = &self.nodes[pod.node];
        node.driver.del(&pod.conflist, &pod.attachment())?;
        Ok(())
    }

    /// CNI CHECK of a pod.
    pub fn check_pod(&self, pod: &Pod) -> Result<(), CniFailure> {
        let node = &self.nodes[pod.node];
        node.driver.check(&pod.conflist, &pod.attachment())?;
        Ok(())
    }

    pub fn node(&self, index: usize) -> Result<&Node> {
        self.nodes
            .get(index)
            .with_context(|| format!("no node {index} in a {}-node cluster", self.nodes.len()))
    }

    /// The namespace holding the underlay bridge and etcd.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// The cluster's own scratch directory (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host beyond the cluster, at [`OUTSIDE_IP`].
    pub fn outside(&self) -> &Netns {
        &self.outside
    }

    /// Starts (once) the `trl-peer-addr` service on the outside host, port
    /// 7777: it answers every TCP connection with the source address it saw.
    pub fn outside_peer_addr_service(&self) -> Result<std::net::SocketAddr> {
        self.outside_service_at(IpAddr::V4(OUTSIDE_IP), &self.outside_server)
    }

    /// The outside host's peer-address service on its IPv6 address (a
    /// cluster with [`ClusterSpec::underlay6`]).
    pub fn outside_peer_addr_service6(&self) -> Result<std::net::SocketAddr> {
        self.outside_service_at(IpAddr::V6(OUTSIDE6_IP), &self.outside_server6)
    }

    fn outside_service_at(
        &self,
        ip: IpAddr,
        slot: &Mutex<Option<Child>>,
    ) -> Result<std::net::SocketAddr> {
        let addr = std::net::SocketAddr::new(ip, 7777);
        let mut server = slot.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            let bin = bins::bin("trl-peer-addr");
            // Its own stdio: a kept demo must not hold the caller's pipes.
            let mut cmd = self.outside.command(&[
                bin.display().to_string(),
                "serve".into(),
                addr.to_string(),
            ]);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = self.outside.spawn_command(cmd)?;
            *server = Some(child);
            // Listening once `ask` from the outside host itself answers.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let out =
                    self.outside
                        .exec(&[bin.display().to_string(), "ask".into(), addr.to_string()]);
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("trl-peer-addr did not start on the outside host");
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(addr)
    }

    /// The source address the outside host sees for a TCP connection from
    /// `from` (a pod or node namespace).
    pub fn source_seen_outside(&self, from: &Netns) -> Result<IpAddr> {
        self.source_seen_at(from, self.outside_peer_addr_service()?)
    }

    /// The same over IPv6 (a cluster with [`ClusterSpec::underlay6`]).
    pub fn source_seen_outside6(&self, from: &Netns) -> Result<IpAddr> {
        self.source_seen_at(from, self.outside_peer_addr_service6()?)
    }

    fn source_seen_at(&self, from: &Netns, addr: std::net::SocketAddr) -> Result<IpAddr> {
        let bin = bins::bin("trl-peer-addr");
        let answer = from.ok(&[bin.display().to_string(), "ask".into(), addr.to_string()])?;
        answer
            .trim()
            .parse()
            .with_context(|| format!("trl-peer-addr answered {answer:?}"))
    }

    /// The cluster's (first) etcd member, to stop, pause or restart it.
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd.member_mut(0)
    }

    /// The etcd members, for faults.
    pub fn etcd_cluster(&self) -> &EtcdCluster {
        &self.etcd
    }

    pub fn etcd_cluster_mut(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }

    /// etcd's (first member's) client URL, as reachable from the nodes.
    /// Node `index` leaves the cluster as an operator takes it out: its
    /// agent stopped (SIGTERM, SIGKILL after 5 s), then `trellis-agent
    /// cleanup --release` on it against the cluster's etcd.
    pub fn leave(&mut self, index: usize) -> Result<()> {
        let endpoint = self.etcd_endpoint();
        let node = self
            .nodes
            .get_mut(index)
            .with_context(|| format!("no node {index}"))?;
        node.stop_agent(Duration::from_secs(5))?;
        let name = node.name.clone();
        node.agent_cleanup(&[
            "--release".into(),
            "--node-name".into(),
            name,
            "--etcd-endpoints".into(),
            endpoint,
        ])
    }

    pub fn etcd_endpoint(&self) -> String {
        self.etcd.member(0).endpoint()
    }

    /// Every member's client URL.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.endpoints()
    }

    /// Runs `etcdctl` (v3) against the cluster's etcd, from the underlay.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        self.etcd.run_etcdctl(args)
    }

    /// The keys' prefix the spec's `etcd_prefix` names: INTERFACES.md
    /// says `trellis`, `/trellis` and `/trellis/` are the same keys,
    /// `/trellis/...`.
    pub fn key_prefix(&self) -> String {
        let bare = self.spec.etcd_prefix.trim_matches('/');
        if bare.is_empty() {
            String::new()
        } else {
            format!("/{bare}")
        }
    }

    /// Every key (with value) under `<etcd prefix>/<sub>`.
    pub fn etcd_entries(&self, sub: &str) -> Result<Vec<(String, String)>> {
        self.etcd
            .get_prefix(&format!("{}/{sub}", self.key_prefix()))
    }

    /// The allocated pod addresses (`<prefix>/ipam/ips/<ip>` keys).
    pub fn allocations(&self) -> Result<Vec<IpAddr>> {
        let prefix = format!("{}/ipam/ips/", self.key_prefix());
        self.etcd_entries("ipam/ips/")?
            .into_iter()
            .map(|(key, _)| {
                key.strip_prefix(&prefix)
                    .unwrap_or(&key)
                    .parse()
                    .with_context(|| format!("allocation key {key}"))
            })
            .collect()
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The plugin directory (CNI_PATH) shared by the nodes.
    pub fn cni_bin_dir(&self) -> &Path {
        self.bins.path()
    }

    /// A directory removed with the cluster, for a test's own files.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What a kept cluster leaves behind, to remove it later
/// ([`remove_kept`]): its namespaces (every process in them is part of it)
/// and its directories.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub namespaces: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Cluster {
    /// Leaves the cluster (and `pods`) running after this process exits:
    /// nothing is stopped or removed. Returns what [`remove_kept`] needs.
    pub fn keep(self, pods: Vec<Pod>) -> Kept {
        let mut namespaces: Vec<String> = pods.iter().map(|p| p.netns.name().to_owned()).collect();
        namespaces.extend(self.nodes.iter().map(|n| n.netns.name().to_owned()));
        namespaces.push(self.outside.name().to_owned());
        namespaces.extend(self.etcd.namespaces());
        namespaces.push(self.underlay.name().to_owned());
        let mut dirs = vec![self.dir.path().to_owned(), self.bins.path().to_owned()];
        dirs.extend(self.nodes.iter().map(|n| n.driver.cache_dir().to_owned()));
        for data in self.etcd.data_dirs() {
            if let Some(etcd_dir) = data.parent() {
                dirs.push(etcd_dir.to_owned());
            }
        }
        std::mem::forget(pods);
        std::mem::forget(self);
        Kept { namespaces, dirs }
    }
}

/// Removes a kept cluster: kills every process in its namespaces, deletes
/// them (pods first, the underlay last) and its directories.
pub fn remove_kept(kept: &Kept) -> Result<()> {
    let mut failed = Vec::new();
    for name in &kept.namespaces {
        let path = Path::new("/run/netns").join(name);
        if !path.exists() {
            continue;
        }
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", name])
                .output()?;
            let left: Vec<i32> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for pid in left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .output()?;
        if !out.status.success() {
            failed.push(name.clone());
        }
    }
    for dir in &kept.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    if !failed.is_empty() {
        bail!("could not delete namespaces {failed:?}");
    }
    Ok(())
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .field("underlay", &self.underlay)
            .field("outside", &self.outside)
            .field("etcd", &self.etcd.endpoints())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.agent_logs());
        }
        for node in &mut self.nodes {
            let _ = node.stop_agent(Duration::from_secs(5));
        }
        let server = self
            .outside_server
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let mut servers: Vec<Child> = server.take().into_iter().collect();
        let server6 = self
            .outside_server6
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        servers.extend(server6.take());
        for mut server in servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        // The fields drop next, in order: nodes, outside, etcd, underlay.
    }
}

/// The first address of a CNI result.
pub fn result_ip(result: &Value) -> Option<IpAddr> {
    let addr = result["ips"].get(0)?["address"].as_str()?;
    addr.parse::<IpNetwork>().ok().map(|n| n.ip())
}

/// The IPv6 address of a CNI result (a dual-stack attachment's second).
pub fn result_ip6(result: &Value) -> Option<IpAddr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.parse::<IpNetwork>().ok())
        .map(|n| n.ip())
        .find(IpAddr::is_ipv6)
}

/// Pings `to` from inside `from`: one echo at a time, 1 s each, at most 5
/// tries (the first packets may wait for neighbour resolution).
pub fn ping(from: &Netns, to: IpAddr) -> Result<()> {
    ping_from_path(&from.path(), to)
}

/// [`ping`] from a namespace known by its path (a runtime's sandbox).
pub fn ping_from_path(netns: &Path, to: IpAddr) -> Result<()> {
    let to = to.to_string();
    let mut last = String::new();
    for _ in 0..5 {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "ping", "-n", "-c", "1", "-W", "1", &to])
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    bail!("{} cannot ping {to}:\n{last}", netns.display())
}

/// The source address the outside host sees for a TCP connection from the
/// namespace at `netns` (see [`Cluster::source_seen_outside`]).
pub fn source_seen_outside_from_path(cluster: &Cluster, netns: &Path) -> Result<IpAddr> {
    let addr = cluster.outside_peer_addr_service()?;
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(bins::bin("trl-peer-addr"))
        .args(["ask", &addr.to_string()])
        .stdin(Stdio::null())
        .output()?;
    let answer = crate::netns::check(&out)?;
    answer
        .trim()
        .parse()
        .with_context(|| format!("trl-peer-addr answered {answer:?}"))
}

/// The agent's log level: `$TRELLIS_AGENT_LOG` or `info`.
fn agent_log_level() -> String {
    std::env::var("TRELLIS_AGENT_LOG").unwrap_or_else(|_| "info".to_owned())
}

fn v4net(addr: Ipv4Addr, prefix: u8) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(addr, prefix).expect("prefix <= 32"))
}

fn v6net(addr: Ipv6Addr, prefix: u8) -> IpNetwork {
    IpNetwork::V6(ipnetwork::Ipv6Network::new(addr, prefix).expect("prefix <= 128"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
