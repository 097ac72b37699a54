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

fn ip_of_raw(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(raw).ok().map(IpAddr::from),
        _ => None,
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
            // The entries of an AF_BRIDGE dump carry NDA_DST as raw bytes:
            // the parser only knows their family from the message, which
            // says "bridge". Read by length, as iproute2's `bridge fdb` does.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                dst = ip_of_raw(raw);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge_entry(dst: NeighbourAddress) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 7]),
            NeighbourAttribute::Destination(dst),
        ];
        msg
    }

    #[test]
    fn the_destination_of_a_bridge_dump_entry_is_read_from_its_raw_bytes() {
        // What the kernel's AF_BRIDGE dump decodes to: NDA_DST as `Other`.
        let v4 = bridge_entry(NeighbourAddress::Other(vec![192, 0, 2, 3]));
        assert_eq!(
            fdb_entry_of(&v4).unwrap().dst,
            Some("192.0.2.3".parse().unwrap())
        );
        let mut raw = vec![0u8; 16];
        raw[0] = 0xfd;
        raw[15] = 1;
        let v6 = bridge_entry(NeighbourAddress::Other(raw));
        assert_eq!(
            fdb_entry_of(&v6).unwrap().dst,
            Some("fd00::1".parse().unwrap())
        );
        let odd = bridge_entry(NeighbourAddress::Other(vec![1, 2, 3]));
        assert_eq!(fdb_entry_of(&odd).unwrap().dst, None);
    }
}
