//! Connection tracking off for the overlay's own tunnel packets: the outer
//! VXLAN UDP packets between this node's address and the other nodes' VXLAN
//! port. Two `raw`-priority chains run before conntrack:
//!
//! ```text
//! chain tunnel-in  { type filter hook prerouting priority raw; ip daddr LOCAL udp dport PORT notrack }
//! chain tunnel-out { type filter hook output priority raw; ip saddr LOCAL udp dport PORT notrack }
//! ```
//!
//! Only the outer packets are untracked: the kernel resets an encapsulated
//! packet's conntrack state at both ends of the tunnel, so the pods' own
//! (inner) connections are tracked, filtered and masqueraded as before.
//!
//! The chains live in a table the caller owns (the agent puts them next to
//! its masquerade chain, so that one transaction installs both). Each change
//! is one atomic `nft` transaction; the calls block for the few milliseconds
//! `nft` takes.

use crate::error::{KernelError, Result};
use crate::masquerade::{chain_holds_only, list_table, nft_binary};
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

/// The chain untracking tunnel packets addressed to this node.
pub const IN_CHAIN: &str = "tunnel-in";
/// The chain untracking tunnel packets this node sends.
pub const OUT_CHAIN: &str = "tunnel-out";

/// Priority of `raw`: before conntrack (-200).
const RAW_PRIORITY: i32 = -300;

/// The untracked tunnel: UDP to `port` from and to `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelNotrack {
    /// The nftables table (family `ip`) that holds the chains.
    pub table: String,
    /// This node's tunnel endpoint (the VXLAN device's `local`).
    pub local: Ipv4Addr,
    /// The VXLAN UDP destination port of every node.
    pub port: u16,
}

impl TunnelNotrack {
    pub fn new(table: impl Into<String>, local: Ipv4Addr, port: u16) -> Self {
        TunnelNotrack {
            table: table.into(),
            local,
            port,
        }
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    fn chain(&self, name: &'static str) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(name),
            ..Default::default()
        }
    }

    fn base_chain(&self, name: &'static str) -> Chain<'static> {
        let hook = if name == IN_CHAIN {
            NfHook::Prerouting
        } else {
            NfHook::Output
        };
        Chain {
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(RAW_PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain(name)
        }
    }

    /// `ip daddr LOCAL udp dport PORT notrack` (in) or `ip saddr ...` (out).
    fn rule(&self, chain: &'static str) -> Rule<'static> {
        let field = |proto: &'static str, f: &'static str| {
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: Cow::Borrowed(proto),
                    field: Cow::Borrowed(f),
                },
            )))
        };
        let addr_field = if chain == IN_CHAIN { "daddr" } else { "saddr" };
        let expr = vec![
            Statement::Match(Match {
                left: field("ip", addr_field),
                right: Expression::String(Cow::Owned(self.local.to_string())),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: field("udp", "dport"),
                right: Expression::Number(u32::from(self.port)),
                op: Operator::EQ,
            }),
            Statement::Notrack,
        ];
        Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            comment: Some(Cow::Owned(format!(
                "trellis: untracked VXLAN packets {} {}, UDP port {}",
                if chain == IN_CHAIN { "to" } else { "from" },
                self.local,
                self.port
            ))),
            ..Default::default()
        }
    }

    /// The transaction [`TunnelNotrack::ensure`] applies: the table and both
    /// chains when missing, each chain's rules replaced with ours.
    pub fn ensure_ruleset(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.table()));
        for chain in [IN_CHAIN, OUT_CHAIN] {
            batch.add(NfListObject::Chain(self.base_chain(chain)));
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(self.chain(chain))));
            batch.add(NfListObject::Rule(self.rule(chain)));
        }
        batch.to_nftables()
    }

    /// The transaction that removes both chains and leaves the rest of the
    /// table: creating (and emptying) each chain first makes the deletion
    /// succeed when it is already gone.
    pub fn remove_ruleset(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(self.table()));
        for chain in [IN_CHAIN, OUT_CHAIN] {
            batch.add(NfListObject::Chain(self.base_chain(chain)));
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(self.chain(chain))));
            batch.delete(NfListObject::Chain(self.chain(chain)));
        }
        batch.to_nftables()
    }

    /// Whether the kernel holds both chains with our rule, and only it, in
    /// each (a read: no transaction).
    pub fn is_installed(&self) -> Result<bool> {
        Ok(list_table("ip", &self.table)?.is_some_and(|current| self.holds_in(&current)))
    }

    /// Whether `current`, a listed table, holds both chains with our rule
    /// and only it in each.
    pub(crate) fn holds_in(&self, current: &Nftables<'static>) -> bool {
        [IN_CHAIN, OUT_CHAIN]
            .into_iter()
            .all(|chain| chain_holds_only(current, chain, &self.rule(chain)))
    }
}

/// Apply `ruleset` in one `nft` transaction. The `nftables` crate writes
/// the `notrack` statement as the bare string `"notrack"`, which `nft`
/// rejects ("expected object"); this writes it as `{"notrack": null}`.
pub(crate) fn apply_with_notrack(ruleset: &Nftables<'_>, what: &str) -> Result<()> {
    let mut json = serde_json::to_value(ruleset)
        .map_err(|e| KernelError::Nftables(format!("{what}: encoding: {e}")))?;
    write_notrack_as_object(&mut json);
    let nft = nft_binary();
    nftables::helper::apply_ruleset_raw(
        &json.to_string(),
        Some(&nft),
        nftables::helper::DEFAULT_ARGS,
    )
    .map(drop)
    .map_err(|e| match e {
        nftables::helper::NftablesError::NftFailed { stderr, .. } => {
            KernelError::Nftables(format!("{what}: {}", stderr.trim()))
        }
        e => KernelError::Nftables(format!("{what}: {e}")),
    })
}

fn write_notrack_as_object(json: &mut serde_json::Value) {
    use serde_json::Value;
    match json {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "expr" {
                    if let Value::Array(stmts) = value {
                        for stmt in stmts.iter_mut() {
                            if stmt.as_str() == Some("notrack") {
                                *stmt = serde_json::json!({ "notrack": null });
                            }
                        }
                    }
                } else {
                    write_notrack_as_object(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(write_notrack_as_object),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample() -> TunnelNotrack {
        TunnelNotrack::new("trellis-agent", Ipv4Addr::new(192, 0, 2, 7), 8472)
    }

    #[test]
    fn ensure_hooks_both_directions_before_conntrack() {
        let mut v: Value = serde_json::to_value(sample().ensure_ruleset()).unwrap();
        write_notrack_as_object(&mut v);
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 7);
        assert_eq!(cmds[0]["add"]["table"]["name"], "trellis-agent");
        for (i, hook, addr) in [(1, "prerouting", "daddr"), (4, "output", "saddr")] {
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
    fn removal_deletes_only_the_chains() {
        let v: Value = serde_json::to_value(sample().remove_ruleset()).unwrap();
        let cmds = v["nftables"].as_array().unwrap();
        let deleted: Vec<&str> = cmds
            .iter()
            .filter_map(|c| c["delete"]["chain"]["name"].as_str())
            .collect();
        assert_eq!(deleted, [IN_CHAIN, OUT_CHAIN]);
        assert!(cmds.iter().all(|c| c["delete"].get("table").is_none()));
    }
}
