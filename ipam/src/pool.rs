//! The set of addresses an attachment may receive: a subnet minus its
//! network, gateway and broadcast addresses, narrowed by `rangeStart`/
//! `rangeEnd` and `exclude`. Candidates are walked from a cursor (the last
//! address handed out) with wrap-around, so freed addresses are reused last.

use crate::error::IpamError;
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    subnet: Ipv4Network,
    gateway: Ipv4Addr,
    /// First and last address of the allocation range (inclusive).
    first: u32,
    last: u32,
    exclude: Vec<Ipv4Network>,
    /// The IPv6 subnet of a dual-stack pool: each IPv4 address handed out
    /// comes with the IPv6 address at the same offset (10.244.3.7 with
    /// fd10:244:0:3::7), so one search and one claim serve both families.
    ipv6: Option<Ipv6Network>,
}

impl Pool {
    /// A pool over `subnet`. `gateway` defaults to the first address;
    /// `range_start`/`range_end` default to the whole subnet. Any value
    /// outside the subnet is a configuration error (code 7).
    pub fn new(
        subnet: Ipv4Network,
        range_start: Option<Ipv4Addr>,
        range_end: Option<Ipv4Addr>,
        exclude: Vec<Ipv4Network>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<Pool, IpamError> {
        // Normalise 10.0.0.7/24 to 10.0.0.0/24.
        let subnet = Ipv4Network::new(subnet.network(), subnet.prefix())
            .map_err(|e| IpamError::Config(format!("subnet {subnet}: {e}")))?;
        if subnet.prefix() > 30 {
            return Err(IpamError::Config(format!(
                "subnet {subnet} is too small: it needs room for a gateway and at least one address (/30 or larger)"
            )));
        }
        let net = u32::from(subnet.network());
        let bcast = u32::from(subnet.broadcast());
        let inside = |what: &str, ip: Ipv4Addr| {
            let n = u32::from(ip);
            if n <= net || n >= bcast {
                Err(IpamError::Config(format!(
                    "{what} {ip} is not a usable address of subnet {subnet}"
                )))
            } else {
                Ok(n)
            }
        };
        let gateway = match gateway {
            Some(gw) => {
                inside("gateway", gw)?;
                gw
            }
            None => Ipv4Addr::from(net + 1),
        };
        let first = range_start
            .map(|ip| inside("rangeStart", ip))
            .transpose()?
            .unwrap_or(net + 1);
        let last = range_end
            .map(|ip| inside("rangeEnd", ip))
            .transpose()?
            .unwrap_or(bcast - 1);
        if first > last {
            return Err(IpamError::Config(format!(
                "rangeStart {} is after rangeEnd {}",
                Ipv4Addr::from(first),
                Ipv4Addr::from(last)
            )));
        }
        Ok(Pool {
            subnet,
            gateway,
            first,
            last,
            exclude,
            ipv6: None,
        })
    }

    /// The pool made dual-stack with `subnet6` (none: as it is). It must
    /// hold at least as many addresses as the IPv4 subnet.
    pub fn with_ipv6(mut self, subnet6: Option<Ipv6Network>) -> Result<Pool, IpamError> {
        let Some(subnet6) = subnet6 else {
            return Ok(self);
        };
        let subnet6 = Ipv6Network::new(subnet6.network(), subnet6.prefix())
            .map_err(|e| IpamError::Config(format!("ipv6 subnet {subnet6}: {e}")))?;
        if 128 - u32::from(subnet6.prefix()) < 32 - u32::from(self.subnet.prefix()) {
            return Err(IpamError::Config(format!(
                "IPv6 subnet {subnet6} is smaller than the IPv4 subnet {}: each address needs its twin",
                self.subnet
            )));
        }
        self.ipv6 = Some(subnet6);
        Ok(self)
    }

    pub fn subnet6(&self) -> Option<Ipv6Network> {
        self.ipv6
    }

    /// The IPv6 gateway of a dual-stack pool: its subnet's first address.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(trellis_common::node::gateway6_of)
    }

    /// The IPv6 twin of `ip`: the address at the same offset in the IPv6
    /// subnet (none in an IPv4-only pool).
    pub fn ipv6_of(&self, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        let offset = u32::from(ip).checked_sub(u32::from(self.subnet.network()))?;
        self.ipv6
            .map(|s| Ipv6Addr::from(u128::from(s.network()) + u128::from(offset)))
    }

    /// The IPv6 address with the IPv6 subnet's prefix.
    pub fn address6_of(&self, ip: Ipv6Addr) -> Option<Ipv6Network> {
        self.ipv6
            .map(|s| Ipv6Network::new(ip, s.prefix()).expect("prefix is valid"))
    }

    /// Why the IPv6 address `ip` may not be requested, in words.
    pub fn why_unusable6(&self, ip: Ipv6Addr) -> Option<String> {
        let Some(subnet6) = self.ipv6 else {
            return Some(format!(
                "{ip} is an IPv6 address, and this node's pool {} has no IPv6 subnet",
                self.subnet
            ));
        };
        if !subnet6.contains(ip) {
            return Some(format!("{ip} is outside the subnet {subnet6}"));
        }
        if ip == subnet6.network() {
            return Some(format!("{ip} is the subnet-router address of {subnet6}"));
        }
        if Some(ip) == self.gateway6() {
            return Some(format!("{ip} is the gateway of {subnet6}"));
        }
        None
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The address with the subnet's prefix, as a CNI result carries it.
    pub fn address_of(&self, ip: Ipv4Addr) -> Ipv4Network {
        Ipv4Network::new(ip, self.subnet.prefix()).expect("prefix is valid")
    }

    /// Whether `ip` may be handed out.
    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        self.why_unusable(ip).is_none()
    }

    /// Why `ip` may not be handed out, in words for an error message.
    pub fn why_unusable(&self, ip: Ipv4Addr) -> Option<String> {
        let n = u32::from(ip);
        let subnet = self.subnet;
        if !subnet.contains(ip) {
            return Some(format!("{ip} is outside the subnet {subnet}"));
        }
        if ip == subnet.network() {
            return Some(format!("{ip} is the network address of {subnet}"));
        }
        if ip == subnet.broadcast() {
            return Some(format!("{ip} is the broadcast address of {subnet}"));
        }
        if ip == self.gateway {
            return Some(format!("{ip} is the gateway of {subnet}"));
        }
        if n < self.first || n > self.last {
            return Some(format!(
                "{ip} is outside the range {}-{}",
                Ipv4Addr::from(self.first),
                Ipv4Addr::from(self.last)
            ));
        }
        if let Some(ex) = self.exclude.iter().find(|ex| ex.contains(ip)) {
            return Some(format!("{ip} is excluded ({ex})"));
        }
        if let Some(twin) = self.ipv6_of(ip).filter(|t| Some(*t) == self.gateway6()) {
            return Some(format!("its IPv6 twin {twin} is the IPv6 gateway"));
        }
        None
    }

    /// Every usable address, starting after `cursor` and wrapping around to
    /// end with `cursor` itself. Without a cursor (or with one outside the
    /// range) it starts at the beginning of the range.
    pub fn candidates_after(
        &self,
        cursor: Option<Ipv4Addr>,
    ) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let size = u64::from(self.last - self.first) + 1;
        let start = match cursor.map(u32::from) {
            Some(c) if c >= self.first && c <= self.last => u64::from(c - self.first) + 1,
            _ => 0,
        };
        (0..size)
            .map(move |i| Ipv4Addr::from(self.first + ((start + i) % size) as u32))
            .filter(move |ip| self.is_usable(*ip))
    }
}

impl fmt::Display for Pool {
    /// `10.244.3.0/24`, or `10.244.3.0/24 (range 10.244.3.10-10.244.3.20)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.subnet)?;
        let whole = u32::from(self.subnet.network()) + 1 == self.first
            && u32::from(self.subnet.broadcast()) - 1 == self.last;
        if !whole {
            write!(
                f,
                " (range {}-{})",
                Ipv4Addr::from(self.first),
                Ipv4Addr::from(self.last)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn pool(subnet: &str) -> Pool {
        Pool::new(net(subnet), None, None, vec![], None).unwrap()
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let p = pool("10.1.2.0/29");
        let all: Vec<_> = p.candidates_after(None).collect();
        assert_eq!(
            all,
            ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"].map(ip)
        );
        assert!(p.why_unusable(ip("10.1.2.0")).unwrap().contains("network"));
        assert!(p.why_unusable(ip("10.1.2.1")).unwrap().contains("gateway"));
        assert!(p
            .why_unusable(ip("10.1.2.7"))
            .unwrap()
            .contains("broadcast"));
        assert!(p
            .why_unusable(ip("10.1.3.2"))
            .unwrap()
            .contains("outside the subnet"));
        assert_eq!(p.gateway(), ip("10.1.2.1"));
    }

    #[test]
    fn a_host_address_subnet_is_normalised() {
        let p = pool("10.1.2.77/24");
        assert_eq!(p.subnet(), net("10.1.2.0/24"));
        assert_eq!(p.address_of(ip("10.1.2.9")).to_string(), "10.1.2.9/24");
        assert_eq!(p.to_string(), "10.1.2.0/24");
    }

    #[test]
    fn wraps_around_after_the_cursor() {
        let p = pool("10.1.2.0/29");
        let after_4: Vec<_> = p.candidates_after(Some(ip("10.1.2.4"))).collect();
        assert_eq!(
            after_4,
            ["10.1.2.5", "10.1.2.6", "10.1.2.2", "10.1.2.3", "10.1.2.4"].map(ip)
        );
        // The last address wraps to the first; a foreign cursor starts over.
        assert_eq!(
            p.candidates_after(Some(ip("10.1.2.6"))).next(),
            Some(ip("10.1.2.2"))
        );
        assert_eq!(
            p.candidates_after(Some(ip("192.0.2.1"))).next(),
            Some(ip("10.1.2.2"))
        );
    }

    #[test]
    fn honours_range_and_exclusions() {
        let p = Pool::new(
            net("10.1.0.0/16"),
            Some(ip("10.1.0.10")),
            Some(ip("10.1.0.20")),
            vec![net("10.1.0.12/31"), net("10.1.0.15/32")],
            None,
        )
        .unwrap();
        let all: Vec<_> = p.candidates_after(None).collect();
        let want: Vec<_> = [10, 11, 14, 16, 17, 18, 19, 20]
            .iter()
            .map(|n| Ipv4Addr::new(10, 1, 0, *n))
            .collect();
        assert_eq!(all, want);
        assert!(p
            .why_unusable(ip("10.1.0.13"))
            .unwrap()
            .contains("excluded (10.1.0.12/31)"));
        assert!(p
            .why_unusable(ip("10.1.0.21"))
            .unwrap()
            .contains("outside the range 10.1.0.10-10.1.0.20"));
        assert_eq!(p.to_string(), "10.1.0.0/16 (range 10.1.0.10-10.1.0.20)");
    }

    #[test]
    fn a_configured_gateway_is_skipped_wherever_it_is() {
        let p = Pool::new(net("10.1.2.0/29"), None, None, vec![], Some(ip("10.1.2.6"))).unwrap();
        let all: Vec<_> = p.candidates_after(None).collect();
        assert_eq!(
            all,
            ["10.1.2.1", "10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5"].map(ip)
        );
    }

    #[test]
    fn exclusions_can_empty_the_pool() {
        let p = Pool::new(
            net("10.1.2.0/30"),
            None,
            None,
            vec![net("10.1.2.2/32")],
            None,
        )
        .unwrap();
        assert_eq!(p.candidates_after(None).count(), 0);
    }

    #[test]
    fn rejects_impossible_configurations() {
        let bad = [
            Pool::new(net("10.1.2.0/31"), None, None, vec![], None),
            Pool::new(net("10.1.2.0/24"), Some(ip("10.1.3.1")), None, vec![], None),
            Pool::new(
                net("10.1.2.0/24"),
                None,
                Some(ip("10.1.2.255")),
                vec![],
                None,
            ),
            Pool::new(
                net("10.1.2.0/24"),
                Some(ip("10.1.2.9")),
                Some(ip("10.1.2.8")),
                vec![],
                None,
            ),
            Pool::new(net("10.1.2.0/24"), None, None, vec![], Some(ip("10.1.2.0"))),
        ];
        for b in bad {
            let e = b.unwrap_err();
            assert_eq!(e.code(), 7, "{e}");
        }
    }
}
