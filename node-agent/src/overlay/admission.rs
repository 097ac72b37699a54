//! Which node records may join the overlay: the checks a record passes
//! (inside the cluster network, no overlap with this node's subnet or an
//! admitted one, a MAC of its own, an IPv4 underlay) and the indexes they
//! need, kept as records come and go so that one record is checked in
//! O(log n) however large the cluster.

use super::desired::{DesiredOverlay, Remote4, Remote6, RemoteNode};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, HashMap};
use trellis_common::node::NodeRecord;
use trellis_kernel::MacAddr;

/// Who is looking: this node, its subnets and the cluster networks (the
/// IPv4 ones unless IPv6-only, the IPv6 ones in a dual-stack or IPv6-only
/// cluster).
#[derive(Debug, Clone)]
pub struct LocalView {
    pub node: String,
    pub subnet: Option<Ipv4Network>,
    pub network: Option<Ipv4Network>,
    pub subnet6: Option<Ipv6Network>,
    pub network6: Option<Ipv6Network>,
    /// This node's underlay is IPv6 (VXLAN over IPv6): every node's must be.
    pub underlay_v6: bool,
}

impl LocalView {
    /// The view from this node's devices `net`.
    pub fn of(net: &crate::node_network::NodeNetwork) -> LocalView {
        LocalView {
            node: net.node_name.clone(),
            subnet: net.subnet,
            network: net.network,
            subnet6: net.subnet6,
            network6: net.network6,
            underlay_v6: net.public_ip.is_ipv6(),
        }
    }
}

/// The admitted remote nodes as seen from one node, with their indexes.
#[derive(Debug, Clone)]
pub struct Admission {
    view: LocalView,
    admitted: DesiredOverlay,
    /// Admitted subnets by first address (they never overlap, so an
    /// overlap check looks at the two neighbours only).
    subnets: BTreeMap<u32, (Ipv4Network, String)>,
    /// Admitted IPv6 subnets: all of this node's length inside the IPv6
    /// network, so two overlap only when they are equal.
    subnets6: HashMap<Ipv6Network, String>,
    macs: HashMap<MacAddr, String>,
}

impl Admission {
    /// Nothing admitted yet, seen from `view`.
    pub fn new(view: &LocalView) -> Self {
        Admission {
            view: view.clone(),
            admitted: DesiredOverlay::default(),
            subnets: BTreeMap::new(),
            subnets6: HashMap::new(),
            macs: HashMap::new(),
        }
    }

    /// `records` admitted in name order (the first by name keeps a
    /// contested subnet or MAC), with the reasons the others were not.
    pub fn of_records(
        view: &LocalView,
        records: &BTreeMap<String, NodeRecord>,
    ) -> (Admission, Vec<String>) {
        let mut admission = Admission::new(view);
        let warnings = records
            .iter()
            .filter_map(|(name, rec)| admission.admit(name, rec).err())
            .collect();
        (admission, warnings)
    }

    /// The remote nodes admitted so far.
    pub fn desired(&self) -> &DesiredOverlay {
        &self.admitted
    }

    pub fn into_desired(self) -> DesiredOverlay {
        self.admitted
    }

    /// Admit node `name` (not admitted now) with `rec`: `Ok(Some(node))`
    /// when it joins the overlay, `Ok(None)` for this node itself (never an
    /// overlay entry), and the reason, worded for the log, when it cannot.
    pub fn admit(&mut self, name: &str, rec: &NodeRecord) -> Result<Option<RemoteNode>, String> {
        debug_assert!(!self.admitted.nodes.contains_key(name));
        if name == self.view.node {
            return Ok(None);
        }
        // A node of an IPv4-only view (an agent not yet restarted with the
        // cluster's new ipv6Network) keeps the IPv4 entries of dual-stack
        // nodes; a dual-stack one needs the IPv6 subnet to fit. Each
        // family the view has needs the record's subnet of it.
        let ipv4 = match (rec.subnet, self.view.network) {
            (Some(subnet), Some(network)) => Some(self.check_ipv4(name, subnet, network)?),
            (None, Some(network)) => {
                return Err(format!(
                "node {name}: no IPv4 subnet, but the cluster network {network} is IPv4; ignored"
            ))
            }
            (_, None) => None,
        };
        let ipv6 = match (rec.ipv6_subnet, self.view.network6) {
            (Some(subnet6), Some(_)) => Some(self.check_ipv6(name, subnet6)?),
            (None, Some(network6)) if ipv4.is_none() => {
                return Err(format!(
                    "node {name}: no ipv6Subnet, but the cluster network {network6} is IPv6-only; ignored"
                ))
            }
            _ => None,
        };
        let vtep_mac: MacAddr = rec
            .vtep_mac
            .parse()
            .map_err(|e| format!("node {name}: {e}; ignored"))?;
        if let Some(other) = self.macs.get(&vtep_mac) {
            return Err(format!(
                "node {name}: VTEP MAC {vtep_mac} is already node {other}'s; ignored"
            ));
        }
        let public_ip = rec.public_ip;
        if public_ip.is_ipv6() != self.view.underlay_v6 {
            let family = |v6: bool| if v6 { "IPv6" } else { "IPv4" };
            return Err(format!(
                "node {name}: public IP {public_ip} is {}, but this node {} has an {} underlay: \
                 one VXLAN device cannot join mixed underlays; give every node a public IP of \
                 one family (--public-ip); ignored",
                family(public_ip.is_ipv6()),
                self.view.node,
                family(self.view.underlay_v6)
            ));
        }
        let node = RemoteNode {
            ipv4,
            vtep_mac,
            public_ip,
            ipv6,
        };
        if let Some(v4) = ipv4 {
            self.subnets.insert(
                u32::from(v4.subnet.network()),
                (v4.subnet, name.to_string()),
            );
        }
        if let Some(v6) = ipv6 {
            self.subnets6.insert(v6.subnet, name.to_string());
        }
        self.macs.insert(vtep_mac, name.to_string());
        self.admitted.nodes.insert(name.to_string(), node);
        Ok(Some(node))
    }

    /// Take node `name` out of the overlay; its entry, if it was admitted.
    pub fn remove(&mut self, name: &str) -> Option<RemoteNode> {
        let node = self.admitted.nodes.remove(name)?;
        if let Some(v4) = node.ipv4 {
            self.subnets.remove(&u32::from(v4.subnet.network()));
        }
        if let Some(v6) = node.ipv6 {
            self.subnets6.remove(&v6.subnet);
        }
        self.macs.remove(&node.vtep_mac);
        Some(node)
    }

    /// The IPv4 entries of a node publishing `subnet`: a subnet inside the
    /// cluster's network, overlapping neither this node's nor an admitted
    /// node's.
    fn check_ipv4(
        &self,
        name: &str,
        subnet: Ipv4Network,
        network: Ipv4Network,
    ) -> Result<Remote4, String> {
        if subnet.network() != subnet.ip() || !network.contains(subnet.network()) {
            return Err(format!(
                "node {name}: subnet {subnet} is not a subnet of the cluster network {network}; ignored"
            ));
        }
        if let Some(own) = self.view.subnet.filter(|own| overlaps(*own, subnet)) {
            return Err(format!(
                "node {name}: subnet {subnet} overlaps this node's {own}; ignored"
            ));
        }
        if let Some((other, other_name)) = self.overlapping(subnet) {
            return Err(format!(
                "node {name}: subnet {subnet} overlaps {other} of node {other_name}; ignored"
            ));
        }
        Ok(Remote4::of(subnet))
    }

    /// The IPv6 entries of a node publishing `subnet6`: a subnet of this
    /// node's length inside the cluster's IPv6 network, neither this node's
    /// nor an admitted node's.
    fn check_ipv6(&self, name: &str, subnet6: Ipv6Network) -> Result<Remote6, String> {
        let (Some(network6), Some(own6)) = (self.view.network6, self.view.subnet6) else {
            return Err(format!(
                "node {name}: ipv6Subnet {subnet6}, but this node has no IPv6 subnet; ignored"
            ));
        };
        if subnet6.network() != subnet6.ip()
            || subnet6.prefix() != own6.prefix()
            || !network6.contains(subnet6.network())
        {
            return Err(format!(
                "node {name}: ipv6Subnet {subnet6} is not a /{} subnet of the cluster's ipv6Network {network6}; ignored",
                own6.prefix()
            ));
        }
        if subnet6 == own6 {
            return Err(format!(
                "node {name}: ipv6Subnet {subnet6} is this node's; ignored"
            ));
        }
        if let Some(other) = self.subnets6.get(&subnet6) {
            return Err(format!(
                "node {name}: ipv6Subnet {subnet6} is already node {other}'s; ignored"
            ));
        }
        Ok(Remote6::of(subnet6))
    }

    fn overlapping(&self, subnet: Ipv4Network) -> Option<(Ipv4Network, &str)> {
        let start = u32::from(subnet.network());
        let before = self.subnets.range(..=start).next_back();
        let after = self.subnets.range(start..).next();
        before
            .into_iter()
            .chain(after)
            .map(|(_, (other, name))| (*other, name.as_str()))
            .find(|(other, _)| overlaps(*other, subnet))
    }
}

impl DesiredOverlay {
    /// The entries for `records` as seen from `view`. Records that cannot be programmed are
    /// left out with a warning: outside the network, overlapping this node
    /// or another node, a MAC or public IP already used by another node, an
    /// unparsable MAC, an IPv6 underlay.
    pub fn from_records(
        view: &LocalView,
        records: &BTreeMap<String, NodeRecord>,
    ) -> (DesiredOverlay, Vec<String>) {
        let (admission, warnings) = Admission::of_records(view, records);
        (admission.into_desired(), warnings)
    }
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests;
