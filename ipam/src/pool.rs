//! The set of addresses an attachment may receive: a subnet minus its
//! network, gateway and (IPv4) broadcast addresses, narrowed by
//! `rangeStart`/`rangeEnd` and `exclude`. Candidates are walked from a
//! cursor (the last address handed out) with wrap-around, so freed
//! addresses are reused last. The subnet is IPv4, with an IPv6 twin in a
//! dual-stack pool, or IPv6 alone (an IPv6-only pool).

use crate::error::IpamError;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    subnet: IpNetwork,
    gateway: IpAddr,
    /// First and last address of the allocation range (inclusive), as
    /// numbers of the subnet's family.
    first: u128,
    last: u128,
    exclude: Vec<IpNetwork>,
    /// The IPv6 subnet of a dual-stack pool: each IPv4 address handed out
    /// comes with the IPv6 address at the same offset (10.244.3.7 with
    /// fd10:244:0:3::7), so one search and one claim serve both families.
    ipv6: Option<Ipv6Network>,
}

/// An address as a number.
fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address numbered `n` in `subnet`'s family.
fn addr_of(subnet: IpNetwork, n: u128) -> IpAddr {
    match subnet {
        IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// The network address of `subnet` and its last usable address (before
/// the IPv4 broadcast address; an IPv6 subnet's last), as numbers.
fn bounds(subnet: IpNetwork) -> (u128, u128) {
    let net = num(subnet.network());
    match subnet {
        IpNetwork::V4(v4) => (net, num(IpAddr::V4(v4.broadcast())) - 1),
        IpNetwork::V6(v6) => (net, net | (u128::MAX >> v6.prefix())),
    }
}

/// The longest prefix of a pool: a gateway and one address besides the
/// network (and IPv4 broadcast) address.
fn max_prefix(subnet: IpNetwork) -> u8 {
    match subnet {
        IpNetwork::V4(_) => 30,
        IpNetwork::V6(_) => 126,
    }
}

impl Pool {
    /// A pool over `subnet`. `gateway` defaults to the first address;
    /// `range_start`/`range_end` default to the whole subnet. Any value
    /// outside the subnet (or of the other family) is a configuration
    /// error (code 7).
    pub fn new(
        subnet: IpNetwork,
        range_start: Option<IpAddr>,
        range_end: Option<IpAddr>,
        exclude: Vec<IpNetwork>,
        gateway: Option<IpAddr>,
    ) -> Result<Pool, IpamError> {
        // Normalise 10.0.0.7/24 to 10.0.0.0/24.
        let subnet = IpNetwork::new(subnet.network(), subnet.prefix())
            .map_err(|e| IpamError::Config(format!("subnet {subnet}: {e}")))?;
        let max = max_prefix(subnet);
        if subnet.prefix() > max {
            return Err(IpamError::Config(format!(
                "subnet {subnet} is too small: it needs room for a gateway and at least one address (/{max} or larger)"
            )));
        }
        let (net, last_usable) = bounds(subnet);
        let inside = |what: &str, ip: IpAddr| {
            let n = num(ip);
            if ip.is_ipv4() != subnet.is_ipv4() || n <= net || n > last_usable {
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
            None => addr_of(subnet, net + 1),
        };
        let first = range_start
            .map(|ip| inside("rangeStart", ip))
            .transpose()?
            .unwrap_or(net + 1);
        let last = range_end
            .map(|ip| inside("rangeEnd", ip))
            .transpose()?
            .unwrap_or(last_usable);
        if first > last {
            return Err(IpamError::Config(format!(
                "rangeStart {} is after rangeEnd {}",
                addr_of(subnet, first),
                addr_of(subnet, last)
            )));
        }
        if let Some(other) = exclude.iter().find(|ex| ex.is_ipv4() != subnet.is_ipv4()) {
            return Err(IpamError::Config(format!(
                "exclude {other} is not of the family of subnet {subnet}"
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
        let IpNetwork::V4(subnet) = self.subnet else {
            return Err(IpamError::Config(format!(
                "IPv6 subnet {subnet6} beside the IPv6 subnet {}: a pool holds one subnet of each family",
                self.subnet
            )));
        };
        let subnet6 = Ipv6Network::new(subnet6.network(), subnet6.prefix())
            .map_err(|e| IpamError::Config(format!("ipv6 subnet {subnet6}: {e}")))?;
        if 128 - u32::from(subnet6.prefix()) < 32 - u32::from(subnet.prefix()) {
            return Err(IpamError::Config(format!(
                "IPv6 subnet {subnet6} is smaller than the IPv4 subnet {subnet}: each address needs its twin"
            )));
        }
        self.ipv6 = Some(subnet6);
        Ok(self)
    }

    /// The IPv4 subnet (none in an IPv6-only pool).
    pub fn subnet4(&self) -> Option<Ipv4Network> {
        match self.subnet {
            IpNetwork::V4(v4) => Some(v4),
            IpNetwork::V6(_) => None,
        }
    }

    /// The IPv6 gateway of a dual-stack pool: its twin subnet's first
    /// address (an IPv6-only pool's gateway is [`Pool::gateway`]).
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(trellis_common::node::gateway6_of)
    }

    /// The IPv6 twin of `ip`: the address at the same offset in the IPv6
    /// subnet (none in a pool without a twin).
    pub fn ipv6_of(&self, ip: IpAddr) -> Option<Ipv6Addr> {
        let (IpAddr::V4(v4), IpNetwork::V4(subnet)) = (ip, self.subnet) else {
            return None;
        };
        let offset = u32::from(v4).checked_sub(u32::from(subnet.network()))?;
        self.ipv6
            .map(|s| Ipv6Addr::from(u128::from(s.network()) + u128::from(offset)))
    }

    /// The twin address with the twin subnet's prefix.
    pub fn address6_of(&self, ip: Ipv6Addr) -> Option<Ipv6Network> {
        self.ipv6
            .map(|s| Ipv6Network::new(ip, s.prefix()).expect("prefix is valid"))
    }

    /// Why the IPv6 twin `ip` may not be requested, in words.
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

    pub fn subnet(&self) -> IpNetwork {
        self.subnet
    }

    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// The address with the subnet's prefix, as a CNI result carries it.
    pub fn address_of(&self, ip: IpAddr) -> IpNetwork {
        IpNetwork::new(ip, self.subnet.prefix()).expect("prefix is valid")
    }

    /// Whether `ip` may be handed out.
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        self.why_unusable(ip).is_none()
    }

    /// Why `ip` may not be handed out, in words for an error message.
    pub fn why_unusable(&self, ip: IpAddr) -> Option<String> {
        let subnet = self.subnet;
        if ip.is_ipv4() != subnet.is_ipv4() {
            return Some(format!(
                "{ip} is an {} address, and this node's pool {subnet} has no {} subnet",
                family(ip),
                family(ip)
            ));
        }
        let n = num(ip);
        if !subnet.contains(ip) {
            return Some(format!("{ip} is outside the subnet {subnet}"));
        }
        if ip == subnet.network() {
            return Some(match subnet {
                IpNetwork::V4(_) => format!("{ip} is the network address of {subnet}"),
                IpNetwork::V6(_) => format!("{ip} is the subnet-router address of {subnet}"),
            });
        }
        if let IpNetwork::V4(v4) = subnet {
            if ip == IpAddr::V4(v4.broadcast()) {
                return Some(format!("{ip} is the broadcast address of {subnet}"));
            }
        }
        if ip == self.gateway {
            return Some(format!("{ip} is the gateway of {subnet}"));
        }
        if n < self.first || n > self.last {
            return Some(format!(
                "{ip} is outside the range {}-{}",
                addr_of(subnet, self.first),
                addr_of(subnet, self.last)
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
    pub fn candidates_after(&self, cursor: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        let size = self.last - self.first + 1;
        let start = match cursor
            .filter(|c| c.is_ipv4() == self.subnet.is_ipv4())
            .map(num)
        {
            Some(c) if c >= self.first && c <= self.last => c - self.first + 1,
            _ => 0,
        };
        (0..size)
            .map(move |i| addr_of(self.subnet, self.first + (start + i) % size))
            .filter(move |ip| self.is_usable(*ip))
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl fmt::Display for Pool {
    /// `10.244.3.0/24`, or `10.244.3.0/24 (range 10.244.3.10-10.244.3.20)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.subnet)?;
        let (net, last_usable) = bounds(self.subnet);
        let whole = self.first == net + 1 && self.last == last_usable;
        if !whole {
            write!(
                f,
                " (range {}-{})",
                addr_of(self.subnet, self.first),
                addr_of(self.subnet, self.last)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
