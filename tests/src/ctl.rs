//! Running `trellisctl` as an operator does, from the underlay namespace of
//! a simulated cluster against its etcd: its output, and its JSON.

use crate::bins;
use crate::cluster::Cluster;
use serde_json::Value;
use std::process::Output;

/// `trellisctl <args>` from the underlay namespace, against the cluster's
/// etcd; its output.
pub fn ctl(cluster: &Cluster, args: &[&str]) -> Output {
    ctl_at(cluster, &cluster.etcd_endpoints().join(","), args)
}

pub fn ctl_at(cluster: &Cluster, endpoints: &str, args: &[&str]) -> Output {
    let bin = bins::bin("trellisctl").display().to_string();
    let mut argv = vec![bin.as_str(), "--etcd-endpoints", endpoints];
    argv.extend_from_slice(args);
    cluster.underlay().command(&argv).output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON `trellisctl -o json <args>` prints, after checking it exited 0.
pub fn ctl_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = ctl(cluster, &all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
}

/// `trellisctl -o json <args>` whatever its exit status: (status, JSON).
pub fn ctl_json_any(cluster: &Cluster, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = ctl(cluster, &all);
    let value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap_or(-1), value)
}

/// The findings of one kind in a `doctor -o json` report.
pub fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|all| all.iter().filter(|f| f["kind"] == kind).collect())
        .unwrap_or_default()
}

/// The findings of one kind, as (from, to, remedy), sorted.
pub fn of_kind(report: &Value, kind: &str) -> Vec<(String, String, String)> {
    let mut found: Vec<_> = findings(report, kind)
        .into_iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("from"), s("to"), s("remedy"))
        })
        .collect();
    found.sort();
    found
}
