//! Client addresses and the CIDR blocks a key may be used from.

use crate::json_reader::q;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `203.0.113.0/24`, `2001:db8::/32`, or a single address.
    pub fn parse(raw: &str) -> Result<Cidr, String> {
        let (addr, bits) = match raw.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (raw, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{} is not an IP address or CIDR block", q(raw)))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && !b.starts_with('+') => n,
                _ => return Err(format!("{} has an invalid prefix length", q(raw))),
            },
        };
        if mask(net, bits) != net {
            return Err(format!("{} has host bits set beyond /{bits}", q(raw)));
        }
        Ok(Cidr { net, bits })
    }

    /// The network address and prefix length.
    pub fn parts(&self) -> (IpAddr, u8) {
        (self.net, self.bits)
    }

    /// Rebuilds a block from [`Cidr::parts`]; `None` if they do not form a valid block.
    pub fn from_parts(net: IpAddr, bits: u8) -> Option<Cidr> {
        let max = if net.is_ipv4() { 32 } else { 128 };
        (bits <= max && mask(net, bits) == net).then_some(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.bits) == self.net
    }
}

fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// A client address as Envoy reports it (`source.address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddress {
    pub ip: IpAddr,
    /// 0 when Envoy took the address from a request header (`X-Forwarded-For` and other
    /// original-IP detection), not from the connection.
    pub port: u16,
}

/// Envoy's `source.address` property: `1.2.3.4:5678` or `[::1]:5678` (or a bare address,
/// read as port 0).
pub fn parse_source_address(raw: &[u8]) -> Option<SourceAddress> {
    let s = std::str::from_utf8(raw).ok()?;
    s.parse::<SocketAddr>()
        .map(|a| SourceAddress {
            ip: a.ip(),
            port: a.port(),
        })
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SourceAddress { ip, port: 0 }))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(c.contains(ip("203.0.113.7")));
        assert!(c.contains(ip("::ffff:203.0.113.7")));
        assert!(!c.contains(ip("203.0.114.7")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("1.2.3.4")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("9.9.9.9")));
        for bad in [
            "1.2.3.4/33",
            "1.2.3.0/+24",
            "1.2.3.4/24",
            "x",
            "1.2.3/24",
            "::/129",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn source_addresses() {
        let at = |a: &str, port| Some(SourceAddress { ip: ip(a), port });
        assert_eq!(
            parse_source_address(b"127.0.0.1:5555"),
            at("127.0.0.1", 5555)
        );
        assert_eq!(parse_source_address(b"[::1]:5555"), at("::1", 5555));
        assert_eq!(parse_source_address(b"10.1.2.3:0"), at("10.1.2.3", 0));
        assert_eq!(parse_source_address(b"10.0.0.1"), at("10.0.0.1", 0));
        assert_eq!(parse_source_address(b"garbage"), None);
        assert_eq!(parse_source_address(b"\xff"), None);
    }
}
