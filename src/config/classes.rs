//! `roles` and `prefixes`: the classes a key belongs to.

use super::fields::*;
use crate::json::Value;
use crate::json_reader::{index, q, Errors, Obj};
use crate::model::*;

pub(super) fn read_roles(root: &mut Obj, errors: &mut Errors) -> Vec<Role> {
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
        if name.is_empty() || !header_safe(|| p.clone(), name, errors) {
            continue;
        }
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let methods_path = o.field_path("methods");
        let methods = read_methods(&mut o, errors);
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
            name: name.to_string(),
            methods,
            paths,
            forbidden_message,
        });
    }
    roles
}

pub(super) fn read_prefixes(root: &mut Obj, roles: &[Role], errors: &mut Errors) -> Vec<Prefix> {
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
        let leak_policy = match o.opt_str("leak_policy", errors) {
            None => None,
            Some("revoke") => Some(LeakPolicy::Revoke),
            Some("notify") => Some(LeakPolicy::Notify),
            Some(other) => {
                errors.push(
                    &o.field_path("leak_policy"),
                    format!("{} is not \"revoke\" or \"notify\"", q(other)),
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
            leak_policy,
        });
    }
    // Longest first (the first match wins). An insertion sort: a handful of prefixes, and no
    // sort instance of its own in the .wasm.
    for i in 1..out.len() {
        let mut j = i;
        while j > 0 && out.get(j - 1).map(|p| p.prefix.len()) < out.get(j).map(|p| p.prefix.len()) {
            out.swap(j - 1, j);
            j -= 1;
        }
    }
    out
}
