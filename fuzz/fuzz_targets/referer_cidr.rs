//! Referer URLs and CIDR blocks: URL canonicalisation is idempotent and a URL pattern matches
//! the URL it was made from; a CIDR block round-trips through its parts and contains its own
//! network address; keygate's address parsers read exactly what std's do.
#![no_main]
use keygate::ip::Cidr;
use keygate::path::{canonical_url, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = canonical_url(s) {
        assert_eq!(
            canonical_url(&c).as_ref(),
            Some(&c),
            "not idempotent: {s:?}"
        );
        if let Ok(p) = Pattern::parse_url(s) {
            assert!(p.matches(&c), "{s:?}: {p:?} does not match {c:?}");
        }
    }
    assert_eq!(keygate::ip::parse_ip(s), s.parse::<std::net::IpAddr>().ok(), "{s:?}");
    assert_eq!(
        keygate::ip::parse_socket(s),
        s.parse::<std::net::SocketAddr>().ok().map(|a| (a.ip(), a.port())),
        "{s:?}"
    );
    if let Ok(cidr) = Cidr::parse(s) {
        let (net, bits) = cidr.parts();
        assert_eq!(Cidr::from_parts(net, bits), Some(cidr));
        assert!(cidr.contains(net));
    }
});
