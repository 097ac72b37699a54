//! The node's VXLAN device (the VTEP): created once with the cluster's VNI
//! and port, kept across agent restarts when its settings still match, so
//! that the entries programmed on it (and the pods' traffic) survive.

use crate::error::{KernelError, Result};
use crate::link::Link;
use crate::mac::MacAddr;
use crate::Netlink;
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::net::IpAddr;

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (8472 is the Linux and flannel default).
    pub port: u16,
    /// Source address of the encapsulated packets: the node's public IP
    /// (IPv4 or IPv6: VXLAN over an IPv6 underlay).
    pub local: IpAddr,
    /// Underlay device the tunnel is bound to.
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: MacAddr,
}

/// What `ensure_vxlan` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VxlanChange {
    /// The device existed with the right settings (MTU, MAC, up fixed in place).
    Kept,
    Created,
    /// The device existed with other tunnel settings and was replaced; every
    /// entry on it is gone and must be programmed again.
    Recreated,
}

impl VxlanSpec {
    /// Whether `link`'s tunnel settings, which cannot be changed in place,
    /// are these.
    pub fn tunnel_matches(&self, link: &Link) -> bool {
        link.vxlan.as_ref().is_some_and(|v| {
            v.vni == Some(self.vni)
                && v.port == Some(self.port)
                && v.local == Some(self.local)
                && v.underlay_index == Some(self.underlay_index)
                && v.learning == Some(false)
        })
    }
}

impl Netlink {
    /// The VXLAN device called `name`; `Ok(None)` when no link has that name.
    /// A link of another kind with that name is an error: it is not ours.
    pub async fn vxlan_device(&self, name: &str) -> Result<Option<Link>> {
        match self.link_by_name(name).await? {
            Some(link) if link.vxlan.is_some() => Ok(Some(link)),
            Some(_) => Err(KernelError::Io {
                op: format!("link {name}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a VXLAN device",
                ),
            }),
            None => Ok(None),
        }
    }

    /// Every VXLAN device of the namespace.
    pub async fn vxlan_devices(&self) -> Result<Vec<Link>> {
        let mut links = self.links().await?;
        links.retain(|l| l.vxlan.is_some());
        Ok(links)
    }

    /// Make the VXLAN device match `spec`: create it when absent, replace it
    /// when its tunnel settings differ, otherwise fix MTU, MAC and state in
    /// place (which keeps every FDB, neighbour and route entry on it).
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(Link, VxlanChange)> {
        let mut change = VxlanChange::Created;
        if let Some(dev) = self.vxlan_device(&spec.name).await? {
            if spec.tunnel_matches(&dev) {
                if dev.mtu != spec.mtu || dev.mac != Some(spec.mac) || !dev.up {
                    let msg = LinkUnspec::new_with_index(dev.index)
                        .mtu(spec.mtu)
                        .address(spec.mac.octets().to_vec())
                        .up()
                        .build();
                    self.handle()
                        .link()
                        .set(msg)
                        .execute()
                        .await
                        .map_err(KernelError::netlink(format!("updating {}", spec.name)))?;
                }
                // What the kernel holds now, without asking it again.
                let dev = Link {
                    mtu: spec.mtu,
                    mac: Some(spec.mac),
                    up: true,
                    ..dev
                };
                return Ok((dev, VxlanChange::Kept));
            }
            log::warn!(
                "VXLAN device {} has other tunnel settings ({dev:?}); replacing it",
                spec.name
            );
            self.delete_link(&dev).await?;
            change = VxlanChange::Recreated;
        }
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay_index)
            .port(spec.port);
        let msg = match spec.local {
            IpAddr::V4(v4) => msg.local(v4),
            IpAddr::V6(v6) => msg.local6(v6),
        };
        let msg = msg
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.octets().to_vec())
            .up()
            .build();
        self.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "creating VXLAN device {}",
                spec.name
            )))?;
        let dev = self
            .vxlan_device(&spec.name)
            .await?
            .ok_or_else(|| KernelError::NotFound(format!("VXLAN device {}", spec.name)))?;
        Ok((dev, change))
    }
}
