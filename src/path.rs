//! Request paths and the patterns matched against them.
//!
//! A path is matched only after it is made canonical: the query and fragment are dropped,
//! percent-encoded unreserved characters, dots and slashes are decoded, empty and `.` segments
//! removed and `..` resolved. A path that cannot be made canonical safely (bad percent-encoding,
//! control characters, backslashes, `..` above the root) is refused, never matched raw.

use crate::json_reader::q;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    ForbiddenByte,
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "does not start with '/'",
            PathError::BadEscape => "has a malformed percent-encoding",
            PathError::ForbiddenByte => "has a control character, backslash or non-ASCII byte",
            PathError::AboveRoot => "climbs above the root with '..'",
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

/// Upper-case hex digit of a nibble (0-15).
fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).map_or('0', |c| c.to_ascii_uppercase())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes what is safe to decode; keeps other escapes as upper-case `%XX`.
fn decode(raw: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(0);
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let d = hi * 16 + lo;
            if d < 0x20 || d == 0x7f || d == b'\\' {
                return Err(PathError::ForbiddenByte);
            }
            if is_unreserved(d) || d == b'/' {
                out.push(d as char);
            } else {
                out.push('%');
                out.push(hex_digit(hi));
                out.push(hex_digit(lo));
            }
            i += 3;
        } else {
            if !(0x20..0x7f).contains(&b) || b == b'\\' {
                return Err(PathError::ForbiddenByte);
            }
            out.push(b as char);
            i += 1;
        }
    }
    Ok(())
}

/// Whether an absolute path (query already cut off) is canonical as it stands: no escapes,
/// no empty, `.` or `..` segments, nothing that would be refused.
fn already_canonical(p: &str) -> bool {
    let b = p.as_bytes();
    b.first() == Some(&b'/')
        && b.iter()
            .all(|&c| (0x21..0x7f).contains(&c) && c != b'%' && c != b'\\')
        && !p.contains("//")
        && !p.split('/').skip(1).any(|seg| seg == "." || seg == "..")
}

/// [`canonical_path`] without an allocation when the path is canonical already (the usual case).
pub fn canonical_path_cow(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or(raw);
    if already_canonical(path) {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    canonical_path(raw).map(std::borrow::Cow::Owned)
}

/// The canonical form of a request path (`:path` header), without its query string.
pub fn canonical_path(raw: &str) -> Result<String, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = raw.get(..end).unwrap_or(raw);
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut decoded = String::with_capacity(raw.len());
    decode(raw, &mut decoded)?;
    resolve_segments(&decoded)
}

/// Resolves `.`/`..` and merges empty segments of an already decoded absolute path.
fn resolve_segments(decoded: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The canonical form of a URL (for `Referer`): lower-case scheme and authority, canonical path,
/// no query or fragment. `None` if it is not an absolute `scheme://authority[/path]` URL.
pub fn canonical_url(raw: &str) -> Option<String> {
    let (scheme, rest) = raw.split_once("://")?;
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
    let tail = rest.get(auth_end..)?;
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
            ("/v1/users/%2E%2E%2Fadmin", "/v1/admin"),
            ("/v1/users/..%2f..%2fadmin", "/admin"),
            ("/v1//users/./x", "/v1/users/x"),
            ("/v1/users/", "/v1/users/"),
            ("/v1/users/.", "/v1/users/"),
            ("/v1/%75sers", "/v1/users"),
            ("/a%20b", "/a%20b"),
            ("/a%2fb", "/a/b"),
        ];
        for (raw, want) in ok {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(canonical_path_cow(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(
            canonical_path_cow("/v1/users/7?x=1"),
            Ok(std::borrow::Cow::Borrowed("/v1/users/7"))
        ));
        let bad = [
            ("v1", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/etc", PathError::AboveRoot),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%00", PathError::ForbiddenByte),
            ("/a%5c..", PathError::ForbiddenByte),
            ("/a\\b", PathError::ForbiddenByte),
        ];
        for (raw, want) in bad {
            assert_eq!(canonical_path(raw), Err(want), "{raw}");
            assert_eq!(
                canonical_path_cow(raw).map(|c| c.into_owned()),
                Err(want),
                "{raw}"
            );
        }
    }

    /// The allocation-free fast path agrees with the full canonicalisation on every short path
    /// over an alphabet of the tricky characters.
    #[test]
    fn fast_path_agrees_with_the_full_one() {
        let alphabet = ['/', '.', 'a', '%', '2', 'e', 'f', '?'];
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let next: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            for p in &next {
                assert_eq!(
                    canonical_path_cow(p).map(|c| c.into_owned()),
                    canonical_path(p),
                    "{p}"
                );
            }
            paths = next;
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
        assert!(Pattern::parse_path("/../x").is_err());
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
