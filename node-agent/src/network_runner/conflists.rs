//! One conflist per named network in the runtime's CNI configuration
//! directory (`--cni-conf-dir`), so that `podman network ls` lists the
//! network and `podman run --network NAME` attaches to it. Each is the
//! node's trellis conflist (the one the runtime uses, as install-cni wrote
//! it: etcd endpoints, TLS, credentials, chained plugins) with the network's
//! name, `"network": NAME` and no `"bridge"`, written beside it as
//! `<stem>.net-<name>.conflist`: that sorts right after the trellis
//! conflist, so a runtime that takes the first file never takes a named
//! network's.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use trellis_common::naming::PLUGIN_TYPE;
use trellis_common::network::{self, NetworkRecord};

/// The trellis plugin's entry of a conflist.
fn trellis_plugin(conflist: &Value) -> Option<&Value> {
    conflist["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["type"] == PLUGIN_TYPE)
}

/// The conflist of network `name` made from the node's trellis conflist.
pub fn derive(base: &Value, name: &str) -> Option<Value> {
    let mut conflist = base.clone();
    conflist["name"] = Value::from(name);
    let plugin = conflist["plugins"]
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["type"] == PLUGIN_TYPE)?
        .as_object_mut()?;
    plugin.remove("bridge");
    plugin.insert(network::CONF_KEY.into(), Value::from(name));
    Some(conflist)
}

/// The files of `dir` a runtime reads, in the order it reads them.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The named network a conflist of ours is for.
fn network_of(conflist: &Value) -> Option<String> {
    network::selected_by(trellis_plugin(conflist)?)
        .ok()
        .flatten()
}

/// The node's trellis conflist: the first file with a trellis plugin that
/// selects no named network.
fn base(dir: &Path) -> Option<(PathBuf, Value)> {
    config_files(dir).into_iter().find_map(|path| {
        let value = read(&path)?;
        (trellis_plugin(&value).is_some() && network_of(&value).is_none()).then_some((path, value))
    })
}

/// Write the conflist of every network of `networks` (replacing what is
/// there) and remove those of networks not in it. Problems are logged:
/// the networks work without their conflists, through the user's own.
pub fn sync(dir: &Path, networks: &BTreeMap<String, NetworkRecord>) {
    for path in config_files(dir) {
        let stale = read(&path)
            .and_then(|v| network_of(&v))
            .is_some_and(|name| !networks.contains_key(&name) && is_ours(&path, &name));
        if stale {
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("removed {}", path.display()),
                Err(e) => log::warn!("removing {}: {e}", path.display()),
            }
        }
    }
    if networks.is_empty() {
        return;
    }
    let Some((base_path, base)) = base(dir) else {
        log::warn!(
            "no trellis conflist in {} to make the named networks' conflists from",
            dir.display()
        );
        return;
    };
    for name in networks.keys() {
        let Some(conflist) = derive(&base, name) else {
            continue;
        };
        let path = path_for(&base_path, name);
        if read(&path).as_ref() == Some(&conflist) {
            continue;
        }
        let mut text = serde_json::to_string_pretty(&conflist).expect("JSON value serializes");
        text.push('\n');
        // The base may hold the plugins' etcd password: as private as it.
        match trellis_common::fs::write_atomically(&path, text.as_bytes(), 0o600) {
            Ok(()) => log::info!("wrote {} for network {name}", path.display()),
            Err(e) => log::warn!("writing {}: {e}", path.display()),
        }
    }
}

/// `<stem of the trellis conflist>.net-<name>.conflist`, beside it.
fn path_for(base: &Path, name: &str) -> PathBuf {
    let stem = base.file_stem().unwrap_or_default().to_string_lossy();
    base.with_file_name(format!("{stem}.net-{name}.conflist"))
}

/// Whether `path` is named as this module names network `name`'s file.
fn is_ours(path: &Path, name: &str) -> bool {
    path.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.ends_with(&format!(".net-{name}.conflist")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_networks_conflist_is_the_nodes_with_its_name_and_no_bridge() {
        let dir = std::env::temp_dir().join(format!("trellis-conflists-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = json!({"cniVersion": "1.0.0", "name": "trellis", "plugins": [
            {"type": "trellis", "bridge": "trellis0", "stateDir": "/run/trellis",
             "ipam": {"type": "trellis-ipam", "etcdEndpoints": ["http://e:2379"]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]});
        std::fs::write(dir.join("10-trellis.conflist"), base.to_string()).unwrap();
        let record = |json: &str| NetworkRecord::parse("n", json.as_bytes()).unwrap();
        let mut nets = BTreeMap::new();
        nets.insert(
            "multihost".to_string(),
            record(r#"{"network":"10.0.0.0/16"}"#),
        );
        sync(&dir, &nets);
        let path = dir.join("10-trellis.net-multihost.conflist");
        let made = read(&path).unwrap();
        assert_eq!(made["name"], "multihost");
        assert_eq!(made["plugins"][0]["network"], "multihost");
        assert!(made["plugins"][0].get("bridge").is_none());
        assert_eq!(made["plugins"][0]["ipam"], base["plugins"][0]["ipam"]);
        assert_eq!(made["plugins"][1], base["plugins"][1]);
        // The runtime's first file stays the node's own.
        assert_eq!(config_files(&dir)[0], dir.join("10-trellis.conflist"));
        // A file of another network someone wrote by hand is left alone.
        let by_hand = dir.join("20-mine.conflist");
        std::fs::write(&by_hand, derive(&base, "mine").unwrap().to_string()).unwrap();
        sync(&dir, &BTreeMap::new());
        assert!(!path.exists());
        assert!(by_hand.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
