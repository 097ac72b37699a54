//! Seeding `<prefix>/config` from the ConfigMap: written only when absent, in
//! one etcd transaction, so that many nodes starting at once write it once
//! and a running cluster's network is never changed under it.

use crate::flags::EtcdArgs;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use std::path::Path;
use std::time::{Duration, Instant};
use trellis_common::cluster_config::ClusterConfig;
use trellis_common::etcd::EtcdError;

/// How long the installer keeps trying to reach etcd before it gives up
/// (and the kubelet restarts it with its own back-off).
pub const ETCD_WAIT: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("reading the cluster config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cluster config {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("etcd: {0}")]
    Connect(#[from] EtcdError),
    #[error("writing {key} to etcd at {endpoints} (gave up after {waited:?}): {source}")]
    Request {
        key: String,
        endpoints: String,
        waited: Duration,
        #[source]
        source: etcd_client::Error,
    },
}

/// What the seed found in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeded {
    /// The key was absent and now holds the file's config.
    Created,
    /// The key already held the same config.
    Unchanged,
    /// The key holds something else; it was left as it is.
    Differs { existing: String },
}

/// Read the cluster config file and check it as every agent will
/// ([`ClusterConfig::parse`]); the JSON to store.
pub fn load(path: &Path) -> Result<(ClusterConfig, String), SeedError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SeedError::Read {
        path: shown.clone(),
        source,
    })?;
    let config = ClusterConfig::parse(&bytes).map_err(|e| SeedError::Invalid {
        path: shown,
        reason: e.to_string(),
    })?;
    let json = serde_json::to_string(&config).expect("cluster config serializes");
    Ok((config, json))
}

/// Compare what etcd holds with the config we would have written.
pub fn judge(existing: &[u8], ours: &ClusterConfig) -> Seeded {
    match ClusterConfig::parse(existing) {
        Ok(theirs) if &theirs == ours => Seeded::Unchanged,
        _ => Seeded::Differs {
            existing: String::from_utf8_lossy(existing).into_owned(),
        },
    }
}

/// Write the config at `path` to `<prefix>/config` unless the key exists.
pub async fn seed(path: &Path, etcd: &EtcdArgs) -> Result<(String, Seeded), SeedError> {
    let (config, json) = load(path)?;
    let settings = etcd.settings();
    let key = settings.keys().config();
    let etcd_client = settings.connect().await?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), json, None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let started = Instant::now();
    let response = loop {
        let mut picked = etcd_client.pick().await;
        match picked.client.txn(txn.clone()).await {
            Ok(response) => break response,
            Err(source) if started.elapsed() >= ETCD_WAIT => {
                return Err(SeedError::Request {
                    key,
                    endpoints: etcd.etcd_endpoints.join(","),
                    waited: started.elapsed(),
                    source,
                })
            }
            Err(e) => {
                etcd_client.failed(picked.index);
                log::warn!(
                    "etcd not reachable yet at {} ({e}); retrying",
                    picked.endpoint
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    if response.succeeded() {
        return Ok((key, Seeded::Created));
    }
    let existing = response
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .unwrap_or_default();
    Ok((key, judge(&existing, &config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("cluster-config.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn load_fills_defaults_and_stores_the_documented_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), r#"{"network": "10.244.0.0/16"}"#);
        let (config, json) = load(&path).unwrap();
        assert_eq!(config.subnet_len, 24);
        assert_eq!(
            json,
            r#"{"network":"10.244.0.0/16","subnetLen":24,"vni":1,"port":8472}"#
        );
    }

    #[test]
    fn load_refuses_what_the_agents_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            (
                r#"{"network": "10.244.0.0/16", "subnetLen": 8}"#,
                "subnetLen 8",
            ),
            (r#"{"network": "10.244.0.0/16", "vni": 0}"#, "vni 0"),
            (r#"{"network": "10.244.1.0/16"}"#, "host bits"),
            (r#"{"network": "10.244.0.0/16", "port": 0}"#, "port"),
            (r#"{"network": "10.244.0.0"}"#, "invalid cluster config"),
            ("not json", "invalid cluster config"),
        ] {
            let err = load(&write(dir.path(), text)).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let missing = load(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.to_string().contains("nope.json"), "{missing}");
    }

    #[test]
    fn judge_compares_meaning_not_bytes() {
        let ours: ClusterConfig = serde_json::from_str(r#"{"network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(
            judge(br#"{"port":8472,"network":"10.244.0.0/16"}"#, &ours),
            Seeded::Unchanged
        );
        assert_eq!(
            judge(br#"{"network":"10.245.0.0/16"}"#, &ours),
            Seeded::Differs {
                existing: r#"{"network":"10.245.0.0/16"}"#.into()
            }
        );
        assert!(matches!(judge(b"garbage", &ours), Seeded::Differs { .. }));
    }
}
