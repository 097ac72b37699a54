//! Network interfaces: one [`Link`] type for every kind trellis reads
//! (bridges, veths, the VXLAN device with its tunnel settings, the
//! underlay); look one up by name or index, list the ports of a master,
//! set one up, change its MTU, delete it.

use crate::error::{KernelError, Result};
use crate::handle::Netlink;
use crate::mac::MacAddr;
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::LinkUnspec;
use std::net::IpAddr;

/// A link as the kernel reports it, reduced to what trellis looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `vxlan`, ...; `None` for physical devices.
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The index of the bridge (or other master) this link is a port of.
    pub master: Option<u32>,
    /// For a veth: the index of its peer, in the peer's namespace.
    pub peer_index: Option<u32>,
    /// For a VXLAN device: its tunnel settings.
    pub vxlan: Option<VxlanInfo>,
}

/// The tunnel settings of a VXLAN device, as far as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    /// The underlay device the tunnel is bound to.
    pub underlay_index: Option<u32>,
    pub learning: Option<bool>,
}

impl Link {
    pub fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            peer_index: None,
            vxlan: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::Link(l) if *l != 0 => link.peer_index = Some(*l),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => {
                                if *kind == InfoKind::Vxlan {
                                    link.vxlan.get_or_insert_with(VxlanInfo::default);
                                }
                                link.kind = Some(kind.to_string());
                            }
                            LinkInfo::Data(InfoData::Vxlan(data)) => {
                                let v = link.vxlan.get_or_insert_with(VxlanInfo::default);
                                for d in data {
                                    match d {
                                        InfoVxlan::Id(id) => v.vni = Some(*id),
                                        InfoVxlan::Port(p) => v.port = Some(*p),
                                        InfoVxlan::Local(l) => v.local = Some(IpAddr::V4(*l)),
                                        InfoVxlan::Local6(l) => v.local = Some(IpAddr::V6(*l)),
                                        InfoVxlan::Link(i) => v.underlay_index = Some(*i),
                                        InfoVxlan::Learning(l) => v.learning = Some(*l),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// `Ok(None)` when a netlink failure says "no such device".
pub(crate) fn absent<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

impl Netlink {
    async fn get_one(&self, req: rtnetlink::LinkGetRequest, what: &str) -> Result<Option<Link>> {
        let r = req
            .execute()
            .try_next()
            .await
            .map_err(KernelError::netlink(format!("looking up link {what}")));
        Ok(absent(r)?.flatten().map(|m| Link::from_message(&m)))
    }

    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let req = self.handle().link().get().match_name(name);
        self.get_one(req, name).await
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let req = self.handle().link().get().match_index(index);
        self.get_one(req, &format!("#{index}")).await
    }

    /// Every link in this namespace (one dump, no statistics).
    pub async fn links(&self) -> Result<Vec<Link>> {
        let _turn = self.dump_turn().await;
        let req = self
            .handle()
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]);
        let msgs: Vec<LinkMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing links"))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// The names of every link in this namespace (one dump).
    pub async fn link_names(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.links().await?.into_iter().map(|l| l.name).collect())
    }

    /// Every link enslaved to `master` (one filtered dump).
    pub async fn links_with_master(&self, master: u32) -> Result<Vec<Link>> {
        let _turn = self.dump_turn().await;
        let mut req = self
            .handle()
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]);
        req.message_mut()
            .attributes
            .push(LinkAttribute::Controller(master));
        let msgs: Vec<LinkMessage> =
            req.execute()
                .try_collect()
                .await
                .map_err(KernelError::netlink(format!(
                    "listing ports of link #{master}"
                )))?;
        // Older kernels ignore the filter: apply it here as well.
        Ok(msgs
            .iter()
            .map(Link::from_message)
            .filter(|l| l.master == Some(master))
            .collect())
    }

    /// Set the link administratively up.
    pub async fn set_link_up(&self, index: u32) -> Result<()> {
        self.handle()
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(KernelError::netlink(format!("setting link #{index} up")))
    }

    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle()
            .link()
            .change(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "setting MTU {mtu} on link #{index}"
            )))
    }

    /// Delete `link` (as found by a lookup or dump, without looking it up
    /// again); `Ok(false)` when it was gone already.
    pub async fn delete_link(&self, link: &Link) -> Result<bool> {
        let r = self.handle().link().del(link.index).execute().await;
        let r = r.map_err(KernelError::netlink(format!("deleting link {}", link.name)));
        Ok(absent(r)?.is_some())
    }

    /// Move the link called `name` into link group `group`. `Ok(false)`
    /// when there is none.
    pub async fn set_group_by_name(&self, name: &str, group: u32) -> Result<bool> {
        let mut msg = LinkUnspec::new_with_name(name).build();
        msg.attributes.push(LinkAttribute::Group(group));
        let r = self
            .handle()
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "moving link {name} to group {group}"
            )));
        Ok(absent(r)?.is_some())
    }

    /// Delete every link of group `group` in one request: the kernel
    /// unregisters them together and waits for its RCU grace periods once
    /// for all of them, where one request per link waits once per link.
    pub async fn delete_group(&self, group: u32) -> Result<()> {
        let mut req = self.handle().link().del(0);
        req.message_mut()
            .attributes
            .push(LinkAttribute::Group(group));
        let r = req
            .execute()
            .await
            .map_err(KernelError::netlink(format!("deleting link group {group}")));
        absent(r)?;
        Ok(())
    }

    /// Delete the link called `name` in one request. `Ok(false)` when there
    /// was none. Deleting one end of a veth pair deletes both.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        let msg = LinkUnspec::new_with_name(name).build();
        let r = self
            .handle()
            .link()
            .del_with_message(msg)
            .execute()
            .await
            .map_err(KernelError::netlink(format!("deleting link {name}")));
        Ok(absent(r)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;

    #[test]
    fn links_are_read_from_messages() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up;
        msg.attributes = vec![
            LinkAttribute::IfName("trl0123456789ab".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
            LinkAttribute::Controller(3),
            LinkAttribute::Link(12),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let l = Link::from_message(&msg);
        assert_eq!(l.index, 7);
        assert!(l.up);
        assert_eq!(l.name, "trl0123456789ab");
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.mac.unwrap().to_string(), "02:00:00:00:00:09");
        assert_eq!(l.master, Some(3));
        assert_eq!(l.peer_index, Some(12));
        assert!(l.is_kind("veth"));
        assert!(!l.is_kind("bridge"));
        assert_eq!(l.vxlan, None);
    }

    #[test]
    fn a_vxlan_device_carries_its_tunnel_settings() {
        let mut msg = LinkMessage::default();
        msg.header.index = 9;
        msg.attributes = vec![
            LinkAttribute::IfName("trellis.1".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(1),
                    InfoVxlan::Port(8472),
                    InfoVxlan::Local("192.0.2.1".parse().unwrap()),
                    InfoVxlan::Link(2),
                    InfoVxlan::Learning(false),
                ])),
            ]),
        ];
        let l = Link::from_message(&msg);
        assert!(l.is_kind("vxlan") && !l.up);
        assert_eq!(
            l.vxlan,
            Some(VxlanInfo {
                vni: Some(1),
                port: Some(8472),
                local: Some("192.0.2.1".parse().unwrap()),
                underlay_index: Some(2),
                learning: Some(false),
            })
        );
    }
}
