//! Where everything of the Kubernetes test cluster lives: one state
//! directory, fixed namespace names, one cgroup parent, the addresses. `up`
//! makes these, `down` removes exactly these, also after a failed `up`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The default state directory (`TRELLIS_KUBE_STATE` overrides it).
pub const DEFAULT_STATE: &str = "/var/lib/trellis-kube";
/// The underlay namespace: the nodes' network, the control plane and etcd.
pub const UNDERLAY_NS: &str = "tk-underlay";
/// A host beyond the cluster, reached only through the underlay.
pub const OUTSIDE_NS: &str = "tk-outside";
/// Every node's namespace is `tk-<node name>`.
const NODE_NS_PREFIX: &str = "tk-";
/// The cgroup (in every v1 hierarchy) holding each kubelet's `--cgroup-root`.
pub const CGROUP_PARENT: &str = "trellis-kube";

/// The underlay bridge's address: the API server and etcd listen here.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The outside host, and the underlay's address on its link.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const OUTSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The port of the HTTP server (`agnhost netexec`) on the outside host.
pub const OUTSIDE_HTTP_PORT: u16 = 8080;
/// The pod network, trellis's cluster config and kube-proxy's cluster CIDR.
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster is dual-stack: trellis's `ipv6Network`, kube-proxy's and
/// the controller manager's second cluster CIDR, the Services' second range.
pub const POD_CIDR6: &str = "fd10:244::/56";
pub const SERVICE_CIDR6: &str = "fd00:96::/112";
/// The underlay bridge's IPv6 address (nodes are 2001:db8:2::<index+1>/64).
pub const UNDERLAY6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe);
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// etcd's client URL for the API server (`/registry`) and trellis
/// (`/trellis`): one etcd serves both, under their own prefixes.
pub const ETCD_PORT: u16 = 2379;
/// Host directories every node sees as its own: each node's mount namespace
/// binds its private copy over them (the DaemonSet's hostPath volumes, the
/// runtime's CNI directories, the pods' network namespace files).
pub const NODE_PRIVATE_DIRS: &[(&str, &str)] = &[
    ("/opt/cni/bin", "cni-bin"),
    ("/etc/cni/net.d", "cni-conf"),
    ("/run/trellis", "run-trellis"),
    ("/run/netns", "run-netns"),
];
/// The kubelet's kernel tunables (`setupKernelTunables`), host-wide sysctls:
/// each node's mount namespace shows the values the kubelet wants instead of
/// letting it change the host's.
pub const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The state directory and every path under it.
#[derive(Clone, Debug)]
pub struct Layout {
    state: PathBuf,
}

impl Layout {
    pub fn new(state: impl Into<PathBuf>) -> Layout {
        Layout {
            state: state.into(),
        }
    }

    /// `TRELLIS_KUBE_STATE`, or [`DEFAULT_STATE`].
    pub fn from_env() -> Layout {
        match std::env::var_os("TRELLIS_KUBE_STATE") {
            Some(dir) if !dir.is_empty() => Layout::new(dir),
            _ => Layout::new(DEFAULT_STATE),
        }
    }

    pub fn state(&self) -> &Path {
        &self.state
    }
    /// What `up` recorded: nodes, ports ([`super::ClusterInfo`]).
    pub fn info_file(&self) -> PathBuf {
        self.state.join("cluster.json")
    }
    pub fn env_file(&self) -> PathBuf {
        self.state.join("env")
    }
    /// The administrator's kubeconfig (`KUBECONFIG`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }
    pub fn pki(&self) -> PathBuf {
        self.state.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    pub fn log(&self, daemon: &str) -> PathBuf {
        self.logs().join(format!("{daemon}.log"))
    }
    pub fn pids(&self) -> PathBuf {
        self.state.join("pids")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.state.join("etcd")
    }
    pub fn images(&self) -> PathBuf {
        self.state.join("images")
    }
    pub fn config(&self) -> PathBuf {
        self.state.join("config")
    }
    /// Host directories `up` created as mount points (removed by `down`).
    pub fn created_dirs_file(&self) -> PathBuf {
        self.state.join("created-dirs")
    }
    /// A private bind mount holding the nodes' mount and UTS namespace
    /// files.
    pub fn ns_dir(&self) -> PathBuf {
        self.state.join("ns")
    }
    pub fn node(&self, name: &str) -> NodeLayout {
        NodeLayout {
            name: name.to_owned(),
            dir: self.state.join("nodes").join(name),
            ns_dir: self.ns_dir(),
        }
    }
}

/// One node's paths and names.
#[derive(Clone, Debug)]
pub struct NodeLayout {
    pub name: String,
    pub dir: PathBuf,
    ns_dir: PathBuf,
}

impl NodeLayout {
    /// The node's network namespace, as `ip netns` knows it.
    pub fn netns(&self) -> String {
        node_netns(&self.name)
    }
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.netns())
    }
    /// The node's mount namespace file.
    pub fn mount_ns(&self) -> PathBuf {
        self.ns_dir.join(format!("{}.mnt", self.name))
    }
    /// The node's UTS namespace file: its host name is the node's name, as
    /// hostNetwork pods see it.
    pub fn uts_ns(&self) -> PathBuf {
        self.ns_dir.join(format!("{}.uts", self.name))
    }
    /// The node's own copy of a host directory of [`NODE_PRIVATE_DIRS`].
    pub fn private_dir(&self, host_dir: &str) -> PathBuf {
        let sub = NODE_PRIVATE_DIRS
            .iter()
            .find(|(host, _)| *host == host_dir)
            .map(|(_, sub)| *sub)
            .unwrap_or_else(|| panic!("{host_dir} is not a node-private directory"));
        self.dir.join(sub)
    }
    pub fn sysctl_dir(&self) -> PathBuf {
        self.dir.join("sysctl")
    }
    pub fn containerd_dir(&self) -> PathBuf {
        self.dir.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    /// The kubelet's `--cgroup-root`.
    pub fn cgroup_root(&self) -> String {
        format!("/{CGROUP_PARENT}/{}", self.name)
    }
    pub fn daemon(&self, what: &str) -> String {
        format!("{what}-{}", self.name)
    }
}

pub fn node_netns(name: &str) -> String {
    format!("{NODE_NS_PREFIX}{name}")
}

/// Node names: `node1`, `node2`, ...
pub fn node_name(index: usize) -> String {
    format!("node{}", index + 1)
}

/// A node's underlay address: 192.0.2.<index+1>.
pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, index as u8 + 1)
}

/// The node's IPv6 address on the underlay, its second `--node-ip`.
pub fn node_ip6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, index as u16 + 1)
}
