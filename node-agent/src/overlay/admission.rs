//! Which node records may join the overlay: the checks a record passes
//! (inside the cluster network, no overlap with this node's subnet or an
//! admitted one, a MAC of its own, an IPv4 underlay) and the indexes they
//! need, kept as records come and go so that one record is checked in
//! O(log n) however large the cluster.

use super::desired::{vtep_ip_of, DesiredOverlay, Remote6, RemoteNode};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, HashMap};
use trellis_common::node::NodeRecord;
use trellis_kernel::MacAddr;

/// Who is looking: this node, its subnets and the cluster networks (the
/// IPv6 ones in a dual-stack cluster).
#[derive(Debug, Clone)]
pub struct LocalView {
    pub node: String,
    pub subnet: Ipv4Network,
    pub network: Ipv4Network,
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
        let (subnet, network) = (rec.subnet, self.view.network);
        if subnet.network() != subnet.ip() || !network.contains(subnet.network()) {
            return Err(format!(
                "node {name}: subnet {subnet} is not a subnet of the cluster network {network}; ignored"
            ));
        }
        if let Some(own) = Some(self.view.subnet).filter(|own| overlaps(*own, subnet)) {
            return Err(format!(
                "node {name}: subnet {subnet} overlaps this node's {own}; ignored"
            ));
        }
        if let Some((other, other_name)) = self.overlapping(subnet) {
            return Err(format!(
                "node {name}: subnet {subnet} overlaps {other} of node {other_name}; ignored"
            ));
        }
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
        // A node of an IPv4-only view (an agent not yet restarted with the
        // cluster's new ipv6Network) keeps the IPv4 entries of dual-stack
        // nodes; a dual-stack one needs the IPv6 subnet to fit.
        let ipv6 = match (rec.ipv6_subnet, self.view.network6) {
            (Some(subnet6), Some(_)) => Some(self.check_ipv6(name, subnet6)?),
            _ => None,
        };
        let node = RemoteNode {
            subnet,
            vtep_ip: vtep_ip_of(subnet),
            vtep_mac,
            public_ip,
            ipv6,
        };
        self.subnets
            .insert(u32::from(subnet.network()), (subnet, name.to_string()));
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
        self.subnets.remove(&u32::from(node.subnet.network()));
        if let Some(v6) = node.ipv6 {
            self.subnets6.remove(&v6.subnet);
        }
        self.macs.remove(&node.vtep_mac);
        Some(node)
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
        Ok(Remote6 {
            subnet: subnet6,
            vtep_ip: subnet6.network(),
        })
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
mod tests {
    use super::*;

    /// Node "a" holding 10.244.1.0/24 of 10.244.0.0/16, IPv4 only.
    pub(crate) fn view_of_a() -> LocalView {
        LocalView {
            node: "a".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            network: "10.244.0.0/16".parse().unwrap(),
            subnet6: None,
            network6: None,
            underlay_v6: false,
        }
    }

    fn rec(subnet: &str, ip: &str, mac: &str) -> NodeRecord {
        NodeRecord {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: mac.into(),
            network: None,
            mtu: None,
            node_name: None,
            kubernetes: false,
            status_addr: None,
            dns: false,
            ipv6_subnet: None,
            ipv6_network: None,
            bridge: None,
        }
    }

    #[test]
    fn a_removed_node_frees_its_subnet_and_mac() {
        let mut a = Admission::new(&view_of_a());
        let b = rec("10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02");
        assert!(a.admit("b", &b).unwrap().is_some());
        let err = a.admit("c", &b).unwrap_err();
        assert!(err.contains("overlaps 10.244.2.0/24 of node b"), "{err}");
        assert_eq!(a.remove("b").unwrap().subnet, b.subnet);
        assert!(a.remove("b").is_none());
        assert!(a.admit("c", &b).unwrap().is_some());
        assert_eq!(a.desired().nodes.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(a.admit("a", &b), Ok(None), "this node is never an entry");
    }

    /// Node records by name, from (name, subnet, public IP, VTEP MAC) rows.
    fn records(rows: &[(&str, &str, &str, &str)]) -> BTreeMap<String, NodeRecord> {
        rows.iter()
            .map(|(name, subnet, ip, mac)| {
                let record = NodeRecord {
                    subnet: subnet.parse().unwrap(),
                    public_ip: ip.parse().unwrap(),
                    vtep_mac: (*mac).into(),
                    network: None,
                    mtu: None,
                    node_name: None,
                    kubernetes: false,
                    status_addr: None,
                    dns: false,
                    ipv6_subnet: None,
                    ipv6_network: None,
                    bridge: None,
                };
                (name.to_string(), record)
            })
            .collect()
    }

    #[test]
    fn remote_nodes_become_entries_and_self_is_skipped() {
        let records = records(&[
            ("a", "10.244.1.0/24", "192.0.2.1", "02:00:00:00:00:01"),
            ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
        ]);
        let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &records);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(d.len(), 1);
        let b = d.nodes["b"];
        assert_eq!(b.vtep_ip.to_string(), "10.244.2.0");
        assert_eq!(b.public_ip.to_string(), "192.0.2.2");
        assert_eq!(b.vtep_mac.to_string(), "02:00:00:00:00:02");
    }

    #[test]
    fn records_that_would_break_the_overlay_are_left_out() {
        let records = records(&[
            ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
            (
                "c-outside",
                "10.99.0.0/24",
                "192.0.2.3",
                "02:00:00:00:00:03",
            ),
            ("d-mine", "10.244.1.0/24", "192.0.2.4", "02:00:00:00:00:04"),
            (
                "e-dup-subnet",
                "10.244.2.0/24",
                "192.0.2.5",
                "02:00:00:00:00:05",
            ),
            (
                "f-dup-mac",
                "10.244.6.0/24",
                "192.0.2.6",
                "02:00:00:00:00:02",
            ),
            ("g-bad-mac", "10.244.7.0/24", "192.0.2.7", "nope"),
            ("h-v6", "10.244.8.0/24", "2001:db8::8", "02:00:00:00:00:08"),
            ("i-ok", "10.244.9.0/24", "192.0.2.9", "02:00:00:00:00:09"),
        ]);
        let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &records);
        assert_eq!(d.nodes.keys().collect::<Vec<_>>(), vec!["b", "i-ok"]);
        assert_eq!(warnings.len(), 6, "{warnings:#?}");
        assert!(warnings
            .iter()
            .any(|w| w.contains("overlaps this node's 10.244.1.0/24")));
        assert!(warnings.iter().any(|w| w.contains("already node b's")));
    }

    #[test]
    fn overlaps_of_other_sizes_are_caught() {
        let records = records(&[
            ("b", "10.244.4.0/24", "192.0.2.2", "02:00:00:00:00:02"),
            ("c-wide", "10.244.4.0/22", "192.0.2.3", "02:00:00:00:00:03"),
            (
                "d-inside",
                "10.244.4.128/25",
                "192.0.2.4",
                "02:00:00:00:00:04",
            ),
            ("e", "10.244.5.0/24", "192.0.2.5", "02:00:00:00:00:05"),
        ]);
        let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &records);
        assert_eq!(
            d.nodes.keys().collect::<Vec<_>>(),
            vec!["b", "e"],
            "{warnings:?}"
        );
    }

    #[test]
    fn ipv6_subnets_are_admitted_when_they_fit_and_are_distinct() {
        let view = LocalView {
            subnet6: Some("fd10:244:0:1::/64".parse().unwrap()),
            network6: Some("fd10:244::/56".parse().unwrap()),
            ..view_of_a()
        };
        let mut rows = records(&[
            ("b", "10.244.2.0/24", "192.0.2.2", "02:00:00:00:00:02"),
            ("c-dup6", "10.244.3.0/24", "192.0.2.3", "02:00:00:00:00:03"),
            ("d-mine6", "10.244.4.0/24", "192.0.2.4", "02:00:00:00:00:04"),
            (
                "e-outside6",
                "10.244.5.0/24",
                "192.0.2.5",
                "02:00:00:00:00:05",
            ),
            ("f-len", "10.244.6.0/24", "192.0.2.6", "02:00:00:00:00:06"),
            (
                "g-v4only",
                "10.244.7.0/24",
                "192.0.2.7",
                "02:00:00:00:00:07",
            ),
        ]);
        for (name, subnet6) in [
            ("b", "fd10:244:0:2::/64"),
            ("c-dup6", "fd10:244:0:2::/64"),
            ("d-mine6", "fd10:244:0:1::/64"),
            ("e-outside6", "fd99::/64"),
            ("f-len", "fd10:244:0:6::/80"),
        ] {
            rows.get_mut(name).unwrap().ipv6_subnet = Some(subnet6.parse().unwrap());
        }
        let (d, warnings) = DesiredOverlay::from_records(&view, &rows);
        assert_eq!(
            d.nodes.keys().collect::<Vec<_>>(),
            ["b", "g-v4only"],
            "{warnings:#?}"
        );
        let b6 = d.nodes["b"].ipv6.unwrap();
        assert_eq!(b6.vtep_ip.to_string(), "fd10:244:0:2::");
        assert_eq!(d.nodes["g-v4only"].ipv6, None);
        for want in [
            "ipv6Subnet fd10:244:0:2::/64 is already node b's",
            "ipv6Subnet fd10:244:0:1::/64 is this node's",
            "ipv6Subnet fd99::/64 is not a /64 subnet",
            "ipv6Subnet fd10:244:0:6::/80 is not a /64 subnet",
        ] {
            assert!(
                warnings.iter().any(|w| w.contains(want)),
                "{want}: {warnings:#?}"
            );
        }
        // An IPv4-only node (not yet restarted with the new ipv6Network)
        // keeps every node's IPv4 entries.
        let (d, warnings) = DesiredOverlay::from_records(&view_of_a(), &rows);
        assert_eq!(d.len(), 6, "{warnings:#?}");
        assert!(d.nodes.values().all(|n| n.ipv6.is_none()));
    }

    #[test]
    fn an_ipv6_underlay_admits_ipv6_public_ips_only() {
        let view = LocalView {
            underlay_v6: true,
            ..view_of_a()
        };
        let rows = records(&[
            ("b", "10.244.2.0/24", "2001:db8:2::2", "02:00:00:00:00:02"),
            ("c-v4", "10.244.3.0/24", "192.0.2.3", "02:00:00:00:00:03"),
        ]);
        let (d, warnings) = DesiredOverlay::from_records(&view, &rows);
        assert_eq!(d.nodes.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(d.nodes["b"].public_ip.to_string(), "2001:db8:2::2");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains(
                "node c-v4: public IP 192.0.2.3 is IPv4, but this node a has an IPv6 underlay"
            ),
            "{warnings:?}"
        );
    }
}
