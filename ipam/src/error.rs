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
            | IpamError::Contended(_)
            | IpamError::NoNodeRecord { .. }
            | IpamError::LockTimeout { .. } => code::TRY_AGAIN_LATER,
            IpamError::Exhausted { .. } => code::POOL_EXHAUSTED,
            IpamError::AddressUnavailable(_) => code::ADDRESS_UNAVAILABLE,
            IpamError::CheckFailed(_) => code::CHECK_FAILED,
            IpamError::Store { .. } | IpamError::Corrupt { .. } => code::STORE,
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
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        CniError::new(e.code(), e.to_string())
    }
}

/// Whether a request that failed with `e` may have reached etcd and been (or
/// still be) applied. Only errors that say the request was refused, or never
/// sent, are "no": etcd's own refusals (bad request, permission, too many
/// requests, ...) and a connection that could not be opened. A dropped
/// connection, a cancelled call, "request timed out" or "leader changed"
/// (`Unavailable`) leave it open.
pub(crate) fn outcome_unknown(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated => false,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss => !never_connected(status),
        },
        etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A status whose cause is a refused connection: the request never left.
fn never_connected(status: &tonic::Status) -> bool {
    let mut cur = std::error::Error::source(status);
    while let Some(cause) = cur {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cur = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tonic::{Code, Status};

    fn status(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, msg))
    }

    #[test]
    fn dropped_or_timed_out_requests_may_have_applied() {
        for e in [
            status(Code::Unavailable, "etcdserver: request timed out"),
            status(Code::Unavailable, "etcdserver: leader changed"),
            status(Code::Unknown, "h2 protocol error: connection reset"),
            status(Code::Cancelled, "operation was canceled"),
            status(Code::Internal, "stream closed"),
            etcd_client::Error::IoError(std::io::ErrorKind::BrokenPipe.into()),
        ] {
            assert!(outcome_unknown(&e), "{e:?}");
        }
    }

    #[test]
    fn refused_or_unsent_requests_did_not_apply() {
        for e in [
            status(Code::ResourceExhausted, "etcdserver: too many requests"),
            status(Code::InvalidArgument, "etcdserver: request is too large"),
            status(Code::PermissionDenied, "etcdserver: permission denied"),
            status(Code::FailedPrecondition, "etcdserver: not capable"),
            etcd_client::Error::InvalidArgs("no endpoints".into()),
        ] {
            assert!(!outcome_unknown(&e), "{e:?}");
        }
        // Unavailable because the connection could not be opened at all.
        let mut refused = Status::new(Code::Unavailable, "tcp connect error");
        refused.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!outcome_unknown(&etcd_client::Error::GRpcStatus(refused)));
    }

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
