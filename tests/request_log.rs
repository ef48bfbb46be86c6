//! The request log (SPEC §13) with real parts: a real Envoy (2 workers) loading keygate, its own
//! OpenTelemetry access logger (configured as the shipped files configure it) sending to
//! `keygate serve` on SQLite and PostgreSQL, a real upstream; the log read back through the API,
//! as the operator and as a tenant.
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

fn plugin_config() -> Value {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "mlm_live_", "environment": "LIVE", "role": "admin"},
            {"prefix": "mlm_sandbox_", "environment": "SANDBOX", "role": "reader"}
        ],
        "roles": {"admin": {"methods": ["*"]}, "reader": {"methods": ["GET", "HEAD"]}},
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": 1, "timeout_ms": 2000, "token": SYNC_TOKEN},
        "usage_report": {"cluster": "keyservice", "path": "/usage", "interval_seconds": 1, "timeout_ms": 2000, "token": SYNC_TOKEN},
        "public_paths": ["/healthz"]
    })
}

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("reqlog-service-{name}"))
}

/// `keygate serve` with the sync token on `database`; its configuration in `dir`.
fn service(dir: &Path, database: &str) -> Service {
    let cfg = dir.join("plugin.json");
    std::fs::write(&cfg, plugin_config().to_string()).unwrap();
    Service::start(ServiceOpts {
        database,
        config: &cfg,
        gateway: false,
        sync_token: true,
        port: None,
    })
}

fn envoy(name: &str, s: &Service, upstream: u16, cfg: &str) -> Envoy {
    let mut o = EnvoyOpts::new(name, cfg, upstream);
    o.key_service = Some(s.port);
    o.hardened = true;
    o.request_log = Some((s.port, Some(SYNC_TOKEN.to_string())));
    Envoy::start(&o)
}

/// Creates a key through the admin API: (id, key).
fn create(s: &Service, body: Value) -> (String, String) {
    let (st, v) = s.admin("POST", "/v1/api-keys", Some(&body.to_string()));
    assert_eq!(st, 201, "{v}");
    (
        v["data"]["id"].as_str().unwrap().to_string(),
        v["data"]["key"].as_str().unwrap().to_string(),
    )
}

/// Waits (bounded) until Envoy's workers let `key` (allowed to GET) through: the key set has
/// arrived. The probes are logged too (user agent `probe`).
fn wait_for_key(e: &Envoy, key: &str) {
    let ok = wait_until(15, || {
        (0..4).all(|_| {
            send(
                e.port,
                "GET",
                "/probe",
                &[("x-api-key", key), ("user-agent", "probe")],
            )
            .status
                == 200
        })
    });
    assert!(ok, "the key never reached Envoy");
}

/// Every record in the log (all pages), newest first.
fn all_records(s: &Service, query: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let sep = if query.is_empty() { "?" } else { "&" };
        let path = match &cursor {
            None => format!("/v1/requests?{query}{sep}limit=1000"),
            Some(c) => format!("/v1/requests?{query}{sep}limit=1000&cursor={c}"),
        };
        let (st, v) = s.admin("GET", &path, None);
        assert_eq!(st, 200, "{v}");
        out.extend(v["data"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

/// Polls the log until `n` records with `user_agent` starting with `tag` are in it; how long it
/// took, and the records.
fn wait_for_records(s: &Service, tag: &str, n: usize, limit: Duration) -> (Duration, Vec<Value>) {
    let start = Instant::now();
    loop {
        let got: Vec<Value> = all_records(s, "")
            .into_iter()
            .filter(|r| r["user_agent"].as_str().is_some_and(|u| u.starts_with(tag)))
            .collect();
        if got.len() >= n || start.elapsed() > limit {
            return (start.elapsed(), got);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One judged request of each kind, each exactly once with its fields, within 2 s; a public path
/// not at all; no key material anywhere in the database.
fn every_judged_request_once(database: &str, dir: &Path, name: &str, db_file: Option<&Path>) {
    let s = service(dir, database);
    let up = Upstream::start("reqlog");
    let cfg = plugin_config().to_string();
    let (live_id, live) = create(&s, json!({"prefix": "mlm_live_", "tenant": "org_a"}));
    let (limited_id, limited) = create(
        &s,
        json!({"prefix": "mlm_live_", "tenant": "org_b", "rate_limits": [{"requests": 1, "per": "minute"}]}),
    );
    let (reader_id, reader) = create(&s, json!({"prefix": "mlm_sandbox_"}));
    let e = envoy(name, &s, up.port, &cfg);
    wait_for_key(&e, &reader);
    let invalid = "mlm_live_00000000000000000000000000000000";
    let cases: Vec<(&str, &str, Vec<(&str, &str)>, u16)> = vec![
        (
            "GET",
            "/orders/1?secret=query",
            vec![("x-api-key", &live)],
            200,
        ),
        ("POST", "/v1/things", vec![("x-api-key", &reader)], 403),
        ("GET", "/v1/things", vec![("x-api-key", &limited)], 200),
        ("GET", "/v1/things", vec![("x-api-key", &limited)], 429),
        ("GET", "/v1/things", vec![], 401),
        ("GET", "/v1/things", vec![("x-api-key", invalid)], 401),
        ("GET", "/v1/sandbox", vec![("x-api-key", &reader)], 200),
    ];
    let tag = format!("reqlog-{}", std::process::id());
    for (i, (method, path, headers, want)) in cases.iter().enumerate() {
        let ua = format!("{tag}-{i}");
        let mut h: Vec<(&str, &str)> = headers.clone();
        h.push(("user-agent", &ua));
        let r = send(e.port, method, path, &h);
        assert_eq!(r.status, *want, "case {i}: {method} {path}: {r:?}");
    }
    // A public path: not judged, not logged.
    let public_ua = format!("{tag}-public");
    assert_eq!(
        send(e.port, "GET", "/healthz", &[("user-agent", &public_ua)]).status,
        200
    );
    let (took, records) = wait_for_records(&s, &tag, cases.len(), Duration::from_secs(2));
    assert_eq!(
        records.len(),
        cases.len(),
        "records within 2 s ({took:?}): {records:#?}\n{}",
        s.log()
    );
    // Exactly once each (a wait past the first sighting shows no second copy arrives).
    thread::sleep(Duration::from_millis(1200));
    let (_, records) = wait_for_records(&s, &tag, usize::MAX, Duration::ZERO);
    let by_ua = |i: usize| -> Vec<Value> {
        let ua = format!("{tag}-{i}");
        records
            .iter()
            .filter(|r| r["user_agent"] == json!(ua))
            .cloned()
            .collect()
    };
    assert!(!records.iter().any(|r| r["user_agent"] == json!(public_ua)));
    let expect: Vec<Value> = vec![
        json!({"key_id": live_id, "tenant": "org_a", "environment": "LIVE", "decision": "allowed", "method": "GET", "path": "/orders/1", "route": "orders", "status": 200}),
        json!({"key_id": reader_id, "tenant": null, "environment": "SANDBOX", "decision": "forbidden", "method": "POST", "path": "/v1/things", "route": null, "status": 403}),
        json!({"key_id": limited_id, "tenant": "org_b", "environment": "LIVE", "decision": "allowed", "method": "GET", "path": "/v1/things", "route": null, "status": 200}),
        json!({"key_id": limited_id, "tenant": "org_b", "environment": "LIVE", "decision": "rate_limited", "method": "GET", "path": "/v1/things", "route": null, "status": 429}),
        json!({"key_id": null, "tenant": null, "environment": null, "decision": "missing", "method": "GET", "path": "/v1/things", "route": null, "status": 401}),
        // The environment of the prefix the unknown key has (SPEC §2's X-Environment).
        json!({"key_id": null, "tenant": null, "environment": "LIVE", "decision": "invalid", "method": "GET", "path": "/v1/things", "route": null, "status": 401}),
        json!({"key_id": reader_id, "tenant": null, "environment": "SANDBOX", "decision": "allowed", "method": "GET", "path": "/v1/sandbox", "route": null, "status": 200}),
    ];
    for (i, want) in expect.iter().enumerate() {
        let got = by_ua(i);
        assert_eq!(got.len(), 1, "case {i}: {got:#?}");
        let r = &got[0];
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&r[k], v, "case {i}, field {k}: {r:#}");
        }
        assert_eq!(r["client_ip"], json!("127.0.0.1"), "{r:#}");
        assert!(r["duration_ms"].as_i64().is_some_and(|d| d >= 0), "{r:#}");
        let t = r["time"].as_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z'), "{t}");
        // Exactly the fields of SPEC §13.
        let mut fields: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "client_ip",
                "decision",
                "duration_ms",
                "environment",
                "key_id",
                "method",
                "path",
                "route",
                "status",
                "tenant",
                "time",
                "user_agent"
            ]
        );
    }
    // Newest first.
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // A key's own call: its records and its addresses.
    let (st, v) = s.admin("GET", &format!("/v1/api-keys/{limited_id}/requests"), None);
    assert_eq!(st, 200, "{v}");
    let decisions: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["rate_limited", "allowed"]);
    let ips = v["client_ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{v:#}");
    assert_eq!(ips[0]["client_ip"], json!("127.0.0.1"));
    assert_eq!(ips[0]["requests"], json!(2));
    assert!(ips[0]["first_seen"].as_str().unwrap() <= ips[0]["last_seen"].as_str().unwrap());
    assert_eq!(v["next_cursor"], Value::Null);

    // Filters.
    let only = |q: &str| -> Vec<Value> {
        all_records(&s, q)
            .into_iter()
            .filter(|r| {
                r["user_agent"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(&tag))
            })
            .collect()
    };
    assert_eq!(only("status=401").len(), 2);
    assert_eq!(only("decision=forbidden").len(), 1);
    assert_eq!(only("tenant=org_b").len(), 2);
    assert_eq!(only(&format!("key_id={live_id}")).len(), 1);
    assert_eq!(only("path_prefix=/orders/").len(), 1);
    assert_eq!(only("client_ip=127.0.0.1").len(), cases.len());
    assert_eq!(only("client_ip=::1").len(), 0);
    // Paging one by one gives the same records.
    let mut paged = 0;
    let mut cursor = String::new();
    for _ in 0..50 {
        let (st, v) = s.admin(
            "GET",
            &format!("/v1/requests?limit=1{cursor}&decision=allowed"),
            None,
        );
        assert_eq!(st, 200);
        paged += v["data"].as_array().unwrap().len();
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, all_records(&s, "decision=allowed").len());

    // No key material: neither a plaintext key (valid or not) nor the query string anywhere.
    if let Some(f) = db_file {
        let mut bytes = std::fs::read(f).unwrap_or_default();
        bytes.extend(std::fs::read(f.with_extension("db-wal")).unwrap_or_default());
        let text = String::from_utf8_lossy(&bytes);
        for secret in [
            live.as_str(),
            limited.as_str(),
            reader.as_str(),
            invalid,
            "secret=query",
        ] {
            assert!(!text.contains(secret), "{secret} found in the database");
        }
        assert!(text.contains(&tag), "the database holds the records");
    }
}

#[test]
fn sqlite_every_judged_request_appears_once_with_its_fields() {
    let dir = scratch("sqlite");
    let db = dir.join("keys.db");
    every_judged_request_once(
        &format!("sqlite:{}", db.display()),
        &dir,
        "reqlog-sqlite",
        Some(&db),
    );
}

#[test]
fn postgres_every_judged_request_appears_once_with_its_fields() {
    let pg = Postgres::start("reqlog");
    let dir = scratch("pg");
    every_judged_request_once(&pg.database("keygate_reqlog"), &dir, "reqlog-pg", None);
}
