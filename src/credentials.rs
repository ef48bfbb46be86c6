//! Finding the presented API key in a request (SPEC §1 `key_sources`).

use crate::host_wire::Header;
use crate::model::{KeySource, Source};
use std::borrow::Cow;

/// Keys longer than this are not looked up (no configured key is anywhere near it).
pub const MAX_KEY_LEN: usize = 1024;

/// What the sources held. `sources` has bit i set if source i held a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'r> {
    /// No source held a key.
    Missing,
    /// Sources held different keys.
    Conflict { sources: u32 },
    /// One key (possibly in several sources). It may be longer than [`MAX_KEY_LEN`]: the
    /// caller classifies it by prefix, then refuses it without hashing.
    Key { key: &'r [u8], sources: u32 },
}

impl Presented<'_> {
    pub fn sources(&self) -> u32 {
        match self {
            Presented::Missing => 0,
            Presented::Conflict { sources } | Presented::Key { sources, .. } => *sources,
        }
    }
}

/// The value of `raw` after `<scheme> ` (case-insensitive), trimmed.
fn after_scheme<'v>(raw: &'v [u8], scheme: &str) -> Option<&'v [u8]> {
    let s = scheme.as_bytes();
    let head = raw.get(..s.len())?;
    // RFC 9110 separates scheme and credentials with a space; a tab is read the same way, as
    // many servers read it, so such a key is judged (and hidden), never passed on unread.
    if !head.eq_ignore_ascii_case(s) || !matches!(raw.get(s.len()), Some(b' ' | b'\t')) {
        return None;
    }
    Some(raw.get(s.len() + 1..)?.trim_ascii())
}

/// Whether the raw query-parameter name `raw` is `name` as an upstream may read it: percent-
/// decoded (`api%5Fkey`), `+` as a space, PHP's folding of `.`, ` ` and `[` into `_`
/// (`api.key`), and PHP's array suffix (`api_key[]`).
pub fn param_name_is(raw: &str, name: &str) -> bool {
    if raw == name {
        return true;
    }
    // The usual case on the request path: nothing to decode or fold, so no other spelling.
    if !raw
        .bytes()
        .any(|c| matches!(c, b'%' | b'+' | b'.' | b' ' | b'['))
    {
        return false;
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| char::from(*h).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                i += 1;
            }
            _ => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    if let Some(open) = decoded.iter().position(|&c| c == b'[') {
        if decoded.get(open..).is_some_and(|rest| rest.contains(&b']')) {
            decoded.truncate(open);
        }
    }
    let fold = |c: u8| {
        if matches!(c, b'.' | b' ' | b'[') {
            b'_'
        } else {
            c
        }
    };
    decoded.len() == name.len()
        && decoded
            .iter()
            .zip(name.bytes())
            .all(|(&a, n)| fold(a) == fold(n))
}

/// Every value of the query parameter `name` in `path` (raw, not decoded), in every spelling of
/// its name an upstream reads as `name` ([`param_name_is`]).
pub fn query_param<'p, 'n>(
    path: &'p str,
    name: &'n str,
) -> impl Iterator<Item = &'p [u8]> + use<'p, 'n> {
    let query = path
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=')?;
        param_name_is(k, name).then_some(v.as_bytes())
    })
}

/// Looks through every configured source consulted on the judged path, in order.
///
/// `headers` are the request headers as Envoy gives them (lower-case names); `path` is the raw
/// `:path` (for query sources), `judged` its canonical form (for per-route sources).
pub fn find_key<'r>(
    sources: &[KeySource],
    headers: &'r [Header<'r>],
    path: &'r str,
    judged: &str,
) -> Presented<'r> {
    let mut found: Option<&'r [u8]> = None;
    let mut mask = 0u32;
    let mut conflict = false;
    let mut note = |v: &'r [u8], i: usize, found: &mut Option<&'r [u8]>| {
        if v.is_empty() {
            return;
        }
        match found {
            Some(k) if *k != v => conflict = true,
            _ => *found = Some(v),
        }
        mask |= 1u32.checked_shl(i as u32).unwrap_or(0);
    };
    for (i, source) in sources.iter().enumerate() {
        if !source.applies_to(judged) {
            continue;
        }
        match &source.from {
            Source::Header { name, scheme } => {
                for (h, v) in headers.iter().filter(|(h, _)| h == name) {
                    let _ = h;
                    match scheme {
                        None => note(v.trim_ascii(), i, &mut found),
                        Some(s) => {
                            if let Some(k) = after_scheme(v, s) {
                                note(k, i, &mut found)
                            }
                        }
                    }
                }
            }
            Source::Query { name } => {
                for v in query_param(path, name) {
                    note(v, i, &mut found);
                }
            }
        }
    }
    match found {
        None => Presented::Missing,
        Some(_) if conflict => Presented::Conflict { sources: mask },
        Some(key) => Presented::Key { key, sources: mask },
    }
}

/// `query` without the parameters (`name=…` or a bare `name`) whose name `strip` selects.
pub fn strip_query_params(query: &str, strip: impl Fn(&str) -> bool) -> Cow<'_, str> {
    let named = |pair: &str| strip(pair.split_once('=').map_or(pair, |(k, _)| k));
    if !query.split('&').any(named) {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !named(pair))
        .collect();
    Cow::Owned(kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Header<'a>> {
        pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
    }

    fn sources() -> Vec<KeySource> {
        [
            Source::Header {
                name: "x-api-key".into(),
                scheme: None,
            },
            Source::Header {
                name: "authorization".into(),
                scheme: Some("Bearer".into()),
            },
            Source::Query {
                name: "api_key".into(),
            },
        ]
        .into_iter()
        .map(|from| KeySource { from, paths: None })
        .collect()
    }

    #[test]
    fn finds_keys_in_sources() {
        let s = sources();
        assert_eq!(find_key(&s, &h(&[]), "/", "/"), Presented::Missing);
        assert_eq!(
            find_key(&s, &h(&[("x-api-key", "k1")]), "/", "/"),
            Presented::Key {
                key: b"k1",
                sources: 0b001
            }
        );
        assert_eq!(
            find_key(&s, &h(&[("authorization", "bearer k1")]), "/", "/"),
            Presented::Key {
                key: b"k1",
                sources: 0b010
            }
        );
        // Wrong scheme: not a key from that source.
        assert_eq!(
            find_key(&s, &h(&[("authorization", "Basic abc")]), "/", "/"),
            Presented::Missing
        );
        assert_eq!(
            find_key(&s, &h(&[("authorization", "Bearerk1")]), "/", "/"),
            Presented::Missing
        );
        // Same key twice counts once; different keys conflict.
        assert_eq!(
            find_key(
                &s,
                &h(&[("x-api-key", "k1"), ("authorization", "Bearer k1")]),
                "/?api_key=k1",
                "/"
            ),
            Presented::Key {
                key: b"k1",
                sources: 0b111
            }
        );
        assert_eq!(
            find_key(
                &s,
                &h(&[("x-api-key", "k1"), ("authorization", "Bearer k2")]),
                "/",
                "/"
            ),
            Presented::Conflict { sources: 0b011 }
        );
        assert_eq!(
            find_key(
                &s,
                &h(&[("x-api-key", "k1"), ("x-api-key", "k2")]),
                "/",
                "/"
            ),
            Presented::Conflict { sources: 0b001 }
        );
        assert_eq!(
            find_key(&s, &h(&[]), "/x?a=1&api_key=k3", "/"),
            Presented::Key {
                key: b"k3",
                sources: 0b100
            }
        );
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            find_key(&s, &h(&[("x-api-key", &long)]), "/", "/"),
            Presented::Key {
                key: long.as_bytes(),
                sources: 0b001
            }
        );
        assert_eq!(
            find_key(&s, &h(&[("x-api-key", "")]), "/", "/"),
            Presented::Missing
        );
    }

    /// Found by an attack review: upstreams that decode parameter names (Express) or fold them
    /// (PHP) read these as `_method` / `api_key`.
    #[test]
    fn parameter_names_in_every_spelling_upstreams_read() {
        for raw in [
            "_method",
            "%5Fmethod",
            "_%6Dethod",
            ".method",
            "[method",
            "+method",
            "_method[]",
        ] {
            assert!(param_name_is(raw, "_method"), "{raw}");
        }
        for raw in ["method", "_methods", "%5Fmethodx", "_method%"] {
            assert!(!param_name_is(raw, "_method"), "{raw}");
        }
        assert!(param_name_is("api.key", "api_key") && param_name_is("api%5Fkey", "api_key"));
        let s = sources();
        assert_eq!(
            find_key(&s, &h(&[]), "/x?api%5Fkey=k3", "/"),
            Presented::Key {
                key: b"k3",
                sources: 0b100
            }
        );
        assert_eq!(
            find_key(&s, &h(&[("authorization", "Bearer\tk1")]), "/", "/"),
            Presented::Key {
                key: b"k1",
                sources: 0b010
            }
        );
    }

    #[test]
    fn strips_query_params() {
        let names = |n: &str| n == "api_key" || n == "key";
        assert_eq!(strip_query_params("api_key=x", names), "");
        assert_eq!(
            strip_query_params("b=1&api_key=x&c=2&key", names),
            "b=1&c=2"
        );
        assert!(matches!(
            strip_query_params("b=1&api_keyz=1", names),
            Cow::Borrowed("b=1&api_keyz=1")
        ));
    }
}
