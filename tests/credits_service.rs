//! Credits at the key service (SPEC §14, §7, §8, §15) against the real thing: `keygate serve` on
//! SQLite and on PostgreSQL, a real Envoy with two workers loading the built `.wasm` with
//! `key_sync` and `usage_report` (interval 1 s) in front of a real upstream, and a webhook
//! receiver. A key created with credits is enforced from the compact key set; `add`, `set` and
//! `subtract` reach the proxies within the sync bound (JSON deltas); the key's answers show what
//! the usage reports say was spent; `/v1/usage` has credits by key, route and time; every change
//! is audited; `credits.exhausted` is queued once per key, period and serial. Bad bodies, unknown
//! keys, keys without credits, revoked keys and tenant admin keys get their documented answers.
mod common;
use common::partners::Http;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INTERVAL: u64 = 1;
const WEBHOOK_SECRET: &str = "whsec_credits_0123456789abcdef";
const USAGE_EXCEEDED: &str = r#"{"error":"Usage limit exceeded","code":"USAGE_EXCEEDED"}"#;
/// What keygate's key fetch sends: the compact form for a full set.
const COMPACT_ACCEPT: &str = "application/vnd.keygate.keyset.v1, application/json;q=0.9";

fn plugin_config() -> Value {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "cr_live_", "environment": "LIVE"}],
        "tenants": {"org_pool": {"credits": {"granted": 2, "refill": {"interval": "day"}}}},
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": INTERVAL,
                     "timeout_ms": 1000, "token": SYNC_TOKEN},
        "usage_report": {"cluster": "keyservice", "path": "/usage", "interval_seconds": INTERVAL,
                         "timeout_ms": 1000, "token": SYNC_TOKEN},
        "public_paths": ["/healthz"]
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `keygate serve` with the sync token, webhooks to `receiver`, and a gateway listener.
fn start_service(dir: &Path, database: &str, receiver: &Http) -> Service {
    let config = dir.join("plugin.json");
    std::fs::write(&config, plugin_config().to_string()).unwrap();
    Service::start_args(
        ServiceOpts {
            database,
            config: &config,
            gateway: true,
            sync_token: true,
            port: None,
        },
        &[
            "--webhook-url",
            &receiver.url("/hooks"),
            "--webhook-secret",
            WEBHOOK_SECRET,
        ],
    )
}

fn receiver() -> Http {
    Http::start(Box::new(|_, _| (204, String::new(), Duration::ZERO)))
}

fn create(s: &Service, body: Value) -> (String, String, Value) {
    let (st, v) = s.admin("POST", "/v1/api-keys", Some(&body.to_string()));
    assert_eq!(st, 201, "{v}");
    (
        v["data"]["id"].as_str().unwrap().into(),
        v["data"]["key"].as_str().unwrap().into(),
        v["data"].clone(),
    )
}

fn key_answer(s: &Service, id: &str) -> Value {
    let (st, v) = s.admin("GET", &format!("/v1/api-keys/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v["data"].clone()
}

fn change(s: &Service, id: &str, op: &str, amount: u64) -> (u16, Value) {
    s.admin(
        "POST",
        &format!("/v1/api-keys/{id}/credits"),
        Some(&json!({"op": op, "amount": amount}).to_string()),
    )
}

/// A credits call that succeeds: the key's answer.
fn changed(s: &Service, id: &str, op: &str, amount: u64) -> Value {
    let (st, v) = change(s, id, op, amount);
    assert_eq!(st, 200, "{op} {amount}: {v}");
    assert_eq!(v["success"], json!(true));
    v["data"].clone()
}

fn error(status: u16, code: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"success": false, "error": message, "code": code}),
    )
}

/// Waits (bounded: two report intervals and a second) until the key's answer says `spent`.
fn spent_reported(s: &Service, id: &str, spent: u64) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(2 * INTERVAL + 3, || {
        last = key_answer(s, id)["credits"].clone();
        last["spent"] == json!(spent)
    });
    assert!(ok, "spent {spent} not reported: {last}");
    last
}

fn remaining(r: &Response) -> Option<u64> {
    r.header("x-credits-remaining").map(|v| v.parse().unwrap())
}

fn hit(e: &Envoy, key: &str, path: &str) -> Response {
    send(e.port, "GET", path, &[("x-api-key", key)])
}

fn assert_exceeded(r: &Response) {
    assert_json(r, 429, USAGE_EXCEEDED);
    assert_eq!(
        r.header("retry-after"),
        None,
        "no refill: nothing to wait for"
    );
    assert_eq!(r.header("x-credits-remaining"), None);
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

/// Sends requests until one is admitted (bounded by `within`); until then each is refused for
/// credits (or, before the first key set, 503/401). The admitted answer and how long it took.
fn admitted_within(e: &Envoy, key: &str, path: &str, within: Duration) -> (Response, Duration) {
    let start = Instant::now();
    loop {
        let r = hit(e, key, path);
        match r.status {
            200 => return (r, start.elapsed()),
            429 => assert_exceeded(&r),
            401 | 503 => {}
            other => panic!("unexpected {other}: {}", r.body),
        }
        assert!(
            start.elapsed() < within,
            "not admitted within {within:?}: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until Envoy published a key set newer than when it had published `updates`,
/// and fetched once more after it (answered unchanged: an interval later, so every worker, which
/// re-reads on its 0.5 s tick, holds it).
fn propagated(e: &Envoy, updates: u64) {
    assert!(
        wait_until(INTERVAL + 3, || e
            .counter("wasmcustom.keygate.sync_updates")
            > updates),
        "no new key set"
    );
    let unchanged = e.counter("wasmcustom.keygate.sync_unchanged");
    assert!(
        wait_until(INTERVAL + 3, || e
            .counter("wasmcustom.keygate.sync_unchanged")
            > unchanged),
        "no fetch after the new key set"
    );
}

fn audit_of(s: &Service, id: &str) -> Vec<Value> {
    let (st, v) = s.admin("GET", &format!("/v1/audit-log?key={id}"), None);
    assert_eq!(st, 200, "{v}");
    v["data"].as_array().unwrap().clone()
}

/// The `credits.exhausted` events the receiver got (bodies).
fn exhausted_events(receiver: &Http) -> Vec<Value> {
    receiver
        .received()
        .iter()
        .filter(|r| r.header("keygate-event") == Some("credits.exhausted"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

/// `keygate keys …` against `s`: (exit code, stdout).
fn cli(s: &Service, args: &[&str]) -> (i32, String) {
    let out = Command::new(keygate_bin())
        .arg("keys")
        .args(args)
        .env("KEYGATE_SERVER", s.url())
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn credits_through_envoy(name: &str, database: &str) {
    let dir = scratch_dir(&format!("credits-svc-{name}"));
    let hooks = receiver();
    let s = start_service(&dir, database, &hooks);
    // Created before Envoy starts: its first fetch, a full set in the compact form, carries the
    // credits.
    let (id, key, created) = create(
        &s,
        json!({"prefix": "cr_live_", "name": "metered", "tenant": "org_1",
               "credits": {"granted": 3}}),
    );
    assert_eq!(
        created["credits"],
        json!({"granted": 3, "remaining": 3, "spent": 0, "reset": null})
    );
    let up = Upstream::start("credits");
    let cfg = plugin_config().to_string();
    let envoy_name = format!("credits-svc-envoy-{name}");
    let mut o = EnvoyOpts::new(&envoy_name, &cfg, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);

    // Three admitted (2, 1, 0 left), on fresh connections over both workers; then 429.
    let (r, _) = admitted_within(&e, &key, "/v1/x", Duration::from_secs(INTERVAL + 3));
    assert!(r.reached_upstream());
    assert_eq!(remaining(&r), Some(2));
    assert_eq!(r.header("x-credits-reset"), None, "no refill, no reset");
    // Both workers hold the set (the other one re-reads it within its 0.5 s tick).
    propagated(&e, 0);
    for left in [1, 0] {
        let r = hit(&e, &key, "/v1/x");
        assert_eq!((r.status, remaining(&r)), (200, Some(left)), "{}", r.body);
    }
    assert_exceeded(&hit(&e, &key, "/v1/x"));
    let (_, _, metrics) = call_raw(&s.url(), "GET", "/metrics", None, &[]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keygate_serve_key_sync_answers_total{form=\"full_compact\"}")),
        "the first set was the compact form"
    );
    assert_eq!(
        spent_reported(&s, &id, 3),
        json!({"granted": 3, "remaining": 0, "spent": 3, "reset": null})
    );
    // Refused for credits: one event (period 0: no refill; serial 0).
    assert!(
        wait_until(5, || exhausted_events(&hooks).len() == 1),
        "credits.exhausted not delivered"
    );
    let event = &exhausted_events(&hooks)[0];
    assert_eq!(
        event["data"],
        json!({"key_id": id, "tenant": "org_1", "prefix": "cr_live_", "name": "metered",
               "environment": null, "balance": "key", "granted": 3, "serial": 0,
               "period_start": "1970-01-01T00:00:00Z", "reset": null})
    );

    // add 2, with the CLI: two more within interval + 1 s (on the named route `orders`); the
    // 429s while the proxies wait for it queue no second event (same period and serial).
    let updates = e.counter("wasmcustom.keygate.sync_updates");
    let (code, out) = cli(&s, &["credits", &id, "--add", "2", "--json"]);
    assert_eq!(code, 0, "{out}");
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        answer["credits"],
        json!({"granted": 3, "remaining": 2, "spent": 3, "reset": null})
    );
    let (r, took) = admitted_within(
        &e,
        &key,
        "/orders/1",
        Duration::from_secs(INTERVAL + 1) + Duration::from_millis(500),
    );
    assert!(
        took <= Duration::from_secs(INTERVAL + 1),
        "add 2 enforced after {took:?}"
    );
    eprintln!("add 2: admitted {took:?} after the call");
    assert_eq!(remaining(&r), Some(1));
    propagated(&e, updates);
    let r = hit(&e, &key, "/orders/1");
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
    assert_exceeded(&hit(&e, &key, "/orders/1"));
    assert_eq!(
        spent_reported(&s, &id, 5),
        json!({"granted": 3, "remaining": 0, "spent": 5, "reset": null})
    );

    // set 1: what remains is 1, spending counts anew; one more admitted, then 429.
    let updates = e.counter("wasmcustom.keygate.sync_updates");
    let answer = changed(&s, &id, "set", 1);
    assert_eq!(
        answer["credits"],
        json!({"granted": 3, "remaining": 1, "spent": 0, "reset": null})
    );
    let (r, took) = admitted_within(
        &e,
        &key,
        "/v1/x",
        Duration::from_secs(INTERVAL + 1) + Duration::from_millis(500),
    );
    assert!(
        took <= Duration::from_secs(INTERVAL + 1),
        "set 1 enforced after {took:?}"
    );
    assert_eq!(remaining(&r), Some(0));
    propagated(&e, updates);
    assert_exceeded(&hit(&e, &key, "/v1/x"));
    assert_eq!(
        spent_reported(&s, &id, 1),
        json!({"granted": 3, "remaining": 0, "spent": 1, "reset": null})
    );

    // add 2 then subtract 1: one more (not two), once the proxies hold the subtraction.
    let updates = e.counter("wasmcustom.keygate.sync_updates");
    assert_eq!(changed(&s, &id, "add", 2)["credits"]["remaining"], json!(2));
    let answer = changed(&s, &id, "subtract", 1);
    assert_eq!(
        answer["credits"],
        json!({"granted": 3, "remaining": 1, "spent": 1, "reset": null})
    );
    propagated(&e, updates);
    let r = hit(&e, &key, "/v1/x");
    assert_eq!((r.status, remaining(&r)), (200, Some(0)), "{}", r.body);
    assert_exceeded(&hit(&e, &key, "/v1/x"));
    assert_eq!(
        spent_reported(&s, &id, 2),
        json!({"granted": 3, "remaining": 0, "spent": 2, "reset": null})
    );

    // Refused for credits again under serial 1: its one event. Two in all, however many 429s.
    assert!(
        wait_until(5, || exhausted_events(&hooks).len() == 2),
        "the set's credits.exhausted not delivered"
    );
    let serials: Vec<Value> = exhausted_events(&hooks)
        .iter()
        .map(|e| e["data"]["serial"].clone())
        .collect();
    assert_eq!(serials, [json!(0), json!(1)]);

    // Usage: credits by key, route and time; 7 admitted requests, 7 credits.
    let (st, u) = s.admin("GET", &format!("/v1/usage?key={id}&granularity=hour"), None);
    assert_eq!(st, 200, "{u}");
    let d = &u["data"];
    assert_eq!(d["total"]["allowed"], json!(7));
    assert_eq!(d["total"]["credits"], json!(7));
    assert_eq!(d["by_key"][0]["credits"], json!(7));
    let route = |name: &str| {
        d["by_route"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no route {name}: {d}"))
    };
    assert_eq!(
        (route("-")["allowed"].clone(), route("-")["credits"].clone()),
        (json!(5), json!(5))
    );
    assert_eq!(
        (
            route("orders")["allowed"].clone(),
            route("orders")["credits"].clone()
        ),
        (json!(2), json!(2))
    );
    let series: i64 = d["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["credits"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(series, 7);
    let (_, k) = s.admin("GET", &format!("/v1/api-keys/{id}/usage"), None);
    assert_eq!(k["data"]["total"]["credits"], json!(7));
    assert_eq!(k["data"]["total"]["allowed"], json!(7));

    // The audit log: every change, newest first, with what it did.
    let entries = audit_of(&s, &id);
    let actions: Vec<(&str, Value)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e.get("details").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("key.credits", json!({"op": "subtract", "amount": 1})),
            ("key.credits", json!({"op": "add", "amount": 2})),
            ("key.credits", json!({"op": "set", "amount": 1})),
            ("key.credits", json!({"op": "add", "amount": 2})),
            ("key.created", Value::Null),
        ]
    );
    assert_eq!(entries[0]["actor"], json!({"type": "admin", "id": null}));
    // Still two events once the last reports are in.
    assert_eq!(exhausted_events(&hooks).len(), 2);
    drop(e);
}

#[test]
fn credits_through_envoy_on_sqlite() {
    let dir = scratch_dir("credits-svc-sqlite-db");
    credits_through_envoy(
        "sqlite",
        &format!("sqlite:{}", dir.join("keys.db").display()),
    );
}

#[test]
fn credits_through_envoy_on_postgresql() {
    let pg = Postgres::start("credits-envoy");
    credits_through_envoy("postgres", &pg.database("credits_envoy"));
}

/// The body of a raw GET with `Accept` (binary answers): (status, headers, body bytes).
fn get_bytes(port: u16, path: &str, accept: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: x\r\naccept: {accept}\r\nauthorization: Bearer {SYNC_TOKEN}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![];
    c.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

fn feed_entry(s: &Service, id: &str) -> Value {
    let (st, feed) = call(&s.url(), "GET", "/keys", None, Some(SYNC_TOKEN));
    assert_eq!(st, 200);
    feed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap()
}

fn report(s: &Service, report_id: &str, entry: Value) -> Value {
    let body = json!({"report_id": report_id, "keys": [entry]}).to_string();
    let (st, v) = call(&s.url(), "POST", "/usage", Some(&body), Some(SYNC_TOKEN));
    assert_eq!(st, 200, "{v}");
    v
}

fn day_start(t: i64) -> i64 {
    t - t.rem_euclid(86_400)
}

fn credits_api(name: &str, database: &str) {
    let dir = scratch_dir(&format!("credits-api-{name}"));
    let hooks = receiver();
    let s = start_service(&dir, database, &hooks);
    let bad = |message: &str| error(400, "BAD_REQUEST", message);

    // Credits on create: validated as the filter reads them, each error with its path.
    for (credits, message) in [
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
            json!({"granted": 1, "refill": {"interval": "month", "day": 0}}),
            "credits.refill.day: must be a day of the month, 1 to 31",
        ),
        (
            json!({"granted": 1, "refill": {"interval": "day", "day": 3}}),
            "credits.refill.day: applies to a monthly refill only",
        ),
        (
            json!({"granted": 1, "serial": 1}),
            "credits.serial: unknown field (credits take granted and refill; top-ups are POST /v1/api-keys/{id}/credits)",
        ),
        (json!("lots"), "credits: expected an object, found a string"),
    ] {
        let body = json!({"prefix": "cr_live_", "credits": credits}).to_string();
        assert_eq!(
            s.admin("POST", "/v1/api-keys", Some(&body)),
            bad(message),
            "{credits}"
        );
    }

    // A key with a daily refill.
    let t0 = now();
    let (id, _, created) = create(
        &s,
        json!({"prefix": "cr_live_", "tenant": "org_1",
               "credits": {"granted": 10, "refill": {"interval": "day"}}}),
    );
    let c = &created["credits"];
    assert_eq!(c["granted"], json!(10));
    assert_eq!(c["refill"], json!({"interval": "day"}));
    assert_eq!(
        (c["remaining"].clone(), c["spent"].clone()),
        (json!(10), json!(0))
    );
    let reset = c["reset"].as_i64().unwrap();
    assert!(
        reset % 86_400 == 0 && reset > t0 && reset <= t0 + 86_400 + 5,
        "{reset}"
    );
    assert_eq!(key_answer(&s, &id)["credits"], *c);
    let listed = s.admin("GET", "/v1/api-keys", None).1;
    let in_list = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap();
    assert_eq!(in_list["credits"], *c);
    assert_eq!(
        feed_entry(&s, &id)["credits"],
        json!({"granted": 10, "refill": {"interval": "day"}})
    );

    // Bad credits calls: 400 with the field's path; 404; 409; 403 for a tenant admin key.
    let post = |path: &str, body: &str| s.admin("POST", path, Some(body));
    let path = format!("/v1/api-keys/{id}/credits");
    for (body, message) in [
        ("", "op: is required"),
        (r#"{"op":"add"}"#, "amount: is required"),
        (
            r#"{"op":"double","amount":1}"#,
            "op: \"double\" is not \"set\", \"add\" or \"subtract\"",
        ),
        (
            r#"{"op":5,"amount":1}"#,
            "op: expected a string, found a number",
        ),
        (
            r#"{"op":"add","amount":-1}"#,
            "amount: expected a whole number ≥ 0, found a number",
        ),
        (
            r#"{"op":"add","amount":"1"}"#,
            "amount: expected a whole number ≥ 0, found a string",
        ),
        (
            r#"{"op":"set","amount":9007199254740992}"#,
            "amount: must be at most 9007199254740991",
        ),
        (r#"{"op":"add","amount":1,"why":"x"}"#, "why: unknown field"),
        ("[1]", "$: expected an object, found an array"),
    ] {
        assert_eq!(post(&path, body), bad(message), "{body}");
    }
    let (st, v) = post(&path, "{");
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("$: not valid JSON"),
        "{v}"
    );
    assert_eq!(
        post(
            "/v1/api-keys/key_nope/credits",
            r#"{"op":"add","amount":1}"#
        ),
        error(404, "NOT_FOUND", "API key not found")
    );
    let (plain, _, _) = create(&s, json!({"prefix": "cr_live_", "tenant": "org_1"}));
    assert_eq!(
        change(&s, &plain, "add", 1),
        error(
            409,
            "CONFLICT",
            "The API key has no credits; give it credits with PATCH first"
        )
    );
    let add_one = json!({"op": "add", "amount": 1}).to_string();
    assert_eq!(
        as_tenant(&s, "org_1", "POST", &path, Some(&add_one)),
        error(
            403,
            "FORBIDDEN",
            "credits: only the provider's admin changes a balance"
        )
    );
    assert_eq!(
        as_tenant(&s, "org_2", "POST", &path, Some(&add_one)),
        error(404, "NOT_FOUND", "API key not found")
    );
    assert_eq!(
        as_tenant(
            &s,
            "org_1",
            "POST",
            "/v1/api-keys",
            Some(&json!({"prefix": "cr_live_", "credits": {"granted": 1}}).to_string())
        ),
        error(
            403,
            "FORBIDDEN",
            "credits: only the provider's admin sets this"
        )
    );
    assert_eq!(
        as_tenant(
            &s,
            "org_1",
            "PATCH",
            &format!("/v1/api-keys/{id}"),
            Some(r#"{"credits":null}"#)
        ),
        error(
            403,
            "FORBIDDEN",
            "credits: only the provider's admin sets this"
        )
    );
    // A tenant admin key sees the balance.
    let (st, mine) = as_tenant(&s, "org_1", "GET", &format!("/v1/api-keys/{id}"), None);
    assert_eq!((st, &mine["data"]["credits"]), (200, c));

    // A usage report with credits by route: spent, and usage by key, route and time.
    let t = now();
    let counted = report(
        &s,
        &format!("r-{name}-1"),
        json!({"id": id, "requests": 4, "allowed": 3, "rejected": {"usage_exceeded": 1},
               "credits": 3, "last_used": t, "routes": [
                   {"route": "orders", "requests": 2, "allowed": 2, "credits": 2},
                   {"route": "-", "requests": 2, "allowed": 1,
                    "rejected": {"usage_exceeded": 1}, "credits": 1}]}),
    );
    assert_eq!(counted["counted"], json!(true));
    let c = key_answer(&s, &id)["credits"].clone();
    assert_eq!(
        (c["spent"].clone(), c["remaining"].clone()),
        (json!(3), json!(7))
    );
    let (_, u) = s.admin("GET", &format!("/v1/usage?key={id}&granularity=hour"), None);
    let d = &u["data"];
    assert_eq!(
        d["total"],
        json!({"requests": 4, "allowed": 3, "rejected": 1, "credits": 3})
    );
    assert_eq!(
        d["by_key"],
        json!([{"id": id, "requests": 4, "allowed": 3, "rejected": 1, "credits": 3}])
    );
    assert_eq!(
        d["by_route"],
        json!([{"route": "-", "requests": 2, "allowed": 1, "rejected": 1, "credits": 1},
               {"route": "orders", "requests": 2, "allowed": 2, "rejected": 0, "credits": 2}])
    );
    let hour = keygate::timestamp::format_rfc3339(t - t.rem_euclid(3600));
    let bucket = d["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["start"] == json!(hour))
        .cloned()
        .unwrap();
    assert_eq!(
        bucket,
        json!({"start": hour, "requests": 4, "allowed": 3,
               "rejected": {"usage_exceeded": 1}, "credits": 3})
    );
    // Other keys' answers keep SPEC §7's shape (no credits: no field).
    let (_, other) = s.admin("GET", &format!("/v1/usage?key={plain}"), None);
    assert_eq!(
        other["data"]["total"],
        json!({"requests": 0, "allowed": 0, "rejected": 0})
    );
    assert_eq!(key_answer(&s, &plain).get("credits"), None);
    // The same report again is not counted again; a report whose routes' credits do not add up
    // is refused.
    let again = report(
        &s,
        &format!("r-{name}-1"),
        json!({"id": id, "requests": 1, "allowed": 1, "credits": 1}),
    );
    assert_eq!(again["counted"], json!(false));
    let body = json!({"report_id": format!("r-{name}-bad"), "keys": [{"id": id, "requests": 1,
        "allowed": 1, "credits": 2, "routes": [{"route": "-", "requests": 1, "allowed": 1, "credits": 1}]}]})
    .to_string();
    assert_eq!(
        call(&s.url(), "POST", "/usage", Some(&body), Some(SYNC_TOKEN)),
        bad("keys[0].routes: the routes' counts must add up to the key's")
    );
    assert_eq!(key_answer(&s, &id)["credits"]["spent"], json!(3));

    // Refused for credits again in the same period and serial: no second event.
    report(
        &s,
        &format!("r-{name}-2"),
        json!({"id": id, "requests": 2, "rejected": {"usage_exceeded": 2}, "last_used": now()}),
    );
    assert!(wait_until(5, || exhausted_events(&hooks).len() == 1));
    let today = day_start(t);
    let event = exhausted_events(&hooks)[0]["data"].clone();
    assert_eq!(
        (
            event["key_id"].clone(),
            event["balance"].clone(),
            event["serial"].clone()
        ),
        (json!(id), json!("key"), json!(0))
    );
    assert_eq!(
        event["period_start"],
        json!(keygate::timestamp::format_rfc3339(today))
    );
    assert_eq!(
        event["reset"],
        json!(keygate::timestamp::format_rfc3339(today + 86_400))
    );

    // add, subtract (never below zero), set: each a new version of the key set.
    let (_, feed) = call(&s.url(), "GET", "/keys", None, Some(SYNC_TOKEN));
    let before = feed["version"].as_str().unwrap().to_string();
    assert_eq!(
        changed(&s, &id, "add", 5)["credits"]["remaining"],
        json!(12)
    );
    assert_eq!(
        changed(&s, &id, "subtract", 20)["credits"]["remaining"],
        json!(0)
    );
    let set = changed(&s, &id, "set", 4)["credits"].clone();
    assert_eq!(
        (set["remaining"].clone(), set["spent"].clone()),
        (json!(4), json!(0))
    );
    let period = day_start(now());
    let entry = feed_entry(&s, &id);
    assert_eq!(
        entry["credits"],
        json!({"granted": 10, "refill": {"interval": "day"},
               "top_up": {"period": period, "amount": -6}, "serial": 1})
    );
    // A delta since before the changes carries them too (JSON); the compact full set holds the
    // same records as the JSON one.
    let (st, delta) = call(
        &s.url(),
        "GET",
        &format!("/keys?since={before}"),
        None,
        Some(SYNC_TOKEN),
    );
    assert_eq!(st, 200);
    assert_eq!(delta["since"], json!(before));
    let upserted = delta["upserts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap();
    assert_eq!(upserted, entry);
    let gate = keygate::config::parse_config(plugin_config().to_string().as_bytes()).unwrap();
    let json_body =
        serde_json::to_string(&call(&s.url(), "GET", "/keys", None, Some(SYNC_TOKEN)).1).unwrap();
    let (st, headers, compact) = get_bytes(s.port, "/keys", COMPACT_ACCEPT);
    assert_eq!(st, 200);
    assert!(headers.contains(&(
        "content-type".into(),
        "application/vnd.keygate.keyset.v1".into()
    )));
    let shards = |set: keygate::keyset::Fetched| {
        let keygate::keyset::Fetched::Set(set) = set else {
            panic!("not a full set: {set:?}");
        };
        let mut out = vec![];
        set.for_each_shard::<()>(1, |i, b| {
            out.push((i, b.to_vec()));
            Ok(())
        })
        .unwrap();
        (set.version.clone(), set.len(), out)
    };
    let from_json = shards(
        keygate::keyset::parse_key_set(&mut json_body.as_bytes(), json_body.len(), &gate, None)
            .unwrap(),
    );
    let from_compact = shards(
        keygate::keyset::parse_binary_set(&mut &compact[..], compact.len(), &gate, None).unwrap(),
    );
    assert_eq!(from_compact, from_json);
    let records: Vec<keygate::model::KeyRecord> = from_compact
        .2
        .iter()
        .flat_map(|(_, blob)| keygate::keyset::records_in_blob(blob, 1).unwrap())
        .map(|r| keygate::keyset::decode_record(r, &gate.roles).unwrap())
        .collect();
    let found = records
        .iter()
        .find(|r| r.id == id)
        .expect("the key in the compact set");
    assert_eq!(
        found.credits,
        Some(keygate::model::Credits {
            granted: 10,
            refill: Some(keygate::model::Refill::Day),
            top_up: Some((period as u64, -6)),
            serial: 1
        })
    );

    // After the set: a report of spending counts under the new serial, and the next refusal for
    // credits is a new event.
    report(
        &s,
        &format!("r-{name}-3"),
        json!({"id": id, "requests": 2, "allowed": 1, "rejected": {"usage_exceeded": 1},
               "credits": 1, "last_used": now()}),
    );
    let c = key_answer(&s, &id)["credits"].clone();
    assert_eq!(
        (c["spent"].clone(), c["remaining"].clone()),
        (json!(1), json!(3))
    );
    assert!(wait_until(5, || exhausted_events(&hooks).len() == 2));
    assert_eq!(exhausted_events(&hooks)[1]["data"]["serial"], json!(1));

    // The audit log.
    let audit = audit_of(&s, &id);
    let details: Vec<Value> = audit
        .iter()
        .filter(|e| e["action"] == "key.credits")
        .map(|e| e["details"].clone())
        .collect();
    assert_eq!(
        details,
        [
            json!({"op": "set", "amount": 4}),
            json!({"op": "subtract", "amount": 20}),
            json!({"op": "add", "amount": 5})
        ]
    );

    // PATCH: a new grant keeps the balance's top-ups and serial (here: no refill any more, so
    // one period from 0, where neither the day's top-up nor its spending counts); null removes.
    let (st, patched) = s.admin(
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(r#"{"credits":{"granted":20}}"#),
    );
    assert_eq!(st, 200, "{patched}");
    assert_eq!(
        patched["data"]["credits"],
        json!({"granted": 20, "remaining": 20, "spent": 0, "reset": null})
    );
    assert_eq!(
        feed_entry(&s, &id)["credits"],
        json!({"granted": 20, "top_up": {"period": period, "amount": -6}, "serial": 1})
    );
    assert_eq!(
        s.admin(
            "PATCH",
            &format!("/v1/api-keys/{id}"),
            Some(r#"{"credits":{"granted":1,"top_up":{"period":0,"amount":5}}}"#)
        ),
        bad("credits.top_up: unknown field (credits take granted and refill; top-ups are POST /v1/api-keys/{id}/credits)")
    );
    assert_eq!(
        s.admin(
            "PATCH",
            &format!("/v1/api-keys/{id}"),
            Some(r#"{"credits":{"refill":{"interval":"day"}}}"#)
        ),
        bad("credits.granted: is required")
    );
    let (st, removed) = s.admin(
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(r#"{"credits":null}"#),
    );
    assert_eq!(st, 200);
    assert_eq!(removed["data"].get("credits"), None);
    assert_eq!(feed_entry(&s, &id).get("credits"), None);
    assert_eq!(change(&s, &id, "add", 1).0, 409);

    // A roll: the new key starts with what the old one has left.
    let (code, out) = cli(
        &s,
        &[
            "create",
            "--prefix",
            "cr_live_",
            "--credits",
            "10",
            "--refill",
            "month:15",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let made: Value = serde_json::from_str(out.trim()).unwrap();
    let monthly = made["id"].as_str().unwrap().to_string();
    assert_eq!(
        made["credits"]["refill"],
        json!({"interval": "month", "day": 15})
    );
    report(
        &s,
        &format!("r-{name}-4"),
        json!({"id": monthly, "requests": 4, "allowed": 4, "credits": 4, "last_used": now()}),
    );
    let (st, rolled) = s.admin(
        "POST",
        &format!("/v1/api-keys/{monthly}/roll"),
        Some(r#"{"grace_seconds":60}"#),
    );
    assert_eq!(st, 201, "{rolled}");
    let carried = &rolled["data"]["credits"];
    assert_eq!(
        (
            carried["granted"].clone(),
            carried["remaining"].clone(),
            carried["spent"].clone()
        ),
        (json!(10), json!(6), json!(0))
    );
    // A revoked key's balance is not changed.
    assert_eq!(
        s.admin("DELETE", &format!("/v1/api-keys/{monthly}"), None)
            .0,
        200
    );
    assert_eq!(
        change(&s, &monthly, "add", 1),
        error(
            409,
            "CONFLICT",
            "The API key is revoked; a revoked key is not changed"
        )
    );

    // A key of a tenant with a balance in the configuration: refused for the tenant's credits,
    // its event names the tenant's balance.
    let (pooled, _, _) = create(&s, json!({"prefix": "cr_live_", "tenant": "org_pool"}));
    report(
        &s,
        &format!("r-{name}-5"),
        json!({"id": pooled, "requests": 1, "rejected": {"usage_exceeded": 1}, "last_used": now()}),
    );
    assert!(wait_until(5, || exhausted_events(&hooks).len() == 3));
    let event = exhausted_events(&hooks)[2]["data"].clone();
    assert_eq!(
        (
            event["key_id"].clone(),
            event["balance"].clone(),
            event["granted"].clone()
        ),
        (json!(pooled), json!("tenant"), json!(2))
    );
    // The deliveries list names the event.
    let (_, deliveries) = s.admin("GET", "/v1/webhook-deliveries", None);
    let exhausted = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["event"] == "credits.exhausted")
        .count();
    assert_eq!(exhausted, 3);
}

#[test]
fn credits_calls_reports_and_events_on_sqlite() {
    let dir = scratch_dir("credits-api-sqlite-db");
    credits_api(
        "sqlite",
        &format!("sqlite:{}", dir.join("keys.db").display()),
    );
}

#[test]
fn credits_calls_reports_and_events_on_postgresql() {
    let pg = Postgres::start("credits-api");
    credits_api("postgres", &pg.database("credits_api"));
}

/// A tenant's balance at the key service (SPEC §14 `POST /v1/tenants/{tenant}/credits`): its
/// grant is the configuration's (`tenants.org_pool`: 2 a day); `add` and `set` reach every key
/// of the tenant in the key set within the sync bound, one balance for all of them; a tenant the
/// configuration gives no credits is refused; the change is audited; the CLI makes it.
fn tenant_credits(name: &str, database: &str) {
    let dir = scratch_dir(&format!("credits-tenant-{name}"));
    let hooks = receiver();
    let s = start_service(&dir, database, &hooks);
    let (_, a, _) = create(&s, json!({"prefix": "cr_live_", "tenant": "org_pool"}));
    let (_, b, _) = create(&s, json!({"prefix": "cr_live_", "tenant": "org_pool"}));
    let up = Upstream::start("credits");
    let cfg = plugin_config().to_string();
    let envoy_name = format!("credits-tenant-envoy-{name}");
    let mut o = EnvoyOpts::new(&envoy_name, &cfg, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);
    let reset = (day_start(now()) + 86_400).to_string();
    // Both keys draw from the configuration's 2 (its refill: Retry-After until 00:00 UTC).
    assert!(wait_until(INTERVAL + 3, || hit(&e, &a, "/v1/x").status == 200));
    propagated(&e, 0);
    let r = hit(&e, &b, "/v1/x");
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
    assert_eq!(r.header("x-credits-reset"), Some(reset.as_str()));
    let r = hit(&e, &a, "/v1/x");
    assert_json(&r, 429, USAGE_EXCEEDED);
    assert!(r.header("retry-after").is_some());
    // add 3: the answer is the tenant's balance; within the sync bound 3 more for either key.
    let updates = e.counter("wasmcustom.keygate.sync_updates");
    let (st, v) = s.admin(
        "POST",
        "/v1/tenants/org_pool/credits",
        Some(&json!({"op": "add", "amount": 3}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"tenant": "org_pool", "credits": {"granted": 2, "refill": {"interval": "day"},
               "top_up": 3, "serial": 0, "reset": day_start(now()) + 86_400}})
    );
    propagated(&e, updates);
    for (key, left) in [(&b, 2), (&a, 1), (&b, 0)] {
        let r = hit(&e, key, "/v1/x");
        assert_eq!((r.status, remaining(&r)), (200, Some(left)), "{}", r.body);
    }
    assert_json(&hit(&e, &a, "/v1/x"), 429, USAGE_EXCEEDED);
    // set 1 through the CLI: spending counts anew, 1 for the tenant.
    let updates = e.counter("wasmcustom.keygate.sync_updates");
    let (code, out) = cli(&s, &["tenant-credits", "org_pool", "--set", "1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "org_pool: 1 this period (2 granted, top-ups -1); spending counts under serial 1"
    );
    propagated(&e, updates);
    let r = hit(&e, &a, "/v1/x");
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
    assert_json(&hit(&e, &b, "/v1/x"), 429, USAGE_EXCEEDED);
    // Refused: a tenant without credits in the configuration, a bad body, a tenant admin key.
    assert_eq!(
        s.admin(
            "POST",
            "/v1/tenants/org_other/credits",
            Some(&json!({"op": "add", "amount": 1}).to_string())
        ),
        error(
            409,
            "CONFLICT",
            "The tenant has no credits: give it some in the configuration (tenants.org_other.credits)"
        )
    );
    let (st, v) = s.admin(
        "POST",
        "/v1/tenants/org_pool/credits",
        Some(&json!({"op": "double", "amount": 1}).to_string()),
    );
    assert_eq!((st, v["code"].clone()), (400, json!("BAD_REQUEST")), "{v}");
    // Audited with the tenant, newest first.
    let (st, log) = s.admin("GET", "/v1/audit-log?tenant=org_pool", None);
    assert_eq!(st, 200, "{log}");
    let changes: Vec<(Value, Value)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "tenant.credits")
        .map(|e| (e["tenant"].clone(), e["details"].clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (json!("org_pool"), json!({"op": "set", "amount": 1})),
            (json!("org_pool"), json!({"op": "add", "amount": 3}))
        ]
    );
    drop(e);
}

#[test]
fn tenant_credits_on_sqlite() {
    let dir = scratch_dir("credits-tenant-sqlite-db");
    tenant_credits(
        "sqlite",
        &format!("sqlite:{}", dir.join("keys.db").display()),
    );
}

#[test]
fn tenant_credits_on_postgresql() {
    let pg = Postgres::start("credits-tenant");
    tenant_credits("postgres", &pg.database("credits_tenant"));
}
