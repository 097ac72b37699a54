//! nftables, the kernel's packet filter, through the `nftables` crate
//! (which runs the `nft` binary with JSON on stdin): reading a table back,
//! applying a transaction, and the builders the chain builders
//! ([`crate::masquerade`], [`crate::notrack`]) and [`crate::nft_table`]
//! share. The calls block for the few milliseconds `nft` takes: async
//! callers with other work should use `spawn_blocking`.

use crate::error::{KernelError, Result};
use ipnetwork::IpNetwork;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::path::PathBuf;

/// A table: its family and name, what every object in it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableId {
    pub family: NfFamily,
    pub name: String,
}

impl TableId {
    pub fn new(family: NfFamily, name: impl Into<String>) -> TableId {
        TableId {
            family,
            name: name.into(),
        }
    }

    /// `ip` or `ip6`, as `nft list table` wants it.
    pub fn family_name(&self) -> &'static str {
        match self.family {
            NfFamily::IP6 => "ip6",
            _ => "ip",
        }
    }

    pub(crate) fn table(&self) -> Table<'static> {
        Table {
            family: self.family,
            name: Cow::Owned(self.name.clone()),
            handle: None,
        }
    }

    /// A chain of this table, by name (to flush or delete it).
    pub(crate) fn chain(&self, name: &'static str) -> Chain<'static> {
        Chain {
            family: self.family,
            table: Cow::Owned(self.name.clone()),
            name: Cow::Borrowed(name),
            ..Default::default()
        }
    }

    /// A base chain hooked at `hook` with `priority`, policy accept.
    pub(crate) fn base_chain(
        &self,
        name: &'static str,
        kind: NfChainType,
        hook: NfHook,
        priority: i32,
    ) -> Chain<'static> {
        Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(priority),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain(name)
        }
    }

    /// A rule of `chain` with a comment saying what it is for.
    pub(crate) fn rule(
        &self,
        chain: &'static str,
        expr: Vec<Statement<'static>>,
        comment: String,
    ) -> Rule<'static> {
        Rule {
            family: self.family,
            table: Cow::Owned(self.name.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            comment: Some(Cow::Owned(comment)),
            ..Default::default()
        }
    }
}

/// `<proto> <field>`, e.g. `ip saddr`, `udp dport`.
pub(crate) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `10.88.0.0/16` as a prefix expression.
pub(crate) fn prefix(net: IpNetwork) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: net.prefix() as u32,
    }))
}

/// The table as the kernel holds it (`nft list table`), `None` when absent:
/// a read, no transaction.
pub fn list_table(table: &TableId) -> Result<Option<Nftables<'static>>> {
    let nft = nft_binary();
    match nftables::helper::get_current_ruleset_with_args(
        Some(&nft),
        ["list", "table", table.family_name(), &table.name],
    ) {
        Ok(current) => Ok(Some(current)),
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(KernelError::Nftables(format!(
            "listing {}: {e}",
            table.name
        ))),
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
    chain_holds(current, chain, std::slice::from_ref(want))
}

/// Whether `chain` of a listed table holds exactly the rules `want`, in
/// order, as nft prints them back, and nothing else.
pub(crate) fn chain_holds<'a>(current: &Nftables<'a>, chain: &str, want: &[Rule<'a>]) -> bool {
    let rules: Vec<&Rule> = current
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) if r.chain == chain => Some(r),
            _ => None,
        })
        .collect();
    rules.len() == want.len() && rules.iter().zip(want).all(|(r, w)| r.expr == w.expr)
}

/// `net` as a prefix, or `nets` as an anonymous set of prefixes (sorted:
/// nft prints a set back in order) when there are several.
pub(crate) fn prefixes(nets: &[IpNetwork]) -> Expression<'static> {
    match nets {
        [one] => prefix(*one),
        many => {
            let mut sorted = many.to_vec();
            sorted.sort();
            Expression::Named(NamedExpression::Set(
                sorted
                    .into_iter()
                    .map(|n| nftables::expr::SetItem::Element(prefix(n)))
                    .collect(),
            ))
        }
    }
}

/// Apply `ruleset` in one `nft` transaction (all or nothing). The
/// `nftables` crate writes the `notrack` statement as the bare string
/// `"notrack"`, which `nft` rejects ("expected object"): it goes as
/// `{"notrack": null}`.
pub fn apply(ruleset: &Nftables<'_>, what: &str) -> Result<()> {
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

pub(crate) fn write_notrack_as_object(json: &mut serde_json::Value) {
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

/// The `nft` binary: from PATH, else the usual sbin directories (runtimes
/// may call plugins with a short PATH).
fn nft_binary() -> PathBuf {
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
