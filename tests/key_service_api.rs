//! The key service's API (SPEC §7, §8) exactly as documented, on SQLite and on a real
//! PostgreSQL server; two replicas on one PostgreSQL database.
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = repo()
        .join("target/itest")
        .join(format!("svc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A plugin configuration with the MLM and MarginFront styles' prefixes and roles.
pub fn plugin_config() -> Value {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "mlm_live_", "environment": "LIVE", "role": "admin"},
            {"prefix": "mlm_sandbox_", "environment": "SANDBOX"},
            {"prefix": "mf_pk_live_", "environment": "LIVE", "role": "publishable", "checksum": "crc32"}
        ],
        "roles": {"admin": {"methods": ["*"]}, "reader": {"methods": ["GET"]},
                  "publishable": {"methods": ["GET"], "paths": ["/v1/verify"]}},
        "keys": [{"id": "inline_1", "sha256": sha("mlm_live_inline")}]
    })
}

fn write_config(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("plugin.json");
    std::fs::write(&p, plugin_config().to_string()).unwrap();
    p
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 20 && s.ends_with('Z') && keygate::timestamp::parse_rfc3339(s).is_some()
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn err(code: &str, error: &str) -> Value {
    json!({"success": false, "error": error, "code": code})
}

/// Every call and every documented error, against one service.
fn exercise_api(s: &Service) -> Vec<String> {
    let mut created_keys = Vec::new();
    // Without or with a wrong token: 401.
    for token in [None, Some("wrong")] {
        let (st, body) = call(&s.url(), "GET", "/v1/api-keys", None, token);
        assert_eq!(st, 401);
        assert_eq!(body["code"], "UNAUTHORIZED");
        assert_eq!(body["success"], false);
        assert!(body["error"].is_string());
    }

    // Create: the key once, effective environment and role from the prefix.
    let (st, body) = s.admin("POST", "/v1/api-keys", Some(r#"{"prefix":"mlm_live_"}"#));
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["success"], true);
    let d = &body["data"];
    let fields: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "id",
            "key",
            "name",
            "prefix",
            "environment",
            "tenant",
            "role",
            "created_at",
            "expires_at"
        ]
    );
    let key = d["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("mlm_live_") && key.len() >= 9 + 22, "{key}");
    assert_eq!(d["prefix"], "mlm_live_");
    assert_eq!(d["environment"], "LIVE");
    assert_eq!(d["role"], "admin");
    assert_eq!(d["tenant"], Value::Null);
    assert_eq!(d["name"], Value::Null);
    assert_eq!(d["expires_at"], Value::Null);
    assert!(is_rfc3339(&d["created_at"]));
    let first_id = d["id"].as_str().unwrap().to_string();
    created_keys.push(key);

    // Every field; an explicit id; a checksummed prefix's key carries its checksum.
    let full = json!({"prefix": "mlm_sandbox_", "id": "key_full", "name": "CI key", "tenant": "org_42",
        "role": "reader", "expires_at": "2030-01-01T00:00:00Z",
        "rate_limits": [{"requests": 5, "per": "minute"}], "allowed_ips": ["203.0.113.0/24"],
        "allowed_referers": ["https://app.example.com/*"], "allowed_paths": ["/v1/users/*"]});
    let (st, body) = s.admin("POST", "/v1/api-keys", Some(&full.to_string()));
    assert_eq!(st, 201, "{body}");
    let d = &body["data"];
    assert_eq!(
        (
            d["id"].clone(),
            d["name"].clone(),
            d["tenant"].clone(),
            d["role"].clone(),
            d["environment"].clone(),
            d["expires_at"].clone()
        ),
        (
            json!("key_full"),
            json!("CI key"),
            json!("org_42"),
            json!("reader"),
            json!("SANDBOX"),
            json!("2030-01-01T00:00:00Z")
        )
    );
    created_keys.push(d["key"].as_str().unwrap().to_string());
    let (st, body) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"mf_pk_live_","tenant":"org_7"}"#),
    );
    assert_eq!(st, 201);
    let pk = body["data"]["key"].as_str().unwrap().to_string();
    assert!(keygate::checksum::valid(pk.as_bytes()), "{pk}");
    assert_eq!(body["data"]["role"], "publishable");
    created_keys.push(pk);

    // Errors, exactly.
    let (st, body) = s.admin("POST", "/v1/api-keys", Some(&full.to_string()));
    assert_eq!((st, body["code"].clone()), (409, json!("CONFLICT")));
    let (st, body) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"mlm_live_","id":"inline_1"}"#),
    );
    assert_eq!(
        (st, body["code"].clone()),
        (409, json!("CONFLICT")),
        "an inline key's id"
    );
    for (b, want) in [
        (r#"{}"#, "prefix: is required"),
        (
            r#"{"prefix":"sk_live_"}"#,
            r#"prefix: "sk_live_" is not a configured prefix (mf_pk_live_, mlm_live_, mlm_sandbox_)"#,
        ),
        (
            r#"{"prefix":"mlm_live_","colour":"red"}"#,
            "colour: unknown field",
        ),
        (
            r#"{"prefix":"mlm_live_","allowed_ips":["10.0.0.0/33"]}"#,
            r#"allowed_ips[0]: "10.0.0.0/33" has an invalid prefix length"#,
        ),
        (
            r#"{"prefix":"mlm_live_","role":"owner"}"#,
            r#"role: role "owner" is not defined in $.roles"#,
        ),
        (
            r#"{"prefix":"mlm_live_","rate_limits":[{"requests":0,"per":"minute"}]}"#,
            "rate_limits[0].requests: must be at least 1",
        ),
        (
            r#"{"prefix":"mlm_live_","expires_at":"soon"}"#,
            r#"expires_at: "soon" is not an RFC 3339 timestamp (2027-01-01T00:00:00Z)"#,
        ),
        (
            r#"{"prefix":"mlm_live_","id":"has space"}"#,
            r#"id: "has space" must be 1-128 characters of A-Z a-z 0-9 _ - . :"#,
        ),
        (r#"["prefix"]"#, "$: expected an object"),
    ] {
        let (st, body) = s.admin("POST", "/v1/api-keys", Some(b));
        assert_eq!((st, body), (400, err("BAD_REQUEST", want)), "{b}");
    }
    let (st, body) = s.admin("POST", "/v1/api-keys", Some("{not json"));
    assert_eq!((st, body["code"].clone()), (400, json!("BAD_REQUEST")));
    let big = format!(
        r#"{{"prefix":"mlm_live_","name":"{}"}}"#,
        "n".repeat(70_000)
    );
    let (st, body) = s.admin("POST", "/v1/api-keys", Some(&big));
    assert_eq!(
        (st, body["code"].clone()),
        (413, json!("PAYLOAD_TOO_LARGE"))
    );

    // List: never a key or digest; tenant filter.
    let (st, body) = s.admin("GET", "/v1/api-keys", None);
    assert_eq!(st, 200);
    let list = body["data"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let text = body.to_string();
    for k in &created_keys {
        assert!(!text.contains(k.as_str()) && !text.contains(&sha(k)));
    }
    let entry = list.iter().find(|k| k["id"] == "key_full").unwrap();
    let fields: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "id",
            "name",
            "prefix",
            "environment",
            "tenant",
            "role",
            "created_at",
            "last_used",
            "expires_at",
            "revoked"
        ]
    );
    assert_eq!(entry["last_used"], Value::Null);
    assert_eq!(entry["revoked"], false);
    let (_, body) = s.admin("GET", "/v1/api-keys?tenant=org_42", None);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["id"], "key_full");

    // Get one; unknown ids.
    let (st, body) = s.admin("GET", "/v1/api-keys/key_full", None);
    assert_eq!((st, &body["data"]), (200, entry));
    let not_found = err("NOT_FOUND", "API key not found");
    for (m, p) in [
        ("GET", "/v1/api-keys/nope"),
        ("DELETE", "/v1/api-keys/nope"),
        ("POST", "/v1/api-keys/nope/roll"),
        ("GET", "/v1/api-keys/nope/usage"),
    ] {
        let (st, body) = s.admin(m, p, Some("{}"));
        assert_eq!((st, body), (404, not_found.clone()), "{m} {p}");
    }

    // The feed: version and ETag, revalidation, deltas.
    let (st, h, text) = call_raw(&s.url(), "GET", "/keys", None, &[]);
    assert_eq!(st, 200);
    let feed: Value = serde_json::from_str(&text).unwrap();
    let v1 = feed["version"].as_str().unwrap().to_string();
    let etag = h
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(etag, format!("\"{v1}\""));
    assert_eq!(feed["keys"].as_array().unwrap().len(), 3);
    let full_entry = feed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "key_full")
        .unwrap();
    assert_eq!(
        full_entry,
        &json!({"id": "key_full", "sha256": sha(&created_keys[1]), "name": "CI key",
        "tenant": "org_42", "role": "reader", "expires_at": 1_893_456_000,
        "rate_limits": [{"requests": 5, "per": "minute"}], "allowed_ips": ["203.0.113.0/24"],
        "allowed_referers": ["https://app.example.com/*"], "allowed_paths": ["/v1/users/*"]})
    );
    for k in &created_keys {
        assert!(!text.contains(k.as_str()), "plaintext key in the feed");
    }
    let (st, _, _) = call_raw(
        &s.url(),
        "GET",
        "/keys",
        None,
        &[("if-none-match", etag.clone())],
    );
    assert_eq!(st, 304);
    let (st, _, _) = call_raw(&s.url(), "GET", &format!("/keys?since={v1}"), None, &[]);
    assert_eq!(st, 304);

    // Revoke: the key stays in the feed, marked; a delta carries just it.
    let (st, body) = s.admin("DELETE", &format!("/v1/api-keys/{first_id}"), None);
    assert_eq!(
        (st, body),
        (
            200,
            json!({"success": true, "message": "API key revoked successfully"})
        )
    );
    let (_, body) = s.admin("GET", &format!("/v1/api-keys/{first_id}"), None);
    assert_eq!(body["data"]["revoked"], true);
    let (st, _, text) = call_raw(&s.url(), "GET", &format!("/keys?since={v1}"), None, &[]);
    assert_eq!(st, 200);
    let delta: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(delta["since"], v1.as_str());
    assert_eq!(delta["removed"], json!([]));
    assert_eq!(
        delta["upserts"],
        json!([{"id": first_id, "sha256": sha(&created_keys[0]), "revoked": true}])
    );
    let v2 = delta["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    // A version this database never issued: the full set.
    let (st, _, text) = call_raw(&s.url(), "GET", "/keys?since=elsewhere-3", None, &[]);
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Roll: a new key with the same settings; the old one expires after the grace period.
    let (st, body) = s.admin(
        "POST",
        "/v1/api-keys/key_full/roll",
        Some(r#"{"grace_seconds": 600}"#),
    );
    assert_eq!(st, 201, "{body}");
    let d = &body["data"];
    assert_ne!(d["id"], "key_full");
    assert_eq!(
        (
            d["name"].clone(),
            d["tenant"].clone(),
            d["role"].clone(),
            d["prefix"].clone()
        ),
        (
            json!("CI key"),
            json!("org_42"),
            json!("reader"),
            json!("mlm_sandbox_")
        )
    );
    assert!(d["key"].as_str().unwrap().starts_with("mlm_sandbox_"));
    let new_id = d["id"].as_str().unwrap().to_string();
    let (_, old) = s.admin("GET", "/v1/api-keys/key_full", None);
    let expires =
        keygate::timestamp::parse_rfc3339(old["data"]["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        (expires - (now() + 600)).abs() <= 5,
        "old key expires in the grace period"
    );
    let (_, feed) = call(&s.url(), "GET", "/keys", None, None);
    let rolled = feed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == new_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        rolled["rate_limits"],
        json!([{"requests": 5, "per": "minute"}])
    );
    assert_eq!(rolled["allowed_paths"], json!(["/v1/users/*"]));
    let (st, body) = s.admin("POST", &format!("/v1/api-keys/{first_id}/roll"), Some("{}"));
    assert_eq!(
        (st, body["code"].clone()),
        (409, json!("CONFLICT")),
        "a revoked key is not rolled"
    );
    let (st, body) = s.admin(
        "POST",
        &format!("/v1/api-keys/{new_id}/roll"),
        Some(r#"{"grace_seconds": -1}"#),
    );
    assert_eq!((st, body["code"].clone()), (400, json!("BAD_REQUEST")));
    let (st, _) = s.admin("POST", &format!("/v1/api-keys/{new_id}/roll"), None);
    assert_eq!(st, 201, "an empty body: the default grace (a day)");
    let (_, old) = s.admin("GET", &format!("/v1/api-keys/{new_id}"), None);
    let expires =
        keygate::timestamp::parse_rfc3339(old["data"]["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires - (now() + 86_400)).abs() <= 5);

    // Usage reports: counted once per report id; figures by hour; last_used.
    let t = now() - 60;
    let report = json!({"report_id": "r-1", "keys": [
        {"id": "key_full", "requests": 7, "allowed": 4, "rejected": {"rate_limited": 2, "forbidden": 1}, "last_used": t}]});
    for want in [
        json!({"success": true, "report_id": "r-1", "counted": true, "dropped": 0}),
        json!({"success": true, "report_id": "r-1", "counted": false}),
    ] {
        let (st, body) = call(&s.url(), "POST", "/usage", Some(&report.to_string()), None);
        assert_eq!((st, body), (200, want));
    }
    let report2 = json!({"report_id": "r-2", "keys": [{"id": "key_full", "requests": 1, "allowed": 1, "rejected": {}, "last_used": t + 1}]});
    assert_eq!(
        call(&s.url(), "POST", "/usage", Some(&report2.to_string()), None).0,
        200
    );
    let (st, body) = s.admin("GET", "/v1/api-keys/key_full/usage", None);
    assert_eq!(st, 200);
    let hour = keygate::timestamp::format_rfc3339(t - t.rem_euclid(3600));
    assert_eq!(
        body["data"],
        json!({"id": "key_full", "total": {"requests": 8, "allowed": 5, "rejected": 3},
        "hours": [{"start": hour, "requests": 8, "allowed": 5, "rejected": {"forbidden": 1, "rate_limited": 2}}]})
    );
    let (_, body) = s.admin("GET", "/v1/api-keys/key_full", None);
    assert_eq!(
        body["data"]["last_used"],
        json!(keygate::timestamp::format_rfc3339(t + 1))
    );
    // A range after the usage is empty; before it too.
    let later = keygate::timestamp::format_rfc3339(now() + 7200);
    let (_, body) = s.admin(
        "GET",
        &format!("/v1/api-keys/key_full/usage?from={later}"),
        None,
    );
    assert_eq!(
        body["data"]["total"],
        json!({"requests": 0, "allowed": 0, "rejected": 0})
    );
    let (_, body) = s.admin(
        "GET",
        "/v1/api-keys/key_full/usage?to=2000-01-01T00:00:00Z",
        None,
    );
    assert_eq!(body["data"]["hours"], json!([]));
    let (st, body) = s.admin("GET", "/v1/api-keys/key_full/usage?from=yesterday", None);
    assert_eq!(
        (st, body),
        (
            400,
            err(
                "BAD_REQUEST",
                r#"from: "yesterday" is not an RFC 3339 time (2025-01-15T10:30:00Z)"#
            )
        )
    );
    for (b, want) in [
        (r#"{"keys":[]}"#, "report_id: is required"),
        (r#"{"report_id":"x"}"#, "keys: is required"),
        (
            r#"{"report_id":"x","keys":[{"id":"a","requests":2,"allowed":1}]}"#,
            "keys[0].requests: must equal allowed plus every rejection",
        ),
        (
            r#"{"report_id":"x","keys":[{"id":"a","requests":1,"allowed":0,"rejected":{"stolen":1}}]}"#,
            "keys[0].rejected.stolen: is not a rejection decision keygate makes",
        ),
    ] {
        let (st, body) = call(&s.url(), "POST", "/usage", Some(b), None);
        assert_eq!((st, body), (400, err("BAD_REQUEST", want)), "{b}");
    }
    // Reports from a clock far ahead, or counts no Envoy makes, are refused.
    let future = json!({"report_id": "f", "keys": [{"id": "key_full", "requests": 1, "allowed": 1, "last_used": now() + 3600}]});
    let (st, body) = call(&s.url(), "POST", "/usage", Some(&future.to_string()), None);
    assert_eq!((st, body["error"].clone()), (400, json!("keys[0].last_used: is in the future (Unix seconds, at most 5 minutes ahead of the key service)")));
    let huge = json!({"report_id": "h", "keys": [{"id": "key_full", "requests": 1u64 << 41, "allowed": 0, "rejected": {"forbidden": 1u64 << 41}}]});
    assert_eq!(
        call(&s.url(), "POST", "/usage", Some(&huge.to_string()), None).0,
        400
    );
    // Revalidation: weak tags and lists too.
    let (_, h, _) = call_raw(&s.url(), "GET", "/keys", None, &[]);
    let tag = h
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.clone())
        .unwrap();
    for inm in [
        format!("W/{tag}"),
        format!("\"other\", {tag}"),
        "*".to_string(),
    ] {
        let (st, _, _) = call_raw(
            &s.url(),
            "GET",
            "/keys",
            None,
            &[("if-none-match", inm.clone())],
        );
        assert_eq!(st, 304, "{inm}");
    }
    // A roll keeps the expiry; an expired key is not rolled.
    let (_, body) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"mlm_live_","expires_at":"2031-05-01T00:00:00Z"}"#),
    );
    let exp_id = body["data"]["id"].as_str().unwrap().to_string();
    let (st, body) = s.admin("POST", &format!("/v1/api-keys/{exp_id}/roll"), Some("{}"));
    assert_eq!(
        (st, body["data"]["expires_at"].clone()),
        (201, json!("2031-05-01T00:00:00Z"))
    );
    let (_, body) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"mlm_live_","expires_at":"2020-01-01T00:00:00Z"}"#),
    );
    let old_id = body["data"]["id"].as_str().unwrap().to_string();
    let (st, body) = s.admin("POST", &format!("/v1/api-keys/{old_id}/roll"), Some("{}"));
    assert_eq!((st, body["code"].clone()), (409, json!("CONFLICT")));
    // A path that is not an id: JSON too (and only after authentication).
    let (st, body) = s.admin("GET", "/v1/api-keys/%FF", None);
    assert_eq!(
        (st, body),
        (400, err("BAD_REQUEST", "id: not a valid key id"))
    );
    assert_eq!(call(&s.url(), "GET", "/v1/api-keys/%FF", None, None).0, 401);
    // Unknown paths and methods get JSON too.
    let (st, body) = s.admin("PUT", "/v1/api-keys", Some("{}"));
    assert_eq!(
        (st, body["code"].clone()),
        (405, json!("METHOD_NOT_ALLOWED"))
    );
    let (st, body) = s.admin("GET", "/v2/nothing", None);
    assert_eq!((st, body["code"].clone()), (404, json!("NOT_FOUND")));
    created_keys
}

/// No plaintext key anywhere under `dir` (database files, WAL, logs).
fn assert_no_plaintext(dir: &std::path::Path, keys: &[String]) {
    let mut files = vec![dir.to_path_buf()];
    let mut scanned = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                files.push(e.path());
            }
            continue;
        }
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        scanned += bytes.len();
        for k in keys {
            assert!(
                !bytes.windows(k.len()).any(|w| w == k.as_bytes()),
                "a plaintext key in {}",
                p.display()
            );
        }
    }
    assert!(scanned > 0, "nothing scanned under {}", dir.display());
}

#[test]
fn sqlite_every_call_and_error() {
    let dir = scratch("sqlite");
    let cfg = write_config(&dir);
    let db = dir.join("keys.db");
    let s = Service::on(&format!("sqlite:{}", db.display()), &cfg);
    let keys = exercise_api(&s);
    drop(s);
    assert!(db.exists());
    assert_no_plaintext(&dir, &keys);
}

#[test]
fn postgres_every_call_and_error() {
    let pg = Postgres::start("api");
    let dir = scratch("postgres");
    let cfg = write_config(&dir);
    let url = pg.database("keygate_api");
    let s = Service::on(&url, &cfg);
    let keys = exercise_api(&s);
    let dump = pg.psql(
        "keygate_api",
        "SELECT * FROM api_keys; SELECT * FROM usage_by_hour; SELECT * FROM usage_by_day; SELECT * FROM audit_log;",
    );
    assert!(dump.contains("key_full"), "{dump}");
    for k in &keys {
        assert!(!dump.contains(k.as_str()));
    }
}

#[test]
fn the_sync_token_guards_keys_and_usage() {
    let dir = scratch("synctoken");
    let cfg = write_config(&dir);
    let s = Service::start(ServiceOpts {
        database: &format!("sqlite:{}", dir.join("k.db").display()),
        config: &cfg,
        gateway: false,
        sync_token: true,
        port: None,
    });
    let report = r#"{"report_id":"a","keys":[]}"#;
    for token in [None, Some(ADMIN_TOKEN), Some("nope")] {
        assert_eq!(call(&s.url(), "GET", "/keys", None, token).0, 401);
        assert_eq!(call(&s.url(), "POST", "/usage", Some(report), token).0, 401);
    }
    assert_eq!(
        call(&s.url(), "GET", "/keys", None, Some(SYNC_TOKEN)).0,
        200
    );
    assert_eq!(
        call(&s.url(), "POST", "/usage", Some(report), Some(SYNC_TOKEN)).0,
        200
    );
    // The sync token is not an admin token.
    assert_eq!(
        call(&s.url(), "GET", "/v1/api-keys", None, Some(SYNC_TOKEN)).0,
        401
    );
}

#[test]
fn two_replicas_on_one_postgres_agree() {
    let pg = Postgres::start("replicas");
    let dir = scratch("replicas");
    let cfg = write_config(&dir);
    let url = pg.database("keygate_replicas");
    let start = || Service::on(&url, &cfg);
    let (a, b) = (start(), start());
    let version = |s: &Service| {
        call(&s.url(), "GET", "/keys", None, None).1["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let v0 = version(&a);
    assert_eq!(v0, version(&b));
    // Creates on both replicas at once.
    std::thread::scope(|sc| {
        for s in [&a, &b] {
            sc.spawn(move || {
                for i in 0..15 {
                    let (st, body) = s.admin(
                        "POST",
                        "/v1/api-keys",
                        Some(&format!(r#"{{"prefix":"mlm_live_","name":"n{i}"}}"#)),
                    );
                    assert_eq!(st, 201, "{body}");
                }
            });
        }
    });
    let (va, vb) = (version(&a), version(&b));
    assert_eq!(
        va, vb,
        "the same state has the same version on every replica"
    );
    // A delta from either replica, applied to the old set, gives the full set of the other.
    let (_, delta) = call(&a.url(), "GET", &format!("/keys?since={v0}"), None, None);
    let (_, full) = call(&b.url(), "GET", "/keys", None, None);
    assert_eq!(delta["upserts"].as_array().unwrap().len(), 30);
    assert_eq!(delta["upserts"], full["keys"]);
    // A revoke on one is seen by the other, at the next version.
    let id = full["keys"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        b.admin("DELETE", &format!("/v1/api-keys/{id}"), None).0,
        200
    );
    let (_, d) = call(&a.url(), "GET", &format!("/keys?since={va}"), None, None);
    assert_eq!(d["upserts"].as_array().unwrap().len(), 1);
    assert_eq!(d["upserts"][0]["revoked"], true);
    assert_eq!(d["version"].as_str().unwrap(), version(&b));
    // A report sent to both replicas (a retry that reached the other one) counts once.
    let report = json!({"report_id": "dup", "keys": [{"id": id, "requests": 3, "allowed": 3, "rejected": {}, "last_used": now()}]}).to_string();
    let counted: Vec<Value> = std::thread::scope(|sc| {
        let h: Vec<_> = [&a, &b]
            .map(|s| {
                let r = report.clone();
                sc.spawn(move || {
                    call(&s.url(), "POST", "/usage", Some(&r), None).1["counted"].clone()
                })
            })
            .into_iter()
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        counted.iter().filter(|c| **c == json!(true)).count(),
        1,
        "{counted:?}"
    );
    let (_, u) = a.admin("GET", &format!("/v1/api-keys/{id}/usage"), None);
    assert_eq!(u["data"]["total"]["requests"], 3);
}

#[test]
fn a_key_the_configuration_no_longer_accepts_is_served_revoked() {
    let dir = scratch("stale");
    let cfg = write_config(&dir);
    let db = format!("sqlite:{}", dir.join("k.db").display());
    let start = |cfg: &std::path::Path| Service::on(&db, cfg);
    let s = start(&cfg);
    let (_, body) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"mlm_live_","id":"r1","role":"reader","name":"kept"}"#),
    );
    assert_eq!(body["data"]["role"], "reader");
    let (_, body) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(r#"{"prefix":"mlm_live_","id":"ok1"}"#),
    );
    let ok_sha = sha(body["data"]["key"].as_str().unwrap());
    let before_rich = call(&s.url(), "GET", "/keys", None, None).1["version"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(
            r#"{"prefix":"mlm_sandbox_","id":"rich","name":"Ä \"q\"","tenant":"org_9","expires_at":"2031-02-03T04:05:06Z",
                "rate_limits":[{"requests":5,"per":"minute"},{"requests":900,"per":"day"}],
                "allowed_ips":["203.0.113.0/24","2001:db8::/32"],"allowed_referers":["https://app.example.com/*"],
                "allowed_paths":["/v1/users/*","/v1/me"]}"#,
        ),
    );
    assert_eq!(st, 201);
    drop(s);
    // The role is gone from the configuration: every Envoy would refuse the whole answer.
    let mut c = plugin_config();
    c["roles"].as_object_mut().unwrap().remove("reader");
    let cfg2 = dir.join("plugin2.json");
    std::fs::write(&cfg2, c.to_string()).unwrap();
    let s = start(&cfg2);
    let (_, feed) = call(&s.url(), "GET", "/keys", None, None);
    let keys = feed["keys"].as_array().unwrap();
    let r1 = keys.iter().find(|k| k["id"] == "r1").unwrap();
    assert_eq!(
        r1.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "sha256", "revoked"]
    );
    assert_eq!(r1["revoked"], true);
    let ok = keys.iter().find(|k| k["id"] == "ok1").unwrap();
    assert_eq!(ok, &json!({"id": "ok1", "sha256": ok_sha}));
    // The feed passes the filter's own validation under the new configuration.
    let gate = keygate::config::parse_config(c.to_string().as_bytes()).unwrap();
    let mut errors = keygate::json_reader::Errors::default();
    let ctx = keygate::config::KeyContext {
        roles: &gate.roles,
        prefixes: &gate.prefixes,
    };
    let keys: Vec<keygate::json::Value> = keys
        .iter()
        .map(|k| keygate::json::parse(k.to_string().as_bytes()).unwrap())
        .collect();
    keygate::config::read_keys("$.keys", &keys, &ctx, &mut errors);
    assert!(errors.is_empty(), "{:?}", errors.0);

    // keygate asks for the compact form (issue 20): the same set, shard for shard (3 keys: one
    // shard either way; the unit tests compare larger sets record for record).
    let json_body = call_raw(&s.url(), "GET", "/keys", None, &[]).2;
    let (st, headers, compact) = get_bytes(s.port, "/keys", COMPACT_ACCEPT);
    assert_eq!(st, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("content-type"),
        Some("application/vnd.keygate.keyset.v1")
    );
    assert_eq!(header("vary"), Some("accept"));
    assert_eq!(
        header("etag"),
        Some(format!("\"{}\"", feed["version"].as_str().unwrap()).as_str())
    );
    assert!(compact.starts_with(b"KGKSET1\n"));
    assert!(compact.len() < json_body.len());
    let blobs = |set: keygate::keyset::Fetched| {
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
    let from_json =
        keygate::keyset::parse_key_set(&mut json_body.as_bytes(), json_body.len(), &gate, None)
            .unwrap();
    let from_compact =
        keygate::keyset::parse_binary_set(&mut &compact[..], compact.len(), &gate, None).unwrap();
    let (from_json, from_compact) = (blobs(from_json), blobs(from_compact));
    assert_eq!(from_json.1, 3);
    assert_eq!(from_compact, from_json);
    // JSON for every other client, for a refusal of the compact form, and for deltas.
    for accept in [
        "application/json",
        "application/vnd.keygate.keyset.v1;q=0, application/json",
        "application/vnd.keygate.keyset.v1; Q=0.0, application/json",
        "application/vnd.keygate.keyset.v1;q=nan",
        "*/*",
    ] {
        let (st, headers, body) = get_bytes(s.port, "/keys", accept);
        assert_eq!(st, 200, "{accept}");
        assert!(
            headers.contains(&("content-type".into(), "application/json".into())),
            "{accept}: {headers:?}"
        );
        assert_eq!(body, json_body.as_bytes(), "{accept}");
    }
    // A delta stays JSON; a full set answering a version this database never issued is compact.
    let (st, headers, delta) = get_bytes(
        s.port,
        &format!("/keys?since={before_rich}"),
        COMPACT_ACCEPT,
    );
    assert_eq!(st, 200);
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    let delta: Value = serde_json::from_slice(&delta).unwrap();
    assert_eq!(delta["since"], before_rich.as_str());
    let (st, headers, full) = get_bytes(s.port, "/keys?since=elsewhere-1", COMPACT_ACCEPT);
    assert_eq!(st, 200);
    assert!(headers.contains(&(
        "content-type".into(),
        "application/vnd.keygate.keyset.v1".into()
    )));
    assert_eq!(full, compact);
}

/// What keygate's key fetch sends.
const COMPACT_ACCEPT: &str = "application/vnd.keygate.keyset.v1, application/json;q=0.9";

/// A GET whose body may be binary: (status, headers lowercased, body).
fn get_bytes(port: u16, path: &str, accept: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: ks\r\naccept: {accept}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![];
    c.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

/// Readiness follows the database (a Kubernetes readiness probe, SPEC §12): `/readyz` answers
/// 503 while PostgreSQL is away, with the reason in the log, and 200 again once it is back;
/// `/healthz` (liveness) stays 200 throughout, so nothing restarts the replica.
#[test]
fn readiness_fails_while_the_database_is_away_and_returns_with_it() {
    let mut pg = Postgres::start("ready");
    let dir = scratch("ready");
    let cfg = write_config(&dir);
    let s = Service::on(&pg.database("keygate_ready"), &cfg);
    let status = |path: &str| call(&s.url(), "GET", path, None, None).0;
    assert_eq!(
        call(&s.url(), "GET", "/readyz", None, None),
        (200, json!({"success": true}))
    );

    pg.stop();
    let gone = std::time::Instant::now();
    let mut seen = vec![];
    let failed = wait_until(15, || {
        seen.push(status("/readyz"));
        seen.last() == Some(&503)
    });
    assert!(
        failed,
        "/readyz answered {seen:?}\n{}\n{}",
        s.log(),
        pg.log()
    );
    println!(
        "readiness failed {} ms after the database went away",
        gone.elapsed().as_millis()
    );
    assert_eq!(
        call(&s.url(), "GET", "/readyz", None, None),
        (
            503,
            json!({"success": false, "error": "The key store is unavailable; try again", "code": "UNAVAILABLE"})
        )
    );
    assert_eq!(status("/healthz"), 200);
    let metrics = call_raw(&s.url(), "GET", "/metrics", None, &[]).2;
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_serve_database_errors_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(errors.is_some_and(|n| n >= 1), "{metrics}");
    assert!(
        s.log().contains("keygate serve: database error:")
            || s.log().contains("keygate serve: not ready:"),
        "no reason in the log:\n{}",
        s.log()
    );

    pg.start_again();
    assert!(wait_until(30, || status("/readyz") == 200), "{}", s.log());
}

/// A database away when the service starts (a wrong URL, PostgreSQL not up yet): the service
/// stays up and unready — `/healthz` 200, `/readyz` and the API 503 — logging the cause on each
/// try, and serves once the database answers; no crash loop (SPEC §12).
#[test]
fn a_database_away_at_start_leaves_the_service_alive_unready_until_it_answers() {
    let mut pg = Postgres::start("late");
    let url = pg.database("keygate_late");
    pg.stop();
    let dir = scratch("late");
    let cfg = write_config(&dir);
    let s = Service::on_starting(&url, &cfg);
    let status = |path: &str| call(&s.url(), "GET", path, None, None).0;
    assert_eq!(status("/healthz"), 200);
    assert_eq!(
        call(&s.url(), "GET", "/readyz", None, None),
        (
            503,
            json!({"success": false, "error": "The key store is unavailable; try again", "code": "UNAVAILABLE"})
        )
    );
    assert_eq!(s.admin("GET", "/v1/api-keys", None).0, 503);
    assert!(
        wait_until(10, || s
            .log()
            .contains("keygate serve: not ready: cannot open the database:")
            && s.log().contains("attempt 2;")),
        "{}",
        s.log()
    );
    assert!(
        s.log().to_lowercase().contains("connection refused"),
        "the log does not name the cause:\n{}",
        s.log()
    );

    pg.start_again();
    assert!(wait_until(30, || status("/readyz") == 200), "{}", s.log());
    assert_eq!(s.admin("GET", "/v1/api-keys", None).0, 200);

    // A URL of the wrong form is a configuration error: the service exits at once, saying so.
    let out = std::process::Command::new(keygate_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "mysql://x",
        ])
        .arg("--config")
        .arg(&cfg)
        .env("KEYGATE_ADMIN_TOKEN_SHA256", sha_hex(ADMIN_TOKEN))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("the database URL must start with sqlite: or postgres://"));
}

/// `GET /metrics` (SPEC §12): requests by route pattern and status, key_sync answers by form,
/// usage reports by outcome, database errors; exact counts after known calls.
#[test]
fn the_service_serves_its_own_metrics() {
    let dir = scratch("metrics");
    let cfg = write_config(&dir);
    let s = Service::on(&format!("sqlite:{}", dir.join("keys.db").display()), &cfg);
    let (status, created) = s.admin("POST", "/v1/api-keys", Some(r#"{"prefix": "mlm_live_"}"#));
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(s.admin("GET", &format!("/v1/api-keys/{id}"), None).0, 200);
    let (_, headers, _) = call_raw(&s.url(), "GET", "/keys", None, &[]);
    let etag = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone())
        .unwrap();
    let again = call_raw(&s.url(), "GET", "/keys", None, &[("if-none-match", etag)]);
    assert_eq!(again.0, 304);
    assert_eq!(call(&s.url(), "POST", "/usage", Some("{}"), None).0, 400);
    assert_eq!(call(&s.url(), "GET", "/no/such/path", None, None).0, 404);

    let (status, headers, text) = call_raw(&s.url(), "GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/openmetrics-text")));
    for line in [
        r#"keygate_serve_requests_total{route="/v1/api-keys",status="201"} 1"#,
        r#"keygate_serve_requests_total{route="/v1/api-keys/{id}",status="200"} 1"#,
        r#"keygate_serve_requests_total{route="/keys",status="200"} 1"#,
        r#"keygate_serve_requests_total{route="/keys",status="304"} 1"#,
        r#"keygate_serve_requests_total{route="/usage",status="400"} 1"#,
        r#"keygate_serve_requests_total{route="unmatched",status="404"} 1"#,
        r#"keygate_serve_key_sync_answers_total{form="full_json"} 1"#,
        r#"keygate_serve_key_sync_answers_total{form="not_modified"} 1"#,
        r#"keygate_serve_usage_reports_total{outcome="refused"} 1"#,
        r#"keygate_serve_request_duration_seconds_count{route="/v1/api-keys"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // Paths never become labels: an id is its route's pattern.
    assert!(!text.contains(&id), "{text}");
}
