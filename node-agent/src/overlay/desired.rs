//! What the kernel should hold for the remote nodes: from the node records
//! in etcd, minus this node and records that would break the overlay.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use trellis_kernel::MacAddr;

/// A remote node as the overlay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its IPv4 subnet and VTEP address (none in an IPv6-only cluster).
    pub ipv4: Option<Remote4>,
    pub vtep_mac: MacAddr,
    /// Its underlay address: where the VXLAN packets are sent (of this
    /// node's underlay family).
    pub public_ip: IpAddr,
    /// Its IPv6 subnet and VTEP address in a dual-stack or IPv6-only
    /// cluster.
    pub ipv6: Option<Remote6>,
}

/// The IPv4 side of a remote node: its subnet, and the address of its
/// VXLAN device (the subnet's network address, as in flannel): the gateway
/// our route to its subnet goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote4 {
    pub subnet: Ipv4Network,
    pub vtep_ip: Ipv4Addr,
}

/// The IPv6 side of a remote node: its subnet, and the address of its
/// VXLAN device in it (the subnet's network address, as flannel's IPv6
/// VXLAN has it), through which our route to the subnet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote6 {
    pub subnet: Ipv6Network,
    pub vtep_ip: Ipv6Addr,
}

/// The desired overlay entries, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredOverlay {
    pub nodes: BTreeMap<String, RemoteNode>,
}

/// A change of the desired overlay, as the registry sends it to the
/// reconciler: each leaves a state in which MACs, VTEP addresses and
/// subnets are distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayUpdate {
    /// The whole state: after a listing, or after a change that altered
    /// which records are left out.
    Replace(DesiredOverlay),
    /// A node joined or changed.
    Set(String, RemoteNode),
    /// A node left (or its record became unusable).
    Remove(String),
}

impl RemoteNode {
    /// The VTEP address of its first family: the IPv4 one, else (IPv6-only)
    /// the IPv6 one. Admission lets in no node without a subnet.
    pub fn first_vtep_ip(&self) -> IpAddr {
        match (self.ipv4, self.ipv6) {
            (Some(v4), _) => IpAddr::V4(v4.vtep_ip),
            (None, Some(v6)) => IpAddr::V6(v6.vtep_ip),
            (None, None) => unreachable!("an admitted node has a subnet of some family"),
        }
    }
}

impl Remote4 {
    /// The IPv4 side of the node holding `subnet`: its VXLAN device holds
    /// the subnet's network address.
    pub fn of(subnet: Ipv4Network) -> Remote4 {
        Remote4 {
            subnet,
            vtep_ip: subnet.network(),
        }
    }
}

impl Remote6 {
    /// The IPv6 side of the node holding `subnet`: its VXLAN device holds
    /// the subnet's network address.
    pub fn of(subnet: Ipv6Network) -> Remote6 {
        Remote6 {
            subnet,
            vtep_ip: subnet.network(),
        }
    }
}

impl DesiredOverlay {
    /// What differs from `self` (the state programmed last) to `new`: the
    /// old entries of nodes that changed or left, and the new entries of
    /// nodes that changed or joined. Planning the second against the
    /// kernel state of the first touches only those nodes; nothing else can
    /// collide with them, since each state alone has distinct MACs, VTEP
    /// addresses and subnets. One walk over both (sorted) maps.
    pub fn delta(&self, new: &DesiredOverlay) -> (DesiredOverlay, DesiredOverlay) {
        let (mut was, mut now) = (DesiredOverlay::default(), DesiredOverlay::default());
        let mut old = self.nodes.iter().peekable();
        let mut new = new.nodes.iter().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some((o, _)), Some((n, _))) if o == n => {
                    let ((name, a), (_, b)) = (old.next().unwrap(), new.next().unwrap());
                    if a != b {
                        was.nodes.insert(name.clone(), *a);
                        now.nodes.insert(name.clone(), *b);
                    }
                }
                (Some((o, _)), Some((n, _))) if o > n => {
                    let (name, b) = new.next().unwrap();
                    now.nodes.insert(name.clone(), *b);
                }
                (Some(_), _) => {
                    let (name, a) = old.next().unwrap();
                    was.nodes.insert(name.clone(), *a);
                }
                (None, Some(_)) => {
                    let (name, b) = new.next().unwrap();
                    now.nodes.insert(name.clone(), *b);
                }
            }
        }
        (was, now)
    }

    /// Apply `update`; the names it touched, each with what it was before
    /// (a name may come twice).
    pub fn apply(&mut self, update: OverlayUpdate) -> Vec<(String, Option<RemoteNode>)> {
        match update {
            OverlayUpdate::Replace(new) => {
                let (was, now) = self.delta(&new);
                let touched = was
                    .nodes
                    .into_keys()
                    .chain(now.nodes.into_keys())
                    .map(|name| {
                        let before = self.nodes.get(&name).copied();
                        (name, before)
                    })
                    .collect();
                *self = new;
                touched
            }
            OverlayUpdate::Set(name, node) => {
                let before = self.nodes.insert(name.clone(), node);
                vec![(name, before)]
            }
            OverlayUpdate::Remove(name) => match self.nodes.remove(&name) {
                Some(before) => vec![(name, Some(before))],
                None => Vec::new(),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delta_holds_the_changed_joined_and_departed_nodes() {
        let node = |i: u8, public: u8| RemoteNode {
            ipv4: Some(Remote4::of(format!("10.244.{i}.0/24").parse().unwrap())),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, i]),
            public_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, public)),
            ipv6: None,
        };
        let of = |nodes: &[(u8, u8)]| DesiredOverlay {
            nodes: nodes
                .iter()
                .map(|(i, p)| (format!("n{i}"), node(*i, *p)))
                .collect(),
        };
        // n1 stays, n2 moves, n3 leaves, n4 joins, n0 joins before all.
        let old = of(&[(1, 1), (2, 2), (3, 3)]);
        let new = of(&[(0, 9), (1, 1), (2, 20), (4, 4)]);
        let (was, now) = old.delta(&new);
        assert_eq!(was, of(&[(2, 2), (3, 3)]));
        assert_eq!(now, of(&[(0, 9), (2, 20), (4, 4)]));
        let (was, now) = new.delta(&new);
        assert!(was.is_empty() && now.is_empty());
        let (was, now) = DesiredOverlay::default().delta(&old);
        assert_eq!((was, now), (DesiredOverlay::default(), old));
    }
}
