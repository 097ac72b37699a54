//! Networks kept apart, as a chain of an [`NftTable`](crate::nft_table::NftTable):
//! one `filter forward` chain whose rules drop what would pass between
//! two networks, as Docker keeps its bridge networks apart:
//! `<family> saddr NET <family> daddr { OTHERS } drop` and back, or for an
//! internal network `<family> saddr NET <family> daddr != NET drop` and
//! back (nothing in or out but its own traffic; its gateway, in the node,
//! is not forwarded to and stays reachable).

use crate::nft::{chain_holds, payload, prefix, prefixes, TableId};
use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables, Rule};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfHook};

/// The chain the rules live in.
pub const CHAIN: &str = "isolation";

/// Priority of `filter`.
const FILTER_PRIORITY: i32 = 0;

/// One network and what it is kept from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolated {
    pub network: IpNetwork,
    /// Networks nothing passes to or from.
    pub others: Vec<IpNetwork>,
    /// Nothing passes to or from anywhere but the network itself.
    pub internal: bool,
}

/// The networks of one family kept apart on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub networks: Vec<Isolated>,
}

fn matching(
    proto: &'static str,
    field: &'static str,
    right: nftables::expr::Expression<'static>,
    op: Operator,
) -> Statement<'static> {
    Statement::Match(Match {
        left: payload(proto, field),
        right,
        op,
    })
}

impl Isolation {
    /// The rules, two per network (none for a network kept from nothing).
    fn rules(&self, table: &TableId) -> Vec<Rule<'static>> {
        let mut rules = Vec::new();
        for n in &self.networks {
            let proto = if n.network.is_ipv4() { "ip" } else { "ip6" };
            let others: Vec<IpNetwork> = n
                .others
                .iter()
                .copied()
                .filter(|o| o.is_ipv4() == n.network.is_ipv4())
                .collect();
            let (away, op, what) = if n.internal {
                (prefix(n.network), Operator::NEQ, "internal".to_string())
            } else if others.is_empty() {
                continue;
            } else {
                (
                    prefixes(&others),
                    Operator::EQ,
                    "kept from the others".to_string(),
                )
            };
            let own = || matching(proto, "saddr", prefix(n.network), Operator::EQ);
            rules.push(table.rule(
                CHAIN,
                vec![
                    own(),
                    matching(proto, "daddr", away.clone(), op),
                    Statement::Drop(None),
                ],
                format!("trellis: {} {what} (out)", n.network),
            ));
            rules.push(table.rule(
                CHAIN,
                vec![
                    matching(proto, "daddr", prefix(n.network), Operator::EQ),
                    matching(proto, "saddr", away, op),
                    Statement::Drop(None),
                ],
                format!("trellis: {} {what} (in)", n.network),
            ));
        }
        rules
    }

    /// Whether it has any rule at all.
    pub fn is_empty(&self) -> bool {
        self.networks
            .iter()
            .all(|n| !n.internal && n.others.iter().all(|o| o.is_ipv4() != n.network.is_ipv4()))
    }

    /// Add the chain with exactly our rules to `batch`.
    pub(crate) fn build(&self, table: &TableId, batch: &mut Batch<'static>) {
        batch.add(NfListObject::Chain(table.base_chain(
            CHAIN,
            NfChainType::Filter,
            NfHook::Forward,
            FILTER_PRIORITY,
        )));
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(table.chain(CHAIN))));
        for rule in self.rules(table) {
            batch.add(NfListObject::Rule(rule));
        }
    }

    /// Whether `current`, the listed table, holds our rules and only them.
    pub(crate) fn holds_in(&self, table: &TableId, current: &Nftables<'static>) -> bool {
        chain_holds(current, CHAIN, &self.rules(table))
    }
}
