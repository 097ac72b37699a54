//! veth pairs whose peer is created directly inside another namespace.

use crate::error::{KernelError, Result};
use crate::handle::Netlink;
use crate::mac::MacAddr;
use crate::netns::NetnsFile;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use std::os::fd::AsRawFd;

/// A veth pair to create: one end in the namespace of the [`Netlink`] that
/// creates it, the peer created inside `peer_netns` under `peer_name`, so it
/// never appears in this namespace and never needs moving or renaming.
#[derive(Debug)]
pub struct VethPair<'a> {
    /// The end that stays in this namespace.
    pub name: &'a str,
    pub peer_name: &'a str,
    pub peer_netns: &'a NetnsFile,
    /// MTU of both ends (the kernel default when `None`).
    pub mtu: Option<u32>,
    /// Attach this end to a bridge at creation.
    pub master: Option<u32>,
    /// Hardware address of the peer (random when `None`).
    pub peer_mac: Option<MacAddr>,
}

impl VethPair<'_> {
    /// The RTM_NEWLINK message: this end up and on its master, the peer
    /// down (the kernel refuses IFF_UP on a peer created in another
    /// namespace with ENOTCONN; it is set up from inside that namespace).
    pub fn message(&self) -> LinkMessage {
        let mut peer = LinkUnspec::new_with_name(self.peer_name)
            .append_extra_attribute(LinkAttribute::NetNsFd(self.peer_netns.file.as_raw_fd()));
        if let Some(mtu) = self.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = self.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let mut this = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(self.name)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = self.mtu {
            this = this.mtu(mtu);
        }
        if let Some(master) = self.master {
            this = this.controller(master);
        }
        this.build()
    }
}

impl Netlink {
    /// Create the pair in one request (this end up and attached to its
    /// master, the peer down). EEXIST when either name is taken in its
    /// namespace.
    pub async fn create_veth(&self, pair: &VethPair<'_>) -> Result<()> {
        self.handle()
            .link()
            .add(pair.message())
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "creating veth {} with peer {} in {}",
                pair.name,
                pair.peer_name,
                pair.peer_netns.path.display()
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{LinkFlags, LinkInfo};

    fn is_up(msg: &LinkMessage) -> bool {
        msg.header.flags.contains(LinkFlags::Up) && msg.header.change_mask.contains(LinkFlags::Up)
    }

    #[test]
    fn one_message_creates_both_ends_configured() {
        let ns = NetnsFile::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let pair = VethPair {
            name: "trlabc",
            peer_name: "eth0",
            peer_netns: &ns,
            mtu: Some(1450),
            master: Some(4),
            peer_mac: None,
        };
        let msg = pair.message();
        assert!(is_up(&msg));
        assert!(msg
            .attributes
            .contains(&LinkAttribute::IfName("trlabc".into())));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(msg.attributes.contains(&LinkAttribute::Controller(4)));
        let infos = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            })
            .unwrap();
        assert!(!is_up(&peer));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::NetNsFd(ns.file.as_raw_fd())));
        assert!(!peer
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(_))));
    }
}
