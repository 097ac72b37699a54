//! The installer against temporary directories standing in for the image,
//! the host's /opt/cni/bin and /etc/cni/net.d, and the Secret mount.

use super::*;
use crate::flags::EtcdArgs;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

struct Node {
    _root: TempDir,
    image: PathBuf,
    secrets: PathBuf,
    opts: InstallOptions,
}

fn node() -> Node {
    let root = tempfile::tempdir().unwrap();
    let image = root.path().join("image");
    let secrets = root.path().join("secrets");
    fs::create_dir_all(&image).unwrap();
    fs::create_dir_all(&secrets).unwrap();
    fs::write(image.join("trellis"), b"\x7fELF trellis v1").unwrap();
    fs::write(image.join("trellis-ipam"), b"\x7fELF trellis-ipam v1").unwrap();
    let mut opts = InstallOptions::new(EtcdArgs {
        etcd_endpoints: vec!["http://192.0.2.10:2379".into()],
        etcd_prefix: "/trellis".into(),
        etcd_cafile: None,
        etcd_certfile: None,
        etcd_keyfile: None,
        etcd_username: None,
        etcd_password: None,
    });
    opts.plugin_dir = Some(image.clone());
    opts.cni_bin_dir = root.path().join("host/opt/cni/bin");
    opts.cni_conf_dir = root.path().join("host/etc/cni/net.d");
    Node {
        _root: root,
        image,
        secrets,
        opts,
    }
}

/// A file that looks like PEM of `label` (the installer checks that much).
fn pem(label: &str, body: &str) -> String {
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

fn install(opts: &InstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    install_files(opts, &mut report).map(|()| report)
}

fn conflist(opts: &InstallOptions) -> Value {
    serde_json::from_slice(&fs::read(opts.conflist_path()).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn key(path: PathBuf) -> String {
    path.display().to_string()
}

#[test]
fn first_run_installs_everything_second_run_changes_nothing() {
    let n = node();
    let report = install(&n.opts).unwrap();
    let bin = &n.opts.cni_bin_dir;
    for name in PLUGINS {
        let path = bin.join(name);
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(n.image.join(name)).unwrap()
        );
        assert_eq!(mode(&path), 0o755);
        assert_eq!(report.change_of(&key(path)), Some(Change::Created));
    }
    let conf = conflist(&n.opts);
    assert_eq!(conf["name"], "trellis");
    let ipam = &conf["plugins"][0]["ipam"];
    assert_eq!(ipam["etcdEndpoints"][0], "http://192.0.2.10:2379");
    assert_eq!(ipam["etcdPrefix"], "/trellis");
    assert_eq!(conf["plugins"][0]["stateDir"], "/run/trellis");
    assert_eq!(mode(&n.opts.conflist_path()), 0o644);
    assert_eq!(
        report.change_of(&key(n.opts.conflist_path())),
        Some(Change::Created)
    );
    assert!(report.changed());
    assert!(report.warnings.is_empty(), "{report}");

    let again = install(&n.opts).unwrap();
    assert!(!again.changed(), "{again}");
    assert_eq!(again.entries.len(), 3, "{again}");
    let text = again.to_string();
    assert!(text.lines().all(|l| l.starts_with("unchanged ")), "{text}");
    // Only the installed files, no temporaries.
    assert_eq!(names(bin), vec!["trellis", "trellis-ipam"]);
    assert_eq!(names(&n.opts.cni_conf_dir), vec!["10-trellis.conflist"]);
}

#[test]
fn a_new_image_updates_only_what_changed() {
    let n = node();
    install(&n.opts).unwrap();
    fs::write(n.image.join("trellis-ipam"), b"\x7fELF trellis-ipam v2").unwrap();
    let report = install(&n.opts).unwrap();
    let bin = &n.opts.cni_bin_dir;
    assert_eq!(
        report.change_of(&key(bin.join("trellis-ipam"))),
        Some(Change::Updated)
    );
    assert_eq!(
        report.change_of(&key(bin.join("trellis"))),
        Some(Change::Unchanged)
    );
    assert_eq!(
        fs::read(bin.join("trellis-ipam")).unwrap(),
        b"\x7fELF trellis-ipam v2"
    );
}

#[test]
fn new_endpoints_rewrite_the_conflist() {
    let mut n = node();
    install(&n.opts).unwrap();
    n.opts.etcd.etcd_endpoints = vec![
        "http://192.0.2.11:2379".into(),
        "http://192.0.2.12:2379".into(),
    ];
    n.opts.etcd.etcd_prefix = "/pods".into();
    let report = install(&n.opts).unwrap();
    assert_eq!(
        report.change_of(&key(n.opts.conflist_path())),
        Some(Change::Updated)
    );
    let ipam = conflist(&n.opts)["plugins"][0]["ipam"].clone();
    assert_eq!(
        ipam["etcdEndpoints"],
        serde_json::json!(["http://192.0.2.11:2379", "http://192.0.2.12:2379"])
    );
    assert_eq!(ipam["etcdPrefix"], "/pods");
}

#[test]
fn tls_files_are_copied_for_the_host_and_removed_when_tls_is_off() {
    let mut n = node();
    for (name, label, body) in [
        ("ca.crt", "CERTIFICATE", "CA"),
        ("tls.crt", "CERTIFICATE", "CERT"),
        ("tls.key", "PRIVATE KEY", "KEY"),
    ] {
        fs::write(n.secrets.join(name), pem(label, body)).unwrap();
    }
    n.opts.etcd.etcd_endpoints = vec!["https://192.0.2.10:2379".into()];
    n.opts.etcd.etcd_cafile = Some(n.secrets.join("ca.crt"));
    n.opts.etcd.etcd_certfile = Some(n.secrets.join("tls.crt"));
    n.opts.etcd.etcd_keyfile = Some(n.secrets.join("tls.key"));
    install(&n.opts).unwrap();

    let tls_dir = n.opts.cni_conf_dir.join("trellis-tls");
    let ipam = conflist(&n.opts)["plugins"][0]["ipam"].clone();
    for (conf_key, file, body, file_mode) in [
        ("etcdCACert", "etcd-ca.pem", pem("CERTIFICATE", "CA"), 0o644),
        (
            "etcdCert",
            "etcd-cert.pem",
            pem("CERTIFICATE", "CERT"),
            0o644,
        ),
        ("etcdKey", "etcd-key.pem", pem("PRIVATE KEY", "KEY"), 0o600),
    ] {
        let path = tls_dir.join(file);
        assert_eq!(ipam[conf_key], path.display().to_string());
        assert_eq!(fs::read_to_string(&path).unwrap(), body);
        assert_eq!(mode(&path), file_mode, "{file}");
    }
    assert!(!install(&n.opts).unwrap().changed());

    // Rotated key: only the key changes.
    fs::write(n.secrets.join("tls.key"), pem("PRIVATE KEY", "KEY2")).unwrap();
    let report = install(&n.opts).unwrap();
    assert_eq!(
        report.change_of(&key(tls_dir.join("etcd-key.pem"))),
        Some(Change::Updated)
    );
    assert_eq!(
        report.change_of(&key(n.opts.conflist_path())),
        Some(Change::Unchanged)
    );

    n.opts.etcd.etcd_endpoints = vec!["http://192.0.2.10:2379".into()];
    n.opts.etcd.etcd_cafile = None;
    n.opts.etcd.etcd_certfile = None;
    n.opts.etcd.etcd_keyfile = None;
    let report = install(&n.opts).unwrap();
    assert_eq!(
        report.change_of(&key(tls_dir.join("etcd-key.pem"))),
        Some(Change::Removed)
    );
    assert!(names(&tls_dir).is_empty());
    let ipam = conflist(&n.opts)["plugins"][0]["ipam"].clone();
    assert!(ipam.get("etcdKey").is_none() && ipam.get("etcdCACert").is_none());
}

#[test]
fn bad_inputs_fail_before_anything_is_written() {
    let n = node();
    let mut half = n.opts.clone();
    fs::write(n.secrets.join("tls.crt"), "CERT").unwrap();
    half.etcd.etcd_endpoints = vec!["https://192.0.2.10:2379".into()];
    fs::write(n.secrets.join("ca.crt"), pem("CERTIFICATE", "CA")).unwrap();
    half.etcd.etcd_cafile = Some(n.secrets.join("ca.crt"));
    half.etcd.etcd_certfile = Some(n.secrets.join("tls.crt"));
    let err = install(&half).unwrap_err();
    assert!(matches!(err, InstallError::Etcd(_)), "{err}");
    assert!(err.to_string().contains("go together"), "{err}");
    // A key that is not PEM is refused, not copied to the host.
    let mut not_pem = half.clone();
    not_pem.etcd.etcd_keyfile = Some(n.secrets.join("tls.crt"));
    fs::write(n.secrets.join("tls.crt"), pem("CERTIFICATE", "CERT")).unwrap();
    let err = install(&not_pem).unwrap_err().to_string();
    assert!(err.contains("holds no PEM private key"), "{err}");

    let mut bad_json = n.opts.clone();
    let template = n.secrets.join("10-trellis.conflist");
    fs::write(&template, "{\"cniVersion\": ").unwrap();
    bad_json.conflist_template = Some(template.clone());
    let err = install(&bad_json).unwrap_err();
    assert!(matches!(err, InstallError::TemplateSyntax { .. }), "{err}");

    let mut no_trellis = n.opts.clone();
    fs::write(
        &template,
        r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}"#,
    )
    .unwrap();
    no_trellis.conflist_template = Some(template);
    let err = install(&no_trellis).unwrap_err().to_string();
    assert!(
        err.contains("exactly one plugin of type \"trellis\""),
        "{err}"
    );

    for bad in [
        "../10-trellis.conflist",
        "10-trellis.conf",
        ".hidden.conflist",
    ] {
        let mut named = n.opts.clone();
        named.conflist_name = bad.into();
        assert!(
            matches!(install(&named), Err(InstallError::ConflistName(_))),
            "{bad}"
        );
    }

    let mut missing = n.opts.clone();
    missing.plugin_dir = Some(n.secrets.clone());
    let err = install(&missing).unwrap_err().to_string();
    assert!(err.contains("secrets/trellis is missing"), "{err}");

    assert!(names(&n.opts.cni_bin_dir).is_empty());
    assert!(names(&n.opts.cni_conf_dir).is_empty());
}

#[test]
fn the_configmap_template_is_used_and_completed() {
    let mut n = node();
    let template = n.secrets.join("template.conflist");
    fs::write(
        &template,
        r#"{"cniVersion": "1.1.0", "name": "k8s-pods", "plugins": [
             {"type": "trellis", "mtu": 1400, "ipam": {"type": "trellis-ipam"}},
             {"type": "portmap", "capabilities": {"portMappings": true}},
             {"type": "bandwidth", "capabilities": {"bandwidth": true}}]}"#,
    )
    .unwrap();
    n.opts.conflist_template = Some(template);
    n.opts.bridge = "cbr1".into();
    n.opts.state_dir = "/var/run/trellis-b".into();
    install(&n.opts).unwrap();
    let conf = conflist(&n.opts);
    assert_eq!(conf["name"], "k8s-pods");
    assert_eq!(conf["cniVersion"], "1.1.0");
    assert_eq!(conf["plugins"][0]["mtu"], 1400);
    assert_eq!(conf["plugins"][0]["bridge"], "cbr1");
    assert_eq!(conf["plugins"][0]["stateDir"], "/var/run/trellis-b");
    assert_eq!(conf["plugins"][2]["type"], "bandwidth");
}

#[test]
fn an_earlier_config_file_is_reported() {
    let n = node();
    fs::create_dir_all(&n.opts.cni_conf_dir).unwrap();
    fs::write(n.opts.cni_conf_dir.join("05-other.conflist"), "{}").unwrap();
    fs::write(n.opts.cni_conf_dir.join("99-later.conf"), "{}").unwrap();
    let report = install(&n.opts).unwrap();
    assert_eq!(report.warnings.len(), 1, "{report}");
    assert!(report.warnings[0].contains("05-other.conflist"), "{report}");
    assert!(!report.warnings[0].contains("99-later"), "{report}");
    assert!(report.to_string().contains("warning: "));
}

#[test]
fn readers_only_ever_see_a_whole_conflist() {
    let mut n = node();
    install(&n.opts).unwrap();
    let path = n.opts.conflist_path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 100_000 {
                let bytes = fs::read(&path).expect("the conflist never disappears");
                serde_json::from_slice::<Value>(&bytes).expect("never a partial file");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        n.opts.etcd.etcd_endpoints = vec![format!("http://192.0.2.{}:2379", i % 2 + 10)];
        install(&n.opts).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

#[tokio::test]
async fn uninstall_removes_what_install_wrote_and_is_idempotent() {
    let mut n = node();
    fs::write(n.secrets.join("ca.crt"), pem("CERTIFICATE", "CA")).unwrap();
    n.opts.etcd.etcd_endpoints = vec!["https://192.0.2.10:2379".into()];
    n.opts.etcd.etcd_cafile = Some(n.secrets.join("ca.crt"));
    let report = run(&n.opts).await.unwrap();
    assert!(report.changed());
    fs::write(n.opts.cni_bin_dir.join("portmap"), b"someone else's").unwrap();

    n.opts.uninstall = true;
    let report = run(&n.opts).await.unwrap();
    assert_eq!(
        report.change_of(&key(n.opts.conflist_path())),
        Some(Change::Removed)
    );
    assert_eq!(report.entries[0].target, key(n.opts.conflist_path()));
    assert_eq!(names(&n.opts.cni_bin_dir), vec!["portmap"]);
    assert!(names(&n.opts.cni_conf_dir).is_empty());

    let again = run(&n.opts).await.unwrap();
    assert!(!again.changed(), "{again}");
    assert!(again.entries.iter().all(|e| e.change == Change::Absent));
}

#[tokio::test]
async fn an_invalid_cluster_config_stops_before_etcd_and_files() {
    let mut n = node();
    let path = n.secrets.join("cluster-config.json");
    fs::write(&path, r#"{"network": "10.244.0.0/16", "subnetLen": 33}"#).unwrap();
    n.opts.cluster_config = Some(path);
    // No etcd listens there: the config is refused before any connection.
    n.opts.etcd.etcd_endpoints = vec!["http://127.0.0.1:9".into()];
    let err = run(&n.opts).await.unwrap_err().to_string();
    assert!(err.contains("subnetLen 33"), "{err}");
    assert!(names(&n.opts.cni_conf_dir).is_empty());
}

#[test]
fn the_plugins_etcd_user_goes_into_a_conflist_only_root_reads() {
    let mut n = node();
    n.opts.cni_etcd_username = Some("trellis-cni".into());
    n.opts.cni_etcd_password = Some("s3cret".into());
    install(&n.opts).unwrap();
    let ipam = conflist(&n.opts)["plugins"][0]["ipam"].clone();
    assert_eq!(ipam["etcdUsername"], "trellis-cni");
    assert_eq!(ipam["etcdPassword"], "s3cret");
    assert_eq!(mode(&n.opts.conflist_path()), 0o600);

    // Taken away again: neither stays, and the file is world-readable.
    n.opts.cni_etcd_username = None;
    n.opts.cni_etcd_password = None;
    install(&n.opts).unwrap();
    let ipam = conflist(&n.opts)["plugins"][0]["ipam"].clone();
    assert!(ipam.get("etcdUsername").is_none() && ipam.get("etcdPassword").is_none());
    assert_eq!(mode(&n.opts.conflist_path()), 0o644);
}
