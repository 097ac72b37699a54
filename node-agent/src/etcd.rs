//! The agent's connection to etcd (with TLS when asked).

use crate::flags::EtcdArgs;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
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
