//! Source NAT for traffic leaving the pod network: one nftables table per
//! owner holding one `nat postrouting` chain with one rule
//! `<family> saddr SOURCE <family> daddr != { EXCLUDE..., multicast } masquerade`.
//!
//! Each change is one atomic `nft` transaction through the `nftables` crate
//! (which runs the `nft` binary with JSON on stdin), so readers never see a
//! half-written table. The calls block for the few milliseconds `nft`
//! takes: async callers with other work should use `spawn_blocking`.

use crate::error::{KernelError, Result};
use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::path::PathBuf;

/// The chain every masquerade table holds.
pub const CHAIN: &str = "postrouting";

/// Priority of `srcnat`.
const SRCNAT_PRIORITY: i32 = 100;

/// One masquerade rule set: traffic from `source` to anything outside
/// `exclude` (and outside multicast) leaves with the node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The nftables table that holds it (one owner per table).
    pub table: String,
    pub source: IpNetwork,
    /// Destinations that keep the pod's address (the pod network itself).
    pub exclude: Vec<IpNetwork>,
}

impl Masquerade {
    pub fn new(table: impl Into<String>, source: IpNetwork, exclude: Vec<IpNetwork>) -> Self {
        Masquerade {
            table: table.into(),
            source,
            exclude,
        }
    }

    fn family(&self) -> NfFamily {
        if self.source.is_ipv4() {
            NfFamily::IP
        } else {
            NfFamily::IP6
        }
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: self.family(),
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    fn chain(&self) -> Chain<'static> {
        Chain {
            family: self.family(),
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(CHAIN),
            ..Default::default()
        }
    }

    fn rule(&self) -> Rule<'static> {
        let proto = if self.source.is_ipv4() { "ip" } else { "ip6" };
        let field = |f: &'static str| {
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: Cow::Borrowed(proto),
                    field: Cow::Borrowed(f),
                },
            )))
        };
        let mut expr = vec![Statement::Match(Match {
            left: field("saddr"),
            right: prefix(self.source),
            op: Operator::EQ,
        })];
        let mut keep: Vec<IpNetwork> = self
            .exclude
            .iter()
            .copied()
            .filter(|n| n.is_ipv4() == self.source.is_ipv4())
            .collect();
        keep.push(if self.source.is_ipv4() {
            "224.0.0.0/4".parse().expect("valid")
        } else {
            "ff00::/8".parse().expect("valid")
        });
        expr.push(Statement::Match(Match {
            left: field("daddr"),
            right: Expression::Named(NamedExpression::Set(
                keep.into_iter()
                    .map(|n| SetItem::Element(prefix(n)))
                    .collect(),
            )),
            op: Operator::NEQ,
        }));
        expr.push(Statement::Masquerade(None));
        Rule {
            family: self.family(),
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Borrowed(CHAIN),
            expr: Cow::Owned(expr),
            comment: Some(Cow::Owned(format!(
                "trellis: masquerade {} leaving the pod network",
                self.source
            ))),
            ..Default::default()
        }
    }

    /// The transaction [`Masquerade::ensure`] applies: create the table
    /// and chain when missing, replace the chain's rules with ours.
    pub fn ensure_ruleset(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.table()));
        batch.add(NfListObject::Chain(Chain {
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(SRCNAT_PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain()
        }));
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(self.chain())));
        batch.add(NfListObject::Rule(self.rule()));
        batch.to_nftables()
    }

    /// The transaction [`Masquerade::remove`] applies: creating the table
    /// first makes the deletion succeed when it is already gone.
    pub fn remove_ruleset(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.table()));
        batch.delete(NfListObject::Table(self.table()));
        batch.to_nftables()
    }

    /// Install or refresh the rule set (idempotent, atomic).
    pub fn ensure(&self) -> Result<()> {
        apply(
            &self.ensure_ruleset(),
            &format!("installing table {}", self.table),
        )
    }

    /// Remove the table (idempotent).
    pub fn remove(&self) -> Result<()> {
        apply(
            &self.remove_ruleset(),
            &format!("removing table {}", self.table),
        )
    }

    /// What the kernel holds of the table (a read: no transaction).
    pub fn state(&self) -> Result<TableState> {
        let family = if self.source.is_ipv4() { "ip" } else { "ip6" };
        Ok(match list_table(family, &self.table)? {
            None => TableState::Absent,
            Some(current) if self.holds_in(&current) => TableState::Exactly,
            Some(_) => TableState::Other,
        })
    }

    /// Whether the kernel holds the table with our rule, and only it, in its
    /// chain (a read: no transaction, no commit).
    pub fn is_installed(&self) -> Result<bool> {
        Ok(self.state()? == TableState::Exactly)
    }

    /// Whether `current`, a listed table, holds our rule and only it.
    pub(crate) fn holds_in(&self, current: &Nftables<'static>) -> bool {
        chain_holds_only(current, CHAIN, &self.rule())
    }
}

/// What the kernel holds of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    Absent,
    /// Exactly the rule we write.
    Exactly,
    /// Something else: another rule, more rules, or none.
    Other,
}

/// The table as the kernel holds it (`nft list table`), `None` when absent:
/// a read, no transaction.
pub(crate) fn list_table(family: &str, table: &str) -> Result<Option<Nftables<'static>>> {
    let nft = nft_binary();
    match nftables::helper::get_current_ruleset_with_args(
        Some(&nft),
        ["list", "table", family, table],
    ) {
        Ok(current) => Ok(Some(current)),
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(KernelError::Nftables(format!("listing {table}: {e}"))),
    }
}

/// Whether a listed table has a chain called `chain`.
pub(crate) fn has_chain(current: &Nftables<'_>, chain: &str) -> bool {
    current
        .objects
        .iter()
        .any(|o| matches!(o, NfObject::ListObject(NfListObject::Chain(c)) if c.name == chain))
}

/// Whether `chain` of a listed table holds exactly `want`, as nft prints it
/// back, and nothing else.
pub(crate) fn chain_holds_only<'a>(current: &Nftables<'a>, chain: &str, want: &Rule<'a>) -> bool {
    let rules: Vec<&Rule> = current
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) if r.chain == chain => Some(r),
            _ => None,
        })
        .collect();
    matches!(rules.as_slice(), [r] if r.expr == want.expr)
}

fn prefix(net: IpNetwork) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: net.prefix() as u32,
    }))
}

fn apply(ruleset: &Nftables<'_>, what: &str) -> Result<()> {
    let nft = nft_binary();
    nftables::helper::apply_ruleset_with_args(ruleset, Some(&nft), nftables::helper::DEFAULT_ARGS)
        .map_err(|e| match e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                KernelError::Nftables(format!("{what}: {}", stderr.trim()))
            }
            e => KernelError::Nftables(format!("{what}: {e}")),
        })
}

/// The `nft` binary: from PATH, else the usual sbin directories (runtimes
/// may call plugins with a short PATH).
pub(crate) fn nft_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample() -> Masquerade {
        Masquerade::new(
            "trellis-trellis0",
            "10.88.0.0/16".parse().unwrap(),
            vec!["10.88.0.0/16".parse().unwrap()],
        )
    }

    #[test]
    fn ensure_is_one_transaction_that_replaces_the_rule() {
        let v: Value = serde_json::to_value(sample().ensure_ruleset()).unwrap();
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4);
        assert_eq!(cmds[0]["add"]["table"]["name"], "trellis-trellis0");
        assert_eq!(cmds[0]["add"]["table"]["family"], "ip");
        let chain = &cmds[1]["add"]["chain"];
        assert_eq!(
            (
                chain["type"].as_str(),
                chain["hook"].as_str(),
                chain["prio"].as_i64()
            ),
            (Some("nat"), Some("postrouting"), Some(100))
        );
        assert_eq!(cmds[2]["flush"]["chain"]["name"], CHAIN);
        let expr = &cmds[3]["add"]["rule"]["expr"];
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
        let m = Masquerade::new("t6", "fd00:88::/64".parse().unwrap(), vec![]);
        let v: Value = serde_json::to_value(m.ensure_ruleset()).unwrap();
        assert_eq!(v["nftables"][0]["add"]["table"]["family"], "ip6");
        let expr = &v["nftables"][3]["add"]["rule"]["expr"];
        assert_eq!(expr[0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(
            expr[1]["match"]["right"]["set"][0]["prefix"]["addr"],
            "ff00::"
        );
    }

    #[test]
    fn removal_is_idempotent_by_construction() {
        let v: Value = serde_json::to_value(sample().remove_ruleset()).unwrap();
        let cmds = v["nftables"].as_array().unwrap();
        assert!(cmds[0].get("add").is_some());
        assert_eq!(cmds[1]["delete"]["table"]["name"], "trellis-trellis0");
    }
}
