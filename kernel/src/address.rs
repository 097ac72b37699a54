//! Interface addresses.

use crate::error::{KernelError, Result};
use crate::handle::Netlink;
use crate::link::Link;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::AddressMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address message for `addr` on link `index` (what `ip addr add/del`
/// sends: local = address, IPv4 broadcast derived from the prefix). An
/// IPv6 address goes without duplicate address detection (`nodad`): the
/// addresses trellis sets are unique by allocation, and with DAD they would
/// stay "tentative", unusable, for a second or more after they are set.
pub fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    match addr.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, addr.prefix())
            .build(),
        IpAddr::V6(ip) => {
            let mut msg = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(ip, addr.prefix())
                .build();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg
        }
    }
}

/// The address of a message as `ip/prefix` (IFA_LOCAL for IPv4, where
/// IFA_ADDRESS may be the peer of a point-to-point link).
pub fn message_address(msg: &AddressMessage) -> Option<IpNetwork> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => return IpNetwork::new(*ip, msg.header.prefix_len).ok(),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address.and_then(|ip| IpNetwork::new(ip, msg.header.prefix_len).ok())
}

impl Netlink {
    /// Add `addr` to link `index`; EEXIST when the link already holds it.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let mut req = self.handle().address().add(index, addr.ip(), addr.prefix());
        *req.message_mut() = address_message(index, addr);
        req.execute().await.map_err(KernelError::netlink(format!(
            "adding address {addr} to link #{index}"
        )))
    }

    /// Add `addr` to link `index` unless it is already there (also when a
    /// concurrent caller added it first). `true` when this call added it.
    pub async fn ensure_address(&self, index: u32, addr: IpNetwork) -> Result<bool> {
        match self.add_address(index, addr).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The addresses of link `index` (one dump of the namespace's addresses).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        let _turn = self.dump_turn().await;
        let msgs: Vec<AddressMessage> = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink(format!(
                "listing addresses of link #{index}"
            )))?;
        Ok(msgs.iter().filter_map(message_address).collect())
    }

    /// Remove `addr` from link `index`; `Ok(false)` when it was not there.
    /// The link holding the address `ip`, if one does.
    pub async fn link_holding(&self, ip: IpAddr) -> Result<Option<Link>> {
        let _turn = self.dump_turn().await;
        let msgs: Vec<AddressMessage> = self
            .handle()
            .address()
            .get()
            .set_address_filter(ip)
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink(format!("looking for {ip}")))?;
        let Some(msg) = msgs
            .iter()
            .find(|m| message_address(m).is_some_and(|a| a.ip() == ip))
        else {
            return Ok(None);
        };
        self.link_by_index(msg.header.index).await
    }

    pub async fn delete_address(&self, index: u32, addr: IpNetwork) -> Result<bool> {
        let r = self
            .handle()
            .address()
            .del(address_message(index, addr))
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "removing address {addr} from link #{index}"
            )));
        match r {
            Ok(()) => Ok(true),
            Err(e)
                if e.is_not_found()
                    || e.errno() == Some(nix::errno::Errno::EADDRNOTAVAIL as i32) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_addresses() {
        for a in ["10.88.0.1/16", "192.168.1.7/32", "fd00::1/64"] {
            let net: IpNetwork = a.parse().unwrap();
            let msg = address_message(5, net);
            assert_eq!(msg.header.index, 5);
            assert_eq!(message_address(&msg), Some(net), "{a}");
        }
        let msg = address_message(5, "10.88.0.1/16".parse().unwrap());
        assert!(msg.attributes.contains(&AddressAttribute::Broadcast(
            "10.88.255.255".parse().unwrap()
        )));
    }
}
