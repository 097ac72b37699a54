//! Neighbour entries (ARP for IPv4, NDP for IPv6) on a device: for the
//! overlay, each remote node's VXLAN addresses pinned to its VTEP MAC, so no
//! ARP or neighbour solicitation crosses the tunnel.

use crate::error::{KernelError, Result};
use crate::link::absent;
use crate::mac::MacAddr;
use crate::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::net::IpAddr;

/// One neighbour entry as found on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighbourEntry {
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    /// Written by hand or by an agent (NUD_PERMANENT), as opposed to learnt
    /// by ARP.
    pub permanent: bool,
}

fn neighbour_entry_of(msg: &NeighbourMessage) -> Option<NeighbourEntry> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(a) => mac = MacAddr::from_slice(a),
            _ => {}
        }
    }
    let ip = ip?;
    // The kernel's own: multicast entries (NOARP, the group's MAC) and IPv6
    // link-local neighbours, which it makes on any IPv6-enabled device and
    // would make again at once; nobody programs them.
    let kernel_made = msg.header.state == NeighbourState::Noarp
        || ip.is_multicast()
        || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
    if kernel_made {
        return None;
    }
    Some(NeighbourEntry {
        ip,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

impl Netlink {
    /// The neighbour messages of `family` on the device `ifindex`, from one
    /// dump (what the FDB and the ARP entries are both read from).
    pub(crate) async fn neighbour_messages_on(
        &self,
        family: AddressFamily,
        ifindex: u32,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>> {
        let _turn = self.dump_turn().await;
        let dump = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        dump.try_filter(|msg| std::future::ready(msg.header.ifindex == ifindex))
            .try_collect()
            .await
            .map_err(KernelError::netlink(format!("dumping {what}")))
    }

    /// Every neighbour entry of the device `ifindex`, IPv4 then IPv6, from
    /// one dump of each family.
    pub async fn neighbours_on(&self, ifindex: u32) -> Result<Vec<NeighbourEntry>> {
        let mut msgs = self
            .neighbour_messages_on(AddressFamily::Inet, ifindex, "neighbour entries")
            .await?;
        msgs.extend(
            self.neighbour_messages_on(AddressFamily::Inet6, ifindex, "IPv6 neighbour entries")
                .await?,
        );
        Ok(msgs.iter().filter_map(neighbour_entry_of).collect())
    }

    /// Set the permanent entry `ip -> mac` on `ifindex`, replacing whatever
    /// entry `ip` had.
    pub async fn neighbour_replace(&self, ifindex: u32, ip: IpAddr, mac: MacAddr) -> Result<()> {
        self.handle()
            .neighbours()
            .add(ifindex, ip)
            .state(NeighbourState::Permanent)
            .link_layer_address(&mac.octets())
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding neighbour {ip} lladdr {mac}"
            )))
    }

    /// Remove the entry for `ip` on `ifindex`; an entry already gone is not
    /// an error.
    pub async fn neighbour_delete(&self, ifindex: u32, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = ifindex;
        let (family, address) = match ip {
            IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
        };
        msg.header.family = family;
        msg.attributes
            .push(NeighbourAttribute::Destination(address));
        let r = self.handle().neighbours().del(msg).execute().await;
        absent(r.map_err(KernelError::netlink(format!("deleting neighbour {ip}"))))?;
        Ok(())
    }
}
