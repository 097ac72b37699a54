//! The agent's view of etcd: connecting (with TLS when asked) and the key
//! layout under the prefix.

use crate::flags::EtcdArgs;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use ipnetwork::Ipv4Network;
use std::time::Duration;

/// Budget of one etcd request; a stuck server fails it instead of hanging
/// the agent.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("reading {path}: {source}")]
    ReadTls {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--etcd-certfile and --etcd-keyfile go together")]
    HalfIdentity,
    #[error("connecting to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// The keys trellis uses, under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let trimmed = prefix.trim_end_matches('/');
        Keys {
            prefix: if trimmed.is_empty() {
                String::new()
            } else if trimmed.starts_with('/') {
                trimmed.to_string()
            } else {
                format!("/{trimmed}")
            },
        }
    }

    /// `<prefix>/config`: the cluster configuration.
    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/nodes/`: every node record.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// The node name of a key under [`Keys::nodes`].
    pub fn node_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.nodes())
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }

    /// `<prefix>/subnets/`: one key per leased node subnet.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// `<prefix>/subnets/10.244.3.0-24`.
    pub fn subnet(&self, subnet: Ipv4Network) -> String {
        format!("{}{}-{}", self.subnets(), subnet.network(), subnet.prefix())
    }

    pub fn subnet_of(&self, key: &str) -> Option<Ipv4Network> {
        let rest = key.strip_prefix(&self.subnets())?;
        let (ip, len) = rest.split_once('-')?;
        let net = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        (net.network() == net.ip()).then_some(net)
    }
}

/// Connect to etcd. The connection is lazy and reconnects by itself; every
/// request has a time budget and HTTP/2 keep-alives detect a dead server.
pub async fn connect(args: &EtcdArgs) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let wants_tls =
        args.etcd_cafile.is_some() || args.etcd_certfile.is_some() || args.etcd_keyfile.is_some();
    if wants_tls {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &args.etcd_cafile {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&args.etcd_certfile, &args.etcd_keyfile) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err(EtcdError::HalfIdentity),
        }
        options = options.with_tls(tls);
    }
    Client::connect(&args.etcd_endpoints, Some(options))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: args.etcd_endpoints.join(","),
            source,
        })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadTls {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        for prefix in ["/trellis", "/trellis/", "trellis"] {
            let k = Keys::new(prefix);
            assert_eq!(k.config(), "/trellis/config");
            assert_eq!(k.node("n1"), "/trellis/nodes/n1");
            assert_eq!(k.node_name_of("/trellis/nodes/n1"), Some("n1"));
            assert_eq!(k.node_name_of("/trellis/nodes/"), None);
            assert_eq!(k.node_name_of("/trellis/nodes/a/b"), None);
            let net: Ipv4Network = "10.244.3.0/24".parse().unwrap();
            assert_eq!(k.subnet(net), "/trellis/subnets/10.244.3.0-24");
            assert_eq!(k.subnet_of(&k.subnet(net)), Some(net));
            assert_eq!(k.subnet_of("/trellis/subnets/10.244.3.1-24"), None);
            assert_eq!(k.subnet_of("/trellis/subnets/junk"), None);
        }
    }
}
