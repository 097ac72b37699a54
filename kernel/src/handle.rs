//! One rtnetlink socket bound to one network namespace.

use crate::error::{KernelError, Result};
use crate::netns::{run_in_netns, NetnsFile};

/// A netlink socket in one namespace. Operations are `impl Netlink` blocks
/// in the module of their concept (links, addresses, routes, ...).
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// A socket in the namespace of the calling thread. Must be called
    /// inside a tokio runtime, which drives the connection.
    pub fn current() -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(KernelError::io("opening netlink socket"))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
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
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}
