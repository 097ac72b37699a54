//! Forwarding entries of a VXLAN device (`bridge fdb ... self`): which
//! underlay address the frames for a remote VTEP MAC are sent to.

use crate::error::{KernelError, Result};
use crate::link::absent;
use crate::mac::MacAddr;
use crate::Netlink;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::net::IpAddr;

/// One forwarding entry: frames for `mac` go to the VTEP at `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: MacAddr,
    /// The remote VTEP's underlay address; `None` for an entry without one
    /// (not something trellis writes, but it may be found and removed).
    pub dst: Option<IpAddr>,
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn fdb_entry_of(msg: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(a) => mac = MacAddr::from_slice(a),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                dst = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                dst = Some(IpAddr::V6(*v6))
            }
            _ => {}
        }
    }
    Some(FdbEntry { mac: mac?, dst })
}

impl Netlink {
    /// Every forwarding entry of the device `ifindex`, from one dump.
    pub async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let msgs = self
            .neighbour_messages_on(AddressFamily::Bridge, ifindex, "FDB entries")
            .await?;
        Ok(msgs.iter().filter_map(fdb_entry_of).collect())
    }

    /// Add a permanent entry `mac -> dst` on `ifindex`, replacing the
    /// destination of an existing entry for `mac`.
    pub async fn fdb_replace(&self, ifindex: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        self.handle()
            .neighbours()
            .add_bridge(ifindex, &mac.octets())
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(dst)
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding FDB entry {mac} dst {dst}"
            )))
    }

    /// Remove the entry `entry` from `ifindex`; an entry already gone is not
    /// an error.
    pub async fn fdb_delete(&self, ifindex: u32, entry: FdbEntry) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = ifindex;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
            entry.mac.octets().to_vec(),
        ));
        if let Some(dst) = entry.dst {
            msg.attributes
                .push(NeighbourAttribute::Destination(neighbour_address(dst)));
        }
        let r = self.handle().neighbours().del(msg).execute().await;
        absent(r.map_err(KernelError::netlink(format!(
            "deleting FDB entry {}",
            entry.mac
        ))))?;
        Ok(())
    }
}
