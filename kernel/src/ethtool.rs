//! The one link setting rtnetlink does not reach: transmit checksum
//! offload, through the `SIOCETHTOOL` ioctl (`ETHTOOL_GTXCSUM` and
//! `ETHTOOL_STXCSUM`, what `ethtool -K DEV tx off` sends). Some NICs and
//! hypervisors corrupt the checksums of offloaded VXLAN packets, so that
//! everything but ICMP fails (calico#9433); turning the offload off on the
//! VXLAN device is the known remedy. The ioctl itself is in [`crate::sys`],
//! on a socket of the calling thread's network namespace.

use crate::error::{KernelError, Result};
use crate::sys::{siocethtool, EthtoolValue, IfReq, IFNAMSIZ};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

fn call(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    let op = || format!("ethtool on {ifname}");
    if ifname.is_empty() || ifname.len() >= IFNAMSIZ {
        return Err(KernelError::io(op())(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a link name",
        )));
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| KernelError::io(op())(e.into()))?;
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        data: &mut value,
        _rest: [0; 24 - std::mem::size_of::<usize>()],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    siocethtool(&sock, &mut req).map_err(|e| KernelError::io(op())(e.into()))?;
    Ok(value.data)
}

/// Whether `ifname` offloads transmit checksums.
pub fn tx_checksum(ifname: &str) -> Result<bool> {
    call(ifname, ETHTOOL_GTXCSUM, 0).map(|on| on != 0)
}

/// Turn transmit checksum offload of `ifname` on or off.
pub fn set_tx_checksum(ifname: &str, on: bool) -> Result<()> {
    call(ifname, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_that_is_not_there_is_an_error_naming_it() {
        let err = tx_checksum("trl-none-such").unwrap_err().to_string();
        assert!(err.contains("trl-none-such"), "{err}");
        assert!(tx_checksum("a-name-far-too-long-for-a-link").is_err());
    }
}
