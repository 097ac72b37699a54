//! One ICMP echo (ping) to an IPv4 address, for the doctor: through the
//! tunnel it tells a VXLAN port that is blocked (ICMP fails like UDP) from
//! the checksum-offload pattern, where a NIC or hypervisor corrupts the
//! offloaded checksums of the pods' UDP and TCP while ICMP, whose checksum
//! the kernel writes itself, passes (calico#9433). A ping socket where
//! `net.ipv4.ping_group_range` allows it (no capability), else a raw one
//! (CAP_NET_RAW); blocking, on a thread of its own.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// The round trip of an echo to `to`, `attempts` tries of `wait` each.
pub async fn echo(to: Ipv4Addr, attempts: u32, wait: Duration) -> Result<Duration, String> {
    tokio::task::spawn_blocking(move || echo_blocking(to, attempts, wait))
        .await
        .map_err(|e| format!("the ICMP echo task: {e}"))?
}

fn echo_blocking(to: Ipv4Addr, attempts: u32, wait: Duration) -> Result<Duration, String> {
    // A ping socket needs no capability where net.ipv4.ping_group_range
    // admits our group (systemd's default); else a raw socket (CAP_NET_RAW).
    // A ping socket reads the ICMP message without its IP header, and the
    // kernel sets the identifier.
    let (socket, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(socket) => (socket, false),
        Err(_) => (
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|e| {
                format!("an ICMP socket (a ping socket is not allowed by net.ipv4.ping_group_range, a raw one needs CAP_NET_RAW): {e}")
            })?,
            true,
        ),
    };
    // Connected: the kernel hands this socket only packets from `to`.
    socket
        .connect(&SocketAddrV4::new(to, 0).into())
        .map_err(|e| format!("no route to {to}: {e}"))?;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let id = (std::process::id() as u16) ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(8);
    let mut last = String::from("no echo reply");
    let mut buf = [0u8; 1500];
    for seq in 0..attempts as u16 {
        let request = echo_request(id, seq);
        let sent = Instant::now();
        if let Err(e) = socket.send(&request) {
            last = format!("sending: {e}");
            continue;
        }
        let deadline = sent + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = format!("no echo reply within {wait:?}, {attempts} tries");
                break;
            }
            let _ = socket.set_read_timeout(Some(left));
            match (&socket).read(&mut buf) {
                Ok(n) if is_reply_to(&buf[..n], raw.then_some(id), seq) => {
                    return Ok(sent.elapsed())
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    last = format!("no echo reply within {wait:?}, {attempts} tries");
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
    }
    Err(last)
}

/// An echo request with a payload that names it.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![ECHO_REQUEST, 0, 0, 0];
    packet.extend(id.to_be_bytes());
    packet.extend(seq.to_be_bytes());
    packet.extend(b"trellis doctor");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// Whether `read` is the reply to echo `seq`: with `id`, an IPv4 packet as
/// a raw socket reads it, whose identifier must be `id`; without, an ICMP
/// message as a ping socket reads it (the kernel matched the identifier).
fn is_reply_to(read: &[u8], id: Option<u16>, seq: u16) -> bool {
    let icmp = match id {
        Some(_) => {
            let Some(&first) = read.first() else {
                return false;
            };
            let Some(icmp) = read.get(usize::from(first & 0x0f) * 4..) else {
                return false;
            };
            icmp
        }
        None => read,
    };
    icmp.len() >= 8
        && icmp[0] == ECHO_REPLY
        && id.is_none_or(|id| icmp[4..6] == id.to_be_bytes())
        && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checks_and_only_its_reply_matches() {
        let request = echo_request(0x1234, 7);
        assert_eq!(
            checksum(&request),
            0,
            "a packet with its checksum sums to zero"
        );
        let mut reply = vec![0x45u8; 1];
        reply.resize(20, 0);
        let mut icmp = request.clone();
        icmp[0] = ECHO_REPLY;
        reply.extend(&icmp);
        assert!(is_reply_to(&reply, Some(0x1234), 7));
        assert!(!is_reply_to(&reply, Some(0x1234), 8));
        assert!(!is_reply_to(&reply, Some(0x4321), 7));
        let mut own_request = reply.clone();
        own_request[20] = ECHO_REQUEST;
        assert!(!is_reply_to(&own_request, Some(0x1234), 7));
        assert!(!is_reply_to(&[], Some(1), 1));
        // A ping socket reads the ICMP message alone.
        assert!(is_reply_to(&icmp, None, 7));
        assert!(!is_reply_to(&icmp, None, 6));
    }
}
