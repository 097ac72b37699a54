//! The network configuration list the installer writes: a template (the
//! ConfigMap's, or the built-in one) with the keys this node's agent decides
//! filled in, so that the plugins and the agent can never disagree on them.

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use trellis_common::cni::config::parse_version;
use trellis_common::cni::env::is_valid_identifier;
use trellis_common::cni::NetConf;
use trellis_common::keys::Keys;
use trellis_common::naming::PLUGIN_TYPE;

/// The `type` of trellis's IPAM plugin.
pub const IPAM_TYPE: &str = "trellis-ipam";

/// The conflist written when no template is given: the cluster-mode shape of
/// INTERFACES.md. cniVersion 1.0.0 rather than 1.1.0 because containerd 1.6
/// and 1.7 (libcni 1.1) reject 1.1.0 results; see the README.
pub fn default_template() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "plugins": [
            {
                "type": PLUGIN_TYPE,
                "bridge": trellis_common::node::DEFAULT_BRIDGE,
                "stateDir": trellis_common::node::DEFAULT_STATE_DIR,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {"type": IPAM_TYPE}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// Where the plugins, running on the host, find their copies of the etcd
/// TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The values the installer owns in the conflist.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub bridge: &'a str,
    pub state_dir: &'a Path,
    pub etcd_endpoints: &'a [String],
    pub etcd_prefix: &'a str,
    pub tls: TlsPaths,
    /// The plugins' etcd user and password.
    pub credentials: Option<(&'a str, &'a str)>,
}

/// Fill `template` in: on the `trellis` plugin `bridge` and `stateDir`; on
/// its `trellis-ipam` block the etcd endpoints, prefix and TLS paths (unless
/// the block is in single-host mode, i.e. names a `subnet`). Then check the
/// result the way a runtime and the plugins read it. Returns the JSON text,
/// pretty-printed with a final newline.
pub fn render(template: &Value, settings: &Settings) -> Result<String, String> {
    let mut conflist = template.clone();
    let plugins = conflist
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("the conflist has no \"plugins\" list")?;
    let mut trellis_plugins = 0;
    for plugin in plugins.iter_mut() {
        let plugin = plugin
            .as_object_mut()
            .ok_or("every entry of \"plugins\" must be an object")?;
        if plugin.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE) {
            continue;
        }
        trellis_plugins += 1;
        plugin.insert("bridge".into(), json!(settings.bridge));
        plugin.insert(
            "stateDir".into(),
            json!(settings.state_dir.to_string_lossy()),
        );
        let ipam = plugin
            .get_mut("ipam")
            .and_then(Value::as_object_mut)
            .ok_or("the trellis plugin has no \"ipam\" object")?;
        if ipam.get("type").and_then(Value::as_str) != Some(IPAM_TYPE) {
            continue;
        }
        if !ipam.contains_key("subnet") {
            fill_etcd(ipam, settings);
        }
    }
    if trellis_plugins != 1 {
        return Err(format!(
            "the conflist must hold exactly one plugin of type \"{PLUGIN_TYPE}\", it holds {trellis_plugins}"
        ));
    }
    check(&conflist)?;
    let mut text = serde_json::to_string_pretty(&conflist).expect("JSON value serializes");
    text.push('\n');
    Ok(text)
}

fn fill_etcd(ipam: &mut Map<String, Value>, settings: &Settings) {
    ipam.insert("etcdEndpoints".into(), json!(settings.etcd_endpoints));
    // In its one form: the plugins read any form the same way, but the
    // file then says what the agent's keys are.
    ipam.insert(
        "etcdPrefix".into(),
        json!(Keys::new(settings.etcd_prefix).prefix()),
    );
    match settings.credentials {
        Some((user, password)) => {
            ipam.insert("etcdUsername".into(), json!(user));
            ipam.insert("etcdPassword".into(), json!(password));
        }
        None => {
            ipam.remove("etcdUsername");
            ipam.remove("etcdPassword");
        }
    }
    for (key, path) in [
        ("etcdCACert", &settings.tls.ca),
        ("etcdCert", &settings.tls.cert),
        ("etcdKey", &settings.tls.key),
    ] {
        match path {
            Some(path) => {
                ipam.insert(key.into(), json!(path.to_string_lossy()));
            }
            None => {
                ipam.remove(key);
            }
        }
    }
}

/// What a runtime checks when it loads a conflist, and what every plugin
/// checks when it is handed its entry (libcni injects `name` and
/// `cniVersion` into each).
pub fn check(conflist: &Value) -> Result<(), String> {
    let top = conflist
        .as_object()
        .ok_or("the conflist is not a JSON object")?;
    let name = top
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the conflist has no \"name\"")?;
    if !is_valid_identifier(name) {
        return Err(format!("invalid network name {name:?}"));
    }
    let version = top
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or("the conflist has no \"cniVersion\"")?;
    parse_version(version).map_err(|e| e.to_string())?;
    let plugins = top
        .get("plugins")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("the conflist has no plugins")?;
    for (i, plugin) in plugins.iter().enumerate() {
        let mut entry = plugin
            .as_object()
            .cloned()
            .ok_or_else(|| format!("plugin {i} is not an object"))?;
        let kind = entry
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("plugin {i} has no \"type\""))?
            .to_string();
        entry.insert("name".into(), json!(name));
        entry.insert("cniVersion".into(), json!(version));
        NetConf::parse(Value::Object(entry).to_string().as_bytes())
            .map_err(|e| format!("plugin {i} ({kind}): {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(endpoints: &'a [String], tls: TlsPaths) -> Settings<'a> {
        Settings {
            bridge: "trellis0",
            state_dir: Path::new("/run/trellis"),
            etcd_endpoints: endpoints,
            etcd_prefix: "/trellis",
            tls,
            credentials: None,
        }
    }

    fn rendered(template: &Value, settings: &Settings) -> Value {
        serde_json::from_str(&render(template, settings).unwrap()).unwrap()
    }

    #[test]
    fn default_template_gets_etcd_and_node_settings() {
        let eps = vec!["http://10.0.0.10:2379".to_string()];
        let v = rendered(&default_template(), &settings(&eps, TlsPaths::default()));
        let trellis = &v["plugins"][0];
        assert_eq!(trellis["type"], "trellis");
        assert_eq!(trellis["bridge"], "trellis0");
        assert_eq!(trellis["stateDir"], "/run/trellis");
        assert_eq!(trellis["ipMasq"], true);
        assert_eq!(trellis["hairpinMode"], true);
        let ipam = &trellis["ipam"];
        assert_eq!(ipam["type"], "trellis-ipam");
        assert_eq!(ipam["etcdEndpoints"], json!(["http://10.0.0.10:2379"]));
        assert_eq!(ipam["etcdPrefix"], "/trellis");
        assert!(ipam.get("etcdCACert").is_none());
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn options_override_the_template_and_tls_paths_are_set_or_removed() {
        let template = json!({"cniVersion": "1.1.0", "name": "pods", "plugins": [
            {"type": "trellis", "bridge": "other0", "stateDir": "/tmp/x", "ipam": {
                "type": "trellis-ipam", "etcdEndpoints": ["http://old:2379"],
                "etcdCACert": "/old/ca.pem", "etcdCert": "/old/c.pem", "etcdKey": "/old/k.pem"}}]});
        let eps = vec!["https://a:2379".to_string(), "https://b:2379".to_string()];
        let tls = TlsPaths {
            ca: Some("/etc/cni/net.d/trellis-tls/etcd-ca.crt".into()),
            cert: None,
            key: None,
        };
        let v = rendered(&template, &settings(&eps, tls));
        let p = &v["plugins"][0];
        assert_eq!(p["bridge"], "trellis0");
        assert_eq!(p["stateDir"], "/run/trellis");
        assert_eq!(p["ipam"]["etcdEndpoints"], json!(eps));
        assert_eq!(
            p["ipam"]["etcdCACert"],
            "/etc/cni/net.d/trellis-tls/etcd-ca.crt"
        );
        assert!(p["ipam"].get("etcdCert").is_none());
        assert!(p["ipam"].get("etcdKey").is_none());
        assert_eq!(v["name"], "pods");
    }

    #[test]
    fn the_etcd_prefix_is_written_in_the_form_every_binary_reads() {
        let eps = vec!["http://10.0.0.10:2379".to_string()];
        for prefix in ["trellis", "/trellis", "/trellis/", "trellis/"] {
            let s = Settings {
                etcd_prefix: prefix,
                ..settings(&eps, TlsPaths::default())
            };
            let v = rendered(&default_template(), &s);
            assert_eq!(
                v["plugins"][0]["ipam"]["etcdPrefix"], "/trellis",
                "{prefix}"
            );
        }
    }

    #[test]
    fn single_host_ipam_is_left_alone() {
        let template = json!({"cniVersion": "1.0.0", "name": "local", "plugins": [
            {"type": "trellis", "ipam": {"type": "trellis-ipam", "subnet": "10.88.0.0/16",
             "dataDir": "/var/lib/trellis"}}]});
        let eps = vec!["http://127.0.0.1:2379".to_string()];
        let v = rendered(&template, &settings(&eps, TlsPaths::default()));
        assert_eq!(
            v["plugins"][0]["ipam"],
            json!({"type": "trellis-ipam", "subnet": "10.88.0.0/16", "dataDir": "/var/lib/trellis"})
        );
    }

    #[test]
    fn templates_a_runtime_would_reject_are_refused() {
        let eps = vec!["http://127.0.0.1:2379".to_string()];
        let s = settings(&eps, TlsPaths::default());
        let cases = [
            (
                json!({"cniVersion": "1.0.0", "name": "n"}),
                "no \"plugins\"",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "portmap"}]}),
                "exactly one plugin",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "trellis"}]}),
                "no \"ipam\"",
            ),
            (
                json!({"cniVersion": "0.2.0", "name": "n", "plugins": [
                    {"type": "trellis", "ipam": {"type": "trellis-ipam"}}]}),
                "incompatible CNI versions",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "a b", "plugins": [
                    {"type": "trellis", "ipam": {"type": "trellis-ipam"}}]}),
                "invalid network name",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
                    {"type": "trellis", "ipam": {"type": "trellis-ipam"}}, {"capabilities": {}}]}),
                "plugin 1 has no \"type\"",
            ),
        ];
        for (template, expected) in cases {
            let err = render(&template, &s).unwrap_err();
            assert!(err.contains(expected), "{template}: {err}");
        }
    }
}
