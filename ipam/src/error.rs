//! What can go wrong while allocating, and the CNI code each failure maps to.

use std::path::PathBuf;
use std::time::Duration;
use trellis_common::cni::{code, CniError};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The `ipam` configuration cannot work (code 7).
    #[error("invalid IPAM configuration: {0}")]
    Config(String),

    /// A malformed `CNI_ARGS` value (code 4).
    #[error("CNI_ARGS: {0}")]
    InvalidArgs(String),

    /// etcd did not answer in time (code 11: the runtime retries).
    #[error("etcd ({endpoints}) did not answer within {after:?} while {doing}")]
    EtcdTimeout {
        endpoints: String,
        doing: &'static str,
        after: Duration,
    },

    /// etcd answered with an error or could not be reached (code 11).
    #[error("etcd ({endpoints}) failed while {doing}: {detail}")]
    Etcd {
        endpoints: String,
        doing: &'static str,
        detail: String,
    },

    /// Cluster mode before the agent has leased this node's subnet (code 11).
    #[error("no node record for node \"{node}\" (neither {} nor in etcd): trellis-agent has not leased this node's subnet yet; is trellis-agent running on this node?", state_dir.join(trellis_common::node::NODE_RECORD_FILE).display())]
    NoNodeRecord { state_dir: PathBuf, node: String },

    /// Another allocation on this node held the lock for too long (code 11).
    #[error("timed out after {after:?} waiting for the allocation lock {}", path.display())]
    LockTimeout { path: PathBuf, after: Duration },

    /// No free address left (code 102).
    #[error("no free address left in {pool}")]
    Exhausted { pool: String },

    /// A requested static address cannot be given (code 103).
    #[error("{0}")]
    AddressUnavailable(String),

    /// CHECK found no allocation or a different one (code 104).
    #[error("{0}")]
    CheckFailed(String),

    /// The local store could not be read or written (code 105).
    #[error("local store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A stored record does not decode (code 105).
    #[error("corrupt allocation record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl IpamError {
    /// The CNI error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            IpamError::Config(_) => code::INVALID_CONFIG,
            IpamError::InvalidArgs(_) => code::INVALID_ENVIRONMENT,
            IpamError::EtcdTimeout { .. }
            | IpamError::Etcd { .. }
            | IpamError::NoNodeRecord { .. }
            | IpamError::LockTimeout { .. } => code::TRY_AGAIN_LATER,
            IpamError::Exhausted { .. } => code::POOL_EXHAUSTED,
            IpamError::AddressUnavailable(_) => code::ADDRESS_UNAVAILABLE,
            IpamError::CheckFailed(_) => code::CHECK_FAILED,
            IpamError::Store { .. } | IpamError::Corrupt { .. } => code::STORE,
        }
    }

    /// Whether the store could not be reached (as opposed to answering no).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            IpamError::EtcdTimeout { .. } | IpamError::Etcd { .. } | IpamError::LockTimeout { .. }
        )
    }

    pub(crate) fn store(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.into();
        move |source| IpamError::Store { path, source }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        CniError::new(e.code(), e.to_string())
    }
}

/// An etcd client error in words: for a gRPC status its message and the
/// transport causes under it ("tcp connect error: Connection refused"),
/// without the debug dump tonic's own Display gives.
pub(crate) fn describe_etcd(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut parts: Vec<String> = Vec::new();
            if !status.message().is_empty() {
                parts.push(status.message().to_string());
            }
            let mut cur = std::error::Error::source(status);
            while let Some(s) = cur {
                let text = s.to_string();
                if text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
                cur = s.source();
            }
            if parts.is_empty() {
                format!("{:?}", status.code())
            } else {
                parts.join(": ")
            }
        }
        other => chain(other),
    }
}

/// An error and all its causes on one line (tonic hides the useful part,
/// e.g. a TLS handshake failure, two levels down).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}
