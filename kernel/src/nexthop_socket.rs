//! The wire side of nexthop objects: `struct nhmsg` with its `NHA_*`
//! attributes, which netlink-packet-route (0.34) does not model, encoded
//! here, and the netlink connection of their own they are sent on (opened
//! beside the namespace's rtnetlink socket by [`crate::Netlink`]). The
//! operations are in `nexthop`.

use crate::error::{KernelError, Result};
use futures::StreamExt;
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable, Nla, NlaBuffer, NlasIterator, Parseable, NLM_F_REQUEST,
};
use netlink_proto::sys::{protocols::NETLINK_ROUTE, SocketAddr};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use tokio::sync::Mutex;

pub(crate) const RTM_NEWNEXTHOP: u16 = 104;
pub(crate) const RTM_DELNEXTHOP: u16 = 105;
pub(crate) const RTM_GETNEXTHOP: u16 = 106;
pub(crate) const NHA_ID: u16 = 1;
pub(crate) const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const RTNH_F_ONLINK: u32 = 4;
const RTPROT_STATIC: u8 = 4;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct nhmsg`: family, scope, protocol, a reserved byte, flags.
const NHMSG_LEN: usize = 8;

/// A nexthop with one gateway on one device, as trellis makes and reads
/// them (groups, blackholes and FDB nexthops are not modelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexthop {
    pub id: u32,
    pub gateway: IpAddr,
    pub oif: u32,
    /// The gateway is reachable on `oif` although no address of `oif`
    /// covers it (the overlay's remote VTEP addresses).
    pub onlink: bool,
}

/// One nexthop message (request or answer) on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopMessage {
    kind: u16,
    family: u8,
    protocol: u8,
    flags: u32,
    nlas: Vec<DefaultNla>,
}

impl NexthopMessage {
    pub(crate) fn new(kind: u16) -> Self {
        NexthopMessage {
            kind,
            family: AF_UNSPEC,
            protocol: 0,
            flags: 0,
            nlas: Vec::new(),
        }
    }

    pub(crate) fn with_u32(mut self, kind: u16, value: u32) -> Self {
        self.nlas
            .push(DefaultNla::new(kind, value.to_ne_bytes().to_vec()));
        self
    }

    /// The request that makes (or replaces) `nh`.
    pub(crate) fn create(nh: &Nexthop) -> Self {
        let (family, gateway) = match nh.gateway {
            IpAddr::V4(ip) => (AF_INET, ip.octets().to_vec()),
            IpAddr::V6(ip) => (AF_INET6, ip.octets().to_vec()),
        };
        let mut msg = NexthopMessage::new(RTM_NEWNEXTHOP)
            .with_u32(NHA_ID, nh.id)
            .with_u32(NHA_OIF, nh.oif);
        msg.nlas.push(DefaultNla::new(NHA_GATEWAY, gateway));
        msg.family = family;
        msg.protocol = RTPROT_STATIC;
        if nh.onlink {
            msg.flags |= RTNH_F_ONLINK;
        }
        msg
    }

    /// The nexthop an answer describes; `None` for kinds not modelled.
    pub(crate) fn nexthop(&self) -> Option<Nexthop> {
        let (mut id, mut oif, mut gateway) = (None, None, None);
        for nla in &self.nlas {
            let mut value = vec![0; nla.value_len()];
            nla.emit_value(&mut value);
            match (nla.kind(), value.len()) {
                (NHA_ID, 4) => id = Some(u32::from_ne_bytes(value[..4].try_into().ok()?)),
                (NHA_OIF, 4) => oif = Some(u32::from_ne_bytes(value[..4].try_into().ok()?)),
                (NHA_GATEWAY, 4) => {
                    gateway = Some(IpAddr::V4(Ipv4Addr::from(
                        <[u8; 4]>::try_from(&value[..]).ok()?,
                    )))
                }
                (NHA_GATEWAY, 16) => {
                    gateway = Some(IpAddr::V6(Ipv6Addr::from(
                        <[u8; 16]>::try_from(&value[..]).ok()?,
                    )))
                }
                _ => {}
            }
        }
        Some(Nexthop {
            id: id?,
            gateway: gateway?,
            oif: oif?,
            onlink: self.flags & RTNH_F_ONLINK != 0,
        })
    }
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        NHMSG_LEN + self.nlas.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0; // scope: the kernel derives it
        buffer[2] = self.protocol;
        buffer[3] = 0;
        buffer[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        self.nlas.as_slice().emit(&mut buffer[NHMSG_LEN..]);
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = DecodeError;

    fn deserialize(
        header: &NetlinkHeader,
        payload: &[u8],
    ) -> std::result::Result<Self, DecodeError> {
        if payload.len() < NHMSG_LEN {
            return Err(DecodeError::from(
                "nexthop message shorter than struct nhmsg",
            ));
        }
        let mut nlas = Vec::new();
        for nla in NlasIterator::new(&payload[NHMSG_LEN..]) {
            let nla: NlaBuffer<&[u8]> = nla?;
            nlas.push(DefaultNla::parse(&nla)?);
        }
        Ok(NexthopMessage {
            kind: header.message_type,
            family: payload[0],
            protocol: payload[2],
            flags: u32::from_ne_bytes(payload[4..8].try_into().expect("four bytes")),
            nlas,
        })
    }
}

/// The namespace's netlink connection for nexthop messages.
#[derive(Clone)]
pub(crate) struct NexthopSocket {
    handle: netlink_proto::ConnectionHandle<NexthopMessage>,
    /// One dump at a time on this socket (the kernel refuses a second).
    pub(crate) dumps: Arc<Mutex<()>>,
}

impl NexthopSocket {
    /// A connection in the namespace of the calling thread, driven by the
    /// current tokio runtime (entered by the caller).
    pub(crate) fn open() -> std::io::Result<NexthopSocket> {
        let (conn, handle, _) = netlink_proto::new_connection::<NexthopMessage>(NETLINK_ROUTE)?;
        tokio::spawn(conn);
        Ok(NexthopSocket {
            handle,
            dumps: Arc::new(Mutex::new(())),
        })
    }

    pub(crate) async fn request(
        &self,
        msg: NexthopMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<NexthopMessage>> {
        let failed = |source| KernelError::Netlink {
            op: op.to_owned(),
            source,
        };
        let mut req =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.header.flags = NLM_F_REQUEST | flags;
        req.finalize();
        let mut answers = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|_| failed(rtnetlink::Error::RequestFailed))?;
        let mut out = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(failed(rtnetlink::Error::NetlinkError(e)))
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: &NexthopMessage) -> NexthopMessage {
        let mut buf = vec![0; NetlinkSerializable::buffer_len(msg)];
        msg.serialize(&mut buf);
        let mut header = NetlinkHeader::default();
        header.message_type = msg.kind;
        NexthopMessage::deserialize(&header, &buf).unwrap()
    }

    #[test]
    fn a_nexthop_survives_encoding() {
        for nh in [
            Nexthop {
                id: u32::from(Ipv4Addr::new(10, 244, 3, 0)),
                gateway: "10.244.3.0".parse().unwrap(),
                oif: 7,
                onlink: true,
            },
            Nexthop {
                id: 9,
                gateway: "fd10:244::".parse().unwrap(),
                oif: 2,
                onlink: false,
            },
        ] {
            let msg = NexthopMessage::create(&nh);
            assert_eq!(msg.kind, RTM_NEWNEXTHOP);
            assert_eq!(round_trip(&msg).nexthop(), Some(nh));
        }
    }

    #[test]
    fn the_header_is_struct_nhmsg() {
        let nh = Nexthop {
            id: 1,
            gateway: "10.0.0.1".parse().unwrap(),
            oif: 3,
            onlink: true,
        };
        let msg = NexthopMessage::create(&nh);
        let mut buf = vec![0; NetlinkSerializable::buffer_len(&msg)];
        msg.serialize(&mut buf);
        // family AF_INET, scope 0, protocol static, reserved 0, flags onlink
        assert_eq!(&buf[..4], &[AF_INET, 0, RTPROT_STATIC, 0]);
        assert_eq!(
            u32::from_ne_bytes(buf[4..8].try_into().unwrap()),
            RTNH_F_ONLINK
        );
        // NHA_ID, NHA_OIF (8 bytes each), NHA_GATEWAY (4 + 4)
        assert_eq!(buf.len(), NHMSG_LEN + 8 + 8 + 8);
    }

    #[test]
    fn groups_and_short_messages_are_not_nexthops() {
        let group = NexthopMessage::new(RTM_NEWNEXTHOP).with_u32(NHA_ID, 5);
        assert_eq!(round_trip(&group).nexthop(), None);
        let header = NetlinkHeader::default();
        assert!(NexthopMessage::deserialize(&header, &[0; 4]).is_err());
    }
}
