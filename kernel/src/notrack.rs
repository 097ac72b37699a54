//! Connection tracking off for the overlay's own tunnel packets, as chains
//! of an [`NftTable`](crate::nft_table::NftTable): the outer VXLAN UDP
//! packets between this node's address and the other nodes' VXLAN port. Two
//! `raw`-priority chains run before conntrack:
//!
//! ```text
//! chain tunnel-in  { type filter hook prerouting priority raw; ip daddr LOCAL udp dport PORT notrack }
//! chain tunnel-out { type filter hook output priority raw; ip saddr LOCAL udp dport PORT notrack }
//! ```
//!
//! Only the outer packets are untracked: the kernel resets an encapsulated
//! packet's conntrack state at both ends of the tunnel, so the pods' own
//! (inner) connections are tracked, filtered and masqueraded as before.

use crate::nft::{chain_holds_only, payload, TableId};
use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{FlushObject, NfCmd, NfListObject, Nftables, Rule};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfHook};
use std::borrow::Cow;
use std::net::IpAddr;

/// The chain untracking tunnel packets addressed to this node.
pub const IN_CHAIN: &str = "tunnel-in";
/// The chain untracking tunnel packets this node sends.
pub const OUT_CHAIN: &str = "tunnel-out";

/// Priority of `raw`: before conntrack (-200).
const RAW_PRIORITY: i32 = -300;

/// The untracked tunnel: UDP to `port` from and to `local` (in an `ip`
/// table, or an `ip6` one for an IPv6 underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelNotrack {
    /// This node's tunnel endpoint (the VXLAN device's `local`).
    pub local: IpAddr,
    /// The VXLAN UDP destination port of every node.
    pub port: u16,
}

impl TunnelNotrack {
    pub fn new(local: IpAddr, port: u16) -> Self {
        TunnelNotrack { local, port }
    }

    /// `ip daddr LOCAL udp dport PORT notrack` (in) or `ip saddr ...` (out).
    fn rule(&self, table: &TableId, chain: &'static str) -> Rule<'static> {
        let addr_field = if chain == IN_CHAIN { "daddr" } else { "saddr" };
        let expr = vec![
            Statement::Match(Match {
                left: payload(if self.local.is_ipv4() { "ip" } else { "ip6" }, addr_field),
                right: Expression::String(Cow::Owned(self.local.to_string())),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: payload("udp", "dport"),
                right: Expression::Number(u32::from(self.port)),
                op: Operator::EQ,
            }),
            Statement::Notrack,
        ];
        table.rule(
            chain,
            expr,
            format!(
                "trellis: untracked VXLAN packets {} {}, UDP port {}",
                if chain == IN_CHAIN { "to" } else { "from" },
                self.local,
                self.port
            ),
        )
    }

    /// Add both chains (when missing) with exactly our rule each.
    pub(crate) fn build(&self, table: &TableId, batch: &mut Batch<'static>) {
        for (chain, hook) in [(IN_CHAIN, NfHook::Prerouting), (OUT_CHAIN, NfHook::Output)] {
            batch.add(NfListObject::Chain(table.base_chain(
                chain,
                NfChainType::Filter,
                hook,
                RAW_PRIORITY,
            )));
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(table.chain(chain))));
            batch.add(NfListObject::Rule(self.rule(table, chain)));
        }
    }

    /// Whether `current`, the listed table, holds both chains with our rule
    /// and only it in each.
    pub(crate) fn holds_in(&self, table: &TableId, current: &Nftables<'static>) -> bool {
        [IN_CHAIN, OUT_CHAIN]
            .into_iter()
            .all(|chain| chain_holds_only(current, chain, &self.rule(table, chain)))
    }
}
