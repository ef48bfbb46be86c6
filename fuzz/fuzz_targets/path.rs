//! Path canonicalisation and patterns: canonicalisation is idempotent, the allocation-free fast
//! path agrees with the full one, the canonical form has no empty, dot or `;`-dot segments and
//! no escape that decodes to `/`, `\`, `.` or an unreserved character; a pattern matches its
//! own base.
#![no_main]
use keygate::path::{canonical_path, canonical_path_cow, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let full = canonical_path(raw);
    assert_eq!(
        canonical_path_cow(raw).map(|c| c.into_owned()),
        full,
        "fast path differs"
    );
    if let Ok(c) = &full {
        assert_eq!(canonical_path(c).as_ref(), Ok(c), "not idempotent: {raw:?}");
        assert!(c.starts_with('/'));
        let segs: Vec<&str> = c.split('/').skip(1).collect();
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            assert!(!s.is_empty() || last, "empty segment in {c:?}");
            assert!(*s != "." && *s != "..", "dot segment in {c:?}");
            let bare = s.split(';').next().unwrap_or("");
            assert!(
                !s.contains(';') || !matches!(bare, "" | "." | ".."),
                "{c:?}"
            );
        }
        for (i, _) in c.match_indices('%') {
            let hex = &c[i + 1..i + 3];
            let b = u8::from_str_radix(hex, 16).expect("escapes are hex");
            assert_eq!(hex, hex.to_ascii_uppercase());
            assert!(
                !b.is_ascii_alphanumeric() && !b"-._~/\\".contains(&b),
                "{c:?}"
            );
        }
    }
    if let Ok(Pattern::Exact(base) | Pattern::Below(base)) = Pattern::parse_path(raw) {
        let p = Pattern::parse_path(raw).unwrap();
        assert!(
            p.matches(&base) || base.is_empty(),
            "{raw:?} does not match {base:?}"
        );
    }
});
