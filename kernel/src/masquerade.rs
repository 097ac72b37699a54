//! Source NAT for traffic leaving the pod network, as a chain of an
//! [`NftTable`](crate::nft_table::NftTable): one `nat postrouting` chain
//! with one rule
//! `<family> saddr SOURCE <family> daddr != { EXCLUDE..., multicast } masquerade`.

use crate::nft::{chain_holds_only, payload, prefix, prefixes, TableId};
use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, SetItem};
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables, Rule};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};

/// The chain the masquerade rule lives in.
pub const CHAIN: &str = "postrouting";

/// Priority of `srcnat`.
const SRCNAT_PRIORITY: i32 = 100;

/// Traffic from `source` (or any of `also`) to anything outside `exclude`
/// (and outside multicast) leaves with the node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub source: IpNetwork,
    /// More sources of the same family (a node's subnets in several
    /// networks): one rule matches them as a set.
    pub also: Vec<IpNetwork>,
    /// Destinations that keep the pod's address (the pod network itself).
    pub exclude: Vec<IpNetwork>,
}

impl Masquerade {
    pub fn new(source: IpNetwork, exclude: Vec<IpNetwork>) -> Self {
        Masquerade {
            source,
            also: Vec::new(),
            exclude,
        }
    }

    /// One rule for all of `sources` (`None` when there is none).
    pub fn of_all(sources: &[IpNetwork], exclude: Vec<IpNetwork>) -> Option<Self> {
        let (first, rest) = sources.split_first()?;
        Some(Masquerade {
            also: rest.to_vec(),
            ..Masquerade::new(*first, exclude)
        })
    }

    /// The family of the table it belongs in.
    pub fn family(&self) -> NfFamily {
        if self.source.is_ipv4() {
            NfFamily::IP
        } else {
            NfFamily::IP6
        }
    }

    fn rule(&self, table: &TableId) -> Rule<'static> {
        let proto = if self.source.is_ipv4() { "ip" } else { "ip6" };
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
        // In order, as nft prints a set back.
        keep.sort();
        let sources: Vec<IpNetwork> = std::iter::once(self.source)
            .chain(self.also.iter().copied())
            .collect();
        let expr = vec![
            Statement::Match(Match {
                left: payload(proto, "saddr"),
                right: prefixes(&sources),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: payload(proto, "daddr"),
                right: Expression::Named(NamedExpression::Set(
                    keep.into_iter()
                        .map(|n| SetItem::Element(prefix(n)))
                        .collect(),
                )),
                op: Operator::NEQ,
            }),
            Statement::Masquerade(None),
        ];
        let named = sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        table.rule(
            CHAIN,
            expr,
            format!("trellis: masquerade {named} leaving the pod network"),
        )
    }

    /// Add the chain (when missing) with exactly our rule to `batch`.
    pub(crate) fn build(&self, table: &TableId, batch: &mut Batch<'static>) {
        batch.add(NfListObject::Chain(table.base_chain(
            CHAIN,
            NfChainType::NAT,
            NfHook::Postrouting,
            SRCNAT_PRIORITY,
        )));
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(table.chain(CHAIN))));
        batch.add(NfListObject::Rule(self.rule(table)));
    }

    /// Whether `current`, the listed table, holds our rule and only it.
    pub(crate) fn holds_in(&self, table: &TableId, current: &Nftables<'static>) -> bool {
        chain_holds_only(current, CHAIN, &self.rule(table))
    }
}
