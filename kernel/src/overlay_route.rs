//! Routes to remote node subnets through the overlay device:
//! `<subnet> via <gateway> dev <vxlan> onlink`, in the main table.

use crate::error::{KernelError, Result};
use crate::link::absent;
use crate::Netlink;
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::RouteMessageBuilder;
use std::net::Ipv4Addr;

/// An IPv4 route found on a device (kernel-made routes excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRoute {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub onlink: bool,
    /// The route's priority (`metric`); 0 when unset.
    pub metric: u32,
}

fn device_route_of(msg: &RouteMessage, ifindex: u32) -> Option<DeviceRoute> {
    let mut table = u32::from(msg.header.table);
    let mut oif = None;
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut metric = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || oif != Some(ifindex)
        || msg.header.protocol == RouteProtocol::Kernel
        || msg.header.kind != RouteType::Unicast
    {
        return None;
    }
    let dst = Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(DeviceRoute {
        dst,
        gateway,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        metric,
    })
}

impl Netlink {
    /// The unicast IPv4 routes of the main table that leave through
    /// `ifindex`, from one dump; routes the kernel made itself are left out.
    pub async fn routes_on_device(&self, ifindex: u32) -> Result<Vec<DeviceRoute>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle().route().get(query).execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(KernelError::netlink("dumping routes"))?
        {
            out.extend(device_route_of(&msg, ifindex));
        }
        Ok(out)
    }

    /// Set `dst via gateway dev ifindex onlink`, replacing any main-table
    /// route to `dst`.
    pub async fn onlink_route_replace(
        &self,
        ifindex: u32,
        dst: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gateway)
            .output_interface(ifindex)
            .onlink()
            .build();
        self.handle()
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding route {dst} via {gateway} onlink"
            )))
    }

    /// Remove `route` (found on `ifindex` by [`Netlink::routes_on_device`]),
    /// whoever made it; a route already gone is not an error.
    pub async fn device_route_delete(&self, ifindex: u32, route: &DeviceRoute) -> Result<()> {
        let dst = route.dst;
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(ifindex);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        if route.metric != 0 {
            builder = builder.priority(route.metric);
        }
        let mut msg = builder.build();
        // Match any protocol, scope and type, as `ip route del` does.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        let r = self.handle().route().del(msg).execute().await;
        absent(r.map_err(KernelError::netlink(format!("deleting route {dst}"))))?;
        Ok(())
    }
}
