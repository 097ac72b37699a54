//! One rtnetlink socket bound to one network namespace.

use crate::error::{KernelError, Result};
use crate::netns::{run_in_netns, NetnsFile};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};

/// A netlink socket in one namespace. Operations are `impl Netlink` blocks
/// in the module of their concept (links, addresses, routes, ...).
///
/// Requests share the socket and run concurrently, but the kernel runs one
/// dump per socket at a time and refuses a second with EBUSY: every dump
/// holds [`Netlink::dump_turn`] until it is read to the end.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    dumps: Arc<Mutex<()>>,
}

impl Netlink {
    /// A socket in the namespace of the calling thread. Must be called
    /// inside a tokio runtime, which drives the connection.
    pub fn current() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(KernelError::io("opening netlink socket"))?;
        tokio::spawn(conn);
        Ok(Netlink::of(handle))
    }

    fn of(handle: rtnetlink::Handle) -> Netlink {
        Netlink {
            handle,
            dumps: Arc::new(Mutex::new(())),
        }
    }

    /// A socket inside the namespace `ns`, opened on a dedicated thread; the
    /// socket stays bound to `ns` while the connection runs on this runtime.
    pub fn in_netns(ns: &NetnsFile) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = run_in_netns(ns, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(KernelError::io(format!(
            "opening netlink socket in {}",
            ns.path.display()
        )))?;
        tokio::spawn(conn);
        Ok(Netlink::of(handle))
    }

    /// This socket's turn for a dump: hold it until the dump is read.
    pub(crate) async fn dump_turn(&self) -> MutexGuard<'_, ()> {
        self.dumps.lock().await
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}
