//! Usage by route and over time (SPEC §7 `GET /v1/usage`, §8 `routes`): reports with routes
//! posted to a real `keygate serve`, on SQLite and PostgreSQL; the summary's sums, zero-filled
//! series, tenant isolation, errors, and retention rolling hours into days.
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("svc-usage-{name}"))
}

fn config(dir: &Path) -> PathBuf {
    let p = dir.join("plugin.json");
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "us_live_", "environment": "LIVE", "role": "writer"}],
        "roles": {"admin": {"methods": ["*"]}, "writer": {"methods": ["GET", "POST"]}}
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(t: i64) -> String {
    keygate::timestamp::format_rfc3339(t)
}

fn create(s: &Service, tenant: &str) -> String {
    let body = json!({"prefix": "us_live_", "tenant": tenant}).to_string();
    let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body));
    assert_eq!(st, 201, "{b}");
    b["data"]["id"].as_str().unwrap().to_string()
}

/// Posts one report; `entries` as the filter sends them.
fn report(s: &Service, id: &str, entries: Value) {
    let body = json!({"report_id": id, "keys": entries}).to_string();
    let (st, b) = call(&s.url(), "POST", "/usage", Some(&body), None);
    assert_eq!(st, 200, "{b}");
}

/// One key's entry: `orders` allowed on route "orders", `other` allowed on route "-" and
/// one forbidden there, last used at `t`.
fn entry(id: &str, orders: u64, other: u64, t: i64) -> Value {
    json!({"id": id, "requests": orders + other + 1, "allowed": orders + other,
           "rejected": {"forbidden": 1}, "last_used": t, "routes": [
               {"route": "orders", "requests": orders, "allowed": orders, "rejected": {}},
               {"route": "-", "requests": other + 1, "allowed": other, "rejected": {"forbidden": 1}}]})
}

fn summary(s: &Service, query: &str) -> Value {
    let (st, b) = s.admin("GET", &format!("/v1/usage?{query}"), None);
    assert_eq!(st, 200, "{query}: {b}");
    b["data"].clone()
}

fn bad(s: &Service, query: &str, error: &str) {
    let (st, b) = s.admin("GET", &format!("/v1/usage?{query}"), None);
    assert_eq!(
        (st, b),
        (
            400,
            json!({"success": false, "error": error, "code": "BAD_REQUEST"})
        ),
        "{query}"
    );
}

fn requests_in(series: &Value) -> u64 {
    series
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum()
}

fn exercise(s: &Service) {
    let a1 = create(s, "org_a");
    let a2 = create(s, "org_a");
    let b1 = create(s, "org_b");
    let t = now();
    let earlier = t - 3 * HOUR;
    report(
        s,
        "r1",
        json!([entry(&a1, 10, 5, earlier), entry(&b1, 1, 1, earlier)]),
    );
    report(s, "r2", json!([entry(&a1, 2, 0, t), entry(&a2, 0, 3, t)]));
    // The same report again is acknowledged and not counted twice.
    report(s, "r2", json!([entry(&a1, 2, 0, t), entry(&a2, 0, 3, t)]));
    // A report without routes counts on route "-".
    report(
        s,
        "r3",
        json!([{"id": a2, "requests": 4, "allowed": 4, "rejected": {}, "last_used": t}]),
    );

    // One tenant, by the hour: a1 16 + 3, a2 4 + 4 = 27 requests, 3 forbidden.
    let this_hour = t - t.rem_euclid(HOUR);
    let from = rfc3339(this_hour - 6 * HOUR);
    let to = rfc3339(this_hour + HOUR);
    let d = summary(
        s,
        &format!("tenant=org_a&granularity=hour&from={from}&to={to}"),
    );
    assert_eq!(
        d["total"],
        json!({"requests": 27, "allowed": 24, "rejected": 3})
    );
    let series = d["series"].as_array().unwrap();
    assert_eq!(
        series.len(),
        7,
        "every hour of the range, none missing: {series:?}"
    );
    assert_eq!(requests_in(&d["series"]), 27);
    let hour_of = |t: i64| rfc3339(t - t.rem_euclid(HOUR));
    let at = |start: String| {
        series
            .iter()
            .find(|b| b["start"] == json!(start))
            .unwrap()
            .clone()
    };
    assert_eq!(
        at(hour_of(earlier)),
        json!({"start": hour_of(earlier), "requests": 16, "allowed": 15, "rejected": {"forbidden": 1}})
    );
    assert_eq!(at(hour_of(t - HOUR))["requests"], json!(0));
    assert_eq!(
        d["by_key"],
        json!([{"id": a1, "requests": 19, "allowed": 17, "rejected": 2},
               {"id": a2, "requests": 8, "allowed": 7, "rejected": 1}])
    );
    assert_eq!(
        d["by_route"],
        json!([{"route": "-", "requests": 15, "allowed": 12, "rejected": 3},
               {"route": "orders", "requests": 12, "allowed": 12, "rejected": 0}])
    );
    assert_eq!(
        d.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["total", "series", "by_key", "by_route"],
        "SPEC §7's fields, in its order"
    );
    // The per-key call agrees (summed over routes).
    let (_, k) = s.admin("GET", &format!("/v1/api-keys/{a1}/usage"), None);
    assert_eq!(
        k["data"]["total"],
        json!({"requests": 19, "allowed": 17, "rejected": 2})
    );

    // Every tenant (the admin token without `tenant`), by the day; one key.
    let all = summary(s, "");
    assert_eq!(
        all["total"],
        json!({"requests": 30, "allowed": 26, "rejected": 4})
    );
    assert_eq!(all["series"].as_array().unwrap().len(), 31);
    assert_eq!(requests_in(&all["series"]), 30);
    assert_eq!(all["by_key"].as_array().unwrap().len(), 3);
    let one = summary(s, &format!("key={b1}&granularity=day"));
    assert_eq!(
        one["total"],
        json!({"requests": 3, "allowed": 2, "rejected": 1})
    );
    assert_eq!(
        one["by_key"],
        json!([{"id": b1, "requests": 3, "allowed": 2, "rejected": 1}])
    );

    // Tenant isolation: a tenant admin key sees its tenant only.
    let (st, mine) = as_tenant(s, "org_b", "GET", "/v1/usage", None);
    assert_eq!(st, 200);
    assert_eq!(
        mine["data"]["total"],
        json!({"requests": 3, "allowed": 2, "rejected": 1})
    );
    let (st, foreign) = as_tenant(s, "org_b", "GET", "/v1/usage?tenant=org_a", None);
    assert_eq!(st, 200);
    assert_eq!(
        foreign["data"]["total"],
        json!({"requests": 0, "allowed": 0, "rejected": 0})
    );
    assert_eq!(foreign["data"]["by_key"], json!([]));
    let not_found = json!({"success": false, "error": "API key not found", "code": "NOT_FOUND"});
    assert_eq!(
        as_tenant(s, "org_b", "GET", &format!("/v1/usage?key={a1}"), None),
        (404, not_found.clone())
    );
    assert_eq!(s.admin("GET", "/v1/usage?key=nope", None), (404, not_found));
    let (st, _) = call(&s.url(), "GET", "/v1/usage", None, None);
    assert_eq!(st, 401);

    // Bad input: the documented 400 naming the field.
    bad(
        s,
        "from=2025-02-01T00:00:00Z&to=2025-01-01T00:00:00Z",
        "from: is after to",
    );
    bad(
        s,
        "from=2024-01-01T00:00:00Z&to=2025-06-01T00:00:00Z",
        "to: the range is at most 400 days",
    );
    bad(
        s,
        "granularity=week",
        "granularity: \"week\" is not hour or day",
    );
    bad(
        s,
        "from=yesterday",
        "from: \"yesterday\" is not an RFC 3339 time (2025-01-15T10:30:00Z)",
    );
    bad(
        s,
        &format!(
            "granularity=hour&from={}&to={}",
            rfc3339(t - 200 * DAY),
            rfc3339(t - 199 * DAY)
        ),
        "granularity: usage by the hour is kept for 90 days; ask for granularity=day",
    );
    // A report whose routes do not add up is refused whole.
    let body = json!({"report_id": "r-bad", "keys": [{"id": a1, "requests": 2, "allowed": 2,
        "routes": [{"route": "x", "requests": 1, "allowed": 1}]}]})
    .to_string();
    assert_eq!(
        call(&s.url(), "POST", "/usage", Some(&body), None),
        (
            400,
            json!({"success": false, "error": "keys[0].routes: the routes' counts must add up to the key's", "code": "BAD_REQUEST"})
        )
    );
}

/// The per-key history shows hours within the hourly retention and days before it; pruning (at
/// start, then hourly) deletes days past theirs; summaries by the day still see every day kept.
fn retention(db: &str, cfg: &Path) {
    let args = ["--usage-hourly-days", "2", "--usage-daily-days", "5"];
    let s = Service::start_args(
        ServiceOpts {
            database: db,
            config: cfg,
            gateway: false,
            sync_token: false,
            port: None,
        },
        &args,
    );
    let id = create(&s, "org_r");
    let t = now();
    let old = (t - 3 * DAY) - (t - 3 * DAY).rem_euclid(DAY) + 2 * HOUR;
    report(&s, "old-1", json!([entry(&id, 1, 1, old)]));
    report(&s, "old-2", json!([entry(&id, 2, 0, old + HOUR)]));
    report(&s, "gone", json!([entry(&id, 5, 5, t - 7 * DAY)]));
    report(&s, "new", json!([entry(&id, 1, 0, t)]));
    let before = summary(
        &s,
        &format!("key={id}&granularity=day&from={}", rfc3339(t - 4 * DAY)),
    );
    assert_eq!(before["total"]["requests"], json!(8));
    drop(s);
    // Started again: the roll-up runs at start.
    let s = Service::start_args(
        ServiceOpts {
            database: db,
            config: cfg,
            gateway: false,
            sync_token: false,
            port: None,
        },
        &args,
    );
    let (_, k) = s.admin("GET", &format!("/v1/api-keys/{id}/usage"), None);
    let k = &k["data"];
    assert_eq!(
        k["total"],
        json!({"requests": 8, "allowed": 5, "rejected": 3}),
        "{k}"
    );
    assert_eq!(k["hours"].as_array().unwrap().len(), 1, "{k}");
    let days = k["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{k}");
    assert_eq!(days[0]["requests"], json!(6));
    let d = summary(
        &s,
        &format!("key={id}&granularity=day&from={}", rfc3339(t - 4 * DAY)),
    );
    assert_eq!(
        d["total"],
        json!({"requests": 8, "allowed": 5, "rejected": 3})
    );
    assert_eq!(requests_in(&d["series"]), 8);
    assert_eq!(
        d["by_route"],
        json!([{"route": "-", "requests": 4, "allowed": 1, "rejected": 3},
               {"route": "orders", "requests": 4, "allowed": 4, "rejected": 0}])
    );
}

#[test]
fn usage_by_route_and_time_on_sqlite() {
    let dir = scratch("sqlite");
    let cfg = config(&dir);
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::start(ServiceOpts {
        database: &db,
        config: &cfg,
        gateway: true,
        sync_token: false,
        port: None,
    });
    exercise(&s);
    retention(
        &format!("sqlite:{}", dir.join("retention.db").display()),
        &cfg,
    );
}

#[test]
fn usage_by_route_and_time_on_postgres() {
    let pg = Postgres::start("usage");
    let dir = scratch("pg");
    let cfg = config(&dir);
    let s = Service::start(ServiceOpts {
        database: &pg.database("usage"),
        config: &cfg,
        gateway: true,
        sync_token: false,
        port: None,
    });
    exercise(&s);
    retention(&pg.database("retention"), &cfg);
}
