//! Plugin configuration (SPEC §1): JSON in, a validated [`Gate`] or every problem with its path.
//!
//! One file per part: [`fields`] (shared readers), [`sources`] (`key_sources`), [`classes`]
//! (`roles`, `prefixes`), [`key_entries`] (key entries); this file reads the whole and the endpoints.

mod classes;
mod credits;
mod fields;
mod key_entries;
mod sources;

pub use fields::check_prefix;
pub use key_entries::{check_record, read_key_entry, read_keys, KeyContext};

use crate::json::Value;
use crate::json_reader::{q, ConfigError, Errors, Obj};
use crate::keys::KeyTable;
use crate::model::*;
use crate::path::canonical_path;
use classes::*;
use fields::*;
use sources::*;

/// Limits per list (several may share a window length: the smallest binds).
pub const MAX_LIMITS: usize = 16;

/// Parses and validates a plugin configuration.
pub fn parse_config(bytes: &[u8]) -> Result<Gate, Vec<ConfigError>> {
    let value = crate::json::parse(bytes).map_err(|e| {
        vec![ConfigError {
            path: "$".into(),
            message: format!("not valid JSON: {e}"),
        }]
    })?;
    gate_from_value(&value)
}

pub fn gate_from_value(value: &Value) -> Result<Gate, Vec<ConfigError>> {
    let mut errors = Errors::default();
    let gate = read_gate(value, &mut errors);
    match gate {
        Some(g) if errors.is_empty() => Ok(g),
        _ => Err(errors.0),
    }
}

/// `key_sync` or `usage_report`: a cluster and path the filter calls on its own.
fn read_endpoint(root: &mut Obj, field: &'static str, errors: &mut Errors) -> Option<Endpoint> {
    let path = root.field_path(field);
    let v = root.get(field)?;
    let mut o = Obj::new(&path, v, errors)?;
    let cluster = o.req_str("cluster", errors);
    let p_path = o.field_path("path");
    let call_path = o.req_str("path", errors);
    let authority = o.opt_str("authority", errors);
    let interval_path = o.field_path("interval_seconds");
    let interval_seconds = o.opt_u64("interval_seconds", errors).unwrap_or(10);
    let timeout_path = o.field_path("timeout_ms");
    let timeout_ms = o.opt_u64("timeout_ms", errors).unwrap_or(2000);
    let token_path = o.field_path("token");
    let token = o.opt_str("token", errors);
    o.finish(errors);
    if let Some(p) = call_path {
        if !p.starts_with('/') || p.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            errors.push(&p_path, "must be an absolute path starting with '/'");
        }
    }
    if !(1..=86_400).contains(&interval_seconds) {
        errors.push(&interval_path, "must be between 1 and 86400");
    }
    if !(1..=60_000).contains(&timeout_ms) {
        errors.push(&timeout_path, "must be between 1 and 60000");
    }
    if let Some(t) = token {
        // Never echoed: it is a secret.
        if t.is_empty() || t.len() > 4096 || !t.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            errors.push(
                &token_path,
                "must be 1-4096 printable ASCII characters without spaces",
            );
        }
    }
    let cluster = cluster?;
    if cluster.is_empty() {
        errors.push(&format!("{path}.cluster"), "must not be empty");
    }
    Some(Endpoint {
        cluster: cluster.to_string(),
        path: call_path?.to_string(),
        authority: authority.unwrap_or(cluster).to_string(),
        interval_seconds,
        timeout_ms,
        token: token.map(str::to_string),
    })
}

/// `rate_limit_service` (SPEC §10): the cluster of a gRPC rate-limit service and what to do
/// when it cannot answer.
fn read_rate_limit_service(root: &mut Obj, errors: &mut Errors) -> Option<RateLimitService> {
    let path = root.field_path("rate_limit_service");
    let v = root.get("rate_limit_service")?;
    let mut o = Obj::new(&path, v, errors)?;
    let cluster = o.req_str("cluster", errors);
    let authority_path = o.field_path("authority");
    let authority = o.opt_str("authority", errors);
    let domain_path = o.field_path("domain");
    let domain = o.opt_str("domain", errors).unwrap_or("keygate");
    let timeout_path = o.field_path("timeout_ms");
    let timeout_ms = o.opt_u64("timeout_ms", errors).unwrap_or(100);
    let failure_path = o.field_path("on_failure");
    let on_failure = match o.opt_str("on_failure", errors) {
        None | Some("local") => Some(OnFailure::Local),
        Some("deny") => Some(OnFailure::Deny),
        Some("allow") => Some(OnFailure::Allow),
        Some(other) => {
            errors.push(
                &failure_path,
                format!("{} is not one of local, deny, allow", q(other)),
            );
            None
        }
    };
    o.finish(errors);
    let printable =
        |s: &str| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..0x7f).contains(&b));
    if let Some(a) = authority {
        if !printable(a) {
            errors.push(
                &authority_path,
                "must be 1-255 printable ASCII characters without spaces",
            );
        }
    }
    if !printable(domain) {
        errors.push(
            &domain_path,
            "must be 1-255 printable ASCII characters without spaces",
        );
    }
    if !(1..=60_000).contains(&timeout_ms) {
        errors.push(&timeout_path, "must be between 1 and 60000");
    }
    let cluster = cluster?;
    if !printable(cluster) {
        errors.push(
            &format!("{path}.cluster"),
            "must be 1-255 printable ASCII characters without spaces",
        );
    }
    // Envoy takes the service as a serialised GrpcService through a string argument: it must
    // be ASCII, so its one length byte below 128.
    let grpc_service = String::from_utf8(crate::rls_wire::grpc_service(cluster, authority))
        .ok()
        .filter(|s| s.is_ascii());
    if grpc_service.is_none() {
        errors.push(
            &path,
            "cluster and authority must together be at most 120 characters",
        );
    }
    Some(RateLimitService {
        cluster: cluster.to_string(),
        authority: authority.map(str::to_string),
        domain: domain.to_string(),
        timeout_ms,
        on_failure: on_failure?,
        grpc_service: grpc_service?,
    })
}

/// `environments_accepted`: each name must be an environment some prefix or inline key has.
fn read_environments_accepted(
    root: &mut Obj,
    prefixes: &[Prefix],
    keys: &KeyTable,
    errors: &mut Errors,
) -> Option<Vec<String>> {
    let path = root.field_path("environments_accepted");
    let known: Vec<&str> = prefixes
        .iter()
        .filter_map(|p| p.environment.as_deref())
        .chain(keys.records().filter_map(|k| k.environment.as_deref()))
        .collect();
    let list = root.opt_str_list("environments_accepted", errors, |p, env, errors| {
        if known.contains(&env) {
            Some(env.to_string())
        } else {
            errors.push(
                p,
                format!("{} is not the environment of any prefix or key", q(env)),
            );
            None
        }
    })?;
    if list.is_empty() {
        errors.push(
            &path,
            "needs at least one environment (omit it to accept all)",
        );
    }
    Some(list)
}

fn read_gate(value: &Value, errors: &mut Errors) -> Option<Gate> {
    let mut root = Obj::new("$", value, errors)?;
    let sources = read_sources(&mut root, errors);
    let roles = read_roles(&mut root, errors);
    let prefixes = read_prefixes(&mut root, &roles, errors);
    let keys = match root.opt_array("keys", errors) {
        Some(items) => read_keys(
            "$.keys",
            items,
            &KeyContext {
                roles: &roles,
                prefixes: &prefixes,
            },
            errors,
        ),
        None => KeyTable::default(),
    };
    let key_sync = read_endpoint(&mut root, "key_sync", errors);
    let usage_report = read_endpoint(&mut root, "usage_report", errors);
    let rate_limit_service = read_rate_limit_service(&mut root, errors);
    let default_limits = read_limits(&mut root, errors).unwrap_or_default();
    let public_paths = read_patterns(&mut root, "public_paths", errors).unwrap_or_default();
    let vp_path = root.field_path("verify_path");
    let verify_path = root
        .opt_str("verify_path", errors)
        .and_then(|v| match canonical_path(v) {
            Ok(c) if c == v => Some(c),
            _ => {
                errors.push(
                    &vp_path,
                    format!(
                        "{} must be a canonical absolute path (like /v1/verify)",
                        q(v)
                    ),
                );
                None
            }
        });
    let environments_accepted = read_environments_accepted(&mut root, &prefixes, &keys, errors);
    let hide_credentials = root.opt_bool("hide_credentials", errors).unwrap_or(true);
    let trust_forwarded_address = root
        .opt_bool("trust_forwarded_address", errors)
        .unwrap_or(false);
    let environment_header =
        optional_header(&mut root, "environment_header", "x-environment", errors);
    let upstream_headers = match root.get("upstream_headers") {
        None => UpstreamHeaders {
            key_id: Some("x-api-key-id".into()),
            tenant: Some("x-tenant-id".into()),
            role: Some("x-api-key-role".into()),
        },
        Some(v) => {
            let mut o = Obj::new("$.upstream_headers", v, errors)?;
            let h = UpstreamHeaders {
                key_id: optional_header(&mut o, "key_id", "x-api-key-id", errors),
                tenant: optional_header(&mut o, "tenant", "x-tenant-id", errors),
                role: optional_header(&mut o, "role", "x-api-key-role", errors),
            };
            o.finish(errors);
            h
        }
    };
    let tenants = credits::read_tenants(&mut root, errors);
    let credit_costs = credits::read_costs(&mut root, errors);
    let credits_charge = credits::read_charge(&mut root, errors);
    if rate_limit_service.is_some() {
        // What one call may add to a counter (`keygate ratelimit` refuses more, and a refused
        // call would go to on_failure on every request).
        for (i, r) in credit_costs.iter().enumerate() {
            if r.cost > 1_000_000 {
                errors.push(
                    &format!("$.credit_costs[{i}].cost"),
                    "must be at most 1000000 with rate_limit_service",
                );
            }
        }
    }
    if rate_limit_service.is_some() && credits_charge == Charge::Success {
        // The service spends credits in its call; its protocol has no way to give them back.
        errors.push(
            "$.credits_charge",
            "\"success\" cannot be given back with rate_limit_service",
        );
    }
    root.finish(errors);

    let bearer = sources.iter().any(
        |s| matches!(&s.from, Source::Header { scheme: Some(s), .. } if s.eq_ignore_ascii_case("bearer")),
    );
    let mut gate = Gate {
        sources,
        prefixes,
        roles,
        keys,
        default_limits,
        public_paths,
        verify_path,
        hide_credentials,
        environment_header,
        upstream_headers,
        key_sync,
        usage_report,
        rate_limit_service,
        bearer,
        trust_forwarded_address,
        environments_accepted,
        spelling_lengths: 0,
        tenants,
        credit_costs,
        credits_charge,
    };
    gate.spelling_lengths = crate::forward::spelling_lengths(&gate);
    check_header_clashes(&gate, errors);
    Some(gate)
}

/// The headers the filter sets must be distinct and must not be a key source.
fn check_header_clashes(gate: &Gate, errors: &mut Errors) {
    let mut seen: Vec<&str> = Vec::new();
    for h in gate.owned_request_headers() {
        if seen.contains(&h) {
            errors.push(
                "$.upstream_headers",
                format!("header {} is used twice", q(h)),
            );
        }
        if gate.sources.iter().any(|s| s.header() == Some(h)) {
            errors.push(
                "$.upstream_headers",
                format!("header {} is also a key source", q(h)),
            );
        }
        seen.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::json;
    use crate::keys;

    fn errors_of(v: Value) -> Vec<String> {
        match gate_from_value(&v) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn hash() -> String {
        keys::digest_hex(b"mlm_live_x")
    }

    #[test]
    fn leak_policy_is_read_and_checked() {
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [
                {"prefix": "sk_live_", "environment": "LIVE"},
                {"prefix": "sk_test_", "environment": "TEST", "leak_policy": "revoke"},
                {"prefix": "pk_live_", "environment": "LIVE", "leak_policy": "notify"}
            ]
        }))
        .unwrap();
        let policy = |p: &str| {
            let p = g.prefixes.iter().find(|x| x.prefix == p).unwrap();
            (
                p.leak_policy,
                crate::model::LeakPolicy::default_for(p.environment.as_deref()),
            )
        };
        use crate::model::LeakPolicy::{Notify, Revoke};
        assert_eq!(policy("sk_live_"), (None, Revoke));
        assert_eq!(policy("sk_test_"), (Some(Revoke), Notify));
        assert_eq!(policy("pk_live_"), (Some(Notify), Revoke));
        assert_eq!(
            errors_of(json!({
                "key_sources": [{"header": "x-api-key"}],
                "prefixes": [{"prefix": "sk_", "leak_policy": "delete"}]
            })),
            vec!["$.prefixes[0].leak_policy: \"delete\" is not \"revoke\" or \"notify\""]
        );
    }

    #[test]
    fn full_example_parses() {
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "X-Tenant-Api-Key"}, {"header": "authorization", "scheme": "Bearer"}, {"query": "api_key"}],
            "prefixes": [
                {"prefix": "mlm_", "environment": "OTHER"},
                {"prefix": "mlm_live_", "environment": "LIVE", "role": "admin", "rate_limits": [{"requests": 50000, "per": "day"}]}
            ],
            "roles": {"admin": {"methods": ["*"]}, "reader": {"methods": ["get", "HEAD"], "paths": ["/v1/*"], "forbidden_message": "no"}},
            "keys": [
                {"id": "key_123", "sha256": hash(), "name": "Production Key", "tenant": "org_42", "role": "reader",
                 "environment": "LIVE", "revoked": false, "expires_at": "2027-01-01T00:00:00Z",
                 "rate_limits": [{"requests": 100, "per": "minute"}, {"requests": 5, "per": "second"}],
                 "allowed_ips": ["203.0.113.0/24", "2001:db8::/32"], "allowed_referers": ["https://app.example.com/*"],
                 "allowed_paths": ["/v1/users/*"]},
                {"id": "key_456", "key": "mlm_live_plain", "expires_at": 1798761600}
            ],
            "key_sync": {"cluster": "keyservice", "path": "/keys", "authority": "keys.internal", "interval_seconds": 10, "timeout_ms": 2000},
            "rate_limits": [{"requests": 1000, "per": "minute"}],
            "public_paths": ["/healthz"],
            "verify_path": "/v1/verify",
            "hide_credentials": true,
            "environment_header": "x-environment",
            "upstream_headers": {"key_id": "x-api-key-id", "tenant": "x-tenant-id", "role": "x-api-key-role"}
        }))
        .unwrap();
        assert_eq!(g.prefixes[0].prefix, "mlm_live_", "longest prefix first");
        assert_eq!(
            g.classify(b"mlm_live_abc")
                .map(|p| p.map(|p| p.prefix.as_str())),
            Some(Some("mlm_live_"))
        );
        assert_eq!(
            g.classify(b"mlm_x").map(|p| p.map(|p| p.prefix.as_str())),
            Some(Some("mlm_"))
        );
        assert!(g.classify(b"sk_x").is_none());
        assert_eq!(
            g.sources[0].from,
            Source::Header {
                name: "x-tenant-api-key".into(),
                scheme: None
            }
        );
        let rec = g.keys.get(&keys::digest(b"mlm_live_x")).unwrap();
        assert_eq!(rec.id, "key_123");
        assert_eq!(rec.expires_at, Some(1_798_761_600));
        assert_eq!(
            g.roles[g.role(rec.role).map(|_| rec.role.unwrap()).unwrap()].methods,
            Some(vec!["GET".to_string(), "HEAD".to_string()])
        );
        assert!(
            g.keys.get(&keys::digest(b"mlm_live_plain")).is_some(),
            "plaintext keys are stored by digest"
        );
        assert!(g.bearer);
        assert_eq!(g.key_sync.as_ref().map(|k| k.interval_seconds), Some(10));
    }

    #[test]
    fn defaults() {
        let g = gate_from_value(&json!({"keys": [{"id": "a", "sha256": hash()}]})).unwrap();
        assert_eq!(
            g.sources.len(),
            2,
            "x-api-key and Authorization: Bearer by default"
        );
        assert!(
            !g.sources
                .iter()
                .any(|s| matches!(s.from, Source::Query { .. })),
            "never the query by default"
        );
        assert!(g.hide_credentials);
        assert_eq!(g.environment_header.as_deref(), Some("x-environment"));
        assert_eq!(g.upstream_headers.key_id.as_deref(), Some("x-api-key-id"));
        assert!(
            g.classify(b"anything").is_some(),
            "no prefixes: every key is looked up"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errs = errors_of(json!({
            "key_sources": [{"header": "bad header"}, {"query": "q", "scheme": "Bearer"}, {}],
            "prefixes": [{"prefix": "a_", "role": "nope"}, {"prefix": "a_"}],
            "roles": {"r": {"methods": ["GET", "*"]}, "s": {"methods": ["GET"], "paths": ["v1"]}},
            "keys": [
                {"id": "k1", "sha256": "ABC"},
                {"id": "k1", "sha256": keys::digest_hex(b"a_1")},
                {"id": "k2", "sha256": keys::digest_hex(b"a_1")},
                {"id": "k3", "key": "zz_plain"},
                {"id": "k4", "sha256": hash(), "key": "a_x"},
                {"id": "k 5", "sha256": keys::digest_hex(b"a_5"), "allowed_ips": ["10.0.0.0/33"], "allowed_paths": ["/a/*/b"],
                 "allowed_referers": ["example.com"], "expires_at": "soon", "rate_limits": [{"requests": 0, "per": "week"}],
                 "role": "ghost", "colour": "red"}
            ],
            "rate_limits": [{"requests": 1, "per": "day"}, {"requests": 2, "per": "day"}],
            "verify_path": "/v1/../verify",
            "upstream_headers": {"key_id": "x-environment"},
            "extra": 1
        }));
        let expect = [
            "$.key_sources[0].header: \"bad header\" is not a valid HTTP header name",
            "$.key_sources[1].scheme: applies only to header sources",
            "$.key_sources[2]: needs \"header\" or \"query\"",
            "$.prefixes[0].role: role \"nope\" is not defined in $.roles",
            "$.prefixes[1].prefix: duplicate prefix \"a_\"",
            "$.roles.r.methods: \"*\" must stand alone",
            "$.roles.s.paths[0]: pattern \"v1\" does not start with '/'",
            "$.keys[0].sha256: must be 64 lowercase hex characters (SHA-256 of the whole key)",
            "$.keys[1].id: duplicate id \"k1\" (first at $.keys[0])",
            "$.keys[2]: duplicate key: the same key (hash) appears earlier",
            "$.keys[3].key: does not start with any configured prefix, so it could never be used",
            "$.keys[4]: has both \"sha256\" and \"key\"; give exactly one",
            "$.keys[5].id: \"k 5\" must be 1-128 characters of A-Z a-z 0-9 _ - . :",
            "$.keys[5].role: role \"ghost\" is not defined in $.roles",
            "$.keys[5].expires_at: \"soon\" is not an RFC 3339 timestamp (2027-01-01T00:00:00Z)",
            "$.keys[5].rate_limits[0].per: \"week\" is not one of second, minute, hour, day",
            "$.keys[5].rate_limits[0].requests: must be at least 1",
            "$.keys[5].allowed_ips[0]: \"10.0.0.0/33\" has an invalid prefix length",
            "$.keys[5].allowed_referers[0]: pattern \"example.com\" is not an absolute URL (scheme://host/path)",
            "$.keys[5].allowed_paths[0]: pattern \"/a/*/b\": '*' is allowed only alone or as a final '/*'",
            "$.keys[5].colour: unknown field",
            "$.verify_path: \"/v1/../verify\" must be a canonical absolute path (like /v1/verify)",
            "$.extra: unknown field",
            "$.upstream_headers: header \"x-environment\" is used twice",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x == e),
                "missing error {e:?}\nall errors:\n{}",
                errs.join("\n")
            );
        }
        assert_eq!(
            errs.len(),
            expect.len(),
            "unexpected extra errors:\n{}",
            errs.join("\n")
        );
    }

    #[test]
    fn rate_limit_service_is_read_and_checked() {
        let g = gate_from_value(&json!({"rate_limit_service": {"cluster": "rl"}})).unwrap();
        let rls = g.rate_limit_service.unwrap();
        assert_eq!(
            (
                rls.domain.as_str(),
                rls.timeout_ms,
                rls.on_failure,
                rls.authority
            ),
            ("keygate", 100, OnFailure::Local, None)
        );
        assert_eq!(rls.grpc_service, "\n\u{4}\n\u{2}rl");
        let g = gate_from_value(&json!({"rate_limit_service": {"cluster": "rl",
            "authority": "rl.internal", "domain": "api", "timeout_ms": 250, "on_failure": "deny"}}))
        .unwrap();
        let rls = g.rate_limit_service.unwrap();
        assert_eq!((rls.on_failure, rls.timeout_ms), (OnFailure::Deny, 250));
        assert_eq!(
            errors_of(json!({"rate_limit_service": {"cluster": "rl", "on_failure": "open",
                "timeout_ms": 0, "domain": "a b", "colour": 1}})),
            vec![
                "$.rate_limit_service.on_failure: \"open\" is not one of local, deny, allow",
                "$.rate_limit_service.colour: unknown field",
                "$.rate_limit_service.domain: must be 1-255 printable ASCII characters without spaces",
                "$.rate_limit_service.timeout_ms: must be between 1 and 60000",
            ]
        );
        assert_eq!(
            errors_of(json!({"rate_limit_service": {"cluster": "c".repeat(70), "authority": "a".repeat(60)}})),
            vec!["$.rate_limit_service: cluster and authority must together be at most 120 characters"]
        );
        assert_eq!(
            errors_of(json!({"rate_limit_service": {}})),
            vec!["$.rate_limit_service.cluster: is required"]
        );
    }

    #[test]
    fn the_plaintext_key_is_never_in_an_error() {
        let errs = errors_of(
            json!({"prefixes": [{"prefix": "a_"}], "keys": [{"id": "k", "key": "secret_value_123"}]}),
        );
        assert_eq!(errs.len(), 1);
        assert!(!errs[0].contains("secret_value_123"));
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        assert_eq!(parse_config(b"{not json").unwrap_err()[0].path, "$");
        assert_eq!(
            errors_of(json!([1, 2])),
            vec!["$: expected an object, found an array"]
        );
        assert_eq!(
            errors_of(json!({"keys": {}})),
            vec!["$.keys: expected an array, found an object"]
        );
        assert_eq!(
            errors_of(json!({"key_sources": []})),
            vec!["$.key_sources: needs at least one key source"]
        );
        assert_eq!(
            errors_of(json!({"keys": [{"sha256": hash()}]})),
            vec!["$.keys[0].id: is required"]
        );
        assert_eq!(
            errors_of(
                json!({"key_sync": {"cluster": "ks", "path": "keys", "interval_seconds": 0}})
            ),
            vec![
                "$.key_sync.path: must be an absolute path starting with '/'",
                "$.key_sync.interval_seconds: must be between 1 and 86400"
            ]
        );
        assert_eq!(
            errors_of(json!({"keys": [{"id": "a", "sha256": hash(), "tenant": "bad\nvalue"}]})),
            vec!["$.keys[0].tenant: \"bad\\nvalue\" must be non-empty printable ASCII without surrounding spaces (it is sent in a header)"]
        );
        assert_eq!(
            errors_of(json!({"roles": {"r": {}}})),
            vec!["$.roles.r.methods: is required (a list of methods, or [\"*\"])"]
        );
        assert_eq!(
            errors_of(
                json!({"key_sources": [{"header": "x-api-key"}], "upstream_headers": {"key_id": "X-Api-Key"}})
            ),
            vec!["$.upstream_headers: header \"x-api-key\" is also a key source"]
        );
    }

    #[test]
    fn the_reference_documents_every_field_and_no_other() {
        crate::json_reader::fields_read::take();
        // One of each kind of object: the parser asks for every field it knows on each.
        gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [{"prefix": "a_"}],
            "roles": {"r": {"methods": ["*"]}},
            "keys": [{"id": "k", "sha256": hash(), "rate_limits": [{"requests": 1, "per": "day"}]}],
            "key_sync": {"cluster": "ks", "path": "/keys"},
            "usage_report": {"cluster": "ks", "path": "/usage"},
            "rate_limit_service": {"cluster": "rl"},
            "upstream_headers": {}
        }))
        .unwrap();
        // Credits (not with a rate-limit service yet).
        gate_from_value(&json!({
            "keys": [{"id": "k", "sha256": hash(), "credits": {"granted": 5, "refill": {"interval": "month", "day": 1}}}],
            "tenants": {"t": {"credits": {"granted": 1}}},
            "credit_costs": [{"methods": ["POST"], "paths": ["/x"], "cost": 2}],
            "credits_charge": "success"
        }))
        .unwrap();
        // A limit is documented once, under the top-level `rate_limits`; a balance's fields
        // once, under `credits`.
        let mut fields: Vec<String> = crate::json_reader::fields_read::take()
            .into_iter()
            .map(|f| match f.rsplit_once("rate_limits[].") {
                Some((_, x)) => format!("rate_limits[].{x}"),
                None => match f.rsplit_once(".credits.") {
                    Some((_, x)) => format!("credits.{x}"),
                    None => f,
                },
            })
            .collect();
        fields.sort();
        fields.dedup();
        assert!(fields.len() > 40, "{fields:?}");
        let reference = include_str!("../../docs/configuration.md");
        let missing: Vec<&String> = fields
            .iter()
            .filter(|f| !reference.contains(&format!("| `{f}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md's reference lacks {missing:?}"
        );
        // And the other way: every field the reference documents is one the parser reads.
        let documented: Vec<&str> = reference
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split_once("` |"))
            .map(|(field, _)| field)
            .filter(|f| {
                f.bytes()
                    .all(|b| b.is_ascii_lowercase() || b"_.[]<>".contains(&b))
            })
            .collect();
        assert!(documented.len() > 40, "{documented:?}");
        let unknown: Vec<&&str> = documented
            .iter()
            .filter(|f| !fields.iter().any(|x| x == **f))
            .collect();
        assert!(
            unknown.is_empty(),
            "docs/configuration.md documents fields the parser does not read: {unknown:?}"
        );
    }

    #[test]
    fn expiry_times_stay_within_what_rfc3339_writes() {
        for (t, ok) in [
            (serde_json::json!(0), true),
            (serde_json::json!(253_402_300_799i64), true),
            (serde_json::json!(-1), false),
            (serde_json::json!(253_402_300_800i64), false),
            (serde_json::json!("9999-12-31T23:59:59Z"), true),
        ] {
            let errors =
                errors_of(json!({"keys": [{"id": "k", "sha256": hash(), "expires_at": t}]}));
            assert_eq!(errors.is_empty(), ok, "{t}: {errors:?}");
        }
    }
}
