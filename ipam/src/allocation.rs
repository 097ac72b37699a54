//! An allocated address and who holds it.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr};

/// The attachment an address belongs to: container ID + interface name, the
/// CNI's own key for an attachment (and what GC's valid-attachments lists).
pub use trellis_common::cni::Attachment as Handle;

/// The owner of an address: the value of `<prefix>/ipam/ips/<ip>` in etcd
/// (`{"containerID","ifname","node","network","name"}`) and of a local-store
/// entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The node the container runs on (empty in the local store).
    #[serde(default)]
    pub node: String,
    /// The CNI network name (GC of one network never frees another's).
    #[serde(default)]
    pub network: String,
    /// The `type` of the CNI plugin that delegated to trellis-ipam (the
    /// network configuration's own `type`: `trellis`, `macvlan`, ...). The
    /// agent reclaims only the addresses of trellis's attachments: those
    /// whose host veth it knows how to look for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plugin: String,
    /// The container's name, from `K8S_POD_NAME` in `CNI_ARGS` (podman
    /// sets it to the container name): what the agents' DNS answers with
    /// this address. Empty: the address has no name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Owner {
    /// Decode an address key's value (etcd) or a local-store entry.
    pub fn parse(bytes: &[u8]) -> Result<Owner, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn handle(&self) -> Handle {
        Handle {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Whether the attachment is one of the `trellis` plugin's (it has a
    /// host veth named after it).
    pub fn is_trellis_attachment(&self) -> bool {
        self.plugin == trellis_common::naming::PLUGIN_TYPE
    }

    pub fn holds(&self, handle: &Handle) -> bool {
        self.container_id == handle.container_id && self.ifname == handle.ifname
    }

    /// The owner the unit tests use: container `id`, `eth0`, network `net`.
    #[cfg(test)]
    pub(crate) fn of_test_container(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
            node: String::new(),
            network: "net".into(),
            plugin: "trellis".into(),
            name: String::new(),
        }
    }
}

/// One allocated address (IPv4, or IPv6 in an IPv6-only pool), and in a
/// dual-stack network its IPv6 twin (claimed and freed with it: both
/// address keys are written and deleted in the same transactions, with the
/// same owner and revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub ip6: Option<Ipv6Addr>,
    pub owner: Owner,
    /// The etcd revision that wrote this allocation (address key and handle
    /// key share it); `release_exact` frees it only if nothing rewrote it
    /// since. 0 in the local store.
    pub revision: i64,
}

impl Allocation {
    pub fn handle(&self) -> Handle {
        self.owner.handle()
    }
}

/// What claiming an address for a handle came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The address is now this handle's.
    Claimed(Allocation),
    /// The handle already held an address (a repeated ADD): that one.
    AlreadyHeld(Allocation),
    /// Somebody else holds the address (`None` when its record does not
    /// decode: the address is taken all the same).
    Taken { ip: IpAddr, owner: Option<Owner> },
}
