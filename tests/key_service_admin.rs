//! The key service's newer admin calls (SPEC §7): `PATCH` a key, the audit log, paged lists;
//! on SQLite and PostgreSQL, for the admin token and for tenant admin keys (gateway listener).
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("svc-admin-{name}"))
}

fn config(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("plugin.json");
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "ad_live_", "environment": "LIVE", "role": "writer"}],
        "roles": {"admin": {"methods": ["*"]}, "writer": {"methods": ["GET", "POST"]},
                  "reader": {"methods": ["GET"]}}
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

/// `keygate serve` on `db` with a gateway listener (tenant admin keys behind keygate).
fn with_gateway(db: &str, cfg: &std::path::Path) -> Service {
    Service::start(ServiceOpts {
        database: db,
        config: cfg,
        gateway: true,
        sync_token: false,
        port: None,
    })
}

fn err(code: &str, error: &str) -> Value {
    json!({"success": false, "error": error, "code": code})
}

fn patch(s: &Service, id: &str, body: Value) -> (u16, Value) {
    s.admin(
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(&body.to_string()),
    )
}

fn create(s: &Service, body: Value) -> Value {
    let (st, b) = s.admin("POST", "/v1/api-keys", Some(&body.to_string()));
    assert_eq!(st, 201, "{b}");
    b["data"].clone()
}

fn exercise(s: &Service) {
    // PATCH: each field, null clears, the answer is the listed key.
    let k = create(
        s,
        json!({"prefix": "ad_live_", "name": "first", "tenant": "org_a"}),
    );
    let id = k["id"].as_str().unwrap().to_string();
    let key = k["key"].as_str().unwrap().to_string();
    let (st, b) = patch(
        s,
        &id,
        json!({"name": "renamed", "role": "reader", "expires_at": "2031-01-01T00:00:00Z",
               "rate_limits": [{"requests": 10, "per": "minute"}], "allowed_ips": ["10.0.0.0/8"]}),
    );
    assert_eq!(st, 200, "{b}");
    let d = &b["data"];
    assert_eq!(
        (
            d["id"].clone(),
            d["name"].clone(),
            d["role"].clone(),
            d["expires_at"].clone()
        ),
        (
            json!(id),
            json!("renamed"),
            json!("reader"),
            json!("2031-01-01T00:00:00Z")
        )
    );
    assert_eq!(d["tenant"], "org_a", "not patchable, kept");
    let (st, b) = patch(
        s,
        &id,
        json!({"name": null, "role": null, "expires_at": null}),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (
            b["data"]["name"].clone(),
            b["data"]["role"].clone(),
            b["data"]["expires_at"].clone()
        ),
        (Value::Null, json!("writer"), Value::Null),
        "cleared: the prefix's role applies again"
    );
    // The feed serves the change as a delta.
    let (_, feed) = call(&s.url(), "GET", "/keys", None, None);
    let entry = feed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == json!(id))
        .unwrap()
        .clone();
    assert_eq!(
        entry["rate_limits"],
        json!([{"requests": 10, "per": "minute"}])
    );
    assert_eq!(entry["allowed_ips"], json!(["10.0.0.0/8"]));
    assert!(entry.get("name").is_none_or(Value::is_null));
    // Bad input: the field's path; never a 500.
    for (body, want) in [
        (json!({"colour": "red"}), "colour: unknown field (a PATCH changes name, role, expires_at, rate_limits, allowed_ips, allowed_referers, allowed_paths, credits)"),
        (json!({"tenant": "org_b"}), "tenant: unknown field (a PATCH changes name, role, expires_at, rate_limits, allowed_ips, allowed_referers, allowed_paths, credits)"),
        (json!({"allowed_ips": ["10.0.0.0/33"]}), "allowed_ips[0]: \"10.0.0.0/33\" has an invalid prefix length"),
        (json!([1]), "$: expected an object"),
    ] {
        let (st, b) = patch(s, &id, body.clone());
        assert_eq!((st, b), (400, err("BAD_REQUEST", want)), "{body}");
    }
    let (st, b) = patch(s, &id, json!({"role": "owner"}));
    assert_eq!(st, 400);
    assert!(b["error"].as_str().unwrap().starts_with("role: "), "{b}");
    assert_eq!(patch(s, "no_such_key", json!({"name": "x"})).0, 404);
    // A revoked key is not changed.
    assert_eq!(
        s.admin("DELETE", &format!("/v1/api-keys/{id}"), None).0,
        200
    );
    let (st, b) = patch(s, &id, json!({"name": "again"}));
    assert_eq!(
        (st, b),
        (
            409,
            err(
                "CONFLICT",
                "The API key is revoked; a revoked key is not changed"
            )
        )
    );

    // The audit log: every change, newest first, who and from where; nothing secret.
    let k2 = create(s, json!({"prefix": "ad_live_", "tenant": "org_a"}));
    let id2 = k2["id"].as_str().unwrap().to_string();
    let (st, rolled) = s.admin("POST", &format!("/v1/api-keys/{id2}/roll"), Some("{}"));
    assert_eq!(st, 201);
    let (st, log) = s.admin("GET", "/v1/audit-log?tenant=org_a", None);
    assert_eq!(st, 200);
    let actions: Vec<(String, String)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["key_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("key.rolled".to_string(), id2.clone()),
            ("key.created".into(), id2.clone()),
            ("key.revoked".into(), id.clone()),
            ("key.updated".into(), id.clone()),
            ("key.updated".into(), id.clone()),
            ("key.created".into(), id.clone()),
        ]
    );
    let first = &log["data"][0];
    assert_eq!(first["actor"], json!({"type": "admin", "id": null}));
    assert_eq!(first["ip"], "127.0.0.1");
    assert_eq!(first["tenant"], "org_a");
    assert!(keygate::timestamp::parse_rfc3339(first["time"].as_str().unwrap()).is_some());
    let text = log.to_string();
    for secret in [
        key.as_str(),
        rolled["data"]["key"].as_str().unwrap(),
        ADMIN_TOKEN,
    ] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }
    assert!(!text.contains(&keygate::keys::digest_hex(key.as_bytes())));
    // Filters and pages.
    let (_, one) = s.admin("GET", &format!("/v1/audit-log?key={id2}&limit=1"), None);
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["action"], "key.rolled");
    let cursor = one["next_cursor"].as_str().unwrap().to_string();
    let (_, two) = s.admin(
        "GET",
        &format!("/v1/audit-log?key={id2}&limit=1&cursor={cursor}"),
        None,
    );
    assert_eq!(two["data"][0]["action"], "key.created");
    assert_eq!(two["next_cursor"], Value::Null, "the last page");
    let (_, later) = s.admin("GET", "/v1/audit-log?from=2999-01-01T00:00:00Z", None);
    assert_eq!(later["data"], json!([]));
    for (q, want) in [
        (
            "from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
            "from: is after to",
        ),
        (
            "limit=0",
            "limit: \"0\" is not a whole number from 1 to 1000",
        ),
        (
            "limit=1001",
            "limit: \"1001\" is not a whole number from 1 to 1000",
        ),
        ("cursor=zz", "cursor: not a cursor this service gave"),
    ] {
        let (st, b) = s.admin("GET", &format!("/v1/audit-log?{q}"), None);
        assert_eq!((st, b), (400, err("BAD_REQUEST", want)), "{q}");
    }

    // Paged lists: newest first, every key once, stable across pages.
    for i in 0..5 {
        create(
            s,
            json!({"prefix": "ad_live_", "name": format!("page{i}"), "tenant": "org_p"}),
        );
    }
    let (mut seen, mut cursor) = (Vec::<String>::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/api-keys?tenant=org_p&limit=2&cursor={c}"),
            None => "/v1/api-keys?tenant=org_p&limit=2".to_string(),
        };
        let (st, b) = s.admin("GET", &path, None);
        assert_eq!(st, 200, "{b}");
        let page = b["data"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|k| k["name"].as_str().unwrap().to_string()));
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["page4", "page3", "page2", "page1", "page0"],
        "newest first, once each"
    );
    for (q, want) in [
        (
            "limit=abc",
            "limit: \"abc\" is not a whole number from 1 to 1000",
        ),
        (
            "limit=2&cursor=00",
            "cursor: not a cursor this service gave",
        ),
    ] {
        let (st, b) = s.admin("GET", &format!("/v1/api-keys?{q}"), None);
        assert_eq!((st, b), (400, err("BAD_REQUEST", want)), "{q}");
    }
    // Without limit: the whole list, as before.
    let (_, all) = s.admin("GET", "/v1/api-keys?tenant=org_p", None);
    assert_eq!(all["data"].as_array().unwrap().len(), 5);
    assert!(all.get("next_cursor").is_none());

    // Tenants: their own keys only (another's is 404), no limits, their own log.
    let b_key = create(s, json!({"prefix": "ad_live_", "tenant": "org_b"}));
    let b_id = b_key["id"].as_str().unwrap();
    let (st, _) = as_tenant(
        s,
        "org_a",
        "PATCH",
        &format!("/v1/api-keys/{b_id}"),
        Some(r#"{"name":"mine"}"#),
    );
    assert_eq!(st, 404);
    let (st, b) = as_tenant(
        s,
        "org_a",
        "PATCH",
        &format!("/v1/api-keys/{id2}"),
        Some(r#"{"rate_limits":[]}"#),
    );
    assert_eq!(
        (st, b),
        (
            403,
            err(
                "FORBIDDEN",
                "rate_limits: only the provider's admin sets this"
            )
        )
    );
    let own = rolled["data"]["id"].as_str().unwrap();
    let (st, b) = as_tenant(
        s,
        "org_a",
        "PATCH",
        &format!("/v1/api-keys/{own}"),
        Some(r#"{"name":"by tenant"}"#),
    );
    assert_eq!(st, 200, "{b}");
    let (_, log) = as_tenant(s, "org_a", "GET", "/v1/audit-log", None);
    let entries = log["data"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["tenant"] == "org_a"), "{log}");
    assert_eq!(entries[0]["action"], "key.updated");
    assert_eq!(
        entries[0]["actor"],
        json!({"type": "key", "id": "org_a_admin"})
    );
    assert_eq!(entries[0]["ip"], "198.51.100.7", "the address Envoy saw");
    // The provider's own entries about the tenant: no session id or address for the tenant.
    let provider: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"]["type"] == "admin")
        .collect();
    assert!(!provider.is_empty(), "{log}");
    for e in provider {
        assert_eq!(
            (e["actor"]["id"].clone(), e["ip"].clone()),
            (Value::Null, Value::Null)
        );
    }
    let (_, other) = as_tenant(s, "org_a", "GET", "/v1/audit-log?tenant=org_b", None);
    assert_eq!(other["data"], json!([]));
}

#[test]
fn patch_audit_and_pages_on_sqlite() {
    let dir = scratch("sqlite");
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let cfg = config(&dir);
    let s = with_gateway(&db, &cfg);
    exercise(&s);
}

#[test]
fn patch_audit_and_pages_on_postgres() {
    let pg = Postgres::start("admin");
    let db = pg.database("admin");
    let dir = scratch("pg");
    let cfg = config(&dir);
    let s = with_gateway(&db, &cfg);
    exercise(&s);
    // The audit log is append-only: no statement the service runs changes an entry.
    let n = pg.psql("admin", "SELECT count(*) FROM audit_log");
    assert!(n.trim().parse::<u64>().unwrap() >= 10, "{n}");
}

fn portal(s: &Service) {
    let (st, b) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_a","ttl_seconds":600,"return_url":"/keys?x=1"}"#),
    );
    assert_eq!(st, 201, "{b}");
    let d = &b["data"];
    assert_eq!(d["tenant"], "org_a");
    assert!(d["id"].as_str().unwrap().starts_with("ps_"));
    let url = d["url"].as_str().unwrap().to_string();
    // https: the service's cookies are Secure (no --insecure-cookies here).
    let prefix = format!("https://127.0.0.1:{}/portal/open?code=", s.port);
    assert!(url.starts_with(&prefix), "{url}");
    let code = url[prefix.len()..].to_string();
    assert_eq!(code.len(), 32);
    let expires = keygate::timestamp::parse_rfc3339(d["expires_at"].as_str().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((expires - now - 600).abs() <= 5);
    // Ten concurrent exchanges of one code: exactly one opens a session.
    let path = format!("/portal/open?code={code}");
    let answers: Vec<(u16, Vec<(String, String)>)> = (0..10)
        .map(|_| {
            let (base, path) = (s.url(), path.clone());
            std::thread::spawn(move || {
                let (st, h, _) = call_raw(&base, "GET", &path, None, &[]);
                (st, h)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let won: Vec<_> = answers.iter().filter(|(st, _)| *st != 401).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(st, _)| *st == 401).count(), 9);
    let header =
        |h: &Vec<(String, String)>, n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    // ureq follows the redirect: the winner reached the session's return_url (/keys here).
    assert_eq!(won[0].0, 200);
    // A used code: 401, a page saying so.
    let (st, h, body) = call_raw(&s.url(), "GET", &path, None, &[]);
    assert_eq!(st, 401);
    assert_eq!(
        header(&h, "content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(body.contains("used already or has expired"));
    // Bad requests.
    for (body, want) in [
        (
            r#"{"tenant":"org_a","ttl_seconds":3601}"#,
            "ttl_seconds: must be a whole number from 1 to 3600",
        ),
        (
            r#"{"tenant":"org_a","return_url":"https://evil.example/"}"#,
            "return_url: must be a path on this service (same origin), like /keys",
        ),
        (
            r#"{"tenant":"org_a","return_url":"//evil.example/"}"#,
            "return_url: must be a path on this service (same origin), like /keys",
        ),
        (r#"{"ttl_seconds":60}"#, "tenant: is required"),
        (r#"{"tenant":"org_a","colour":1}"#, "colour: unknown field"),
    ] {
        let (st, b) = s.admin("POST", "/v1/portal-sessions", Some(body));
        assert_eq!((st, b), (400, err("BAD_REQUEST", want)), "{body}");
    }
    assert_eq!(
        call(
            &s.url(),
            "POST",
            "/v1/portal-sessions",
            Some(r#"{"tenant":"org_a"}"#),
            None
        )
        .0,
        401
    );
    // A tenant admin key: its own tenant only (another tenant is not found).
    let (st, b) = as_tenant(
        s,
        "org_a",
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_b"}"#),
    );
    assert_eq!(
        (st, b),
        (
            404,
            json!({"success": false, "error": "Tenant not found", "code": "NOT_FOUND"})
        )
    );
    let (st, b) = as_tenant(
        s,
        "org_a",
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_a"}"#),
    );
    assert_eq!(st, 201, "{b}");
    // An expired code (1 s) is refused like a used one.
    let (_, b) = s.admin(
        "POST",
        "/v1/portal-sessions",
        Some(r#"{"tenant":"org_a","ttl_seconds":1}"#),
    );
    let url = b["data"]["url"].as_str().unwrap().to_string();
    let expired = &url[url.find("/portal").unwrap()..];
    let until =
        keygate::timestamp::parse_rfc3339(b["data"]["expires_at"].as_str().unwrap()).unwrap();
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    assert!(wait_until(5, || unix() > until), "the code's expiry passes");
    assert_eq!(call_raw(&s.url(), "GET", expired, None, &[]).0, 401);
    // In the audit log, created and opened; never a code or a session cookie.
    let (_, log) = s.admin("GET", "/v1/audit-log?tenant=org_a&limit=1000", None);
    let text = log.to_string();
    assert!(text.contains("portal_session.created") && text.contains("portal_session.opened"));
    let opened = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "portal_session.opened")
        .unwrap();
    assert_eq!(opened["actor"]["type"], "portal");
    assert_eq!(opened["actor"]["id"], d["id"], "{log}");
    assert!(!text.contains(&code));
}

#[test]
fn portal_sessions_open_once_on_sqlite() {
    let dir = scratch("portal");
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let cfg = config(&dir);
    let s = with_gateway(&db, &cfg);
    portal(&s);
    assert!(!std::fs::read(dir.join("keys.db"))
        .unwrap()
        .windows(10)
        .any(|w| w == b"/portal/op"));
}

#[test]
fn portal_sessions_open_once_on_postgres() {
    let pg = Postgres::start("portal");
    let db = pg.database("portal");
    let dir = scratch("portal-pg");
    let cfg = config(&dir);
    let s = with_gateway(&db, &cfg);
    portal(&s);
    // Codes and sessions are stored as digests only (64 hex characters).
    let stored = pg.psql(
        "portal",
        "SELECT code_sha256 || ' ' || coalesce(session_sha256, '') FROM portal_sessions",
    );
    for line in stored.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.split_whitespace().all(|w| w.len() == 64), "{line}");
    }
}
