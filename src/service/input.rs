//! Request bodies of the key service, read with the filter's own code: a created key is
//! validated exactly as `key_sync` will read it. Every problem comes back as
//! `<field path>: <problem>` (the first, in field order).

use super::model::{rejection_name, RouteUsage, StoredKey, UsageEntry, RESTRICTIONS};
use crate::config::{read_key_entry, KeyContext};
use crate::json;
use crate::json_reader::{index, Errors, Obj};
use crate::keys::digest_hex;
use crate::model::Gate;
use serde_json::{Map, Value};

/// A 400's message: the error's path without the root marker (`allowed_ips[0]: …`).
fn first_error(errors: Errors) -> String {
    errors.0.into_iter().next().map_or_else(
        || "invalid request".to_string(),
        |e| {
            let path = e.path.strip_prefix("$.").unwrap_or(&e.path);
            format!("{path}: {}", e.message)
        },
    )
}

/// Text the service stores or looks up: one rule for both databases (PostgreSQL refuses NUL in
/// text, SQLite keeps it), so bad input gets the same 400 on either.
pub fn text_ok(s: &str) -> bool {
    !s.contains('\0')
}

/// The first string (or field name) of `v` that fails [`text_ok`], as a JSON path.
fn bad_text(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) => (!text_ok(s)).then(|| path.to_string()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| bad_text(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = format!("{path}.{k}");
            if text_ok(k) {
                bad_text(x, &p)
            } else {
                Some(p)
            }
        }),
        _ => None,
    }
}

/// The body as a JSON value (an empty body is an empty object).
pub fn json_body(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("$: not valid JSON: {e}"))?;
    match bad_text(&v, "$") {
        Some(p) => Err(format!(
            "{}: must not contain NUL (\\u0000)",
            p.strip_prefix("$.").unwrap_or(&p)
        )),
        None => Ok(v),
    }
}

/// What a create asks for, validated; the key itself is minted by the caller.
pub struct CreateRequest {
    pub prefix: String,
    pub crc32: bool,
    pub id: Option<String>,
    /// Every key-entry field of the body except `id` (validated again with the digest).
    entry: Map<String, Value>,
}

const CREATE_FIELDS: [&str; 10] = [
    "prefix",
    "id",
    "name",
    "tenant",
    "role",
    "expires_at",
    "rate_limits",
    "allowed_ips",
    "allowed_referers",
    "allowed_paths",
];

/// Reads a create body: known fields only, `prefix` one of the configuration's.
pub fn read_create(body: &Value, gate: &Gate) -> Result<CreateRequest, String> {
    let mut errors = Errors::default();
    let Some(map) = body.as_object() else {
        errors.push("$", "expected an object");
        return Err(first_error(errors));
    };
    if let Some(unknown) = map.keys().find(|k| !CREATE_FIELDS.contains(&k.as_str())) {
        return Err(format!("{unknown}: unknown field"));
    }
    let prefix = match map.get("prefix") {
        Some(Value::String(p)) => p.clone(),
        None | Some(Value::Null) => return Err("prefix: is required".into()),
        Some(_) => return Err("prefix: expected a string".into()),
    };
    let configured = gate.prefixes.iter().find(|p| p.prefix == prefix);
    let crc32 = match configured {
        Some(p) => p.checksum.is_some(),
        None if gate.prefixes.is_empty() => {
            crate::config::check_prefix(&prefix).map_err(|e| format!("prefix: {e}"))?;
            false
        }
        None => {
            let mut known: Vec<&str> = gate.prefixes.iter().map(|p| p.prefix.as_str()).collect();
            known.sort_unstable();
            return Err(format!(
                "prefix: {prefix:?} is not a configured prefix ({})",
                known.join(", ")
            ));
        }
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("id: expected a string".into()),
    };
    let mut entry = map.clone();
    entry.remove("prefix");
    entry.remove("id");
    let request = CreateRequest {
        prefix,
        crc32,
        id,
        entry,
    };
    // Validate now with a stand-in id and digest, so a bad body never mints a key.
    request.stored("key_validation", &digest_hex(b""), gate, 0)?;
    Ok(request)
}

impl CreateRequest {
    /// The key to store, checked by the filter's key-entry reader (what key_sync will run).
    pub fn stored(
        &self,
        id: &str,
        sha256: &str,
        gate: &Gate,
        now: i64,
    ) -> Result<StoredKey, String> {
        let mut entry = self.entry.clone();
        entry.insert("id".into(), Value::String(id.to_string()));
        entry.insert("sha256".into(), Value::String(sha256.to_string()));
        let entry = Value::Object(entry);
        let mut errors = Errors::default();
        let ctx = KeyContext {
            roles: &gate.roles,
            prefixes: &gate.prefixes,
        };
        let Some((_, record)) = read_key_entry("$", &entry.into(), &ctx, &mut errors) else {
            return Err(first_error(errors));
        };
        let restrictions: Map<String, Value> = RESTRICTIONS
            .iter()
            .filter_map(|f| {
                self.entry
                    .get(*f)
                    .filter(|v| !v.is_null())
                    .map(|v| (f.to_string(), v.clone()))
            })
            .collect();
        Ok(StoredKey {
            id: record.id,
            sha256: sha256.to_string(),
            prefix: self.prefix.clone(),
            name: record.name,
            tenant: record.tenant,
            role: gate.role(record.role).map(|r| r.name.clone()),
            environment: None,
            created_at: now,
            expires_at: record.expires_at,
            revoked: false,
            restrictions: Value::Object(restrictions),
            last_used: None,
        })
    }

    pub fn tenant(&self) -> Option<&str> {
        self.entry.get("tenant").and_then(Value::as_str)
    }

    /// Makes the key belong to `tenant` (a tenant admin's keys are always its own).
    pub fn set_tenant(&mut self, tenant: &str) {
        self.entry
            .insert("tenant".into(), Value::String(tenant.to_string()));
    }

    /// The create request a roll makes from an existing key: the same settings.
    pub fn from_stored(old: &StoredKey, gate: &Gate) -> CreateRequest {
        let mut entry = Map::new();
        for (field, value) in [
            ("name", &old.name),
            ("tenant", &old.tenant),
            ("role", &old.role),
            ("environment", &old.environment),
        ] {
            if let Some(v) = value {
                entry.insert(field.into(), Value::String(v.clone()));
            }
        }
        if let Value::Object(r) = &old.restrictions {
            entry.extend(r.clone());
        }
        if let Some(t) = old.expires_at {
            entry.insert("expires_at".into(), Value::from(t));
        }
        CreateRequest {
            prefix: old.prefix.clone(),
            crc32: gate
                .prefixes
                .iter()
                .any(|p| p.prefix == old.prefix && p.checksum.is_some()),
            id: None,
            entry,
        }
    }
}

/// What a `PATCH` may change.
const PATCH_FIELDS: [&str; 7] = [
    "name",
    "role",
    "expires_at",
    "rate_limits",
    "allowed_ips",
    "allowed_referers",
    "allowed_paths",
];

/// A `PATCH` body applied to `old` (`null` clears a field), validated as the whole key entry
/// the filter will read.
pub fn read_patch(body: &Value, old: &StoredKey, gate: &Gate) -> Result<StoredKey, String> {
    let Some(map) = body.as_object() else {
        return Err("$: expected an object".into());
    };
    if let Some(unknown) = map.keys().find(|k| !PATCH_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{unknown}: unknown field (a PATCH changes {})",
            PATCH_FIELDS.join(", ")
        ));
    }
    let mut request = CreateRequest::from_stored(old, gate);
    for (field, value) in map {
        if value.is_null() {
            request.entry.remove(field);
        } else {
            request.entry.insert(field.clone(), value.clone());
        }
    }
    let mut key = request.stored(&old.id, &old.sha256, gate, old.created_at)?;
    key.environment = old.environment.clone();
    key.last_used = old.last_used;
    Ok(key)
}

/// A roll's `grace_seconds` (default one day; at most a year).
pub fn read_roll(body: &Value) -> Result<u64, String> {
    let mut errors = Errors::default();
    let body = json::Value::from(body);
    let Some(mut o) = Obj::new("$", &body, &mut errors) else {
        return Err(first_error(errors));
    };
    let grace = o.opt_u64("grace_seconds", &mut errors).unwrap_or(86_400);
    o.finish(&mut errors);
    if grace > 366 * 86_400 {
        errors.push("$.grace_seconds", "must be at most 31622400 (a year)");
    }
    if errors.is_empty() {
        Ok(grace)
    } else {
        Err(first_error(errors))
    }
}

/// Most keys in one report (a filter splits larger batches).
pub const MAX_REPORT_KEYS: usize = 100_000;

/// A usage report (SPEC §8): its id and one entry per key.
///
/// Read as it arrives, one entry at a time (the filter's pull parser): nothing larger than one
/// entry is ever held as a JSON tree, and a container where the schema has a number or string
/// is skipped without being kept. A report's memory is its validated entries (bounded by
/// [`MAX_REPORT_KEYS`]), whatever its body holds.
pub fn read_report(body: &[u8], now: i64) -> Result<(String, Vec<UsageEntry>), String> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let mut src: &[u8] = if blank { b"{}" } else { body };
    let mut p = json::Parser::new(&mut src);
    let syntax = |e: json::SyntaxError| format!("$: not valid JSON: {e}");
    let mut errors = ReportErrors::default();
    let (mut report_id, mut saw_keys) = (None::<Small>, false);
    let mut entries = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut first = true;
    if !p.next_is(b'{').map_err(syntax)? {
        let v = small_value(&mut p, 0, &mut 0, false).map_err(syntax)?;
        p.end().map_err(syntax)?;
        return Err(format!("$: expected an object, found {}", kind(&v)));
    }
    while let Some(name) = p.next_field(&mut first).map_err(syntax)? {
        if seen.iter().any(|n| *n == *name) {
            return Err(format!("{name}: is given twice"));
        }
        seen.push(name.to_string());
        match &*name {
            "report_id" => report_id = Some(small_value(&mut p, 0, &mut 0, false).map_err(syntax)?),
            "keys" if p.next_is(b'[').map_err(syntax)? => {
                saw_keys = true;
                let (mut first_item, mut items) = (true, 0usize);
                while p.next_item(&mut first_item).map_err(syntax)? {
                    if items == MAX_REPORT_KEYS {
                        return Err(format!("keys: at most {MAX_REPORT_KEYS} keys per report"));
                    }
                    items += 1;
                    if !errors.entries.is_empty() {
                        p.skip().map_err(syntax)?;
                        continue;
                    }
                    let path = index("$.keys", items - 1);
                    match small_value(&mut p, 4, &mut ENTRY_BUDGET.clone(), false).map_err(syntax)? {
                        Small::Value(item) => {
                            if let Some(e) = read_entry(&path, &item, now, &mut errors.entries) {
                                entries.push(e);
                            }
                        }
                        Small::TooMany => errors
                            .entries
                            .push(&path, format!("is too large (at most {MAX_ENTRY_FIELDS} fields in an object, {MAX_ENTRY_ROUTES} routes)")),
                    }
                }
            }
            "keys" => {
                saw_keys = true;
                let v = small_value(&mut p, 0, &mut 0, false).map_err(syntax)?;
                errors
                    .top
                    .push("$.keys", format!("expected an array, found {}", kind(&v)));
            }
            other => {
                p.skip().map_err(syntax)?;
                errors.unknown.push(&format!("$.{other}"), "unknown field");
            }
        }
    }
    p.end().map_err(syntax)?;
    let report_id = match report_id {
        None => {
            errors.top.push("$.report_id", "is required");
            None
        }
        Some(Small::Value(json::Value::String(id))) => Some(id),
        Some(v) => {
            errors.top.push(
                "$.report_id",
                format!("expected a string, found {}", kind(&v)),
            );
            None
        }
    };
    if !saw_keys {
        errors.top.push("$.keys", "is required");
    }
    if let Some(id) = &report_id {
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            errors
                .format
                .push("$.report_id", "must be 1-128 printable ASCII characters");
        }
    }
    match (report_id, errors.first()) {
        (Some(id), None) => Ok((id, entries)),
        (_, first) => Err(first.unwrap_or_else(|| "invalid request".into())),
    }
}

/// A report's problems by kind, reported in this order (as the whole-body reader did).
#[derive(Default)]
struct ReportErrors {
    top: Errors,
    unknown: Errors,
    format: Errors,
    entries: Errors,
}

impl ReportErrors {
    fn first(self) -> Option<String> {
        [self.top, self.unknown, self.format, self.entries]
            .into_iter()
            .find(|e| !e.is_empty())
            .map(first_error)
    }
}

/// Fields an entry (or its `rejected`, or a route's) may have before it is refused unread.
const MAX_ENTRY_FIELDS: usize = 16;
/// Routes one entry may split its counts into (the filter sends at most 64).
const MAX_ENTRY_ROUTES: usize = 64;
/// Values kept of one entry, whatever its shape.
const ENTRY_BUDGET: usize = 4096;
/// The longest route name kept (the filter sends longer ones as `(other)`).
use crate::usage::MAX_ROUTE_NAME;

enum Small {
    Value(json::Value),
    TooMany,
}

impl From<json::Value> for Small {
    fn from(v: json::Value) -> Small {
        Small::Value(v)
    }
}

/// The next value, kept only as deep as the schema goes: at `depth` 0 a scalar (a container is
/// skipped, nothing kept, and stands as an empty one so its reader names the wrong type); deeper,
/// an object of at most [`MAX_ENTRY_FIELDS`] fields, or (for a field named `routes`, the one array
/// of the schema) an array of at most [`MAX_ENTRY_ROUTES`] items, one level shallower; any other
/// array is skipped. `budget` bounds the values kept for one entry.
fn small_value(
    p: &mut json::Parser,
    depth: u8,
    budget: &mut usize,
    array_kept: bool,
) -> Result<Small, json::SyntaxError> {
    let open_array = p.next_is(b'[')?;
    if !open_array && !p.next_is(b'{')? {
        return Ok(p.value()?.into());
    }
    if depth == 0 || (open_array && !array_kept) {
        p.skip()?;
        return Ok(if open_array {
            json::Value::Array(Vec::new())
        } else {
            json::Value::Object(json::Map::default())
        }
        .into());
    }
    let mut first = true;
    if open_array {
        let mut items = Vec::new();
        while p.next_item(&mut first)? {
            *budget = budget.saturating_sub(1);
            if items.len() == MAX_ENTRY_ROUTES || *budget == 0 {
                p.skip()?;
                while p.next_item(&mut first)? {
                    p.skip()?;
                }
                return Ok(Small::TooMany);
            }
            match small_value(p, depth - 1, budget, false)? {
                Small::Value(v) => items.push(v),
                Small::TooMany => {
                    while p.next_item(&mut first)? {
                        p.skip()?;
                    }
                    return Ok(Small::TooMany);
                }
            }
        }
        return Ok(json::Value::Array(items).into());
    }
    let mut fields: Vec<(json::Name, json::Value)> = Vec::new();
    while let Some(name) = p.next_field(&mut first)? {
        *budget = budget.saturating_sub(1);
        if fields.len() == MAX_ENTRY_FIELDS
            || *budget == 0
            || fields.iter().any(|(n, _)| *n == name)
        {
            // Too many, or a field given twice: refused (the rest is skipped unread).
            p.skip()?;
            while p.next_field(&mut first)?.is_some() {
                p.skip()?;
            }
            return Ok(Small::TooMany);
        }
        let array_kept = &*name == "routes";
        match small_value(p, depth - 1, budget, array_kept)? {
            Small::Value(v) => fields.push((name, v)),
            Small::TooMany => {
                while p.next_field(&mut first)?.is_some() {
                    p.skip()?;
                }
                return Ok(Small::TooMany);
            }
        }
    }
    Ok(json::Value::Object(json::Map::from_distinct(fields)).into())
}

fn kind(v: &Small) -> &'static str {
    match v {
        Small::Value(json::Value::Null) => "null",
        Small::Value(json::Value::Bool(_)) => "a boolean",
        Small::Value(json::Value::Number(_)) => "a number",
        Small::Value(json::Value::String(_)) => "a string",
        Small::Value(json::Value::Array(_)) => "an array",
        Small::Value(json::Value::Object(_)) | Small::TooMany => "an object",
    }
}

const MAX_COUNT: u64 = 1 << 40;

/// A report's `last_used` may be ahead of this service's clock by at most this much.
const CLOCK_SKEW_S: i64 = 300;

/// `allowed` and `rejected` of an entry or of one of its routes; `None` after an error.
fn read_counts(o: &mut Obj, errors: &mut Errors) -> Option<(i64, Vec<(&'static str, i64)>)> {
    let before = errors.0.len();
    let requests_path = o.field_path("requests");
    let requests = o.opt_u64("requests", errors).unwrap_or(0);
    let allowed = o.opt_u64("allowed", errors).unwrap_or(0);
    let rejected_path = o.field_path("rejected");
    let mut rejected = Vec::new();
    match o.get("rejected") {
        None => {}
        Some(json::Value::Object(m)) => {
            for (name, n) in m {
                let p = format!("{rejected_path}.{name}");
                match (rejection_name(name), n.as_u64()) {
                    (None, _) => errors.push(&p, "is not a rejection decision keygate makes"),
                    (Some(_), None) => errors.push(&p, "expected a whole number ≥ 0"),
                    (Some(_), Some(n)) if n > MAX_COUNT => errors.push(&p, "is too large"),
                    (Some(d), Some(n)) => rejected.push((d, n as i64)),
                }
            }
        }
        Some(_) => errors.push(&rejected_path, "expected an object of decision: count"),
    }
    let sum = allowed.saturating_add(rejected.iter().map(|(_, n)| *n as u64).sum::<u64>());
    if requests > MAX_COUNT || allowed > MAX_COUNT {
        errors.push(&requests_path, "is too large");
    } else if requests != sum {
        errors.push(&requests_path, "must equal allowed plus every rejection");
    }
    (errors.0.len() == before).then_some((allowed as i64, rejected))
}

/// An entry's `routes`: each route once, their counts adding up to the entry's.
fn read_routes(
    path: &str,
    routes: &json::Value,
    total: (i64, &[(&'static str, i64)]),
    errors: &mut Errors,
) -> Vec<RouteUsage> {
    let json::Value::Array(items) = routes else {
        errors.push(path, "expected an array of routes");
        return Vec::new();
    };
    let mut out: Vec<RouteUsage> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = index(path, i);
        let Some(mut o) = Obj::new(&item_path, item, errors) else {
            continue;
        };
        let route_path = o.field_path("route");
        let route = o.req_str("route", errors).map(str::to_string);
        let counts = read_counts(&mut o, errors);
        o.finish(errors);
        let (Some(route), Some((allowed, rejected))) = (route, counts) else {
            continue;
        };
        if route.is_empty() || route.len() > MAX_ROUTE_NAME || !text_ok(&route) {
            errors.push(&route_path, "must be 1-256 characters of text");
        } else if out.iter().any(|r| r.route == route) {
            errors.push(&route_path, "is given twice");
        } else {
            out.push(RouteUsage {
                route,
                allowed,
                rejected,
            });
        }
    }
    let key: Vec<(&str, i64)> =
        nonzero(std::iter::once(("allowed", total.0)).chain(total.1.iter().copied()));
    let split = nonzero(out.iter().flat_map(RouteUsage::counts));
    let adds_up = key == split;
    if !adds_up {
        errors.push(path, "the routes' counts must add up to the key's");
    }
    out
}

/// Counts summed by decision, zeros left out, in a fixed order.
fn nonzero<'a>(counts: impl Iterator<Item = (&'a str, i64)>) -> Vec<(&'a str, i64)> {
    let mut sums = std::collections::BTreeMap::new();
    for (d, n) in counts {
        let s: &mut i64 = sums.entry(d).or_default();
        *s = s.saturating_add(n);
    }
    sums.into_iter().filter(|(_, n)| *n != 0).collect()
}

fn read_entry(path: &str, item: &json::Value, now: i64, errors: &mut Errors) -> Option<UsageEntry> {
    let before = errors.0.len();
    let mut o = Obj::new(path, item, errors)?;
    let id_path = o.field_path("id");
    let id = o.req_str("id", errors).map(str::to_string);
    if id.as_deref().is_some_and(|i| !text_ok(i) || i.len() > 128) {
        errors.push(&id_path, "is not a key id");
    }
    let last_used = o.opt_u64("last_used", errors);
    let counts = read_counts(&mut o, errors);
    let routes_path = o.field_path("routes");
    let routes = o.get("routes");
    o.finish(errors);
    let routes = match (routes, &counts) {
        (Some(r), Some((allowed, rejected))) => {
            read_routes(&routes_path, r, (*allowed, rejected), errors)
        }
        _ => Vec::new(),
    };
    if last_used.is_some_and(|t| t as i128 > i128::from(now) + i128::from(CLOCK_SKEW_S)) {
        errors.push(
            &format!("{path}.last_used"),
            "is in the future (Unix seconds, at most 5 minutes ahead of the key service)",
        );
    }
    if errors.0.len() != before {
        return None;
    }
    let (allowed, rejected) = counts?;
    Some(UsageEntry {
        id: id?,
        allowed,
        rejected,
        last_used: last_used.map(|t| t as i64),
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(e: &str) -> Result<Vec<UsageEntry>, String> {
        read_report(
            format!(r#"{{"report_id":"r1","keys":[{e}]}}"#).as_bytes(),
            1_000,
        )
        .map(|(_, entries)| entries)
    }

    #[test]
    fn routes_are_read_and_must_add_up() {
        let ok = entry(
            r#"{"id":"k","requests":3,"allowed":2,"rejected":{"forbidden":1},"routes":[
                {"route":"orders","requests":2,"allowed":1,"rejected":{"forbidden":1}},
                {"route":"-","requests":1,"allowed":1,"rejected":{}}]}"#,
        )
        .unwrap();
        assert_eq!(
            ok[0].route_counts(),
            vec![
                ("orders", "allowed", 1),
                ("orders", "forbidden", 1),
                ("-", "allowed", 1)
            ]
        );
        // Without routes, everything is on route "-".
        let plain = entry(r#"{"id":"k","requests":1,"allowed":1}"#).unwrap();
        assert_eq!(plain[0].route_counts(), vec![("-", "allowed", 1)]);
        for (body, error) in [
            (
                r#"{"id":"k","requests":2,"allowed":2,"routes":[{"route":"a","requests":1,"allowed":1}]}"#,
                "keys[0].routes: the routes' counts must add up to the key's",
            ),
            (
                r#"{"id":"k","requests":2,"allowed":2,"routes":[{"route":"a","requests":1,"allowed":1},{"route":"a","requests":1,"allowed":1}]}"#,
                "keys[0].routes[1].route: is given twice",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"routes":[{"route":"","requests":1,"allowed":1}]}"#,
                "keys[0].routes[0].route: must be 1-256 characters of text",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"routes":{"a":1}}"#,
                "keys[0].routes: expected an array of routes",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"routes":[{"route":"a","requests":1,"allowed":1,"extra":1}]}"#,
                "keys[0].routes[0].extra: unknown field",
            ),
        ] {
            assert_eq!(entry(body).unwrap_err(), error, "{body}");
        }
        let many: Vec<String> = (0..65)
            .map(|i| format!(r#"{{"route":"r{i}","requests":0,"allowed":0}}"#))
            .collect();
        let err = entry(&format!(
            r#"{{"id":"k","requests":0,"allowed":0,"routes":[{}]}}"#,
            many.join(",")
        ))
        .unwrap_err();
        assert!(err.starts_with("keys[0]: is too large"), "{err}");
    }
}
