//! Every etcd key trellis uses, under one prefix, and the one rule that
//! reads a prefix: given with or without its slashes (`trellis`,
//! `/trellis`, `/trellis/`) it names the same keys, `/trellis/...`, in
//! every binary (INTERFACES.md).

use crate::cni::Attachment;
use ipnetwork::IpNetwork;
use std::net::Ipv4Addr;

/// The name a key holds directly under `prefix` (a node record's under
/// `<prefix>/nodes/` or `<prefix>/network-nodes/<network>/`, a network's
/// under `<prefix>/networks/`): not empty, no further `/`.
pub fn name_under<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(prefix)
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The key prefix when none is configured.
pub const DEFAULT_ETCD_PREFIX: &str = "/trellis";

/// The keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `/trellis`: one leading slash, none at the end; empty for the root.
    prefix: String,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new(DEFAULT_ETCD_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let bare = prefix.trim_matches('/');
        Keys {
            prefix: if bare.is_empty() {
                String::new()
            } else {
                format!("/{bare}")
            },
        }
    }

    /// The prefix in its one form (`/trellis`), as the installer writes it
    /// into the conflist.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/config`: the cluster configuration.
    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/networks/`: every named network's record.
    pub fn networks(&self) -> String {
        format!("{}/networks/", self.prefix)
    }

    /// `<prefix>/networks/<name>`.
    pub fn network(&self, name: &str) -> String {
        format!("{}{name}", self.networks())
    }

    /// The network name of a key under [`Keys::networks`].
    pub fn network_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        name_under(&self.networks(), key)
    }

    /// `<prefix>/network-nodes/<network>/`: the node records of a named
    /// network, one per node that set it up (under that network's subnet
    /// lease), shaped as those of the default network.
    pub fn network_nodes(&self, network: &str) -> String {
        format!("{}/network-nodes/{network}/", self.prefix)
    }

    /// `<prefix>/network-nodes/<network>/<node>`.
    pub fn network_node(&self, network: &str, node: &str) -> String {
        format!("{}{node}", self.network_nodes(network))
    }

    /// `<prefix>/network-nodes/`: the node records of every named network.
    pub fn all_network_nodes(&self) -> String {
        format!("{}/network-nodes/", self.prefix)
    }

    /// `<prefix>/nodes/`: every node record.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `<prefix>/nodes/<name>`.
    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// The node name of a key under [`Keys::nodes`].
    pub fn node_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        name_under(&self.nodes(), key)
    }

    /// `<prefix>/subnets/`: one key per leased node subnet.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// `<prefix>/subnets/10.244.3.0-24` (an IPv6-only cluster's:
    /// `<prefix>/subnets/fd10:244:0:3::-64`).
    pub fn subnet(&self, subnet: impl Into<IpNetwork>) -> String {
        let subnet = subnet.into();
        format!("{}{}-{}", self.subnets(), subnet.network(), subnet.prefix())
    }

    /// The subnet of a key under [`Keys::subnets`].
    pub fn subnet_of(&self, key: &str) -> Option<IpNetwork> {
        let rest = key.strip_prefix(&self.subnets())?;
        let (ip, len) = rest.rsplit_once('-')?;
        let net = IpNetwork::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        (net.network() == net.ip()).then_some(net)
    }

    /// `<prefix>/subnet-grace/`: one key per leased subnet, `{"node": NAME}`,
    /// under a second etcd lease whose TTL is the subnet lease's plus the
    /// grace: it outlives a dead node's subnet key by the grace, and no
    /// other node leases the subnet, nor are the node's addresses
    /// reclaimed, while it lives.
    pub fn subnet_graces(&self) -> String {
        format!("{}/subnet-grace/", self.prefix)
    }

    /// `<prefix>/subnet-grace/10.244.3.0-24`.
    pub fn subnet_grace(&self, subnet: impl Into<IpNetwork>) -> String {
        let subnet = subnet.into();
        format!(
            "{}{}-{}",
            self.subnet_graces(),
            subnet.network(),
            subnet.prefix()
        )
    }

    /// The subnet of a key under [`Keys::subnet_graces`].
    pub fn subnet_grace_of(&self, key: &str) -> Option<IpNetwork> {
        let rest = key.strip_prefix(&self.subnet_graces())?;
        self.subnet_of(&format!("{}{rest}", self.subnets()))
    }

    /// `<prefix>/ipam/ips/`: one key per allocated address.
    pub fn ips(&self) -> String {
        format!("{}/ipam/ips/", self.prefix)
    }

    /// `<prefix>/ipam/ips/10.244.3.7`, or `<prefix>/ipam/ips/fd10:244:0:3::7`
    /// for the IPv6 twin of a dual-stack allocation (a key of its own).
    pub fn ip(&self, ip: impl Into<std::net::IpAddr>) -> String {
        format!("{}{}", self.ips(), ip.into())
    }

    /// The address of a key under [`Keys::ips`].
    pub fn ip_of(&self, key: &str) -> Option<Ipv4Addr> {
        key.strip_prefix(&self.ips())?.parse().ok()
    }

    /// The address, of either family, of a key under [`Keys::ips`].
    pub fn address_of(&self, key: &str) -> Option<std::net::IpAddr> {
        key.strip_prefix(&self.ips())?.parse().ok()
    }

    /// `<prefix>/ipam/handles/`: which address each attachment holds.
    pub fn handles(&self) -> String {
        format!("{}/ipam/handles/", self.prefix)
    }

    /// `<prefix>/ipam/guards/`: the claim guards of ADDs in progress.
    pub fn guards(&self) -> String {
        format!("{}/ipam/guards/", self.prefix)
    }

    /// `<prefix>/ipam/guards/<containerID>/<ifname>`: written with every
    /// claim of one ADD under that ADD's short etcd lease, revoked when the
    /// ADD ends, so that a copy of the claim still held by a frozen member
    /// fails ("requested lease not found") whenever it arrives.
    pub fn claim_guard(&self, attachment: &Attachment) -> String {
        format!(
            "{}{}/{}",
            self.guards(),
            attachment.container_id,
            attachment.ifname
        )
    }

    /// `<prefix>/ipam/handles/<containerID>/<ifname>`.
    pub fn handle(&self, attachment: &Attachment) -> String {
        format!(
            "{}{}/{}",
            self.handles(),
            attachment.container_id,
            attachment.ifname
        )
    }

    /// `<prefix>/attachments/`: the agents' reports of the attachments on
    /// their nodes (`trellisctl ipam check` reads them).
    pub fn attachment_reports(&self) -> String {
        format!("{}/attachments/", self.prefix)
    }

    /// `<prefix>/attachments/<node>`: node `node`'s report, written by its
    /// agent under the node record's lease.
    pub fn attachment_report(&self, node: &str) -> String {
        format!("{}{node}", self.attachment_reports())
    }

    /// The node whose report `key` is.
    pub fn attachment_report_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        name_under(&self.attachment_reports(), key)
    }

    /// The attachment of a key under [`Keys::handles`].
    pub fn handle_of(&self, key: &str) -> Option<Attachment> {
        let (container_id, ifname) = key.strip_prefix(&self.handles())?.split_once('/')?;
        Some(Attachment {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }
}

/// Who talks to etcd, each with its own etcd role (README, "etcd
/// permissions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdRole {
    /// `trellis-agent` (and its `install-cni`, which seeds the config).
    Agent,
    /// The CNI plugins (`trellis-ipam`, and its fence keeper).
    Plugin,
}

impl EtcdRole {
    /// The role's name in etcd, as the README's commands create it.
    pub fn name(self) -> &'static str {
        match self {
            EtcdRole::Agent => "trellis-agent",
            EtcdRole::Plugin => "trellis-cni",
        }
    }
}

/// What a role may do with a key or range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One permission of an etcd role: a key, or every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub prefix: bool,
    pub access: Access,
}

impl Grant {
    /// The `etcdctl` command that grants it to `role`.
    pub fn etcdctl(&self, role: EtcdRole) -> String {
        let access = match self.access {
            Access::Read => "read",
            Access::ReadWrite => "readwrite",
        };
        let prefix = if self.prefix { " --prefix=true" } else { "" };
        format!(
            "etcdctl role grant-permission {}{prefix} {access} {}",
            role.name(),
            self.key
        )
    }
}

impl Keys {
    /// Every key `role` reads or writes, and nothing else: the agent owns
    /// the node records and subnet leases and reclaims allocations (GC,
    /// departed nodes), and seeds the config; the plugins read the config
    /// and node records and own the allocations. The agent also reports the
    /// attachments on its node, and reads the named networks.
    pub fn grants(&self, role: EtcdRole) -> Vec<Grant> {
        let one = |key: String, access| Grant {
            key,
            prefix: false,
            access,
        };
        let under = |key: String, access| Grant {
            key,
            prefix: true,
            access,
        };
        match role {
            EtcdRole::Agent => vec![
                one(self.config(), Access::ReadWrite),
                under(self.nodes(), Access::ReadWrite),
                under(self.subnets(), Access::ReadWrite),
                under(self.subnet_graces(), Access::ReadWrite),
                under(self.ips(), Access::ReadWrite),
                under(self.handles(), Access::ReadWrite),
                under(self.guards(), Access::ReadWrite),
                under(self.attachment_reports(), Access::ReadWrite),
                under(self.networks(), Access::Read),
                under(self.all_network_nodes(), Access::ReadWrite),
            ],
            EtcdRole::Plugin => vec![
                one(self.config(), Access::Read),
                under(self.nodes(), Access::Read),
                under(self.all_network_nodes(), Access::Read),
                under(self.ips(), Access::ReadWrite),
                under(self.handles(), Access::ReadWrite),
                under(self.guards(), Access::ReadWrite),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_with_or_without_slashes_names_the_same_keys() {
        for prefix in [
            "/trellis",
            "/trellis/",
            "trellis",
            "trellis/",
            "//trellis//",
        ] {
            let k = Keys::new(prefix);
            assert_eq!(k.prefix(), "/trellis", "{prefix}");
            assert_eq!(k, Keys::default());
            assert_eq!(k.config(), "/trellis/config");
            assert_eq!(k.node("n1"), "/trellis/nodes/n1");
            assert_eq!(
                k.ip("10.244.3.7".parse::<Ipv4Addr>().unwrap()),
                "/trellis/ipam/ips/10.244.3.7"
            );
        }
        assert_eq!(Keys::new("a/b/").config(), "/a/b/config");
        assert_eq!(Keys::new("/").config(), "/config");
        assert_eq!(Keys::new("").nodes(), "/nodes/");
    }

    #[test]
    fn key_layout() {
        let k = Keys::default();
        assert_eq!(k.node_name_of("/trellis/nodes/n1"), Some("n1"));
        assert_eq!(k.node_name_of("/trellis/nodes/"), None);
        assert_eq!(k.node_name_of("/trellis/nodes/a/b"), None);
        assert_eq!(k.network("multihost"), "/trellis/networks/multihost");
        assert_eq!(
            k.network_name_of(&k.network("multihost")),
            Some("multihost")
        );
        assert_eq!(k.network_name_of("/trellis/networks/"), None);
        assert_eq!(
            k.network_node("multihost", "n1"),
            "/trellis/network-nodes/multihost/n1"
        );
        let prefix = k.network_nodes("multihost");
        assert_eq!(
            name_under(&prefix, &k.network_node("multihost", "n1")),
            Some("n1")
        );
        assert_eq!(name_under(&prefix, &k.node("n1")), None);
        assert_eq!(k.network_name_of("/trellis/networks/a/b"), None);
        let net: IpNetwork = "10.244.3.0/24".parse().unwrap();
        assert_eq!(k.subnet(net), "/trellis/subnets/10.244.3.0-24");
        let net6: IpNetwork = "fd10:244:0:3::/64".parse().unwrap();
        assert_eq!(k.subnet(net6), "/trellis/subnets/fd10:244:0:3::-64");
        assert_eq!(k.subnet_of(&k.subnet(net6)), Some(net6));
        assert_eq!(k.subnet_grace_of(&k.subnet_grace(net6)), Some(net6));
        assert_eq!(k.subnet_of("/trellis/subnets/fd10:244:0:3::1-64"), None);
        assert_eq!(k.subnet_of(&k.subnet(net)), Some(net));
        assert_eq!(k.subnet_of("/trellis/subnets/10.244.3.1-24"), None);
        assert_eq!(k.subnet_of("/trellis/subnets/junk"), None);
        assert_eq!(k.subnet_grace(net), "/trellis/subnet-grace/10.244.3.0-24");
        assert_eq!(k.subnet_grace_of(&k.subnet_grace(net)), Some(net));
        assert_eq!(k.subnet_grace_of(&k.subnet(net)), None);
        let ip: Ipv4Addr = "10.244.3.7".parse().unwrap();
        assert_eq!(k.ip_of(&k.ip(ip)), Some(ip));
        assert_eq!(k.ip_of("/trellis/ipam/ips/junk"), None);
        let v6: std::net::Ipv6Addr = "fd10:244:0:3::7".parse().unwrap();
        assert_eq!(k.ip(v6), "/trellis/ipam/ips/fd10:244:0:3::7");
        assert_eq!(k.address_of(&k.ip(v6)), Some(v6.into()));
        assert_eq!(k.address_of(&k.ip(ip)), Some(ip.into()));
        assert_eq!(k.ip_of(&k.ip(v6)), None);
        let a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(k.handle(&a), "/trellis/ipam/handles/c1/eth0");
        assert_eq!(k.handle_of(&k.handle(&a)), Some(a));
        assert_eq!(k.handle_of("/trellis/ipam/handles/c1"), None);
        assert_eq!(k.attachment_report("n1"), "/trellis/attachments/n1");
        assert_eq!(
            k.attachment_report_of(&k.attachment_report("n1")),
            Some("n1")
        );
        assert_eq!(k.attachment_report_of("/trellis/attachments/"), None);
    }

    #[test]
    fn each_role_is_granted_only_its_keys() {
        let k = Keys::new("tr");
        let plugin: Vec<String> = k
            .grants(EtcdRole::Plugin)
            .iter()
            .map(|g| g.etcdctl(EtcdRole::Plugin))
            .collect();
        assert_eq!(
            plugin,
            [
                "etcdctl role grant-permission trellis-cni read /tr/config",
                "etcdctl role grant-permission trellis-cni --prefix=true read /tr/nodes/",
                "etcdctl role grant-permission trellis-cni --prefix=true read /tr/network-nodes/",
                "etcdctl role grant-permission trellis-cni --prefix=true readwrite /tr/ipam/ips/",
                "etcdctl role grant-permission trellis-cni --prefix=true readwrite /tr/ipam/handles/",
                "etcdctl role grant-permission trellis-cni --prefix=true readwrite /tr/ipam/guards/",
            ]
        );
        // Every key either role names lies under the prefix, and the
        // plugins write nothing the agent does not own too.
        let agent = k.grants(EtcdRole::Agent);
        for g in agent.iter().chain(&k.grants(EtcdRole::Plugin)) {
            assert!(g.key.starts_with("/tr/"), "{g:?}");
        }
        for g in k.grants(EtcdRole::Plugin) {
            assert!(agent.iter().any(|a| a.key == g.key), "{g:?}");
        }
    }
}
