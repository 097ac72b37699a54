//! The Kubernetes e2e suite (`e2e.test`, run by `ginkgo`) against the test
//! cluster. It runs in the underlay namespace, where the test runner of a
//! real cluster sits: on the nodes' network, the API server at
//! 127.0.0.1 as the kubeconfig says.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use super::daemon::{self, Namespaces};
use super::layout::{Layout, UNDERLAY_NS};
use super::ClusterInfo;

/// Where the JUnit report goes unless `--junit-report` is given.
pub fn report_dir(layout: &Layout) -> PathBuf {
    layout.state().join("e2e")
}

/// `ginkgo <ginkgo args> e2e.test -- <the cluster's flags> <e2e args>`, in
/// the underlay. `args` are ginkgo's flags, then optionally `--` and flags
/// of e2e.test.
pub fn command(layout: &Layout, info: &ClusterInfo, args: &[String]) -> Result<Command> {
    let (ginkgo_args, e2e_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let reports = report_dir(layout);
    std::fs::create_dir_all(&reports)?;
    let bin = &info.kube_bin;
    let mut argv = vec![bin.join("ginkgo").display().to_string()];
    if !ginkgo_args.iter().any(|a| a.starts_with("--junit-report")) {
        argv.push(format!(
            "--junit-report={}",
            reports.join("junit.xml").display()
        ));
    }
    argv.extend(["--timeout=90m".to_owned(), "--no-color".to_owned()]);
    argv.extend(ginkgo_args.iter().cloned());
    argv.push(bin.join("e2e.test").display().to_string());
    argv.push("--".to_owned());
    argv.extend([
        format!("--kubeconfig={}", layout.kubeconfig().display()),
        "--provider=skeleton".to_owned(),
        format!("--kubectl-path={}", bin.join("kubectl").display()),
        format!("--report-dir={}", reports.display()),
        "--allowed-not-ready-nodes=0".to_owned(),
        // Tests that need several nodes skip themselves without it.
        format!("--num-nodes={}", info.nodes.len()),
        "--dump-logs-on-failure=false".to_owned(),
    ]);
    argv.extend(e2e_args.iter().cloned());
    let mut cmd = daemon::command(&Namespaces::net(UNDERLAY_NS), &argv);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()))
        .env("KUBECONFIG", layout.kubeconfig())
        .current_dir(&reports);
    Ok(cmd)
}
