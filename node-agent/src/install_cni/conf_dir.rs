//! What the runtime's CNI configuration directory holds, against this
//! node's agent (for `trellisctl doctor`): the file the runtime uses (the
//! first `.conflist`/`.conf`/`.json` in lexical order, as libcni picks it)
//! must be a trellis network, valid, on this agent's bridge, state dir and
//! etcd prefix.

use super::conflist::{self, IPAM_TYPE};
use serde_json::Value;
use std::path::{Path, PathBuf};
use trellis_common::keys::Keys;
use trellis_common::naming::PLUGIN_TYPE;

/// What the trellis entry of the conflist must say.
#[derive(Debug, Clone)]
pub struct Expected {
    pub bridge: String,
    pub state_dir: PathBuf,
    pub keys: Keys,
}

/// The problems found in `dir`, worded for a person; empty when the
/// runtime's network is this agent's.
pub fn inspect(dir: &Path, expected: &Expected) -> Vec<String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
            })
            .collect(),
        Err(e) => {
            return vec![format!(
                "cannot read the CNI config dir {}: {e}",
                dir.display()
            )]
        }
    };
    files.sort();
    let Some(first) = files.first() else {
        return vec![format!(
            "no CNI config in {}: the runtime cannot start pods",
            dir.display()
        )];
    };
    let shown = first.display();
    let value: Value = match std::fs::read(first)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "{shown}, the config the runtime uses, does not read: {e}"
            )]
        }
    };
    if let Err(e) = conflist::check(&value) {
        return vec![format!(
            "{shown}, the config the runtime uses, is invalid: {e}"
        )];
    }
    let plugins = value["plugins"].as_array().cloned().unwrap_or_default();
    let Some(ours) = plugins.iter().find(|p| p["type"] == PLUGIN_TYPE) else {
        return vec![format!(
            "{shown} (network {}), the config the runtime uses, has no {PLUGIN_TYPE} plugin: pods do not join trellis",
            value["name"]
        )];
    };
    let mut problems = Vec::new();
    let mut differs = |what: &str, found: Option<&str>, want: &str| {
        if found != Some(want) {
            problems.push(format!(
                "{shown}: {what} is {}, this node's agent has {want}",
                found.map_or("unset".to_string(), |f| format!("{f:?}"))
            ));
        }
    };
    differs("\"bridge\"", ours["bridge"].as_str(), &expected.bridge);
    differs(
        "\"stateDir\"",
        ours["stateDir"].as_str(),
        &expected.state_dir.display().to_string(),
    );
    let ipam = &ours["ipam"];
    if ipam["type"] == IPAM_TYPE {
        let prefix = ipam["etcdPrefix"].as_str().map(Keys::new);
        let found = prefix.as_ref().map(Keys::prefix);
        let want = expected.keys.prefix();
        if found.unwrap_or(Keys::new("/trellis").prefix()) != want {
            problems.push(format!(
                "{shown}: the IPAM's etcdPrefix is {}, this node's agent uses {want}",
                found.unwrap_or("unset (/trellis)")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expected() -> Expected {
        Expected {
            bridge: "trellis0".into(),
            state_dir: "/run/trellis".into(),
            keys: Keys::new("/trellis"),
        }
    }

    fn conflist(bridge: &str, prefix: &str) -> String {
        json!({"cniVersion": "1.0.0", "name": "trellis", "plugins": [
            {"type": "trellis", "bridge": bridge, "stateDir": "/run/trellis",
             "ipam": {"type": "trellis-ipam", "etcdPrefix": prefix}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]})
        .to_string()
    }

    #[test]
    fn the_file_the_runtime_uses_is_judged() {
        let dir = tempfile::tempdir().unwrap();
        let found = inspect(dir.path(), &expected());
        assert!(found[0].starts_with("no CNI config in"), "{found:?}");
        std::fs::write(
            dir.path().join("10-trellis.conflist"),
            conflist("trellis0", "trellis/"),
        )
        .unwrap();
        assert!(inspect(dir.path(), &expected()).is_empty());
        // A file that sorts first and is not trellis takes the pods.
        std::fs::write(
            dir.path().join("05-other.conflist"),
            json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]})
                .to_string(),
        )
        .unwrap();
        let found = inspect(dir.path(), &expected());
        assert!(
            found[0].contains("05-other.conflist") && found[0].contains("no trellis plugin"),
            "{found:?}"
        );
        std::fs::remove_file(dir.path().join("05-other.conflist")).unwrap();
        // Another bridge and another prefix than the agent's.
        std::fs::write(
            dir.path().join("10-trellis.conflist"),
            conflist("br9", "/other"),
        )
        .unwrap();
        let found = inspect(dir.path(), &expected());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("\"bridge\" is \"br9\", this node's agent has trellis0"),
            "{found:?}"
        );
        assert!(
            found[1].contains("etcdPrefix is /other, this node's agent uses /trellis"),
            "{found:?}"
        );
        std::fs::write(dir.path().join("10-trellis.conflist"), "{").unwrap();
        assert!(inspect(dir.path(), &expected())[0].contains("does not read"));
    }
}
