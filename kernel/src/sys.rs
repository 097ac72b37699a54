//! The crate's only `unsafe` code: the two calls that neither rtnetlink nor
//! nix's safe API reach. The `SIOCETHTOOL` ioctl (for [`crate::ethtool`]),
//! and the `IP_MTU_DISCOVER` / `IPV6_MTU_DISCOVER` socket option that makes
//! a UDP socket send with don't-fragment set (for the agents' path MTU
//! probes).

use nix::libc;
use std::os::fd::{AsFd, AsRawFd};

pub(crate) const IFNAMSIZ: usize = 16;

/// `struct ethtool_value`.
#[repr(C)]
pub(crate) struct EthtoolValue {
    pub cmd: u32,
    pub data: u32,
}

/// `struct ifreq` with its `ifr_data` member (40 bytes on 64-bit Linux).
#[repr(C)]
pub(crate) struct IfReq {
    pub name: [u8; IFNAMSIZ],
    pub data: *mut EthtoolValue,
    pub _rest: [u8; 24 - std::mem::size_of::<usize>()],
}

nix::ioctl_readwrite_bad!(siocethtool_raw, nix::libc::SIOCETHTOOL, IfReq);

/// `SIOCETHTOOL` with `req` on the socket `fd`.
pub(crate) fn siocethtool(fd: &impl AsFd, req: &mut IfReq) -> nix::Result<()> {
    // SAFETY: `req` is a valid `struct ifreq`, and its data pointer refers
    // to an `EthtoolValue` the caller keeps alive across the call; the
    // kernel reads and writes only these two structures.
    unsafe { siocethtool_raw(fd.as_fd().as_raw_fd(), req) }.map(|_| ())
}

/// Send every datagram of the UDP socket `fd` (of IPv6 when `ipv6`) with
/// don't-fragment set, whatever path MTU the kernel has learned for its
/// destination (`IP_PMTUDISC_PROBE`): a datagram larger than the local
/// link fails at once (`EMSGSIZE`), one larger than a link on the way is
/// dropped there instead of being split into fragments.
pub fn dont_fragment(fd: &impl AsFd, ipv6: bool) -> std::io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    // SAFETY: the option value is a `c_int` on the stack, passed with its
    // size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<EthtoolValue>(), 8);
    }

    #[test]
    fn the_option_takes_on_both_families_and_a_non_socket_is_refused() {
        // (Its effect, a probe dropped rather than fragmented by a router,
        // is asserted by the doctor's suite in namespaces.)
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        dont_fragment(&v4, false).unwrap();
        if let Ok(v6) = std::net::UdpSocket::bind("[::1]:0") {
            dont_fragment(&v6, true).unwrap();
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = dont_fragment(&file, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK), "{err}");
    }
}
