//! One nftables table owned by one daemon and rebuilt as a whole: any of a
//! [`Masquerade`] chain and the [`TunnelNotrack`] chains. Every change is
//! one transaction that deletes the table and creates it again with
//! exactly the parts that are on, so nothing of an earlier configuration
//! stays behind and readers never see a half-written table.

use crate::error::Result;
use crate::masquerade::{self, has_chain, list_table, Masquerade};
use crate::notrack::{self, apply_with_notrack, TunnelNotrack};
use std::borrow::Cow;

/// What the owner wants in its table `name` (family `ip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTable {
    pub name: String,
    pub masquerade: Option<Masquerade>,
    pub notrack: Option<TunnelNotrack>,
}

impl NodeTable {
    /// An empty table description; the parts must name the same table.
    pub fn new(name: impl Into<String>) -> Self {
        NodeTable {
            name: name.into(),
            masquerade: None,
            notrack: None,
        }
    }

    pub fn with_masquerade(mut self, rule: Masquerade) -> Self {
        debug_assert_eq!(rule.table, self.name);
        self.masquerade = Some(rule);
        self
    }

    pub fn with_notrack(mut self, rule: TunnelNotrack) -> Self {
        debug_assert_eq!(rule.table, self.name);
        self.notrack = Some(rule);
        self
    }

    fn removal(&self) -> Masquerade {
        Masquerade::new(
            self.name.clone(),
            "0.0.0.0/0".parse().expect("valid"),
            Vec::new(),
        )
    }

    /// The transaction [`NodeTable::ensure`] applies.
    pub fn ensure_ruleset(&self) -> nftables::schema::Nftables<'static> {
        let mut objects = self.removal().remove_ruleset().objects.into_owned();
        if let Some(m) = &self.masquerade {
            objects.extend(m.ensure_ruleset().objects.iter().cloned());
        }
        if let Some(n) = &self.notrack {
            objects.extend(n.ensure_ruleset().objects.iter().cloned());
        }
        nftables::schema::Nftables {
            objects: Cow::Owned(objects),
        }
    }

    /// Rebuild the table with the parts that are on (atomic); with none,
    /// the table is gone.
    pub fn ensure(&self) -> Result<()> {
        if self.masquerade.is_none() && self.notrack.is_none() {
            return self.remove();
        }
        apply_with_notrack(
            &self.ensure_ruleset(),
            &format!("installing table {}", self.name),
        )
    }

    /// Remove the table (idempotent).
    pub fn remove(&self) -> Result<()> {
        self.removal().remove()
    }

    /// Whether the kernel holds the table exactly as `ensure` writes it:
    /// every part that is on as we wrote it, no chain of a part that is
    /// off, and no table at all with no part on. One read of the table.
    pub fn is_installed(&self) -> Result<bool> {
        let Some(current) = list_table("ip", &self.name)? else {
            return Ok(self.masquerade.is_none() && self.notrack.is_none());
        };
        let masquerade = match &self.masquerade {
            Some(m) => m.holds_in(&current),
            None => !has_chain(&current, masquerade::CHAIN),
        };
        let notrack = match &self.notrack {
            Some(n) => n.holds_in(&current),
            None => ![notrack::IN_CHAIN, notrack::OUT_CHAIN]
                .into_iter()
                .any(|c| has_chain(&current, c)),
        };
        Ok(masquerade && notrack && (self.masquerade.is_some() || self.notrack.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn one_transaction_rebuilds_the_table_with_the_parts_that_are_on() {
        let table = NodeTable::new("trellis-agent")
            .with_masquerade(Masquerade::new(
                "trellis-agent",
                "10.244.3.0/24".parse().unwrap(),
                vec!["10.244.0.0/16".parse().unwrap()],
            ))
            .with_notrack(TunnelNotrack::new(
                "trellis-agent",
                "192.0.2.3".parse().unwrap(),
                8472,
            ));
        let v: Value = serde_json::to_value(table.ensure_ruleset()).unwrap();
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds[1]["delete"]["table"]["name"], "trellis-agent");
        let chains: Vec<&str> = cmds
            .iter()
            .filter_map(|c| c["add"]["chain"]["name"].as_str())
            .collect();
        assert_eq!(chains, ["postrouting", "tunnel-in", "tunnel-out"]);

        let only_notrack = NodeTable {
            masquerade: None,
            ..table
        };
        let v: Value = serde_json::to_value(only_notrack.ensure_ruleset()).unwrap();
        let chains: Vec<&str> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"]["chain"]["name"].as_str())
            .collect();
        assert_eq!(chains, ["tunnel-in", "tunnel-out"]);
    }
}
