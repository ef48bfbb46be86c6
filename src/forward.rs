//! What keygate changes on a request before Envoy passes it on (SPEC §2 "What is judged is
//! what is forwarded"): pure, no proxy-wasm calls.
//!
//! - `:path` becomes the path keygate judged (canonical, [`crate::path`]) followed by the
//!   query, without query-source keys where credentials are hidden.
//! - Headers an upstream could read as keygate's own (any case, `_` for `-`), and `_`
//!   spellings of key-source and method-override headers (never read as keys, never judged:
//!   removed, as Envoy's `headers_with_underscores_action: DROP_HEADER` does), are removed.
//! - With `hide_credentials`, the key-source headers that held a key are removed.

use crate::credentials::strip_query_params;
use crate::header_names::{folds_to, METHOD_OVERRIDES, PATH_OVERRIDES};
use crate::host_wire::Header;
use crate::model::Gate;
use crate::path::split_query;
use std::borrow::Cow;

/// Where the request goes after keygate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Upstream (a public path, or an allowed key). `sources`: bit i set if source i held a key.
    Upstream { sources: u32 },
    /// Answered by keygate itself: only the access log sees `:path` (keys leave it).
    Local,
}

/// Changes to make to the request headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// The new `:path`, when it differs from the client's.
    pub path: Option<String>,
    /// Header names to remove (every value of each).
    pub remove: Vec<String>,
}

fn held(sources: u32, i: usize) -> bool {
    sources & 1u32.checked_shl(i as u32).unwrap_or(0) != 0
}

/// The `:path` to send on: `base` and the query, minus the query-source keys consulted on
/// `judged` (every query source when the path could not be judged) when `strip_keys`.
fn new_path(
    gate: &Gate,
    raw: &str,
    base: &str,
    judged: Option<&str>,
    strip_keys: bool,
) -> Option<String> {
    let (raw_base, raw_query) = split_query(raw);
    let query = match raw_query {
        Some(q) if strip_keys => Some(strip_query_params(q, |name| {
            gate.is_query_source(name, judged)
        })),
        q => q.map(Cow::Borrowed),
    };
    let query_changed = query.as_deref() != raw_query;
    if raw_base == base && !query_changed {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    out.push_str(base);
    if let Some(q) = query.filter(|q| !q.is_empty() || !query_changed) {
        out.push('?');
        out.push_str(&q);
    }
    Some(out)
}

/// Whether the header `name` must not reach the upstream whatever the verdict, on `judged`:
/// keygate's own headers and path overrides in every spelling, and the other spellings of
/// key-source and method-override headers (keygate reads and judges only the configured one).
fn foreign_spelling(gate: &Gate, name: &str, judged: &str) -> bool {
    let other_spelling = |h: &str| name != h && folds_to(name, h);
    gate.owned_request_headers().any(|o| folds_to(name, o))
        || PATH_OVERRIDES.iter().any(|o| folds_to(name, o))
        || METHOD_OVERRIDES.iter().any(|o| other_spelling(o))
        || gate
            .sources
            .iter()
            .any(|s| s.applies_to(judged) && s.header().is_some_and(other_spelling))
}

/// The lengths of every name [`foreign_spelling`] could be true for (spellings keep the
/// length), as a bit set: see [`Gate::spelling_lengths`].
pub fn spelling_lengths(gate: &Gate) -> u64 {
    let bit = |name: &str| 1u64 << name.len().min(63);
    gate.owned_request_headers()
        .chain(PATH_OVERRIDES)
        .chain(METHOD_OVERRIDES)
        .chain(gate.sources.iter().filter_map(|s| s.header()))
        .fold(0, |set, name| set | bit(name))
}

/// The edits for a request whose raw `:path` is `raw`, judged as `judged` (`None`: a path
/// refused before judging).
pub fn plan(gate: &Gate, raw: &str, judged: Option<&str>, headers: &[Header], fate: Fate) -> Edits {
    let (Fate::Upstream { sources }, Some(judged)) = (fate, judged) else {
        return Edits {
            path: new_path(gate, raw, split_query(raw).0, judged, true),
            remove: Vec::new(),
        };
    };
    let mut remove: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        if !remove.iter().any(|r| r == name) {
            remove.push(name.to_string());
        }
    };
    for (name, _) in headers {
        let maybe = gate.spelling_lengths & (1u64 << name.len().min(63)) != 0;
        if maybe && foreign_spelling(gate, name, judged) {
            push(name);
        }
    }
    if gate.hide_credentials {
        for (i, source) in gate.sources.iter().enumerate() {
            if let (true, Some(name)) = (held(sources, i), source.header()) {
                push(name);
            }
        }
    }
    Edits {
        path: new_path(gate, raw, judged, Some(judged), gate.hide_credentials),
        remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::gate_from_value;
    use crate::json::json;

    fn gate(hide: bool) -> Gate {
        gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}, {"query": "api_key"}],
            "keys": [],
            "hide_credentials": hide
        }))
        .unwrap()
    }

    fn h<'a>(names: &[&'a str]) -> Vec<Header<'a>> {
        names.iter().map(|n| (*n, &b"v"[..])).collect()
    }

    #[test]
    fn forwards_the_judged_path_with_the_query() {
        let g = gate(true);
        let up = Fate::Upstream { sources: 0 };
        let path = |raw: &str, canonical: &str| plan(&g, raw, Some(canonical), &[], up).path;
        assert_eq!(path("/v1/x", "/v1/x"), None);
        assert_eq!(path("/v1/x?a=1", "/v1/x"), None);
        assert_eq!(path("/v1/x?", "/v1/x"), None);
        assert_eq!(
            path("/v1//x/../y?a=1", "/v1/y").as_deref(),
            Some("/v1/y?a=1")
        );
        assert_eq!(
            path("/v1/x?api_key=k&a=1", "/v1/x").as_deref(),
            Some("/v1/x?a=1")
        );
        assert_eq!(path("/v1/x?api_key=k", "/v1/x").as_deref(), Some("/v1/x"));
        assert_eq!(path("/a/../b?api_key=k", "/b").as_deref(), Some("/b"));
        // Credentials forwarded on purpose stay in the query; the path is still the judged one.
        let g = gate(false);
        assert_eq!(
            plan(&g, "/v1/x?api_key=k", Some("/v1/x"), &[], up).path,
            None
        );
        assert_eq!(
            plan(&g, "/v1/./x?api_key=k", Some("/v1/x"), &[], up)
                .path
                .as_deref(),
            Some("/v1/x?api_key=k")
        );
    }

    #[test]
    fn per_route_sources_are_left_alone_elsewhere() {
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}, {"query": "api_key"},
                            {"header": "x-n8n-api-key", "paths": ["/webhooks/n8n/*"]},
                            {"query": "n8n_key", "paths": ["/webhooks/n8n/*"]}],
            "keys": []
        }))
        .unwrap();
        let headers = h(&["x_n8n_api_key", "x-n8n-api-key"]);
        let up = Fate::Upstream { sources: 0b1100 };
        let e = plan(
            &g,
            "/webhooks/n8n/x?n8n_key=k",
            Some("/webhooks/n8n/x"),
            &headers,
            up,
        );
        assert_eq!(e.remove, ["x_n8n_api_key", "x-n8n-api-key"]);
        assert_eq!(e.path.as_deref(), Some("/webhooks/n8n/x"));
        let up = Fate::Upstream { sources: 0 };
        let e = plan(
            &g,
            "/other?n8n_key=k&api_key=j",
            Some("/other"),
            &headers,
            up,
        );
        assert!(e.remove.is_empty());
        assert_eq!(e.path.as_deref(), Some("/other?n8n_key=k"));
        // A path that could not be judged loses every query key (for the access log).
        let e = plan(&g, "/a%2f?n8n_key=k", None, &headers, Fate::Local);
        assert_eq!(e.path.as_deref(), Some("/a%2f"));
    }

    #[test]
    fn only_names_of_a_candidate_length_are_compared_and_long_names_still_are() {
        let long = format!("x-{}", "k".repeat(70));
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "keys": [],
            "upstream_headers": {"key_id": long}
        }))
        .unwrap();
        let lengths = spelling_lengths(&g);
        for name in [
            "x-api-key",
            "x-environment",
            "x-original-url",
            "x-http-method",
        ] {
            assert_ne!(lengths & (1 << name.len()), 0, "{name}");
        }
        assert_eq!(lengths & (1 << "user-agent".len()), 0);
        let spoofed = long.replace('-', "_").to_uppercase();
        let e = plan(
            &g,
            "/",
            Some("/"),
            &h(&["user-agent", &spoofed, "X_Environment"]),
            Fate::Upstream { sources: 0 },
        );
        assert_eq!(e.remove, [spoofed.as_str(), "X_Environment"]);
    }

    #[test]
    fn path_overrides_and_both_spellings_of_underscore_names_are_removed() {
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "x_svc_key"}, {"query": "api_key"}],
            "keys": [],
            "upstream_headers": {"tenant": "x_tenant_id"}
        }))
        .unwrap();
        let headers = h(&[
            "x-original-url",
            "X-Rewrite-URL",
            "x-tenant-id",
            "x-svc-key",
            "x_svc_key",
        ]);
        let e = plan(
            &g,
            "/?api%5Fkey=k&a=1",
            Some("/"),
            &headers,
            Fate::Upstream { sources: 0 },
        );
        assert_eq!(
            e.remove,
            [
                "x-original-url",
                "X-Rewrite-URL",
                "x-tenant-id",
                "x-svc-key"
            ]
        );
        assert_eq!(e.path.as_deref(), Some("/?a=1"));
    }

    #[test]
    fn local_answers_only_lose_query_keys() {
        let g = gate(false);
        let e = plan(
            &g,
            "/a/../b?api_key=k&c=1",
            Some("/b"),
            &h(&["x_tenant_id"]),
            Fate::Local,
        );
        assert_eq!(e.path.as_deref(), Some("/a/../b?c=1"));
        assert!(e.remove.is_empty());
    }

    #[test]
    fn removes_every_spelling_of_owned_headers_and_foreign_key_or_override_spellings() {
        let g = gate(true);
        let headers = h(&[
            "x-tenant-id",
            "x_tenant_id",
            "x-tenant_id",
            "x_environment",
            "x-api-key",
            "x_api_key",
            "x_http_method_override",
            "x-http-method-override",
            "x_custom",
            "accept",
        ]);
        let e = plan(
            &g,
            "/",
            Some("/"),
            &headers,
            Fate::Upstream { sources: 0b01 },
        );
        assert_eq!(
            e.remove,
            [
                "x-tenant-id",
                "x_tenant_id",
                "x-tenant_id",
                "x_environment",
                "x_api_key",
                "x_http_method_override",
                "x-api-key"
            ]
        );
        // Not holding a key (or not hiding): the configured key header stays.
        let e = plan(
            &g,
            "/",
            Some("/"),
            &h(&["x-api-key"]),
            Fate::Upstream { sources: 0 },
        );
        assert!(e.remove.is_empty());
        let e = plan(
            &gate(false),
            "/",
            Some("/"),
            &h(&["x-api-key"]),
            Fate::Upstream { sources: 1 },
        );
        assert!(e.remove.is_empty());
    }
}
