//! Routes to remote node subnets through the overlay device, in the main
//! table: `<subnet> nhid <id>` through a nexthop object on the device (see
//! `nexthop`) or, on kernels without those, `<subnet> via <gateway> dev
//! <vxlan> onlink`; read and written as the one [`Route`] type.

use crate::error::{KernelError, Result};
use crate::link::absent;
use crate::route::{Route, MAIN_TABLE};
use crate::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
use rtnetlink::RouteMessageBuilder;
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

impl Netlink {
    /// The unicast routes (IPv4, then IPv6) of the main table that leave through
    /// one of `devices` or through one of `nexthops` (the devices' nexthop
    /// objects: a route through one carries no device when the kernel's
    /// `nexthop_compat_mode` is off), from one dump; routes the kernel made
    /// itself are left out.
    pub async fn routes_on_devices(
        &self,
        devices: &[u32],
        nexthops: &HashSet<u32>,
    ) -> Result<Vec<Route>> {
        let _turn = self.dump_turn().await;
        let mut out = Vec::new();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut dump = self.handle().route().get(query).execute();
            while let Some(msg) = dump
                .try_next()
                .await
                .map_err(KernelError::netlink("dumping routes"))?
            {
                if msg.header.protocol == RouteProtocol::Kernel
                    || msg.header.kind != RouteType::Unicast
                {
                    continue;
                }
                out.extend(Route::from_message(&msg).filter(|r| {
                    r.table == MAIN_TABLE
                        && (r.oif.is_some_and(|oif| devices.contains(&oif))
                            || r.nexthop.is_some_and(|id| nexthops.contains(&id)))
                }));
            }
        }
        Ok(out)
    }

    /// Add or replace `route` (`ip route replace`): whatever the table
    /// held to its destination (and metric) becomes this.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.handle()
            .route()
            .add(route.message())
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!("setting route {}", route.dst)))
    }

    /// Remove `route` as found by [`Netlink::routes_on_devices`], whoever
    /// made it (any protocol, scope and type, as `ip route del` matches); a
    /// route already gone is not an error.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        let mut msg = route.message();
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        let r = self.handle().route().del(msg).execute().await;
        absent(r.map_err(KernelError::netlink(format!(
            "deleting route {}",
            route.dst
        ))))?;
        Ok(())
    }
}
