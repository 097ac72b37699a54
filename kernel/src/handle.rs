//! One rtnetlink socket bound to one network namespace.

use crate::error::{KernelError, Result};
use crate::netns::{run_in_netns, NetnsFile};
use crate::nexthop_socket::NexthopSocket;
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};

/// A netlink socket in one namespace. Operations are `impl Netlink` blocks
/// in the module of their concept (links, addresses, routes, ...).
///
/// Requests share the socket and run concurrently, but the kernel runs one
/// dump per socket at a time and refuses a second with EBUSY: every dump
/// holds [`Netlink::dump_turn`] until it is read to the end.
///
/// Nexthop messages, which rtnetlink does not model, go over a second
/// connection in the same namespace, opened beside the first.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    dumps: Arc<Mutex<()>>,
    nexthops: NexthopSocket,
}

impl Netlink {
    /// A socket in the namespace of the calling thread. Must be called
    /// inside a tokio runtime, which drives the connection.
    pub fn current() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(KernelError::io("opening netlink socket"))?;
        tokio::spawn(conn);
        let nexthops = NexthopSocket::open().map_err(KernelError::io("opening netlink socket"))?;
        Ok(Netlink::of(handle, nexthops))
    }

    fn of(handle: rtnetlink::Handle, nexthops: NexthopSocket) -> Netlink {
        Netlink {
            handle,
            dumps: Arc::new(Mutex::new(())),
            nexthops,
        }
    }

    /// A socket inside the namespace `ns`, opened on a dedicated thread; the
    /// socket stays bound to `ns` while the connection runs on this runtime.
    pub fn in_netns(ns: &NetnsFile) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let opened = run_in_netns(ns, move || {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok((handle, NexthopSocket::open()?))
        })?;
        let (handle, nexthops) = opened.map_err(|e: std::io::Error| {
            KernelError::io(format!("opening netlink socket in {}", ns.path.display()))(e)
        })?;
        Ok(Netlink::of(handle, nexthops))
    }

    /// This socket's turn for a dump: hold it until the dump is read.
    pub(crate) async fn dump_turn(&self) -> MutexGuard<'_, ()> {
        self.dumps.lock().await
    }

    pub(crate) fn nexthop_socket(&self) -> &NexthopSocket {
        &self.nexthops
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}
