//! What can go wrong while allocating, and the CNI code each failure maps to.

use std::path::PathBuf;
use std::time::Duration;
use trellis_common::cni::{code, CniError};
use trellis_common::etcd::{describe, EtcdError};
use trellis_common::fs::LockError;

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
    /// `outcome_unknown`: the request may have been sent and applied (a
    /// connection dropped mid-call, "request timed out", "leader changed"),
    /// see `outcome_unknown`.
    #[error("etcd ({endpoints}) failed while {doing}: {detail}")]
    Etcd {
        endpoints: String,
        doing: &'static str,
        detail: String,
        outcome_unknown: bool,
    },

    /// Concurrent writers kept changing what this verb needed; nothing
    /// failed, and a retry may go through (code 11).
    #[error("{0}; try again")]
    Contended(String),

    /// Cluster mode before the agent has leased this node's subnet (code 11).
    /// For a named network: the network is not set up on this node (yet).
    #[error("{} for node \"{node}\" (neither {} nor in etcd): trellis-agent has not leased {} yet; is trellis-agent running on this node?",
        network.as_ref().map_or("no node record".to_string(), |n| format!("network {n} has no record")),
        path.display(),
        network.as_ref().map_or("this node's subnet".to_string(), |n| format!("a subnet of network {n} for it")))]
    NoNodeRecord {
        path: PathBuf,
        node: String,
        network: Option<String>,
    },

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

    /// etcd refused the user, or its role lacks a key the verb needs (code
    /// 106); the message names the key.
    #[error("{0}")]
    AccessDenied(String),

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
            | IpamError::Contended(_)
            | IpamError::NoNodeRecord { .. }
            | IpamError::LockTimeout { .. } => code::TRY_AGAIN_LATER,
            IpamError::Exhausted { .. } => code::POOL_EXHAUSTED,
            IpamError::AddressUnavailable(_) => code::ADDRESS_UNAVAILABLE,
            IpamError::CheckFailed(_) => code::CHECK_FAILED,
            IpamError::Store { .. } | IpamError::Corrupt { .. } => code::STORE,
            IpamError::AccessDenied(_) => code::ETCD_ACCESS,
        }
    }

    /// Whether a write that failed this way may still have been applied, or
    /// apply later: no answer in time, or an error that does not say the
    /// request was refused.
    pub fn may_have_applied(&self) -> bool {
        match self {
            IpamError::EtcdTimeout { .. } => true,
            IpamError::Etcd {
                outcome_unknown, ..
            } => *outcome_unknown,
            _ => false,
        }
    }

    pub(crate) fn store(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.into();
        move |source| IpamError::Store { path, source }
    }
}

/// A lock not obtained in time is "try again" (11); one that cannot be
/// created is a store failure (105).
impl From<LockError> for IpamError {
    fn from(e: LockError) -> IpamError {
        match e {
            LockError::Timeout { path, after } => IpamError::LockTimeout { path, after },
            LockError::Io { path, source } => IpamError::Store { path, source },
        }
    }
}

/// Settings that cannot work are configuration errors (7); an etcd that
/// cannot be reached is "try again" (11), and the request never left.
impl From<EtcdError> for IpamError {
    fn from(e: EtcdError) -> IpamError {
        match e {
            EtcdError::Invalid(msg) => IpamError::Config(msg),
            EtcdError::Timeout { endpoints, after } => IpamError::EtcdTimeout {
                endpoints,
                doing: "connecting",
                after,
            },
            EtcdError::Connect { endpoints, source } => IpamError::Etcd {
                endpoints,
                doing: "connecting",
                detail: describe(&source),
                outcome_unknown: false,
            },
            refused @ EtcdError::Refused { .. } => IpamError::AccessDenied(refused.to_string()),
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        CniError::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_without_an_answer_are_fenced() {
        let etcd = |outcome_unknown| IpamError::Etcd {
            endpoints: "http://192.0.2.254:2379".into(),
            doing: "allocating an address",
            detail: "connection reset".into(),
            outcome_unknown,
        };
        assert!(etcd(true).may_have_applied());
        assert!(!etcd(false).may_have_applied());
        assert!(IpamError::EtcdTimeout {
            endpoints: "http://192.0.2.254:2379".into(),
            doing: "allocating an address",
            after: Duration::from_secs(3),
        }
        .may_have_applied());
        assert!(!IpamError::Exhausted {
            pool: "10.244.1.0/24".into()
        }
        .may_have_applied());
    }
}
