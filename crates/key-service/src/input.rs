//! Request bodies of the key service, read with the filter's own code: a created key is
//! validated exactly as `key_sync` will read it. Every problem comes back as
//! `<field path>: <problem>` (the first, in field order).

use super::model::{StoredKey, RESTRICTIONS};
use crate::credits::{entry_json, KeyCredits, Op, MAX_AMOUNT};
use crate::json::core_value;
use keygate::config::{read_key_entry, KeyContext};
use keygate::json;
use keygate::json_reader::{Errors, Obj};
use keygate::keys::digest_hex;
use keygate::model::Gate;
use serde_json::{Map, Value};

/// A 400's message: the error's path without the root marker (`allowed_ips[0]: …`).
pub(super) fn first_error(errors: Errors) -> String {
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

const CREATE_FIELDS: [&str; 11] = [
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
    "credits",
];

/// `credits` as a create or PATCH gives it: `granted` and `refill` only (the period's top-ups
/// and the serial are the credits call's), `granted` a number JSON holds exactly. The rest is
/// the filter's key-entry reader's to check.
fn check_credits(body: &Map<String, Value>) -> Result<(), String> {
    let Some(Value::Object(c)) = body.get("credits") else {
        return Ok(());
    };
    if let Some(unknown) = c
        .keys()
        .find(|k| !["granted", "refill"].contains(&k.as_str()))
    {
        return Err(format!(
            "credits.{unknown}: unknown field (credits take granted and refill; top-ups are POST /v1/api-keys/{{id}}/credits)"
        ));
    }
    if c.get("granted")
        .and_then(Value::as_f64)
        .is_some_and(|g| g > MAX_AMOUNT as f64)
    {
        return Err(format!("credits.granted: must be at most {MAX_AMOUNT}"));
    }
    Ok(())
}

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
            keygate::config::check_prefix(&prefix).map_err(|e| format!("prefix: {e}"))?;
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
    check_credits(map)?;
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
        let Some((_, record)) = read_key_entry("$", &core_value(&entry), &ctx, &mut errors) else {
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
            credits: record.credits.map(|credits| KeyCredits {
                credits,
                set_at: None,
                spent: None,
            }),
            tenant_balance: None,
            tenant_credits: None,
        })
    }

    /// The key's credits become `credits` (`None`: none): a roll's carried-over balance.
    pub fn set_credits(&mut self, credits: Option<&keygate::model::Credits>) {
        match credits {
            Some(c) => self.entry.insert("credits".into(), entry_json(c)),
            None => self.entry.remove("credits"),
        };
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
        if let Some(c) = &old.credits {
            entry.insert("credits".into(), entry_json(&c.credits));
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
pub const PATCH_FIELDS: [&str; 8] = [
    "name",
    "role",
    "expires_at",
    "rate_limits",
    "allowed_ips",
    "allowed_referers",
    "allowed_paths",
    "credits",
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
    check_credits(map)?;
    let mut request = CreateRequest::from_stored(old, gate);
    for (field, value) in map {
        if value.is_null() {
            request.entry.remove(field);
        } else {
            request.entry.insert(field.clone(), value.clone());
        }
    }
    // New `granted` and `refill`: the period's top-ups and the serial carry on.
    if let (Some(Value::Object(new)), Some(c)) = (map.get("credits"), &old.credits) {
        let mut merged = new.clone();
        if let Value::Object(kept) = entry_json(&c.credits) {
            for field in ["top_up", "serial"] {
                if let Some(v) = kept.get(field) {
                    merged.insert(field.into(), v.clone());
                }
            }
        }
        request
            .entry
            .insert("credits".into(), Value::Object(merged));
    }
    let mut key = request.stored(&old.id, &old.sha256, gate, old.created_at)?;
    key.environment = old.environment.clone();
    key.last_used = old.last_used;
    if let (Some(new), Some(old)) = (&mut key.credits, &old.credits) {
        new.set_at = old.set_at;
        new.spent = old.spent;
    }
    Ok(key)
}

/// A roll's `grace_seconds` (default one day; at most a year).
pub fn read_roll(body: &Value) -> Result<u64, String> {
    let mut errors = Errors::default();
    let body = json::parse(body.to_string().as_bytes()).map_err(|e| format!("$: {e}"))?;
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

/// A credits call's body (`{"op":"set"|"add"|"subtract","amount":N}`).
pub fn read_credits_op(body: &Value) -> Result<(Op, u64), String> {
    let mut errors = Errors::default();
    let body = json::parse(body.to_string().as_bytes()).map_err(|e| format!("$: {e}"))?;
    let Some(mut o) = Obj::new("$", &body, &mut errors) else {
        return Err(first_error(errors));
    };
    let op_path = o.field_path("op");
    let op = o.req_str("op", &mut errors);
    let amount_path = o.field_path("amount");
    let amount = o.opt_u64("amount", &mut errors);
    if amount.is_none() && !o.has("amount") {
        errors.push(&amount_path, "is required");
    }
    o.finish(&mut errors);
    let op = op.and_then(|op| {
        Op::parse(op).or_else(|| {
            errors.push(
                &op_path,
                format!("{op:?} is not \"set\", \"add\" or \"subtract\""),
            );
            None
        })
    });
    if amount.is_some_and(|a| a > MAX_AMOUNT) {
        errors.push(&amount_path, format!("must be at most {MAX_AMOUNT}"));
    }
    match (op, amount) {
        (Some(op), Some(amount)) if errors.is_empty() => Ok((op, amount)),
        _ => Err(first_error(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::model::{Credits, Refill};
    use serde_json::json;

    fn gate() -> Gate {
        keygate::config::parse_config(
            br#"{"key_sources": [{"header": "x-api-key"}], "prefixes": [{"prefix": "p_"}]}"#,
        )
        .unwrap()
    }

    fn create(body: Value) -> Result<StoredKey, String> {
        read_create(&body, &gate())?.stored("k1", &digest_hex(b"x"), &gate(), 5)
    }

    #[test]
    fn credits_on_create_are_read_as_the_filter_reads_them() {
        let k = create(
            json!({"prefix": "p_", "credits": {"granted": 3, "refill": {"interval": "month", "day": 15}}}),
        )
        .unwrap();
        assert_eq!(
            k.credits.map(|c| c.credits),
            Some(Credits {
                granted: 3,
                refill: Some(Refill::Month { day: 15 }),
                top_up: None,
                serial: 0
            })
        );
        assert_eq!(create(json!({"prefix": "p_"})).unwrap().credits, None);
        for (credits, error) in [
            (json!({}), "credits.granted: is required"),
            (
                json!({"granted": -1}),
                "credits.granted: expected a whole number ≥ 0, found a number",
            ),
            (
                json!({"granted": 9007199254740992u64}),
                "credits.granted: must be at most 9007199254740991",
            ),
            (
                json!({"granted": 1, "refill": {"interval": "week"}}),
                "credits.refill.interval: \"week\" is not \"day\" or \"month\"",
            ),
            (
                json!({"granted": 1, "refill": {"interval": "month", "day": 32}}),
                "credits.refill.day: must be a day of the month, 1 to 31",
            ),
            (
                json!({"granted": 1, "refill": {"interval": "day", "day": 1}}),
                "credits.refill.day: applies to a monthly refill only",
            ),
            (
                json!({"granted": 1, "serial": 2}),
                "credits.serial: unknown field (credits take granted and refill; top-ups are POST /v1/api-keys/{id}/credits)",
            ),
            (json!(5), "credits: expected an object, found a number"),
        ] {
            assert_eq!(
                create(json!({"prefix": "p_", "credits": credits})).unwrap_err(),
                error,
                "{credits}"
            );
        }
    }

    #[test]
    fn a_patch_changes_the_grant_and_keeps_the_balance() {
        let mut old = create(json!({"prefix": "p_", "credits": {"granted": 3}})).unwrap();
        if let Some(c) = &mut old.credits {
            c.credits.top_up = Some((0, 4));
            c.credits.serial = 2;
            c.set_at = Some(9);
        }
        let new = read_patch(
            &json!({"credits": {"granted": 10, "refill": {"interval": "day"}}}),
            &old,
            &gate(),
        )
        .unwrap();
        let c = new.credits.unwrap();
        assert_eq!(
            c.credits,
            Credits {
                granted: 10,
                refill: Some(Refill::Day),
                top_up: Some((0, 4)),
                serial: 2
            }
        );
        assert_eq!(c.set_at, Some(9));
        // Other fields leave the credits as they are; null removes them.
        let same = read_patch(&json!({"name": "n"}), &old, &gate()).unwrap();
        assert_eq!(same.credits, old.credits);
        let none = read_patch(&json!({"credits": null}), &old, &gate()).unwrap();
        assert_eq!(none.credits, None);
        assert_eq!(
            read_patch(&json!({"credits": {"granted": "x"}}), &old, &gate()).unwrap_err(),
            "credits.granted: expected a whole number ≥ 0, found a string"
        );
    }

    #[test]
    fn a_credits_call_names_the_field_it_refuses() {
        assert_eq!(
            read_credits_op(&json!({"op": "add", "amount": 5})),
            Ok((Op::Add, 5))
        );
        assert_eq!(
            read_credits_op(&json!({"op": "set", "amount": 0})),
            Ok((Op::Set, 0))
        );
        for (body, error) in [
            (json!({}), "op: is required"),
            (json!({"op": "add"}), "amount: is required"),
            (
                json!({"op": "grant", "amount": 1}),
                "op: \"grant\" is not \"set\", \"add\" or \"subtract\"",
            ),
            (
                json!({"op": 1, "amount": 1}),
                "op: expected a string, found a number",
            ),
            (
                json!({"op": "add", "amount": -1}),
                "amount: expected a whole number ≥ 0, found a number",
            ),
            (
                json!({"op": "add", "amount": 9007199254740992u64}),
                "amount: must be at most 9007199254740991",
            ),
            (
                json!({"op": "add", "amount": 1, "x": 1}),
                "x: unknown field",
            ),
            (json!([1]), "$: expected an object, found an array"),
        ] {
            assert_eq!(read_credits_op(&body).unwrap_err(), error, "{body}");
        }
    }
}
