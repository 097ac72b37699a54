//! Nexthop objects (`ip nexthop`, Linux 5.3 and later): a gateway on a
//! device, kept once and referred to by id from routes (`nhid`). The
//! overlay routes remote subnets through them because the kernel inserts a
//! route with a nexthop id in constant time, where routes that each carry
//! their own gateway on one device all fall into one bucket of the kernel's
//! route-info hash (it does not hash the gateway): 10,000 such routes take
//! seconds, the same through nexthop objects a fraction of one.
//!
//! netlink-packet-route (0.34) has no nexthop messages: `nexthop_socket`
//! encodes them and holds the connection they go over.

use crate::error::Result;
use crate::handle::Netlink;
use crate::link::absent;
pub use crate::nexthop_socket::Nexthop;
use crate::nexthop_socket::{NexthopMessage, NHA_ID, NHA_OIF, RTM_DELNEXTHOP, RTM_GETNEXTHOP};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};

impl Netlink {
    /// The nexthops on device `ifindex` (one dump, filtered by the kernel).
    /// An error that [`KernelError::is_unsupported`] means the kernel has no
    /// nexthop objects (before 5.3).
    ///
    /// [`KernelError::is_unsupported`]: crate::KernelError::is_unsupported
    pub async fn nexthops_on_device(&self, ifindex: u32) -> Result<Vec<Nexthop>> {
        let nh = self.nexthop_socket();
        let _turn = nh.dumps.lock().await;
        let answers = nh
            .request(
                NexthopMessage::new(RTM_GETNEXTHOP).with_u32(NHA_OIF, ifindex),
                NLM_F_DUMP,
                "dumping nexthops",
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(NexthopMessage::nexthop)
            .filter(|n| n.oif == ifindex)
            .collect())
    }

    /// Make `nh`, or replace the nexthop with its id (`ip nexthop replace`):
    /// the routes using that id follow it.
    pub async fn replace_nexthop(&self, nh: &Nexthop) -> Result<()> {
        self.nexthop_socket()
            .request(
                NexthopMessage::create(nh),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                &format!("setting nexthop {} via {}", nh.id, nh.gateway),
            )
            .await
            .map(drop)
    }

    /// Remove nexthop `id` and with it every route that uses it; one
    /// already gone is not an error.
    pub async fn delete_nexthop(&self, id: u32) -> Result<()> {
        let r = self
            .nexthop_socket()
            .request(
                NexthopMessage::new(RTM_DELNEXTHOP).with_u32(NHA_ID, id),
                NLM_F_ACK,
                &format!("deleting nexthop {id}"),
            )
            .await;
        absent(r)?;
        Ok(())
    }
}
