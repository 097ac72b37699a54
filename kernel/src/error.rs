use std::path::PathBuf;

/// A kernel operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("nftables: {0}")]
    Nftables(String),
    /// A device with the wanted name exists but is of another kind (a veth
    /// where a bridge is wanted, ...).
    #[error("{name} already exists and is not a {expected} (it is {found})")]
    WrongKind {
        name: String,
        expected: &'static str,
        found: String,
    },
}

pub type Result<T> = std::result::Result<T, KernelError>;

impl KernelError {
    pub fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
        let op = op.into();
        move |source| KernelError::Netlink { op, source }
    }

    pub fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
        let op = op.into();
        move |source| KernelError::Io { op, source }
    }

    /// The kernel's errno, when the failure carries one (EEXIST, ENOENT, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            KernelError::Netns { source, .. } => Some(*source as i32),
            KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, KernelError::NotFound(_))
            || matches!(self.errno(), Some(e) if e == libc_errno::ENOENT || e == libc_errno::ENODEV || e == libc_errno::ESRCH)
    }

    /// The kernel does not know the request (EOPNOTSUPP): a feature newer
    /// than the running kernel, such as nexthop objects before Linux 5.3.
    pub fn is_unsupported(&self) -> bool {
        self.errno() == Some(libc_errno::EOPNOTSUPP)
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }
}

/// errno values, through nix so that no libc dependency is needed.
pub(crate) mod libc_errno {
    use nix::errno::Errno;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ESRCH: i32 = Errno::ESRCH as i32;
    pub const EEXIST: i32 = Errno::EEXIST as i32;
    pub const EOPNOTSUPP: i32 = Errno::EOPNOTSUPP as i32;
}
