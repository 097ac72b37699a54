//! `ipam release --from-report`: each releasable finding freed in one
//! transaction, only if its keys are at the report's revisions.

use super::report::{kind_name, Finding, Report};
use crate::etcd::Etcd;
use crate::output::{self, Format, Outcome};
use anyhow::{Context, Result};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::json;

/// Free what `file` (the output of `ipam check -o json`, or `-` for
/// standard input) names as releasable, each only if unchanged since.
pub async fn run_release(etcd: &Etcd, format: Format, file: &str) -> Result<Outcome> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the report from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{file}: not a report of `trellisctl -o json ipam check`"))?;
    let (mut released, mut skipped) = (Vec::new(), Vec::new());
    for f in report.findings.iter().filter(|f| f.releasable) {
        if release(etcd, f).await? {
            released.push(f);
        } else {
            skipped.push(f);
        }
    }
    match format {
        Format::Json => output::json(&json!({"released": released, "skipped": skipped})),
        Format::Table => {
            for f in &released {
                println!("released {} ({})", f.key, kind_name(f.kind));
            }
            for f in &skipped {
                println!(
                    "skipped {} ({}): changed or gone since the report",
                    f.key,
                    kind_name(f.kind)
                );
            }
            println!("{} released, {} skipped", released.len(), skipped.len());
        }
    }
    Ok(if skipped.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

/// Delete the finding's key if its revision is still the report's, and
/// with it the handle it names (if that too is unchanged) and its IPv6
/// twin (if still of the same revision).
async fn release(etcd: &Etcd, f: &Finding) -> Result<bool> {
    let mut then = vec![TxnOp::delete(f.key.as_str(), None)];
    if let Some(k6) = &f.ip6_key {
        then.push(TxnOp::txn(
            Txn::new()
                .when([Compare::mod_revision(
                    k6.as_str(),
                    CompareOp::Equal,
                    f.mod_revision,
                )])
                .and_then([TxnOp::delete(k6.as_str(), None)]),
        ));
    }
    if let Some(hkey) = &f.handle_key {
        then.push(TxnOp::txn(
            Txn::new()
                .when([Compare::mod_revision(
                    hkey.as_str(),
                    CompareOp::Equal,
                    f.handle_mod_revision,
                )])
                .and_then([TxnOp::delete(hkey.as_str(), None)]),
        ));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            f.key.as_str(),
            CompareOp::Equal,
            f.mod_revision,
        )])
        .and_then(then);
    etcd.txn(txn, &format!("releasing {}", f.key)).await
}
