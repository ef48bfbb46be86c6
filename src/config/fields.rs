//! Field readers the configuration's parts share: header names, limits, patterns, role
//! references, environments, prefixes.

use super::MAX_LIMITS;
use crate::json_reader::{index, q, Errors, Obj};
use crate::model::*;
use crate::path::Pattern;

/// A header name as Envoy sees it: a lower-cased HTTP token, not a pseudo-header.
pub(super) fn header_name(path: &str, raw: &str, errors: &mut Errors) -> Option<String> {
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
pub(super) fn optional_header(
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

/// Non-empty printable ASCII without surrounding spaces: a value that can be sent in a header.
pub(super) fn is_header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.trim() == s
}

/// Text that goes into a header value: visible ASCII and spaces, no control characters.
/// (`path` is formatted only for an error: a million-key answer calls this per key.)
pub(super) fn header_safe(path: impl FnOnce() -> String, s: &str, errors: &mut Errors) -> bool {
    let ok = is_header_safe(s);
    if !ok {
        errors.push(&path(), format!("{} must be non-empty printable ASCII without surrounding spaces (it is sent in a header)", q(s)));
    }
    ok
}

pub(super) fn read_limits(obj: &mut Obj, errors: &mut Errors) -> Option<Vec<Limit>> {
    let items = obj.opt_array("rate_limits", errors)?;
    let path = obj.field_path("rate_limits");
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

pub(super) fn read_patterns(
    obj: &mut Obj,
    field: &'static str,
    errors: &mut Errors,
) -> Option<Vec<Pattern>> {
    obj.opt_str_list(field, errors, |p, s, errors| {
        Pattern::parse_path(s).map_err(|e| errors.push(p, e)).ok()
    })
}

pub(super) fn role_ref(obj: &mut Obj, roles: &[Role], errors: &mut Errors) -> Option<RoleId> {
    let name = obj.opt_str("role", errors)?;
    let id = roles.iter().position(|r| r.name == name);
    if id.is_none() {
        errors.push(
            &obj.field_path("role"),
            format!("role {} is not defined in $.roles", q(name)),
        );
    }
    id
}

pub(super) fn environment(obj: &mut Obj, errors: &mut Errors) -> Option<String> {
    let env = obj.opt_str("environment", errors)?;
    header_safe(|| obj.field_path("environment"), env, errors).then(|| env.to_string())
}

/// A key prefix keygate can match: non-empty printable ASCII without spaces.
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() || !prefix.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be non-empty printable ASCII without spaces");
    }
    Ok(())
}

/// `methods`: HTTP method names (upper-cased) or `"*"` (roles, credit costs).
pub(super) fn read_methods(obj: &mut Obj, errors: &mut Errors) -> Option<Vec<String>> {
    obj.opt_str_list("methods", errors, |mp, m, errors| {
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
    })
}
