//! Usage reports as they arrive (SPEC §8): read one entry at a time with the filter's pull
//! parser, each entry (and its `routes`) checked, memory bounded by the entries whatever the
//! body holds. The admin API's bodies are [`super::input`]'s.

use super::input::{first_error, text_ok};
use super::model::{rejection_name, RouteUsage, UsageEntry, CREDITS_ROW};
use keygate::json;
use keygate::json_reader::{index, Errors, Obj};
/// The longest route name kept (the filter sends longer ones as `(other)`).
use keygate::usage::MAX_ROUTE_NAME;

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

/// `credits` of an entry or of one of its routes (SPEC §14): credits spent net of refunds, so a
/// whole number of either sign; absent: 0.
fn read_credits(o: &mut Obj, errors: &mut Errors) -> i64 {
    let path = o.field_path("credits");
    match o.get("credits") {
        None => 0,
        Some(v) => match v.as_i64() {
            Some(n) if n.unsigned_abs() <= MAX_COUNT => n,
            Some(_) => {
                errors.push(&path, "is too large");
                0
            }
            None => {
                errors.push(
                    &path,
                    "expected a whole number (credits spent, net of refunds)",
                );
                0
            }
        },
    }
}

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

/// An entry's `routes`: each route once, their counts (and credits) adding up to the entry's.
fn read_routes(
    path: &str,
    routes: &json::Value,
    total: (i64, &[(&'static str, i64)], i64),
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
        let credits = read_credits(&mut o, errors);
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
                credits,
            });
        }
    }
    let key: Vec<(&str, i64)> = nonzero(
        std::iter::once(("allowed", total.0))
            .chain(total.1.iter().copied())
            .chain(std::iter::once((CREDITS_ROW, total.2))),
    );
    let split = nonzero(
        out.iter()
            .flat_map(|r| r.counts().chain(std::iter::once((CREDITS_ROW, r.credits)))),
    );
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
    let credits = read_credits(&mut o, errors);
    let routes_path = o.field_path("routes");
    let routes = o.get("routes");
    o.finish(errors);
    let routes = match (routes, &counts) {
        (Some(r), Some((allowed, rejected))) => {
            read_routes(&routes_path, r, (*allowed, rejected, credits), errors)
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
        credits,
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

    #[test]
    fn credits_spent_are_read_by_key_and_route_and_must_add_up() {
        let ok = entry(
            r#"{"id":"k","requests":3,"allowed":2,"rejected":{"usage_exceeded":1},"credits":7,"routes":[
                {"route":"orders","requests":2,"allowed":1,"rejected":{"usage_exceeded":1},"credits":5},
                {"route":"-","requests":1,"allowed":1,"credits":2}]}"#,
        )
        .unwrap();
        assert_eq!(ok[0].credits, 7);
        assert_eq!(ok[0].count_of("usage_exceeded"), 1);
        assert_eq!(
            ok[0].route_counts(),
            vec![
                ("orders", "allowed", 1),
                ("orders", "usage_exceeded", 1),
                ("orders", CREDITS_ROW, 5),
                ("-", "allowed", 1),
                ("-", CREDITS_ROW, 2)
            ]
        );
        // Absent: 0. Net of refunds: a report may give back more than it spends.
        let plain = entry(r#"{"id":"k","requests":1,"allowed":1,"credits":-2}"#).unwrap();
        assert_eq!(
            plain[0].route_counts(),
            vec![("-", "allowed", 1), ("-", CREDITS_ROW, -2)]
        );
        assert_eq!(entry(r#"{"id":"k","requests":0}"#).unwrap()[0].credits, 0);
        for (body, error) in [
            (
                r#"{"id":"k","requests":1,"allowed":1,"credits":3,"routes":[{"route":"a","requests":1,"allowed":1,"credits":2}]}"#,
                "keys[0].routes: the routes' counts must add up to the key's",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"credits":1.5}"#,
                "keys[0].credits: expected a whole number (credits spent, net of refunds)",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"credits":"1"}"#,
                "keys[0].credits: expected a whole number (credits spent, net of refunds)",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"credits":-2199023255553}"#,
                "keys[0].credits: is too large",
            ),
            (
                r#"{"id":"k","requests":1,"allowed":1,"routes":[{"route":"a","requests":1,"allowed":1,"credits":true}]}"#,
                "keys[0].routes[0].credits: expected a whole number (credits spent, net of refunds)",
            ),
        ] {
            assert_eq!(entry(body).unwrap_err(), error, "{body}");
        }
    }
}
