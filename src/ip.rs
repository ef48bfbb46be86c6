//! Client addresses and the CIDR blocks a key may be used from.

use crate::json_reader::q;
use std::net::IpAddr;

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
        let net = parse_ip(addr)
            .ok_or_else(|| format!("{} is not an IP address or CIDR block", q(raw)))?;
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
    parse_socket(s)
        .map(|(ip, port)| SourceAddress { ip, port })
        .or_else(|| parse_ip(s).map(|ip| SourceAddress { ip, port: 0 }))
}

// Address parsing with exactly the grammar of std's `IpAddr` and `SocketAddr` `FromStr`
// (a differential test holds it to them), without std's parser in the .wasm (4 KB). Each step
// takes the input and returns what it read and the rest, so a failed try consumes nothing.
type Read<'a, T> = Option<(T, &'a [u8])>;

fn digit(b: u8, radix: u32) -> Option<u32> {
    let d = match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => return None,
    };
    (u32::from(d) < radix).then_some(u32::from(d))
}

/// Every consecutive digit: at most `max_digits` of them, a value at most `max`, and no
/// leading zero unless `zero_prefix` (or the number is `0`).
fn number(s: &[u8], radix: u32, max_digits: usize, zero_prefix: bool, max: u32) -> Read<'_, u32> {
    let n = s.iter().take_while(|b| digit(**b, radix).is_some()).count();
    if n == 0 || n > max_digits || (!zero_prefix && n > 1 && s.first() == Some(&b'0')) {
        return None;
    }
    let (digits, rest) = s.split_at(n);
    let mut v: u32 = 0;
    for b in digits {
        v = v.checked_mul(radix)?.checked_add(digit(*b, radix)?)?;
        if v > max {
            return None;
        }
    }
    Some((v, rest))
}

fn v4(s: &[u8]) -> Read<'_, [u8; 4]> {
    let mut out = [0u8; 4];
    let mut rest = s;
    for (i, octet) in out.iter_mut().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(b".")?;
        }
        let (n, r) = number(rest, 10, 3, false, 255)?;
        *octet = n as u8;
        rest = r;
    }
    Some((out, rest))
}

/// Up to `out.len()` `:`-separated groups, the last two of which may be a dotted IPv4 address:
/// how many groups were filled, whether by an IPv4 address, and the rest.
fn v6_groups<'a>(mut s: &'a [u8], out: &mut [u16]) -> (usize, bool, &'a [u8]) {
    let limit = out.len();
    for i in 0..limit {
        let after_sep = if i > 0 { s.strip_prefix(b":") } else { Some(s) };
        if i + 1 < limit {
            if let Some(([a, b, c, d], rest)) = after_sep.and_then(v4) {
                if let Some(pair) = out.get_mut(i..i + 2) {
                    pair.copy_from_slice(&[u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])]);
                }
                return (i + 2, true, rest);
            }
        }
        match after_sep.and_then(|t| number(t, 16, 4, true, 0xffff)) {
            Some((g, rest)) => {
                if let Some(slot) = out.get_mut(i) {
                    *slot = g as u16;
                }
                s = rest;
            }
            None => return (i, false, s),
        }
    }
    (limit, false, s)
}

fn v6(s: &[u8]) -> Read<'_, [u16; 8]> {
    let mut head = [0u16; 8];
    let (n, ipv4, rest) = v6_groups(s, &mut head);
    if n == 8 {
        return Some((head, rest));
    }
    if ipv4 {
        return None;
    }
    let rest = rest.strip_prefix(b"::")?;
    let mut tail = [0u16; 7];
    let (tn, _, rest) = v6_groups(rest, tail.get_mut(..8 - (n + 1))?);
    head.get_mut(8 - tn..)?.copy_from_slice(tail.get(..tn)?);
    Some((head, rest))
}

fn ip(s: &[u8]) -> Read<'_, IpAddr> {
    match v4(s) {
        Some((a, rest)) => Some((IpAddr::from(a), rest)),
        None => v6(s).map(|(g, rest)| (IpAddr::from(g), rest)),
    }
}

fn port(s: &[u8]) -> Read<'_, u16> {
    let (p, rest) = number(s.strip_prefix(b":")?, 10, usize::MAX, true, 0xffff)?;
    Some((p as u16, rest))
}

/// An IP address, as `s.parse::<IpAddr>()`.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    match ip(s.as_bytes())? {
        (ip, b"") => Some(ip),
        _ => None,
    }
}

/// `1.2.3.4:80` or `[::1%3]:80` (a numeric scope, dropped), as `s.parse::<SocketAddr>()`.
pub fn parse_socket(s: &str) -> Option<(IpAddr, u16)> {
    let b = s.as_bytes();
    let v4_socket = v4(b).and_then(|(a, rest)| {
        let (p, rest) = port(rest)?;
        Some(((IpAddr::from(a), p), rest))
    });
    let (addr, rest) = match v4_socket {
        Some(read) => read,
        None => {
            let (g, rest) = v6(b.strip_prefix(b"[")?)?;
            let rest = match rest
                .strip_prefix(b"%")
                .and_then(|t| number(t, 10, usize::MAX, true, u32::MAX))
            {
                Some((_, after_scope)) => after_scope,
                None => rest,
            };
            let (p, rest) = port(rest.strip_prefix(b"]")?)?;
            ((IpAddr::from(g), p), rest)
        }
    };
    rest.is_empty().then_some(addr)
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

    /// Both parsers against std's, on every string of a small alphabet up to 4 characters and
    /// on random mutations of real addresses.
    #[test]
    fn address_parsing_is_stds() {
        use std::net::SocketAddr;
        let check = |s: &str| {
            assert_eq!(parse_ip(s), s.parse::<IpAddr>().ok(), "{s:?}");
            assert_eq!(
                parse_socket(s),
                s.parse::<SocketAddr>().ok().map(|a| (a.ip(), a.port())),
                "{s:?}"
            );
        };
        let alphabet = [
            "0", "1", "9", "f", "G", ":", ".", "[", "]", "%", "25", "256",
        ];
        let mut all = vec![String::new()];
        for _ in 0..4 {
            all = all
                .iter()
                .flat_map(|p| alphabet.iter().map(move |a| format!("{p}{a}")))
                .collect();
            all.iter().for_each(|s| check(s));
        }
        let seeds = [
            "1.2.3.4",
            "255.255.255.255",
            "0.0.0.0",
            "01.2.3.4",
            "1.2.3.256",
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:1.2.3.4",
            "::ffff:1.2.3.4",
            "1::1.2.3.4",
            "fe80::1%3",
            "2001:db8::",
            "00000:1::",
            "1:2:3:4:5:6:7:8:9",
            "[::1]:80",
            "[fe80::1%25]:8080",
            "1.2.3.4:65535",
            "1.2.3.4:65536",
            "1.2.3.4:00080",
            "[1.2.3.4]:80",
            "[::1]",
            "[::1]:",
            "::1:80",
            "1.2.3.4:",
            ":::",
            "1:::2",
            "::1.2.3",
            "1:2:3:4:5:6:7:1.2.3.4",
            "ABCD:ef01::",
            "[::ffff:10.0.0.1]:0",
            "[::1%4294967296]:1",
        ];
        let bytes = b"0123456789abcdefABCDEFxX:.[]%-+ ";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for seed in seeds {
            check(seed);
            for _ in 0..3000 {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..1 + rnd(3) {
                    let at = rnd(b.len() + 1);
                    let c = bytes[rnd(bytes.len())];
                    match rnd(3) {
                        0 if at < b.len() => b[at] = c,
                        1 if at < b.len() => {
                            b.remove(at);
                        }
                        _ => b.insert(at, c),
                    }
                }
                check(&String::from_utf8(b).unwrap());
            }
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
