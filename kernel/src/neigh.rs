//! IPv4 neighbour (ARP) entries on a device: for the overlay, each remote
//! node's VXLAN address pinned to its VTEP MAC, so no ARP crosses the tunnel.

use crate::error::{KernelError, Result};
use crate::link::absent;
use crate::mac::MacAddr;
use crate::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::net::{IpAddr, Ipv4Addr};

/// One IPv4 neighbour entry as found on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighbourEntry {
    pub ip: Ipv4Addr,
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
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
            NeighbourAttribute::LinkLayerAddress(a) => mac = MacAddr::from_slice(a),
            _ => {}
        }
    }
    Some(NeighbourEntry {
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

impl Netlink {
    /// Every IPv4 neighbour entry of the device `ifindex`, from one dump.
    pub async fn neighbours_on(&self, ifindex: u32) -> Result<Vec<NeighbourEntry>> {
        let mut dump = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(KernelError::netlink("dumping neighbour entries"))?
        {
            if msg.header.ifindex == ifindex {
                out.extend(neighbour_entry_of(&msg));
            }
        }
        Ok(out)
    }

    /// Set the permanent entry `ip -> mac` on `ifindex`, replacing whatever
    /// entry `ip` had.
    pub async fn neighbour_replace(&self, ifindex: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<()> {
        self.handle()
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
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
    pub async fn neighbour_delete(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let r = self.handle().neighbours().del(msg).execute().await;
        absent(r.map_err(KernelError::netlink(format!("deleting neighbour {ip}"))))?;
        Ok(())
    }
}
