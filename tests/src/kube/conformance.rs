//! The Kubernetes network conformance run: the `[sig-network] Networking`
//! tests (Granular Checks and the rest that needs no special feature) and
//! every `[sig-network] ... [Conformance]` test, in one parallel ginkgo run
//! against the test cluster, with the results read from ginkgo's JSON
//! report.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::e2e;
use super::testbed::Testbed;

/// What the run selects: the Networking tests and the sig-network
/// conformance tests.
pub const FOCUS: &str = r"\[sig-network\] Networking|\[sig-network\].*\[Conformance\]";
/// Left out, as the suite's default runs leave them out: tests that need a
/// feature this cluster lacks (SCTP, IPv6, iperf, the Internet), take long
/// (`[Slow]`), need the cluster to themselves (`[Serial]`) or break it
/// (`[Disruptive]`).
pub const SKIP: &str = r"\[Feature:|\[Slow\]|\[Serial\]|\[Disruptive\]|\[Flaky\]";

/// Whether the run selects `name`: [`FOCUS`] and [`SKIP`] as plain
/// string tests (ginkgo's report lists every test of the suite, the ones
/// outside the selection as skipped).
pub fn selected(name: &str) -> bool {
    let focus = name.contains("[sig-network] Networking")
        || (name.contains("[sig-network]") && name.contains("[Conformance]"));
    let skip = ["[Feature:", "[Slow]", "[Serial]", "[Disruptive]", "[Flaky]"]
        .iter()
        .any(|tag| name.contains(tag));
    focus && !skip
}

/// One test's outcome.
#[derive(Clone, Debug)]
pub struct SpecResult {
    pub name: String,
    /// passed, failed, skipped, ...
    pub state: String,
    pub message: String,
}

impl SpecResult {
    pub fn is_conformance(&self) -> bool {
        self.name.contains("[Conformance]")
    }
    pub fn is_networking(&self) -> bool {
        self.name.starts_with("[sig-network] Networking")
    }
}

/// The dual-stack run: every `[Feature:IPv6DualStack]` test but SCTP's
/// (no SCTP here) and the slow, serial and disruptive ones.
pub const DUAL_STACK_FOCUS: &str = r"\[Feature:IPv6DualStack\]";
pub const DUAL_STACK_SKIP: &str =
    r"\[Feature:SCTPConnectivity\]|\[Slow\]|\[Serial\]|\[Disruptive\]|\[Flaky\]";

/// Whether the dual-stack run selects `name` (as [`selected`] for the
/// default run).
pub fn dual_stack_selected(name: &str) -> bool {
    name.contains("[Feature:IPv6DualStack]")
        && ![
            "[Feature:SCTPConnectivity]",
            "[Slow]",
            "[Serial]",
            "[Disruptive]",
            "[Flaky]",
        ]
        .iter()
        .any(|tag| name.contains(tag))
}

/// Runs the selection with `procs` parallel ginkgo processes; the results
/// of every test it selected (ginkgo's own setup nodes left out).
pub fn run(bed: &Testbed, procs: usize, report: &Path) -> Result<Vec<SpecResult>> {
    let selection: Selection = (FOCUS, SKIP, selected);
    run_selection(bed, procs, report, selection)
}

/// The dual-stack tests ([`DUAL_STACK_FOCUS`]).
pub fn run_dual_stack(bed: &Testbed, procs: usize, report: &Path) -> Result<Vec<SpecResult>> {
    let selection: Selection = (DUAL_STACK_FOCUS, DUAL_STACK_SKIP, dual_stack_selected);
    run_selection(bed, procs, report, selection)
}

/// What a run selects: ginkgo's focus and skip, and the same as a test of
/// a name.
type Selection = (&'static str, &'static str, fn(&str) -> bool);

/// Runs the tests `focus` selects but `skip` leaves out.
fn run_selection(
    bed: &Testbed,
    procs: usize,
    report: &Path,
    (focus, skip, chosen): Selection,
) -> Result<Vec<SpecResult>> {
    let args: Vec<String> = vec![
        format!("--procs={procs}"),
        format!("--focus={focus}"),
        format!("--skip={skip}"),
        format!("--json-report={}", report.display()),
    ];
    let log = report.with_extension("log");
    let out = std::fs::File::create(&log)?;
    let status = e2e::command(&bed.layout, &bed.info, &args)?
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .status()
        .context("running ginkgo")?;
    let results = parse_selected(report, chosen).with_context(|| {
        format!(
            "reading the report of the e2e run (ginkgo exited with {status}; its output is in {})",
            log.display()
        )
    })?;
    if results.is_empty() {
        bail!("the e2e run selected no test (see {})", log.display());
    }
    Ok(results)
}

/// Reads ginkgo's JSON report: a list of suites, each with its specs (those
/// of the default selection).
pub fn parse(report: &Path) -> Result<Vec<SpecResult>> {
    parse_selected(report, selected)
}

/// The specs of the report that `chosen` selects.
pub fn parse_selected(report: &Path, chosen: fn(&str) -> bool) -> Result<Vec<SpecResult>> {
    let text = std::fs::read_to_string(report)?;
    let suites: Vec<Value> = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for suite in &suites {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut parts: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            parts.push(spec["LeafNodeText"].as_str().unwrap_or(""));
            let name = parts.join(" ");
            if !chosen(&name) {
                continue;
            }
            out.push(SpecResult {
                name,
                state: spec["State"].as_str().unwrap_or("unknown").to_owned(),
                message: spec["Failure"]["Message"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

/// A Markdown table of the results (for the README), failures first.
pub fn table(results: &[SpecResult]) -> String {
    let mut rows: Vec<&SpecResult> = results.iter().collect();
    rows.sort_by_key(|r| (r.state == "passed", r.name.clone()));
    let mut out = String::from("| test | result | why, when it did not pass |\n|---|---|---|\n");
    for r in rows {
        let why = if r.state == "passed" {
            String::new()
        } else {
            r.message.lines().next().unwrap_or("").replace('|', "\\|")
        };
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            r.name.replace('|', "\\|"),
            r.state,
            why
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{dual_stack_selected, selected};

    #[test]
    fn the_selection_is_the_networking_tests_and_the_network_conformance_tests() {
        assert!(selected("[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]"));
        assert!(selected(
            "[sig-network] Networking should check kube-proxy urls"
        ));
        assert!(selected(
            "[sig-network] DNS should provide DNS for services [Conformance]"
        ));
        assert!(!selected(
            "[sig-network] Networking IPerf2 [Feature:Networking-Performance] should run iperf2"
        ));
        assert!(!selected("[sig-network] Networking should allow creating a Pod with an SCTP HostPort [LinuxOnly] [Serial]"));
        assert!(!selected(
            "[sig-network] Services should be able to up and down services"
        ));
        assert!(!selected("[sig-api-machinery] AdmissionWebhook [Privileged:ClusterAdmin] should honor timeout [Conformance]"));
    }

    #[test]
    fn the_dual_stack_selection_leaves_out_sctp() {
        assert!(dual_stack_selected(
            "[sig-network] [Feature:IPv6DualStack] should have ipv4 and ipv6 internal node ip"
        ));
        assert!(dual_stack_selected("[sig-network] [Feature:IPv6DualStack] Granular Checks: Services Secondary IP Family [LinuxOnly] should function for pod-Service: udp"));
        assert!(!dual_stack_selected("[sig-network] [Feature:IPv6DualStack] Granular Checks: Services Secondary IP Family [LinuxOnly] should function for pod-Service: sctp [Feature:SCTPConnectivity]"));
        assert!(!dual_stack_selected(
            "[sig-network] Networking should check kube-proxy urls"
        ));
        // The default run never selects them.
        assert!(!selected(
            "[sig-network] [Feature:IPv6DualStack] should have ipv4 and ipv6 internal node ip"
        ));
    }
}
