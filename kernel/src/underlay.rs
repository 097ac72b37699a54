//! The underlay: the node interface VXLAN packets leave through, its MTU
//! and the IPv4 address published as the node's public IP.

use crate::error::{KernelError, Result};
use crate::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::AddressFamily;
use std::net::{IpAddr, Ipv4Addr};

/// An interface that can carry the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Its IPv4 addresses, primary first.
    pub ipv4: Vec<Ipv4Addr>,
}

fn name_and_mtu(msg: &LinkMessage) -> (String, u32) {
    let mut name = String::new();
    let mut mtu = 1500;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    (name, mtu)
}

impl Netlink {
    /// The interface called `name`, with its MTU and IPv4 addresses.
    pub async fn underlay_by_name(&self, name: &str) -> Result<UnderlayLink> {
        let req = self.handle().link().get().match_name(name.to_string());
        self.underlay_from(req, name).await
    }

    pub async fn underlay_by_index(&self, index: u32) -> Result<UnderlayLink> {
        let req = self.handle().link().get().match_index(index);
        self.underlay_from(req, &format!("interface #{index}"))
            .await
    }

    /// The interface of the IPv4 default route
    /// ([`Netlink::default_route_link`]).
    pub async fn underlay_of_default_route(&self) -> Result<UnderlayLink> {
        let link = self.default_route_link().await?.ok_or_else(|| {
            KernelError::NotFound(
                "an IPv4 default route (pass --iface to choose the underlay)".into(),
            )
        })?;
        self.underlay_by_index(link.index).await
    }

    /// The interface holding the address `ip`.
    pub async fn underlay_holding(&self, ip: Ipv4Addr) -> Result<UnderlayLink> {
        let mut dump = self
            .handle()
            .address()
            .get()
            .set_address_filter(IpAddr::V4(ip))
            .execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(KernelError::netlink("dumping addresses"))?
        {
            let holds = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(IpAddr::V4(l)) | AddressAttribute::Address(IpAddr::V4(l)) if *l == ip)
            });
            if holds {
                return self.underlay_by_index(msg.header.index).await;
            }
        }
        Err(KernelError::NotFound(format!("an interface holding {ip}")))
    }

    async fn underlay_from(
        &self,
        req: rtnetlink::LinkGetRequest,
        what: &str,
    ) -> Result<UnderlayLink> {
        let msg = req
            .execute()
            .try_next()
            .await
            .map_err(KernelError::netlink(format!("looking up {what}")))
            .and_then(|m| m.ok_or_else(|| KernelError::NotFound(what.to_string())))
            .map_err(|e| {
                if e.is_not_found() {
                    KernelError::NotFound(what.to_string())
                } else {
                    e
                }
            })?;
        let (name, mtu) = name_and_mtu(&msg);
        let index = msg.header.index;
        let mut ipv4 = Vec::new();
        let mut dump = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(addr) = dump
            .try_next()
            .await
            .map_err(KernelError::netlink(format!("listing addresses of {name}")))?
        {
            if addr.header.family != AddressFamily::Inet {
                continue;
            }
            let local = addr.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(l)) => Some(*l),
                _ => None,
            });
            let address = addr.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(l)) => Some(*l),
                _ => None,
            });
            ipv4.extend(local.or(address));
        }
        Ok(UnderlayLink {
            index,
            name,
            mtu,
            ipv4,
        })
    }
}
