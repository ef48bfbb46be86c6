//! Request paths and the patterns matched against them.
//!
//! keygate judges a request by its *canonical* path, and forwards exactly that path (query
//! aside), so no upstream can read the forwarded path in a way keygate did not judge
//! (SPEC §2 "What is judged is what is forwarded"). The canonical form is the one every reader
//! agrees on: a byte-literal router, RFC 3986 dot removal, decode-then-resolve and
//! `;`-parameter stripping (Tomcat) all see the same segments in it.
//!
//! Rewritten (RFC 3986 equivalences, what Envoy's `normalize_path` + `merge_slashes` do):
//! percent-encoded unreserved characters are decoded (`%2e` → `.`, `%75` → `u`), other
//! escapes get upper-case hex, `.`/`..` segments are resolved, empty segments (`//`) are
//! merged after resolving. Refused (400): `..` above the root, encoded slashes, backslashes
//! (raw or encoded), segments that are dots or empty once a `;` parameter is dropped (`..;`,
//! `.;x`, `;x`), double-encoded dots, slashes, backslashes, semicolons or percents (`%252e`),
//! control characters, raw non-ASCII bytes, malformed escapes, fragments, relative paths.

use crate::json_reader::q;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    ForbiddenByte,
    AboveRoot,
    EncodedSlash,
    Backslash,
    ParamDotSegment,
    DoubleEncoded,
    AmbiguousEscape,
    Fragment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "does not start with '/'",
            PathError::BadEscape => "has a malformed percent-encoding",
            PathError::ForbiddenByte => "has a control character, space or non-ASCII byte",
            PathError::AboveRoot => "climbs above the root with '..'",
            PathError::EncodedSlash => "has an encoded '/' (%2F)",
            PathError::Backslash => "has a backslash (raw or %5C)",
            PathError::ParamDotSegment => {
                "has a segment that is empty or dots once its ';' parameter is dropped"
            }
            PathError::DoubleEncoded => "has a double-encoded '.', '/', '\\', ';' or '%'",
            PathError::AmbiguousEscape => "has an encoded '?' or '#', or an overlong UTF-8 byte",
            PathError::Fragment => "has a fragment ('#')",
        })
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path part of a raw `:path` (before `?`) and its query (after `?`, if any).
pub fn split_query(raw: &str) -> (&str, Option<&str>) {
    match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    }
}

/// Appends the canonical spelling of one raw segment: unreserved escapes decoded, other
/// escapes upper-case, everything that cannot be spelled unambiguously refused.
fn push_segment(raw: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let d = hi * 16 + lo;
            match d {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ForbiddenByte),
                // `?`/`#` that a reader decoding the whole target would take as the query or
                // fragment, and overlong UTF-8 (`%C0%AE` read as `.` by legacy decoders).
                b'?' | b'#' | 0xc0 | 0xc1 => return Err(PathError::AmbiguousEscape),
                _ if is_unreserved(d) => out.push(char::from(d)),
                _ => {
                    out.push('%');
                    out.push(char::from(HEX_UPPER[usize::from(hi)]));
                    out.push(char::from(HEX_UPPER[usize::from(lo)]));
                }
            }
            i += 3;
        } else {
            match b {
                b'\\' => return Err(PathError::Backslash),
                0x21..=0x7e => out.push(char::from(b)),
                _ => return Err(PathError::ForbiddenByte),
            }
            i += 1;
        }
    }
    Ok(())
}

/// Refuses a canonically spelled segment that upstreams may read as something else: a `;`
/// parameter on an empty or dot segment, or a double-encoded special character.
fn check_segment(spelled: &str) -> Result<(), PathError> {
    let b = spelled.as_bytes();
    let param = b
        .iter()
        .enumerate()
        .position(|(i, &c)| c == b';' || (c == b'%' && b.get(i + 1..i + 3) == Some(b"3B")));
    if let Some(at) = param {
        if matches!(b.get(..at), Some(b"" | b"." | b"..")) {
            return Err(PathError::ParamDotSegment);
        }
    }
    for (i, _) in spelled.match_indices("%25") {
        if let Some(next) = b.get(i + 3..i + 5) {
            if ["2E", "2F", "5C", "3B", "25"]
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(next))
            {
                return Err(PathError::DoubleEncoded);
            }
        }
    }
    Ok(())
}

/// The path part of `raw`, checked to be absolute and fragment-free.
fn path_part(raw: &str) -> Result<&str, PathError> {
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    let (path, _) = split_query(raw);
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    Ok(path)
}

/// Whether an absolute path (query already cut off) is canonical as it stands: no escapes,
/// `;`, backslashes, empty, `.` or `..` segments, nothing that would be refused.
fn already_canonical(p: &str) -> bool {
    let b = p.as_bytes();
    b.first() == Some(&b'/')
        && b.iter()
            .all(|&c| (0x21..0x7f).contains(&c) && !matches!(c, b'%' | b'\\' | b';' | b'#'))
        && !b.windows(2).any(|w| w == b"//")
        && !p.split('/').skip(1).any(|seg| seg == "." || seg == "..")
}

/// [`canonical_path`] without an allocation when the path is canonical already (the usual case).
pub fn canonical_path_cow(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = path_part(raw)?;
    if already_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    canonical_path(raw).map(Cow::Owned)
}

/// The canonical form of a request path (`:path` header), without its query string.
pub fn canonical_path(raw: &str) -> Result<String, PathError> {
    let path = path_part(raw)?;
    let mut out = String::with_capacity(path.len());
    // Where each segment kept so far starts in `out` (empty segments too: RFC 3986 lets `..`
    // remove them; they are merged away in the output).
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    for raw_seg in path.split('/').skip(1) {
        let start = out.len();
        out.push('/');
        push_segment(raw_seg, &mut out)?;
        let spelled = out.get(start + 1..).unwrap_or_default();
        check_segment(spelled)?;
        trailing_slash = matches!(spelled, "" | "." | "..");
        match spelled {
            "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                let Some(s) = starts.pop() else {
                    return Err(PathError::AboveRoot);
                };
                out.truncate(s);
            }
            "" => {
                out.truncate(start);
                starts.push(start);
            }
            _ => starts.push(start),
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The canonical form of a URL (for `Referer`): lower-case scheme and authority, canonical path,
/// no query or fragment. `None` if it is not an absolute `scheme://authority[/path]` URL.
pub fn canonical_url(raw: &str) -> Option<String> {
    // (Byte searches instead of `str` patterns: no substring searcher in the .wasm.)
    let at = raw.as_bytes().windows(3).position(|w| w == b"://")?;
    let (scheme, rest) = (raw.get(..at)?, raw.get(at + 3..)?);
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..auth_end)?;
    if authority.is_empty()
        || !authority
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b'\\')
    {
        return None;
    }
    // A Referer has no fragment (RFC 9110); drop one if a client sends it anyway.
    let tail = rest.get(auth_end..)?.split('#').next().unwrap_or_default();
    let path = if tail.starts_with('/') {
        canonical_path(tail).ok()?
    } else {
        "/".to_string()
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&scheme.to_ascii_lowercase());
    out.push_str("://");
    out.push_str(&authority.to_ascii_lowercase());
    out.push_str(&path);
    Some(out)
}

/// `*`, an exact path, or a path ending in `/*` (that path and everything below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Below(String),
}

impl Pattern {
    /// Parses a path pattern; the path part must already be canonical.
    pub fn parse_path(raw: &str) -> Result<Pattern, String> {
        Self::parse_with(raw, |p| canonical_path(p).map_err(|e| e.to_string()))
    }

    /// The pattern as a configuration writes it (parses back to the same pattern).
    pub fn source(&self) -> String {
        match self {
            Pattern::Any => "*".into(),
            Pattern::Exact(s) => s.clone(),
            Pattern::Below(s) => format!("{s}/*"),
        }
    }

    /// Parses a URL pattern for `Referer`.
    pub fn parse_url(raw: &str) -> Result<Pattern, String> {
        Self::parse_with(raw, |p| {
            canonical_url(p)
                .ok_or_else(|| "is not an absolute URL (scheme://host/path)".to_string())
        })
    }

    fn parse_with(
        raw: &str,
        canon: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Pattern, String> {
        if raw == "*" {
            return Ok(Pattern::Any);
        }
        let (base, below) = match raw.strip_suffix("/*") {
            Some(b) => (if b.is_empty() { "/" } else { b }, true),
            None => (raw, false),
        };
        if base.contains('*') {
            return Err(format!(
                "pattern {}: '*' is allowed only alone or as a final '/*'",
                q(raw)
            ));
        }
        if base.contains(['?', '#']) {
            return Err(format!("pattern {} must not contain '?' or '#'", q(raw)));
        }
        let canonical = canon(base).map_err(|e| format!("pattern {} {e}", q(raw)))?;
        if below {
            Ok(Pattern::Below(canonical.trim_end_matches('/').to_string()))
        } else {
            Ok(Pattern::Exact(canonical))
        }
    }

    pub fn matches(&self, canonical: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(p) => p == canonical,
            Pattern::Below(base) => match canonical.strip_prefix(base.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }
}

pub fn any_match(patterns: &[Pattern], canonical: &str) -> bool {
    patterns.iter().any(|p| p.matches(canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        let ok = [
            ("/", "/"),
            ("/v1/verify", "/v1/verify"),
            ("/v1/verify?x=1", "/v1/verify"),
            ("/v1/users/../admin", "/v1/admin"),
            ("/v1/users/%2e%2e/admin", "/v1/admin"),
            ("/v1/users/.%2E/admin", "/v1/admin"),
            ("/v1/admin/%2e%2e/pricing/x", "/v1/pricing/x"),
            ("/v1//users/./x", "/v1/users/x"),
            // RFC 3986: `..` removes the empty segment; merging comes after (as in Envoy).
            ("/v1/pricing//../admin", "/v1/pricing/admin"),
            ("//v1", "/v1"),
            ("/v1/users/", "/v1/users/"),
            ("/v1/users//", "/v1/users/"),
            ("/v1/users/.", "/v1/users/"),
            ("/v1/users/..", "/v1/"),
            ("/v1/%75sers", "/v1/users"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            // `;` parameters on ordinary segments stay: no reader climbs from them.
            ("/v1/items;v=2", "/v1/items;v=2"),
            ("/v1/pricing;x/../admin", "/v1/admin"),
            ("/a%25b", "/a%25b"),
        ];
        for (raw, want) in ok {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(canonical_path_cow(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(
            canonical_path_cow("/v1/users/7?x=1"),
            Ok(Cow::Borrowed("/v1/users/7"))
        ));
        let bad = [
            ("v1", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            // RFC 3986 would clamp these at the root; no client but an attacker sends them.
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/etc", PathError::AboveRoot),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%00", PathError::ForbiddenByte),
            ("/a b", PathError::ForbiddenByte),
            ("/a\u{e9}", PathError::ForbiddenByte),
            ("/a\tb", PathError::ForbiddenByte),
            ("/a%2fb", PathError::EncodedSlash),
            ("/v1/users/..%2f..%2fadmin", PathError::EncodedSlash),
            ("/admin/..%2Fpublic/x", PathError::EncodedSlash),
            ("/a%5c..", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/v1/pricing/..;/admin", PathError::ParamDotSegment),
            ("/v1/pricing/..;x=1/admin", PathError::ParamDotSegment),
            ("/v1/pricing/.;/admin", PathError::ParamDotSegment),
            ("/v1/pricing/%2e%2e;/admin", PathError::ParamDotSegment),
            ("/v1/pricing/..%3b/admin", PathError::ParamDotSegment),
            ("/v1/pricing/;x/../admin", PathError::ParamDotSegment),
            ("/v1/pricing/%252e%252e/admin", PathError::DoubleEncoded),
            ("/v1/%25%32%65%25%32%65/admin", PathError::DoubleEncoded),
            ("/a%252Fb", PathError::DoubleEncoded),
            ("/a%25255c", PathError::DoubleEncoded),
            ("/v1/items/..%3F", PathError::AmbiguousEscape),
            ("/v1/items/..%23x", PathError::AmbiguousEscape),
            ("/v1/%C0%AE%C0%AE/x", PathError::AmbiguousEscape),
            ("/a#frag", PathError::Fragment),
            ("/a?b#frag", PathError::Fragment),
        ];
        for (raw, want) in bad {
            assert_eq!(canonical_path(raw), Err(want), "{raw}");
            assert_eq!(
                canonical_path_cow(raw).map(Cow::into_owned),
                Err(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse_path("/v1/pricing/*").unwrap();
        assert!(p.matches("/v1/pricing"));
        assert!(p.matches("/v1/pricing/"));
        assert!(p.matches("/v1/pricing/plans/x"));
        assert!(!p.matches("/v1/pricingx"));
        assert!(!p.matches("/v1"));
        let e = Pattern::parse_path("/v1/verify").unwrap();
        assert!(e.matches("/v1/verify"));
        assert!(!e.matches("/v1/verify/"));
        assert!(!e.matches("/v1/verify/x"));
        assert!(Pattern::parse_path("*").unwrap().matches("/anything"));
        assert!(Pattern::parse_path("/*").unwrap().matches("/anything"));
        assert!(Pattern::parse_path("/v1/*/x").is_err());
        assert!(Pattern::parse_path("v1/x").is_err());
        assert!(Pattern::parse_path("/v1/../x").is_ok());
        assert!(Pattern::parse_path("/a%2fb/*").is_err());
        assert!(Pattern::parse_path("/x?y").is_err());
    }
    #[test]
    fn urls() {
        let p = Pattern::parse_url("https://app.example.com/*").unwrap();
        for good in [
            "https://app.example.com",
            "https://app.example.com/",
            "https://APP.example.com/page?q=1",
            "HTTPS://app.example.com/a/../b",
        ] {
            assert!(p.matches(&canonical_url(good).unwrap()), "{good}");
        }
        for bad in [
            "https://app.example.com.evil.com/",
            "https://app.example.com@evil.com/",
            "http://app.example.com/",
            "https://evil.com/https://app.example.com/",
        ] {
            assert!(!canonical_url(bad).is_some_and(|u| p.matches(&u)), "{bad}");
        }
        assert_eq!(canonical_url("not a url"), None);
        assert!(Pattern::parse_url("app.example.com/*").is_err());
        assert!(Pattern::parse_url("https://*.example.com/*").is_err());
    }
}
