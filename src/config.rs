//! Plugin configuration (SPEC §1): JSON in, a validated [`Gate`] or every problem with its path.

use crate::checksum;
use crate::ip::Cidr;
use crate::json_reader::{index, json_deserializer, q, ConfigError, Errors, Obj};
use crate::keys::{self, Digest, FastMap, FastSet, KeyTable};
use crate::model::*;
use crate::path::{canonical_path, Pattern};
use crate::timestamp::parse_rfc3339;
use serde_json::Value;

const MAX_ID_LEN: usize = 128;
/// Limits per list (several may share a window length: the smallest binds).
pub const MAX_LIMITS: usize = 16;

/// Parses and validates a plugin configuration.
pub fn parse_config(bytes: &[u8]) -> Result<Gate, Vec<ConfigError>> {
    let mut input = bytes;
    let mut de = json_deserializer(&mut input);
    let value = serde::Deserialize::deserialize(&mut de)
        .and_then(|v: Value| de.end().map(|()| v))
        .map_err(|e| {
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

/// A header name as Envoy sees it: a lower-cased HTTP token, not a pseudo-header.
fn header_name(path: &str, raw: &str, errors: &mut Errors) -> Option<String> {
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        errors.push(path, format!("{} is not a valid HTTP header name", q(raw)));
        return None;
    }
    Some(raw.to_ascii_lowercase())
}

/// An optional header name where `""` turns the header off.
fn optional_header(
    obj: &mut Obj,
    field: &'static str,
    default: &str,
    errors: &mut Errors,
) -> Option<String> {
    let path = obj.field_path(field);
    match obj.opt_str(field, errors) {
        None => Some(default.to_string()),
        Some("") => None,
        Some(s) => header_name(&path, s, errors),
    }
}

/// Text that goes into a header value: visible ASCII and spaces, no control characters.
fn header_safe(path: &str, s: &str, errors: &mut Errors) -> bool {
    let ok = !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.trim() == s;
    if !ok {
        errors.push(path, format!("{} must be non-empty printable ASCII without surrounding spaces (it is sent in a header)", q(s)));
    }
    ok
}

fn read_sources(root: &mut Obj, errors: &mut Errors) -> Vec<KeySource> {
    let path = root.field_path("key_sources");
    let Some(items) = root.opt_array("key_sources", errors) else {
        if root.has("key_sources") {
            return Vec::new();
        }
        return [
            Source::Header {
                name: "x-api-key".into(),
                scheme: None,
            },
            Source::Header {
                name: "authorization".into(),
                scheme: Some("Bearer".into()),
            },
        ]
        .into_iter()
        .map(|from| KeySource { from, paths: None })
        .collect();
    };
    if items.is_empty() {
        errors.push(&path, "needs at least one key source");
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let header = o.opt_str("header", errors);
        let query = o.opt_str("query", errors);
        let scheme = o.opt_str("scheme", errors);
        let paths = read_patterns(&mut o, "paths", errors);
        let push = |from| out.push(KeySource { from, paths });
        match (header, query) {
            (Some(h), None) => {
                let name = header_name(&o.field_path("header"), h, errors);
                let scheme = match scheme {
                    Some(s)
                        if s.is_empty()
                            || !s
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)) =>
                    {
                        errors.push(
                            &o.field_path("scheme"),
                            format!("{} is not a valid authentication scheme", q(s)),
                        );
                        None
                    }
                    s => s.map(str::to_string),
                };
                if let Some(name) = name {
                    push(Source::Header { name, scheme });
                }
            }
            (None, Some(q)) => {
                if scheme.is_some() {
                    errors.push(&o.field_path("scheme"), "applies only to header sources");
                }
                if q.is_empty()
                    || !q
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                {
                    errors.push(
                        &o.field_path("query"),
                        format!(
                            "{} is not a valid query parameter name",
                            crate::json_reader::q(q)
                        ),
                    );
                } else {
                    push(Source::Query {
                        name: q.to_string(),
                    });
                }
            }
            (Some(_), Some(_)) => errors.push(&p, "has both \"header\" and \"query\"; give one"),
            (None, None) => errors.push(&p, "needs \"header\" or \"query\""),
        }
        o.finish(errors);
    }
    let mut seen = FastSet::default();
    for (i, s) in out.iter().enumerate() {
        if !seen.insert(s.from.clone()) {
            errors.push(&index(&path, i), "duplicate key source");
        }
    }
    out
}

fn read_limits(obj: &mut Obj, errors: &mut Errors) -> Option<Vec<Limit>> {
    let path = obj.field_path("rate_limits");
    let items = obj.opt_array("rate_limits", errors)?;
    if items.len() > MAX_LIMITS {
        errors.push(&path, format!("at most {MAX_LIMITS} limits"));
    }
    let mut out: Vec<Limit> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let requests = o.opt_u64("requests", errors);
        let per_path = o.field_path("per");
        let per = o.req_str("per", errors);
        if !o.has("requests") && requests.is_none() {
            errors.push(&o.field_path("requests"), "is required");
        }
        let per = per.and_then(|s| {
            let p = Per::parse(s);
            if p.is_none() {
                errors.push(
                    &per_path,
                    format!("{} is not one of second, minute, hour, day", q(s)),
                );
            }
            p
        });
        if requests == Some(0) {
            errors.push(&o.field_path("requests"), "must be at least 1");
        }
        if let (Some(requests), Some(per)) = (requests, per) {
            if requests > 0 {
                out.push(Limit { requests, per });
            }
        }
        o.finish(errors);
    }
    Some(out)
}

fn read_patterns(obj: &mut Obj, field: &'static str, errors: &mut Errors) -> Option<Vec<Pattern>> {
    obj.opt_str_list(field, errors, |p, s, errors| {
        Pattern::parse_path(s).map_err(|e| errors.push(p, e)).ok()
    })
}

fn read_roles(root: &mut Obj, errors: &mut Errors) -> Vec<Role> {
    let path = root.field_path("roles");
    let Some(value) = root.get("roles") else {
        return Vec::new();
    };
    let Some(Value::Object(map)) = Some(value) else {
        errors.push(&path, "expected an object of role name → role");
        return Vec::new();
    };
    let mut roles = Vec::new();
    for (name, item) in map {
        let p = format!("{path}.{name}");
        if name.is_empty() || !header_safe(&p, name, errors) {
            continue;
        }
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let methods_path = o.field_path("methods");
        let methods = o.opt_str_list("methods", errors, |mp, m, errors| {
            if m == "*"
                || (!m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_'))
            {
                Some(m.to_ascii_uppercase())
            } else {
                errors.push(mp, format!("{} is not an HTTP method or \"*\"", q(m)));
                None
            }
        });
        let methods = match methods {
            None => {
                errors.push(&methods_path, "is required (a list of methods, or [\"*\"])");
                None
            }
            Some(m) if m.is_empty() => {
                errors.push(&methods_path, "must list at least one method (or \"*\")");
                None
            }
            Some(m) if m.iter().any(|x| x == "*") => {
                if m.len() > 1 {
                    errors.push(&methods_path, "\"*\" must stand alone");
                }
                None
            }
            Some(m) => Some(m),
        };
        let paths = read_patterns(&mut o, "paths", errors);
        let fm_path = o.field_path("forbidden_message");
        let forbidden_message = o.opt_str("forbidden_message", errors).map(str::to_string);
        if forbidden_message.as_deref() == Some("") {
            errors.push(&fm_path, "must not be empty");
        }
        o.finish(errors);
        roles.push(Role {
            name: name.clone(),
            methods,
            paths,
            forbidden_message,
        });
    }
    roles
}

fn role_ref(obj: &mut Obj, roles: &[Role], errors: &mut Errors) -> Option<RoleId> {
    let path = obj.field_path("role");
    let name = obj.opt_str("role", errors)?;
    let id = roles.iter().position(|r| r.name == name);
    if id.is_none() {
        errors.push(&path, format!("role {} is not defined in $.roles", q(name)));
    }
    id
}

fn environment(obj: &mut Obj, errors: &mut Errors) -> Option<String> {
    let path = obj.field_path("environment");
    let env = obj.opt_str("environment", errors)?;
    header_safe(&path, env, errors).then(|| env.to_string())
}

/// A key prefix keygate can match: non-empty printable ASCII without spaces.
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() || !prefix.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be non-empty printable ASCII without spaces");
    }
    Ok(())
}

fn read_prefixes(root: &mut Obj, roles: &[Role], errors: &mut Errors) -> Vec<Prefix> {
    let path = root.field_path("prefixes");
    let Some(items) = root.opt_array("prefixes", errors) else {
        return Vec::new();
    };
    let mut out: Vec<Prefix> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let prefix_path = o.field_path("prefix");
        let prefix = o.req_str("prefix", errors);
        let environment = environment(&mut o, errors);
        let role = role_ref(&mut o, roles, errors);
        let rate_limits = read_limits(&mut o, errors);
        let checksum = match o.opt_str("checksum", errors) {
            None => None,
            Some("crc32") => Some(Checksum::Crc32),
            Some(other) => {
                errors.push(
                    &o.field_path("checksum"),
                    format!("{} is not a checksum keygate knows (\"crc32\")", q(other)),
                );
                None
            }
        };
        o.finish(errors);
        let Some(prefix) = prefix else { continue };
        if let Err(e) = check_prefix(prefix) {
            errors.push(&prefix_path, e);
            continue;
        }
        if out.iter().any(|x| x.prefix == prefix) {
            errors.push(&prefix_path, format!("duplicate prefix {}", q(prefix)));
            continue;
        }
        out.push(Prefix {
            prefix: prefix.to_string(),
            environment,
            role,
            rate_limits,
            checksum,
        });
    }
    out.sort_unstable_by_key(|p| std::cmp::Reverse(p.prefix.len()));
    out
}

/// Roles and prefixes a key entry may refer to.
pub struct KeyContext<'a> {
    pub roles: &'a [Role],
    pub prefixes: &'a [Prefix],
}

/// Reads one key entry (inline `keys` or a key-service answer).
pub fn read_key_entry(
    path: &str,
    item: &Value,
    ctx: &KeyContext,
    errors: &mut Errors,
) -> Option<(Digest, KeyRecord)> {
    let before = errors.0.len();
    let mut o = Obj::new(path, item, errors)?;
    let id = o.req_str("id", errors);
    if let Some(id) = id {
        let ok = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !ok {
            errors.push(
                &o.field_path("id"),
                format!(
                    "{} must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ - . :",
                    q(id)
                ),
            );
        }
    }
    let sha = o.opt_str("sha256", errors);
    let plain = o.opt_str("key", errors);
    let digest = match (sha, plain) {
        (Some(h), None) => {
            let d = keys::parse_digest_hex(h);
            if d.is_none() {
                errors.push(
                    &o.field_path("sha256"),
                    "must be 64 lowercase hex characters (SHA-256 of the whole key)",
                );
            }
            d
        }
        (None, Some(k)) => {
            if k.is_empty() {
                errors.push(&o.field_path("key"), "must not be empty");
                None
            } else if !ctx.prefixes.is_empty()
                && !ctx
                    .prefixes
                    .iter()
                    .any(|p| k.starts_with(p.prefix.as_str()))
            {
                // Never echo the plaintext in an error.
                errors.push(
                    &o.field_path("key"),
                    "does not start with any configured prefix, so it could never be used",
                );
                None
            } else if let Some(p) = ctx.prefixes.iter().find(|p| {
                k.starts_with(p.prefix.as_str())
                    && p.checksum.is_some()
                    && !checksum::valid(k.as_bytes())
            }) {
                errors.push(
                    &o.field_path("key"),
                    format!(
                        "does not end in the crc32 checksum prefix {} requires, so it could never be used",
                        q(&p.prefix)
                    ),
                );
                None
            } else {
                Some(keys::digest(k.as_bytes()))
            }
        }
        (Some(_), Some(_)) => {
            errors.push(path, "has both \"sha256\" and \"key\"; give exactly one");
            None
        }
        (None, None) => {
            errors.push(path, "needs \"sha256\" or \"key\"");
            None
        }
    };
    let name = o.opt_str("name", errors).map(str::to_string);
    let tenant = o
        .opt_str("tenant", errors)
        .filter(|t| header_safe(&o.field_path("tenant"), t, errors))
        .map(str::to_string);
    let role = role_ref(&mut o, ctx.roles, errors);
    let environment = environment(&mut o, errors);
    let revoked = o.opt_bool("revoked", errors).unwrap_or(false);
    let expires_at = match o.get("expires_at") {
        None => None,
        Some(Value::String(s)) => {
            let t = parse_rfc3339(s);
            if t.is_none() {
                errors.push(
                    &o.field_path("expires_at"),
                    format!(
                        "{} is not an RFC 3339 timestamp (2027-01-01T00:00:00Z)",
                        q(s)
                    ),
                );
            }
            t
        }
        Some(Value::Number(n)) => {
            let t = n.as_i64();
            if t.is_none() {
                errors.push(
                    &o.field_path("expires_at"),
                    "unix seconds must be a whole number",
                );
            }
            t
        }
        Some(_) => {
            errors.push(
                &o.field_path("expires_at"),
                "expected an RFC 3339 string or unix seconds",
            );
            None
        }
    };
    let rate_limits = read_limits(&mut o, errors);
    let allowed_ips = o.opt_str_list("allowed_ips", errors, |p, s, errors| {
        Cidr::parse(s).map_err(|e| errors.push(p, e)).ok()
    });
    let allowed_referers = o.opt_str_list("allowed_referers", errors, |p, s, errors| {
        Pattern::parse_url(s).map_err(|e| errors.push(p, e)).ok()
    });
    let allowed_paths = read_patterns(&mut o, "allowed_paths", errors);
    o.finish(errors);
    if errors.0.len() != before {
        return None;
    }
    let record = KeyRecord {
        id: id?.to_string(),
        name,
        tenant,
        role,
        environment,
        revoked,
        expires_at,
        rate_limits,
        allowed_ips,
        allowed_referers,
        allowed_paths,
    };
    Some((digest?, record))
}

/// Reads a list of key entries into a table, rejecting duplicate ids and digests.
pub fn read_keys(path: &str, items: &[Value], ctx: &KeyContext, errors: &mut Errors) -> KeyTable {
    let mut table = KeyTable::with_capacity(items.len());
    let mut ids: FastMap<&str, usize> = FastMap::default();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        // Ids are checked for duplicates even on entries with other errors.
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            if let Some(first) = ids.get(id) {
                errors.push(
                    &format!("{p}.id"),
                    format!("duplicate id {} (first at {})", q(id), index(path, *first)),
                );
            } else {
                ids.insert(id, i);
            }
        }
        let Some((digest, record)) = read_key_entry(&p, item, ctx, errors) else {
            continue;
        };
        if !table.insert(digest, record) {
            errors.push(&p, "duplicate key: the same key (hash) appears earlier");
        }
    }
    table
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
    root.finish(errors);

    let bearer = sources.iter().any(
        |s| matches!(&s.from, Source::Header { scheme: Some(s), .. } if s.eq_ignore_ascii_case("bearer")),
    );
    let gate = Gate {
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
        bearer,
        trust_forwarded_address,
        environments_accepted,
    };
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
    use serde_json::json;

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
    fn the_readme_documents_every_field() {
        crate::json_reader::fields_read::take();
        // One of each kind of object: the parser asks for every field it knows on each.
        gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [{"prefix": "a_"}],
            "roles": {"r": {"methods": ["*"]}},
            "keys": [{"id": "k", "sha256": hash(), "rate_limits": [{"requests": 1, "per": "day"}]}],
            "key_sync": {"cluster": "ks", "path": "/keys"},
            "usage_report": {"cluster": "ks", "path": "/usage"},
            "upstream_headers": {}
        }))
        .unwrap();
        // A limit is documented once, under the top-level `rate_limits`.
        let mut fields: Vec<String> = crate::json_reader::fields_read::take()
            .into_iter()
            .map(|f| match f.rsplit_once("rate_limits[].") {
                Some((_, x)) => format!("rate_limits[].{x}"),
                None => f,
            })
            .collect();
        fields.sort();
        fields.dedup();
        assert!(fields.len() > 40, "{fields:?}");
        let readme = include_str!("../README.md");
        let missing: Vec<&String> = fields
            .iter()
            .filter(|f| !readme.contains(&format!("| `{f}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md's configuration reference lacks {missing:?}"
        );
    }
}
