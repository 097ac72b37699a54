//! The DaemonSet's install-cni init container, replayed with the built
//! binaries against a real etcd on 127.0.0.1 and a temporary host: what it
//! writes to etcd and to the host, that a second run changes nothing, that a
//! cluster's existing config is never overwritten, and that the installed
//! plugins speak the shipped conflist's CNI version.

mod manifests_common;

use manifests_common::{describe, install_cni_command, report_lines, run, Host, Replay, Shipped};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use trellis_tests::bins::bin;
use trellis_tests::etcd::Etcd;

fn etcdctl(etcd: &Etcd, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .args(["--endpoints", &etcd.endpoint(), "--dial-timeout", "3s"])
        .args(["--command-timeout", "5s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .expect("running etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn install(shipped: &Shipped, replay: &Replay) -> std::process::Output {
    run(install_cni_command(
        shipped,
        replay,
        Command::new(bin("trellis-agent")),
    ))
}

#[test]
fn the_daemonset_installer_seeds_etcd_and_installs_the_shipped_conflist() {
    let shipped = Shipped::load();
    let etcd = Etcd::start().unwrap();
    let host = Host::new();
    let r = Replay::on(&host, etcd.endpoint());
    let prefix = shipped.data("etcd_prefix").to_owned();
    let conflist_path = host.cni_conf_dir().join("10-trellis.conflist");

    let out = install(&shipped, &r);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "stdout is for CNI results only");
    let report = report_lines(&out);
    let expect_created = [
        format!("etcd {prefix}/config"),
        host.cni_bin_dir().join("trellis").display().to_string(),
        host.cni_bin_dir()
            .join("trellis-ipam")
            .display()
            .to_string(),
        conflist_path.display().to_string(),
    ];
    for target in &expect_created {
        assert!(
            report.contains(&("created".to_owned(), target.clone())),
            "{target} not created:\n{}",
            describe(&out)
        );
    }

    // etcd holds the ConfigMap's cluster config, in the documented keys.
    let stored = etcdctl(
        &etcd,
        &["get", "--print-value-only", &format!("{prefix}/config")],
    );
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    let c = shipped.cluster_config();
    assert_eq!(
        stored,
        json!({"network": c.network.unwrap().to_string(), "subnetLen": c.subnet_len,
               "vni": c.vni, "port": c.port})
    );

    // The plugins are the built ones, executable.
    for name in ["trellis", "trellis-ipam"] {
        let installed = host.cni_bin_dir().join(name);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(bin(name)).unwrap(),
            "{name}"
        );
        assert_eq!(std::fs::metadata(&installed).unwrap().mode() & 0o777, 0o755);
    }

    // The conflist is the ConfigMap's, completed with this node's settings.
    let written: Value = serde_json::from_slice(&std::fs::read(&conflist_path).unwrap()).unwrap();
    let template = shipped.conflist();
    assert_eq!(written["name"], template["name"]);
    assert_eq!(written["cniVersion"], template["cniVersion"]);
    let types = |v: &Value| -> Vec<Value> {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].clone())
            .collect()
    };
    assert_eq!(types(&written), types(&template));
    let trellis = &written["plugins"][0];
    assert_eq!(trellis["stateDir"], host.state_dir().display().to_string());
    assert_eq!(trellis["bridge"], template["plugins"][0]["bridge"]);
    assert_eq!(trellis["ipam"]["etcdEndpoints"], json!([etcd.endpoint()]));
    assert_eq!(trellis["ipam"]["etcdPrefix"], prefix.as_str());
    assert!(trellis["ipam"].get("etcdKey").is_none());

    // A restarted init container changes nothing.
    let inode = std::fs::metadata(&conflist_path).unwrap().ino();
    let again = install(&shipped, &r);
    assert!(again.status.success(), "{}", describe(&again));
    let report = report_lines(&again);
    assert_eq!(report.len(), expect_created.len(), "{}", describe(&again));
    assert!(
        report.iter().all(|(change, _)| change == "unchanged"),
        "{}",
        describe(&again)
    );
    assert_eq!(std::fs::metadata(&conflist_path).unwrap().ino(), inode);
}

#[test]
fn a_cluster_config_already_in_etcd_is_never_overwritten() {
    let shipped = Shipped::load();
    let etcd = Etcd::start().unwrap();
    let host = Host::new();
    let r = Replay::on(&host, etcd.endpoint());
    let key = format!("{}/config", shipped.data("etcd_prefix"));
    let theirs = r#"{"network":"10.32.0.0/12","subnetLen":24,"vni":7,"port":4789}"#;
    etcdctl(&etcd, &["put", &key, theirs]);

    let out = install(&shipped, &r);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("10.32.0.0/12"),
        "the operator is told the ConfigMap and etcd differ:\n{stderr}"
    );
    assert!(report_lines(&out).contains(&("unchanged".to_owned(), format!("etcd {key}"))));
    let stored = etcdctl(&etcd, &["get", "--print-value-only", &key]);
    assert_eq!(stored.trim(), theirs);
}

#[test]
fn an_installer_that_cannot_write_fails_and_names_the_path() {
    let shipped = Shipped::load();
    let etcd = Etcd::start().unwrap();
    let host = Host::new();
    let r = Replay::on(&host, etcd.endpoint());
    // A file where the CNI bin dir should be.
    std::fs::create_dir_all(host.path("opt/cni")).unwrap();
    std::fs::write(host.cni_bin_dir(), b"not a directory").unwrap();
    let out = install(&shipped, &r);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("opt/cni/bin"), "{stderr}");
    assert!(
        !host.cni_conf_dir().join("10-trellis.conflist").exists(),
        "no conflist without plugins"
    );
}

/// CNI VERSION against the installed plugins: both speak the conflist's
/// cniVersion.
#[test]
fn the_installed_plugins_speak_the_shipped_cni_version() {
    let shipped = Shipped::load();
    let etcd = Etcd::start().unwrap();
    let host = Host::new();
    let r = Replay::on(&host, etcd.endpoint());
    let out = install(&shipped, &r);
    assert!(out.status.success(), "{}", describe(&out));
    let version = shipped.conflist()["cniVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    for name in ["trellis", "trellis-ipam"] {
        let mut child = Command::new(host.cni_bin_dir().join(name))
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(json!({"cniVersion": version}).to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: {}", describe(&out));
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        let supported = answer["supportedVersions"].as_array().unwrap();
        assert!(
            supported.contains(&json!(version)),
            "{name} supports {supported:?}, the conflist says {version}"
        );
    }
}
