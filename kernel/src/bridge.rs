//! The node bridge: switch and gateway for the containers of a node.

use crate::error::{KernelError, Result};
use crate::handle::Netlink;
use crate::link::Link;
use crate::mac::MacAddr;
use netlink_packet_route::link::InfoBridgePort;
use rtnetlink::{LinkBridge, LinkBridgePort};

impl Netlink {
    /// Make sure the bridge `name` exists and is up, and return it.
    ///
    /// A new bridge gets `mtu` (when given) and a fixed random MAC, so that
    /// its address does not follow its ports as they come and go (which
    /// would invalidate the containers' ARP entry for the gateway). Safe
    /// against concurrent callers: when another process creates the bridge
    /// first, its bridge is used. An existing link of another kind under the
    /// name is [`KernelError::WrongKind`]. An existing bridge is used as it
    /// is (its MTU is not changed).
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        if let Some(link) = self.link_by_name(name).await? {
            return self.adopt_bridge(link).await;
        }
        let mut msg = LinkBridge::new(name).address(random_mac()?.0.to_vec());
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        match self.handle().link().add(msg.build()).execute().await {
            Ok(()) => log::info!("created bridge {name}"),
            Err(e) => {
                let e = KernelError::netlink(format!("creating bridge {name}"))(e);
                if !e.is_exists() {
                    return Err(e);
                }
            }
        }
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| KernelError::NotFound(format!("bridge {name} after creating it")))?;
        self.adopt_bridge(link).await
    }

    async fn adopt_bridge(&self, link: Link) -> Result<Link> {
        if !link.is_kind("bridge") {
            return Err(KernelError::WrongKind {
                name: link.name.clone(),
                expected: "bridge",
                found: link.kind.clone().unwrap_or_else(|| "device".into()),
            });
        }
        if !link.up {
            self.set_link_up(link.index).await?;
            return Ok(Link { up: true, ..link });
        }
        Ok(link)
    }

    /// Turn hairpin mode of the bridge port `port` on or off: with it on, a
    /// container can reach itself through a service address that the node
    /// translates back to it.
    pub async fn set_bridge_port_hairpin(&self, port: u32, on: bool) -> Result<()> {
        self.handle()
            .link()
            .set_port(
                LinkBridgePort::new(port)
                    .append_info_data(InfoBridgePort::HairpinMode(on))
                    .build(),
            )
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "setting hairpin {} on bridge port #{port}",
                if on { "on" } else { "off" }
            )))
    }

    /// Whether hairpin mode is on for the bridge port `port` (`None` when
    /// the link is not a bridge port).
    pub async fn bridge_port_hairpin(&self, port: u32) -> Result<Option<bool>> {
        use futures::TryStreamExt;
        use netlink_packet_route::link::{InfoPortData, LinkAttribute, LinkInfo};
        let msg = self
            .handle()
            .link()
            .get()
            .match_index(port)
            .execute()
            .try_next()
            .await
            .map_err(KernelError::netlink(format!(
                "looking up bridge port #{port}"
            )))?;
        let Some(msg) = msg else { return Ok(None) };
        for attr in &msg.attributes {
            let LinkAttribute::LinkInfo(infos) = attr else {
                continue;
            };
            for info in infos {
                if let LinkInfo::PortData(InfoPortData::BridgePort(opts)) = info {
                    for opt in opts {
                        if let InfoBridgePort::HairpinMode(on) = opt {
                            return Ok(Some(*on));
                        }
                    }
                }
            }
        }
        Ok(None)
    }
}

/// A random, locally administered, unicast address.
pub fn random_mac() -> Result<MacAddr> {
    use std::io::Read;
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(KernelError::io("reading /dev/urandom"))?;
    bytes[0] = (bytes[0] & 0xfe) | 0x02;
    Ok(MacAddr(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..32 {
            let m = random_mac().unwrap();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
        assert_ne!(random_mac().unwrap(), random_mac().unwrap());
    }
}
