//! Key entries: inline `keys` and key-service answers, read with the same code.

use super::fields::*;
use crate::checksum;
use crate::ip::Cidr;
use crate::json::Value;
use crate::json_reader::{index, q, Errors, Obj};
use crate::keys::{self, Digest, FastMap, KeyTable};
use crate::model::*;
use crate::path::Pattern;
use crate::timestamp::parse_rfc3339;

const MAX_ID_LEN: usize = 128;
/// 9999-12-31T23:59:59Z.
const MAX_TIME: i64 = 253_402_300_799;

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
        if !valid_id(id) {
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
        .filter(|t| header_safe(|| o.field_path("tenant"), t, errors))
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
    // Years 1970-9999: what RFC 3339 can write back (the key service shows it).
    if expires_at.is_some_and(|t| !(0..=MAX_TIME).contains(&t)) {
        errors.push(
            &o.field_path("expires_at"),
            "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        );
    }
    let rate_limits = read_limits(&mut o, errors);
    let allowed_ips = o.opt_str_list("allowed_ips", errors, |p, s, errors| {
        Cidr::parse(s).map_err(|e| errors.push(p, e)).ok()
    });
    let allowed_referers = o.opt_str_list("allowed_referers", errors, |p, s, errors| {
        Pattern::parse_url(s).map_err(|e| errors.push(p, e)).ok()
    });
    let allowed_paths = read_patterns(&mut o, "allowed_paths", errors);
    let credits = super::credits::read_credits(&mut o, errors);
    let tenant_credits = super::credits::read_balance(&mut o, "tenant_credits", errors);
    if tenant_credits.is_some() && tenant.is_none() {
        errors.push(&o.field_path("tenant_credits"), "needs a tenant");
    }
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
        credits,
        tenant_credits,
    };
    Some((digest?, record))
}

/// A key id: 1-128 characters of A-Z a-z 0-9 _ - . : (it is sent in headers and metric names).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// The rules [`read_key_entry`] applies to a key entry's values, checked on a record that
/// arrived already in binary form (a key service's compact answer): `Err((field, why))` for
/// the first it breaks. Structure, the role's name and IP blocks were checked by decoding it.
pub fn check_record(rec: &KeyRecord) -> Result<(), (&'static str, String)> {
    if !valid_id(&rec.id) {
        return Err((
            "id",
            format!("must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ - . :"),
        ));
    }
    for (field, value) in [("tenant", &rec.tenant), ("environment", &rec.environment)] {
        if value.as_deref().is_some_and(|v| !is_header_safe(v)) {
            return Err((
                field,
                "must be non-empty printable ASCII without surrounding spaces".into(),
            ));
        }
    }
    if rec.expires_at.is_some_and(|t| !(0..=MAX_TIME).contains(&t)) {
        return Err((
            "expires_at",
            "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z".into(),
        ));
    }
    if let Some(limits) = &rec.rate_limits {
        if limits.len() > super::MAX_LIMITS || limits.iter().any(|l| l.requests == 0) {
            return Err((
                "rate_limits",
                format!(
                    "at most {} limits, each of at least 1 request",
                    super::MAX_LIMITS
                ),
            ));
        }
    }
    // A pattern is what parsing its written form gives: nothing a configuration could not say.
    let same = |p: &Pattern, parse: fn(&str) -> Result<Pattern, String>| {
        parse(&p.source()).as_ref() == Ok(p)
    };
    for (field, patterns, parse) in [
        (
            "allowed_referers",
            &rec.allowed_referers,
            Pattern::parse_url as fn(&str) -> Result<Pattern, String>,
        ),
        ("allowed_paths", &rec.allowed_paths, Pattern::parse_path),
    ] {
        if patterns.iter().flatten().any(|p| !same(p, parse)) {
            return Err((
                field,
                "holds a pattern that is not in canonical form".into(),
            ));
        }
    }
    Ok(())
}

/// Reads a list of key entries into a table, rejecting duplicate ids and digests.
pub fn read_keys(path: &str, items: &[Value], ctx: &KeyContext, errors: &mut Errors) -> KeyTable {
    let mut table = KeyTable::with_capacity(items.len());
    // (`u32` values: the same map type as the metric ids', one instance in the .wasm.)
    let mut ids: FastMap<&str, u32> = FastMap::default();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        // Ids are checked for duplicates even on entries with other errors.
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            if let Some(first) = ids.get(id) {
                errors.push(
                    &format!("{p}.id"),
                    format!(
                        "duplicate id {} (first at {})",
                        q(id),
                        index(path, *first as usize)
                    ),
                );
            } else {
                ids.insert(id, i as u32);
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
