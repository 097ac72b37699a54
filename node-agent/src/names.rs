//! The names of the cluster's containers, for the agent's DNS
//! ([`crate::dns`]). A name is the `"name"` of an allocation
//! (`<prefix>/ipam/ips/<ip>`, written with the address by trellis-ipam),
//! so a name lives exactly as long as its address: a DEL, leak reclaim, GC
//! or a dead node's reclaim that frees the address removes the name on
//! every node as the watch delivers the deletion. The table follows the
//! allocation keys ([`crate::etcd_follow`]).
//!
//! `NAME` answers the addresses of every container called NAME; `NAME.NET`
//! those of the containers called NAME on CNI network NET (the network's
//! domain). Two live containers of one name answer both addresses. A named
//! network's table ([`NameTable::for_network`]) holds its addresses only,
//! all in its domain.

use crate::etcd_follow::{Entry, Follower};
use ipnetwork::IpNetwork;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use trellis_common::keys::Keys;
use trellis_ipam::Owner;

/// What an address is called, on which network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    name: String,
    network: String,
}

/// Every named address of the served networks.
#[derive(Debug)]
pub struct NameTable {
    /// The pod networks whose addresses are served (the cluster's).
    served: Vec<IpNetwork>,
    /// A named network's table: every address is in its domain, whatever
    /// the CNI network name of the conflist that attached it.
    domain: Option<String>,
    /// True once a first listing is in: until then the table knows
    /// nothing, and an empty answer would be a lie (the DNS holds
    /// queries instead, [`NameTable::listing`]).
    listed: watch::Sender<bool>,
    by_address: HashMap<IpAddr, Named>,
    by_name: BTreeMap<String, BTreeSet<IpAddr>>,
    /// How many named addresses each network has: its domain is ours.
    networks: BTreeMap<String, usize>,
}

/// What a query for a name came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is ours: its addresses (possibly none of the asked family).
    Addresses(Vec<IpAddr>),
    /// The name is in one of our domains, and no container has it.
    NoSuchName,
    /// Not ours: for the upstream resolvers.
    NotOurs,
}

impl NameTable {
    pub fn new(served: Vec<IpNetwork>) -> Self {
        NameTable {
            served,
            domain: None,
            listed: watch::Sender::new(false),
            by_address: HashMap::new(),
            by_name: BTreeMap::new(),
            networks: BTreeMap::new(),
        }
    }

    /// The table of named network `name`, whose addresses are `served`:
    /// `NAME` and `NAME.<name>` answer its containers' addresses.
    pub fn for_network(served: Vec<IpNetwork>, name: &str) -> Self {
        NameTable {
            domain: Some(trellis_common::container_name::domain_of(name)),
            ..NameTable::new(served)
        }
    }

    /// Whether a first listing is in, and a way to wait for it.
    pub fn listing(&self) -> watch::Receiver<bool> {
        self.listed.subscribe()
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// Everything known before is forgotten: the listing is the state.
    pub fn replace(&mut self, entries: impl IntoIterator<Item = (IpAddr, Owner)>) {
        self.by_address.clear();
        self.by_name.clear();
        self.networks.clear();
        for (ip, owner) in entries {
            self.set(ip, &owner);
        }
        self.listed.send_replace(true);
    }

    /// The address `ip` is now `owner`'s (named or not).
    pub fn set(&mut self, ip: IpAddr, owner: &Owner) {
        self.remove(ip);
        if owner.name.is_empty() || !self.served.iter().any(|n| n.contains(ip)) {
            return;
        }
        // Names are stored lowercase (trellis-ipam writes them so; another
        // writer may not); the network's name becomes its domain.
        let named = Named {
            name: owner.name.to_ascii_lowercase(),
            network: match &self.domain {
                Some(domain) => domain.clone(),
                None => trellis_common::container_name::domain_of(&owner.network),
            },
        };
        self.by_name
            .entry(named.name.clone())
            .or_default()
            .insert(ip);
        *self.networks.entry(named.network.clone()).or_default() += 1;
        self.by_address.insert(ip, named);
    }

    /// The address `ip` is free.
    pub fn remove(&mut self, ip: IpAddr) {
        let Some(named) = self.by_address.remove(&ip) else {
            return;
        };
        if let Some(set) = self.by_name.get_mut(&named.name) {
            set.remove(&ip);
            if set.is_empty() {
                self.by_name.remove(&named.name);
            }
        }
        if let Some(count) = self.networks.get_mut(&named.network) {
            *count -= 1;
            if *count == 0 {
                self.networks.remove(&named.network);
            }
        }
    }

    /// Whether `network` is one of our domains: one with named addresses,
    /// or a named network's own (empty or not).
    fn is_domain(&self, network: &str) -> bool {
        self.networks.contains_key(network) || self.domain.as_deref() == Some(network)
    }

    /// `query` (lowercase, without the trailing dot): `NAME` or `NAME.NET`.
    pub fn lookup(&self, query: &str) -> Answer {
        let mut found: BTreeSet<IpAddr> = self.by_name.get(query).cloned().unwrap_or_default();
        let mut in_domain = false;
        for (dot, _) in query.match_indices('.') {
            let (name, network) = (&query[..dot], &query[dot + 1..]);
            if !self.is_domain(network) {
                continue;
            }
            in_domain = true;
            if let Some(ips) = self.by_name.get(name) {
                found.extend(
                    ips.iter()
                        .filter(|ip| self.by_address[ip].network == network),
                );
            }
        }
        if !found.is_empty() {
            Answer::Addresses(found.into_iter().collect())
        } else if in_domain || self.is_domain(query) {
            Answer::NoSuchName
        } else {
            Answer::NotOurs
        }
    }
}

/// The table as it follows `<prefix>/ipam/ips/`, shared with the DNS.
pub struct Following {
    pub keys: Keys,
    pub table: Arc<RwLock<NameTable>>,
}

fn owner_of(value: &[u8]) -> Option<Owner> {
    Owner::parse(value).ok()
}

impl Follower for Following {
    fn listed(&mut self, entries: Vec<Entry>, _revision: i64) -> bool {
        let keys = &self.keys;
        let entries = entries
            .into_iter()
            .filter_map(|e| Some((keys.address_of(&e.key)?, owner_of(&e.value)?)));
        let mut table = self.table.write().expect("name table lock");
        table.replace(entries);
        log::info!("names: {} named addresses", table.len());
        true
    }

    fn put(&mut self, entry: Entry) -> bool {
        if let Some(ip) = self.keys.address_of(&entry.key) {
            let mut table = self.table.write().expect("name table lock");
            match owner_of(&entry.value) {
                Some(owner) => table.set(ip, &owner),
                None => table.remove(ip),
            }
        }
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        if let Some(ip) = self.keys.address_of(key) {
            self.table.write().expect("name table lock").remove(ip);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str, network: &str) -> Owner {
        Owner {
            container_id: format!("c-{name}"),
            ifname: "eth0".into(),
            network: network.into(),
            name: name.into(),
            ..Owner::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> NameTable {
        NameTable::new(vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd10:244::/56".parse().unwrap(),
        ])
    }

    fn addrs(list: &[&str]) -> Answer {
        Answer::Addresses(list.iter().map(|s| ip(s)).collect())
    }

    #[test]
    fn names_answer_bare_and_in_their_networks_domain() {
        let mut t = table();
        t.set(ip("10.244.1.2"), &owner("host1", "trellis"));
        t.set(ip("fd10:244:0:1::2"), &owner("host1", "trellis"));
        t.set(ip("10.244.2.2"), &owner("host2", "trellis"));
        assert_eq!(t.lookup("host1"), addrs(&["10.244.1.2", "fd10:244:0:1::2"]));
        assert_eq!(t.lookup("host2.trellis"), addrs(&["10.244.2.2"]));
        assert_eq!(t.lookup("host3.trellis"), Answer::NoSuchName);
        assert_eq!(t.lookup("trellis"), Answer::NoSuchName);
        assert_eq!(t.lookup("host2.other"), Answer::NotOurs);
        assert_eq!(t.lookup("example.com"), Answer::NotOurs);
        assert_eq!(t.lookup("host3"), Answer::NotOurs);
    }

    #[test]
    fn a_named_networks_table_answers_in_its_domain_only_its_addresses() {
        let mut t = NameTable::for_network(vec!["10.0.0.0/16".parse().unwrap()], "multihost");
        assert_eq!(t.lookup("host2.multihost"), Answer::NoSuchName);
        // The conflist's CNI name does not matter: the domain is the network's.
        t.set(ip("10.0.3.2"), &owner("host2", "some-conflist"));
        t.set(ip("10.244.1.9"), &owner("other", "trellis"));
        assert_eq!(t.lookup("host2"), addrs(&["10.0.3.2"]));
        assert_eq!(t.lookup("host2.multihost"), addrs(&["10.0.3.2"]));
        assert_eq!(t.lookup("host2.some-conflist"), Answer::NotOurs);
        assert_eq!(t.lookup("other"), Answer::NotOurs, "another network's name");
        t.remove(ip("10.0.3.2"));
        assert_eq!(t.lookup("host2.multihost"), Answer::NoSuchName);
    }

    #[test]
    fn a_freed_address_stops_answering_and_a_shared_name_answers_both() {
        let mut t = table();
        t.set(ip("10.244.1.2"), &owner("web", "trellis"));
        t.set(ip("10.244.2.9"), &owner("web", "trellis"));
        assert_eq!(t.lookup("web"), addrs(&["10.244.1.2", "10.244.2.9"]));
        t.remove(ip("10.244.1.2"));
        assert_eq!(t.lookup("web.trellis"), addrs(&["10.244.2.9"]));
        // Re-owned by a container of another name.
        t.set(ip("10.244.2.9"), &owner("db", "trellis"));
        assert_eq!(t.lookup("web"), Answer::NotOurs);
        assert_eq!(t.lookup("db"), addrs(&["10.244.2.9"]));
        t.remove(ip("10.244.2.9"));
        assert!(t.is_empty());
        assert_eq!(t.lookup("db.trellis"), Answer::NotOurs);
    }

    #[test]
    fn unnamed_addresses_and_addresses_outside_the_network_are_not_served() {
        let mut t = table();
        t.set(ip("10.244.1.2"), &owner("", "trellis"));
        t.set(ip("192.168.7.7"), &owner("elsewhere", "trellis"));
        assert!(t.is_empty());
        t.replace([(ip("10.244.3.3"), owner("a", "n1"))]);
        assert_eq!(t.lookup("a.n1"), addrs(&["10.244.3.3"]));
        t.replace([]);
        assert_eq!(t.lookup("a"), Answer::NotOurs);
    }

    #[test]
    fn a_table_is_listed_once_its_first_listing_is_in() {
        let mut t = table();
        let listing = t.listing();
        assert!(!*listing.borrow());
        t.set(ip("10.244.1.2"), &owner("early", "trellis"));
        assert!(!*listing.borrow(), "a watch event is not a listing");
        t.replace([]);
        assert!(*listing.borrow());
        assert!(*t.listing().borrow());
    }

    #[test]
    fn following_decodes_allocation_keys() {
        let table = Arc::new(RwLock::new(table()));
        let mut f = Following {
            keys: Keys::new("/trellis"),
            table: table.clone(),
        };
        let value = |name: &str| {
            format!(r#"{{"containerID":"c","ifname":"eth0","node":"n","network":"trellis","name":"{name}"}}"#)
                .into_bytes()
        };
        let entry = |key: &str, value: &[u8]| Entry {
            key: key.into(),
            value: value.to_vec(),
            create_revision: 3,
        };
        assert!(f.listed(
            vec![entry("/trellis/ipam/ips/10.244.1.5", &value("one"))],
            7
        ));
        assert!(f.put(entry("/trellis/ipam/ips/fd10:244:0:1::5", &value("one"))));
        assert!(f.put(entry("/trellis/ipam/handles/x/eth0", b"{}")));
        assert_eq!(
            table.read().unwrap().lookup("one"),
            addrs(&["10.244.1.5", "fd10:244:0:1::5"])
        );
        assert!(f.put(entry("/trellis/ipam/ips/10.244.1.5", b"{garbage")));
        assert!(f.delete("/trellis/ipam/ips/fd10:244:0:1::5"));
        assert_eq!(table.read().unwrap().lookup("one"), Answer::NotOurs);
    }
}
