//! Credits in the configuration (SPEC §14): `credits` on a key, `tenants` with theirs,
//! `credit_costs` and `credits_charge`.

use super::fields::*;
use crate::json::Value;
use crate::json_reader::{index, q, Errors, Obj};
use crate::model::{Charge, CostRule, Credits, Refill};

/// Reads `obj.credits` (`None`: absent, or refused with its path in `errors`).
pub(super) fn read_credits(obj: &mut Obj, errors: &mut Errors) -> Option<Credits> {
    read_balance(obj, "credits", errors)
}

/// Reads a balance in `obj.<field>` (`credits`, or a key entry's `tenant_credits`).
pub(super) fn read_balance(
    obj: &mut Obj,
    field: &'static str,
    errors: &mut Errors,
) -> Option<Credits> {
    let path = obj.field_path(field);
    let value = obj.get(field)?;
    let mut o = Obj::new(&path, value, errors)?;
    let granted = o.opt_u64("granted", errors);
    if granted.is_none() && !o.has("granted") {
        errors.push(&o.field_path("granted"), "is required");
    }
    let refill = match o.get("refill") {
        None => Some(None),
        Some(v) => {
            let rp = o.field_path("refill");
            Obj::new(&rp, v, errors).and_then(|mut r| {
                let interval = r.req_str("interval", errors);
                let day_path = r.field_path("day");
                let day = r.opt_u64("day", errors);
                let refill = match (interval, day) {
                    (Some("day"), None) => Some(Refill::Day),
                    (Some("day"), Some(_)) => {
                        errors.push(&day_path, "applies to a monthly refill only");
                        None
                    }
                    (Some("month"), None) => Some(Refill::Month { day: 1 }),
                    (Some("month"), Some(d @ 1..=31)) => Some(Refill::Month { day: d as u8 }),
                    (Some("month"), Some(_)) => {
                        errors.push(&day_path, "must be a day of the month, 1 to 31");
                        None
                    }
                    (Some(other), _) => {
                        errors.push(
                            &r.field_path("interval"),
                            format!("{} is not \"day\" or \"month\"", q(other)),
                        );
                        None
                    }
                    (None, _) => None,
                };
                r.finish(errors);
                refill.map(Some)
            })
        }
    };
    // Written by the key service (its top-ups and `set`s), read wherever credits are.
    let top_up = match o.get("top_up") {
        None => Some(None),
        Some(v) => {
            let pair = v.as_object().filter(|m| m.len() == 2).and_then(|m| {
                let amount = m
                    .get("amount")?
                    .as_i64()
                    .filter(|n| n.unsigned_abs() < 1 << 53)?;
                Some((m.get("period")?.as_u64()?, amount))
            });
            if pair.is_none() {
                errors.push(
                    &o.field_path("top_up"),
                    "expected {\"period\": <unix seconds>, \"amount\": <whole number>}",
                );
            }
            pair.map(Some)
        }
    };
    let serial = match o.opt_u64("serial", errors) {
        None => Some(0),
        Some(n) => u32::try_from(n).ok().or_else(|| {
            errors.push(&o.field_path("serial"), "must be at most 4294967295");
            None
        }),
    };
    o.finish(errors);
    Some(Credits {
        granted: granted?,
        refill: refill?,
        top_up: top_up?,
        serial: serial?,
    })
}

/// `tenants`: `{"<tenant>": {"credits": {…}}}`, sorted by name.
pub(super) fn read_tenants(root: &mut Obj, errors: &mut Errors) -> Vec<(String, Credits)> {
    let path = root.field_path("tenants");
    let Some(value) = root.get("tenants") else {
        return Vec::new();
    };
    let Value::Object(map) = value else {
        errors.push(&path, "expected an object of tenant → settings");
        return Vec::new();
    };
    let mut out: Vec<(String, Credits)> = Vec::new();
    for (name, item) in map {
        let p = format!("{path}.{name}");
        if !header_safe(|| p.clone(), name, errors) {
            continue;
        }
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let credits = read_credits(&mut o, errors);
        if credits.is_none() && !o.has("credits") {
            errors.push(&o.field_path("credits"), "is required");
        }
        o.finish(errors);
        if let Some(c) = credits {
            // Kept sorted as read (no sort of its own in the .wasm); names are unique (a field
            // given twice is refused by the JSON reader).
            let at = out
                .binary_search_by(|(t, _)| t.as_str().cmp(name))
                .unwrap_or_else(|i| i);
            out.insert(at, (name.to_string(), c));
        }
    }
    out
}

/// `credit_costs`: what a request costs, first match.
pub(super) fn read_costs(root: &mut Obj, errors: &mut Errors) -> Vec<CostRule> {
    let path = root.field_path("credit_costs");
    let Some(items) = root.opt_array("credit_costs", errors) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let methods = read_methods(&mut o, errors);
        let paths = read_patterns(&mut o, "paths", errors);
        let cost = o.opt_u64("cost", errors);
        if cost.is_none() && !o.has("cost") {
            errors.push(&o.field_path("cost"), "is required");
        }
        o.finish(errors);
        if let Some(cost) = cost {
            out.push(CostRule {
                methods,
                paths,
                cost,
            });
        }
    }
    out
}

/// `credits_charge`: `"request"` (the default) or `"success"`.
pub(super) fn read_charge(root: &mut Obj, errors: &mut Errors) -> Charge {
    match root.opt_str("credits_charge", errors) {
        None | Some("request") => Charge::Request,
        Some("success") => Charge::Success,
        Some(other) => {
            errors.push(
                &root.field_path("credits_charge"),
                format!("{} is not \"request\" or \"success\"", q(other)),
            );
            Charge::Request
        }
    }
}
