//! One nftables table owned by one program and rebuilt as a whole: the
//! plugin's single-host masquerade table (`ip trellis-<bridge>`) and the
//! agent's `ip trellis-agent` (masquerade and untracked tunnel packets) and
//! `ip trellis-networks` (the named networks: masquerade and isolation).
//! Every change is one transaction that deletes the table and creates it
//! again with exactly the parts that are on, so nothing of an earlier
//! configuration stays behind and readers never see a half-written table.

use crate::error::Result;
use crate::isolation::{self, Isolation};
use crate::masquerade::{self, Masquerade};
use crate::nft::{self, has_chain, TableId};
use crate::notrack::{self, TunnelNotrack};
use nftables::batch::Batch;
use nftables::schema::{NfListObject, Nftables};
use nftables::types::NfFamily;

/// What the kernel holds of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    Absent,
    /// Exactly what [`NftTable::ensure`] writes.
    Exactly,
    /// Something else: another rule, more rules, a part that is off.
    Other,
}

/// What the owner wants in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftTable {
    pub id: TableId,
    pub masquerade: Option<Masquerade>,
    pub notrack: Option<TunnelNotrack>,
    pub isolation: Option<Isolation>,
}

impl NftTable {
    /// A table with no part on, of `family` (`ip` unless a part says `ip6`).
    pub fn new(name: impl Into<String>) -> Self {
        NftTable {
            id: TableId::new(NfFamily::IP, name),
            masquerade: None,
            notrack: None,
            isolation: None,
        }
    }

    /// An `ip6` table with no part on (the IPv6 twin of a table).
    pub fn new_ip6(name: impl Into<String>) -> Self {
        NftTable {
            id: TableId::new(NfFamily::IP6, name),
            ..NftTable::new("")
        }
    }

    /// Masquerade in this table; the table takes the rule's family.
    pub fn with_masquerade(mut self, rule: Masquerade) -> Self {
        self.id.family = rule.family();
        self.masquerade = Some(rule);
        self
    }

    /// Untracked tunnel packets in this table (an `ip` table, or an `ip6`
    /// one for an IPv6 tunnel endpoint).
    pub fn with_notrack(mut self, rule: TunnelNotrack) -> Self {
        debug_assert_eq!(
            self.id.family,
            if rule.local.is_ipv4() {
                NfFamily::IP
            } else {
                NfFamily::IP6
            }
        );
        self.notrack = Some(rule);
        self
    }

    /// Networks kept apart in this table (of its family); one without any
    /// rule leaves the part off.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = (!isolation.is_empty()).then_some(isolation);
        self
    }

    /// No part on: the table is removed rather than written.
    pub fn is_empty(&self) -> bool {
        self.masquerade.is_none() && self.notrack.is_none() && self.isolation.is_none()
    }

    /// The transaction that removes the table (creating it first makes the
    /// deletion succeed when it is already gone).
    fn removal(&self) -> Batch<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.id.table()));
        batch.delete(NfListObject::Table(self.id.table()));
        batch
    }

    /// The transaction [`NftTable::ensure`] applies: the table removed,
    /// then made again with the parts that are on.
    pub fn ruleset(&self) -> Nftables<'static> {
        let mut batch = self.removal();
        if !self.is_empty() {
            batch.add(NfListObject::Table(self.id.table()));
        }
        if let Some(m) = &self.masquerade {
            m.build(&self.id, &mut batch);
        }
        if let Some(n) = &self.notrack {
            n.build(&self.id, &mut batch);
        }
        if let Some(i) = &self.isolation {
            i.build(&self.id, &mut batch);
        }
        batch.to_nftables()
    }

    /// Rebuild the table with the parts that are on (atomic); with none,
    /// the table is gone.
    pub fn ensure(&self) -> Result<()> {
        nft::apply(
            &self.ruleset(),
            &format!("installing table {}", self.id.name),
        )
    }

    /// Remove the table (idempotent).
    pub fn remove(&self) -> Result<()> {
        nft::apply(
            &self.removal().to_nftables(),
            &format!("removing table {}", self.id.name),
        )
    }

    /// What the kernel holds: one read of the table, no transaction.
    pub fn state(&self) -> Result<TableState> {
        Ok(match nft::list_table(&self.id)? {
            None => TableState::Absent,
            Some(current) if self.is_in(&current) => TableState::Exactly,
            Some(_) => TableState::Other,
        })
    }

    /// Whether `current`, the listed table, is exactly what `ensure`
    /// writes: every part that is on as we wrote it, no chain of a part
    /// that is off, and some part on.
    fn is_in(&self, current: &Nftables<'static>) -> bool {
        let masquerade = match &self.masquerade {
            Some(m) => m.holds_in(&self.id, current),
            None => !has_chain(current, masquerade::CHAIN),
        };
        let notrack = match &self.notrack {
            Some(n) => n.holds_in(&self.id, current),
            None => ![notrack::IN_CHAIN, notrack::OUT_CHAIN]
                .into_iter()
                .any(|c| has_chain(current, c)),
        };
        let isolation = match &self.isolation {
            Some(i) => i.holds_in(&self.id, current),
            None => !has_chain(current, isolation::CHAIN),
        };
        masquerade && notrack && isolation && !self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::write_notrack_as_object;
    use serde_json::Value;

    fn commands(table: &NftTable) -> Vec<Value> {
        let mut v: Value = serde_json::to_value(table.ruleset()).unwrap();
        write_notrack_as_object(&mut v);
        v["nftables"].as_array().unwrap().clone()
    }

    fn agent_table() -> NftTable {
        NftTable::new("trellis-agent")
            .with_masquerade(Masquerade::new(
                "10.244.3.0/24".parse().unwrap(),
                vec!["10.244.0.0/16".parse().unwrap()],
            ))
            .with_notrack(TunnelNotrack::new("192.0.2.7".parse().unwrap(), 8472))
    }

    #[test]
    fn one_transaction_rebuilds_the_table_with_the_parts_that_are_on() {
        let cmds = commands(&agent_table());
        assert_eq!(cmds[0]["add"]["table"]["name"], "trellis-agent");
        assert_eq!(cmds[1]["delete"]["table"]["name"], "trellis-agent");
        assert_eq!(cmds[2]["add"]["table"]["name"], "trellis-agent");
        let chains: Vec<&str> = cmds
            .iter()
            .filter_map(|c| c["add"]["chain"]["name"].as_str())
            .collect();
        assert_eq!(chains, ["postrouting", "tunnel-in", "tunnel-out"]);

        let only_notrack = NftTable {
            masquerade: None,
            ..agent_table()
        };
        let chains: Vec<String> = commands(&only_notrack)
            .iter()
            .filter_map(|c| c["add"]["chain"]["name"].as_str().map(String::from))
            .collect();
        assert_eq!(chains, ["tunnel-in", "tunnel-out"]);

        // Nothing on: the transaction only removes the table.
        let empty = commands(&NftTable::new("trellis-agent"));
        assert_eq!(empty.len(), 2);
        assert!(empty[1].get("delete").is_some());
    }

    #[test]
    fn masquerade_is_a_nat_postrouting_chain_with_one_rule() {
        let table = NftTable::new("trellis-trellis0").with_masquerade(Masquerade::new(
            "10.88.0.0/16".parse().unwrap(),
            vec!["10.88.0.0/16".parse().unwrap()],
        ));
        let cmds = commands(&table);
        assert_eq!(cmds.len(), 6);
        assert_eq!(cmds[2]["add"]["table"]["family"], "ip");
        let chain = &cmds[3]["add"]["chain"];
        assert_eq!(
            (
                chain["type"].as_str(),
                chain["hook"].as_str(),
                chain["prio"].as_i64()
            ),
            (Some("nat"), Some("postrouting"), Some(100))
        );
        assert_eq!(cmds[4]["flush"]["chain"]["name"], masquerade::CHAIN);
        let expr = &cmds[5]["add"]["rule"]["expr"];
        assert_eq!(expr[0]["match"]["left"]["payload"]["field"], "saddr");
        assert_eq!(expr[0]["match"]["right"]["prefix"]["addr"], "10.88.0.0");
        assert_eq!(expr[0]["match"]["right"]["prefix"]["len"], 16);
        assert_eq!(expr[1]["match"]["op"], "!=");
        let set = expr[1]["match"]["right"]["set"].as_array().unwrap();
        assert_eq!(set.len(), 2, "the pod network and multicast");
        assert_eq!(set[1]["prefix"]["addr"], "224.0.0.0");
        assert!(expr[2].get("masquerade").is_some());
    }

    #[test]
    fn ipv6_sources_use_the_ip6_family() {
        let table = NftTable::new("t6")
            .with_masquerade(Masquerade::new("fd00:88::/64".parse().unwrap(), vec![]));
        assert_eq!(table.id.family_name(), "ip6");
        let cmds = commands(&table);
        assert_eq!(cmds[0]["add"]["table"]["family"], "ip6");
        let expr = &cmds[5]["add"]["rule"]["expr"];
        assert_eq!(expr[0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(
            expr[1]["match"]["right"]["set"][0]["prefix"]["addr"],
            "ff00::"
        );
    }

    #[test]
    fn notrack_hooks_both_directions_before_conntrack() {
        let table = NftTable::new("trellis-agent")
            .with_notrack(TunnelNotrack::new("192.0.2.7".parse().unwrap(), 8472));
        let cmds = commands(&table);
        assert_eq!(cmds.len(), 9);
        for (i, hook, addr) in [(3, "prerouting", "daddr"), (6, "output", "saddr")] {
            let chain = &cmds[i]["add"]["chain"];
            assert_eq!(chain["type"], "filter");
            assert_eq!(chain["hook"], hook);
            assert_eq!(chain["prio"], -300);
            assert!(cmds[i + 1].get("flush").is_some());
            let expr = &cmds[i + 2]["add"]["rule"]["expr"];
            assert_eq!(expr[0]["match"]["left"]["payload"]["field"], addr);
            assert_eq!(expr[0]["match"]["right"], "192.0.2.7");
            assert_eq!(expr[1]["match"]["left"]["payload"]["protocol"], "udp");
            assert_eq!(expr[1]["match"]["left"]["payload"]["field"], "dport");
            assert_eq!(expr[1]["match"]["right"], 8472);
            assert_eq!(expr[2], serde_json::json!({ "notrack": null }));
        }
    }

    #[test]
    fn networks_are_kept_apart_in_a_filter_forward_chain() {
        let net = |s: &str| s.parse::<ipnetwork::IpNetwork>().unwrap();
        let table = NftTable::new("trellis-networks")
            .with_masquerade(
                Masquerade::of_all(
                    &[net("10.1.3.0/24"), net("10.0.3.0/24")],
                    vec![net("10.244.0.0/16"), net("10.0.0.0/16"), net("10.1.0.0/16")],
                )
                .unwrap(),
            )
            .with_isolation(Isolation {
                networks: vec![
                    isolation::Isolated {
                        network: net("10.0.0.0/16"),
                        others: vec![net("10.244.0.0/16"), net("10.1.0.0/16")],
                        internal: false,
                    },
                    isolation::Isolated {
                        network: net("10.1.0.0/16"),
                        others: vec![net("10.244.0.0/16")],
                        internal: true,
                    },
                ],
            });
        let cmds = commands(&table);
        let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
        assert_eq!(rules.len(), 5, "a masquerade rule, two per network");
        let m = &rules[0]["expr"];
        let sources = m[0]["match"]["right"]["set"].as_array().unwrap();
        assert_eq!(sources[0]["prefix"]["addr"], "10.0.3.0", "sorted");
        let exclude = m[1]["match"]["right"]["set"].as_array().unwrap();
        assert_eq!(exclude.len(), 4);
        assert_eq!(exclude[0]["prefix"]["addr"], "10.0.0.0");
        assert_eq!(exclude[3]["prefix"]["addr"], "224.0.0.0");
        let chain = cmds
            .iter()
            .find_map(|c| {
                c["add"]["chain"]
                    .as_object()
                    .filter(|c| c["name"] == "isolation")
            })
            .unwrap();
        assert_eq!(
            (&chain["type"], &chain["hook"]),
            (&"filter".into(), &"forward".into())
        );
        // Out of 10.0.0.0/16 to the others, and back: dropped.
        let out = &rules[1]["expr"];
        assert_eq!(out[0]["match"]["left"]["payload"]["field"], "saddr");
        assert_eq!(out[0]["match"]["right"]["prefix"]["addr"], "10.0.0.0");
        assert_eq!(out[1]["match"]["op"], "==");
        assert_eq!(out[1]["match"]["right"]["set"].as_array().unwrap().len(), 2);
        assert!(out[2].get("drop").is_some());
        assert_eq!(
            rules[2]["expr"][0]["match"]["left"]["payload"]["field"],
            "daddr"
        );
        // The internal one: to and from anything but itself.
        let internal = &rules[3]["expr"];
        assert_eq!(internal[1]["match"]["op"], "!=");
        assert_eq!(internal[1]["match"]["right"]["prefix"]["addr"], "10.1.0.0");
        // Kept from nothing: no part at all.
        let alone = Isolation {
            networks: vec![isolation::Isolated {
                network: net("10.0.0.0/16"),
                others: vec![],
                internal: false,
            }],
        };
        assert!(NftTable::new("t").with_isolation(alone).is_empty());
    }

    #[test]
    fn removal_is_idempotent_by_construction() {
        let table = agent_table();
        let v: Value = serde_json::to_value(table.removal().to_nftables()).unwrap();
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2);
        assert!(cmds[0].get("add").is_some());
        assert_eq!(cmds[1]["delete"]["table"]["name"], "trellis-agent");
    }
}
