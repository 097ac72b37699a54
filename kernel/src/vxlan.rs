//! The node's VXLAN device (the VTEP): created once with the cluster's VNI
//! and port, kept across agent restarts when its settings still match, so
//! that the entries programmed on it (and the pods' traffic) survive.

use crate::error::{KernelError, Result};
use crate::link::absent;
use crate::mac::MacAddr;
use crate::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::net::Ipv4Addr;

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (8472 is the Linux and flannel default).
    pub port: u16,
    /// Source address of the encapsulated packets: the node's public IP.
    pub local: Ipv4Addr,
    /// Underlay device the tunnel is bound to.
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: MacAddr,
}

/// A VXLAN device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub underlay_index: Option<u32>,
    pub learning: Option<bool>,
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

impl VxlanDevice {
    /// Whether the tunnel settings that cannot be changed in place match.
    pub fn tunnel_matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == Some(spec.vni)
            && self.port == Some(spec.port)
            && self.local == Some(spec.local)
            && self.underlay_index == Some(spec.underlay_index)
            && self.learning == Some(false)
    }

    fn from_message(msg: &LinkMessage) -> Option<VxlanDevice> {
        let mut dev = VxlanDevice {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            vni: None,
            port: None,
            local: None,
            underlay_index: None,
            learning: None,
        };
        let mut is_vxlan = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => dev.name = n.clone(),
                LinkAttribute::Address(a) => dev.mac = MacAddr::from_slice(a),
                LinkAttribute::Mtu(m) => dev.mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                            LinkInfo::Data(InfoData::Vxlan(data)) => {
                                for d in data {
                                    match d {
                                        InfoVxlan::Id(v) => dev.vni = Some(*v),
                                        InfoVxlan::Port(p) => dev.port = Some(*p),
                                        InfoVxlan::Local(l) => dev.local = Some(*l),
                                        InfoVxlan::Link(i) => dev.underlay_index = Some(*i),
                                        InfoVxlan::Learning(l) => dev.learning = Some(*l),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        is_vxlan.then_some(dev)
    }
}

impl Netlink {
    /// The VXLAN device called `name`; `Ok(None)` when no link has that name.
    /// A link of another kind with that name is an error: it is not ours.
    pub async fn vxlan_device(&self, name: &str) -> Result<Option<VxlanDevice>> {
        let r = self
            .handle()
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(KernelError::netlink(format!("looking up link {name}")));
        let Some(msg) = absent(r)?.flatten() else {
            return Ok(None);
        };
        match VxlanDevice::from_message(&msg) {
            Some(dev) => Ok(Some(dev)),
            None => Err(KernelError::Io {
                op: format!("link {name}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a VXLAN device",
                ),
            }),
        }
    }

    /// Every VXLAN device of the namespace.
    pub async fn vxlan_devices(&self) -> Result<Vec<VxlanDevice>> {
        let mut dump = self.handle().link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(KernelError::netlink("listing links"))?
        {
            out.extend(VxlanDevice::from_message(&msg));
        }
        Ok(out)
    }

    /// Make the VXLAN device match `spec`: create it when absent, replace it
    /// when its tunnel settings differ, otherwise fix MTU, MAC and state in
    /// place (which keeps every FDB, neighbour and route entry on it).
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(VxlanDevice, VxlanChange)> {
        let mut change = VxlanChange::Created;
        if let Some(dev) = self.vxlan_device(&spec.name).await? {
            if dev.tunnel_matches(spec) {
                if dev.mtu != Some(spec.mtu) || dev.mac != Some(spec.mac) || !dev.up {
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
                let dev = VxlanDevice {
                    mtu: Some(spec.mtu),
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
            self.delete_vxlan_device(&dev).await?;
            change = VxlanChange::Recreated;
        }
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay_index)
            .port(spec.port)
            .local(spec.local)
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

    /// Delete the VXLAN device `dev` (and with it every entry on it), as
    /// found by [`Netlink::vxlan_device`] or [`Netlink::vxlan_devices`],
    /// without looking it up again; `false` when it was gone already.
    pub async fn delete_vxlan_device(&self, dev: &VxlanDevice) -> Result<bool> {
        let r = self.handle().link().del(dev.index).execute().await;
        let r = r.map_err(KernelError::netlink(format!("deleting {}", dev.name)));
        Ok(absent(r)?.is_some())
    }
}
