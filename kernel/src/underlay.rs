//! The underlay: the node interface VXLAN packets leave through, its MTU
//! and the IPv4 address published as the node's public IP.

use crate::error::{KernelError, Result};
use crate::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
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

    /// The interface of the IPv4 default route (the one with the lowest
    /// metric when there are several).
    pub async fn underlay_of_default_route(&self) -> Result<UnderlayLink> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle().route().get(query).execute();
        let mut best: Option<(u32, u32)> = None; // (metric, oif)
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(KernelError::netlink("dumping routes"))?
        {
            if msg.header.destination_prefix_length != 0 {
                continue;
            }
            let mut table = u32::from(msg.header.table);
            let mut oif = None;
            let mut metric = 0;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            if let Some(oif) = oif {
                if best.is_none_or(|(m, _)| metric < m) {
                    best = Some((metric, oif));
                }
            }
        }
        let (_, oif) = best.ok_or_else(|| {
            KernelError::NotFound(
                "an IPv4 default route (pass --iface to choose the underlay)".into(),
            )
        })?;
        self.underlay_by_index(oif).await
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
