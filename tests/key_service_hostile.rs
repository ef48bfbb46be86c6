//! `keygate serve` against hostile clients (bounded, loopback): memory amplification, counts
//! that overflow, idle and half-sent connections, shutdown, NUL in text on both databases,
//! concurrent rolls, reports for keys that do not exist; and classes that already held (auth
//! variants, SQL metacharacters, deep and huge bodies), so they stay held.
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("hostile-{name}"))
}

fn config(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("plugin.json");
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "hk_live_", "environment": "LIVE"}],
        "keys": [{"id": "inline_1", "sha256": sha("hk_live_inline")}]
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn sqlite(name: &str, args: &[&str]) -> (Service, PathBuf) {
    let dir = scratch(name);
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let cfg = config(&dir);
    let s = Service::start_args(
        ServiceOpts {
            database: &db,
            config: &cfg,
            gateway: false,
            sync_token: false,
            port: None,
        },
        args,
    );
    (s, dir)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Peak resident memory of a process (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn create(s: &Service, body: Value) -> (u16, Value) {
    s.admin("POST", "/v1/api-keys", Some(&body.to_string()))
}

fn report(s: &Service, body: &str) -> (u16, Value) {
    call(&s.url(), "POST", "/usage", Some(body), None)
}

/// Runs SQL on the service's SQLite database (as an operator's tool would).
fn sqlite_exec(dir: &std::path::Path, sql: &str) {
    let url = format!("sqlite:{}", dir.join("keys.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        });
}

#[test]
fn a_huge_report_is_refused_without_the_memory_it_describes() {
    let (s, _dir) = sqlite("amplify", &[]);
    let before = peak_rss_kb(s.pid());
    // 8 MB of `0,`: four million values where the report has key entries.
    let zeros = vec!["0"; 4_000_000].join(",");
    let t = Instant::now();
    let (st, body) = report(&s, &format!(r#"{{"report_id":"x","keys":[{zeros}]}}"#));
    assert_eq!(
        (st, body["error"].clone()),
        (400, json!("keys: at most 100000 keys per report"))
    );
    let (st, body) = report(&s, r#"{"report_id":"x","keys":[0]}"#);
    assert_eq!(
        (st, body["error"].clone()),
        (400, json!("keys[0]: expected an object, found a number"))
    );
    // The same inside an entry, and entries past the limit.
    let (st, body) = report(
        &s,
        &format!(r#"{{"report_id":"y","keys":[{{"id":"a","requests":[{zeros}]}}]}}"#),
    );
    assert_eq!(st, 400);
    assert_eq!(
        body["error"],
        "keys[0].requests: expected a whole number ≥ 0, found an array"
    );
    let entries = vec![r#"{"id":"a"}"#; 100_001].join(",");
    let (st, body) = report(&s, &format!(r#"{{"report_id":"z","keys":[{entries}]}}"#));
    assert_eq!(
        (st, body["error"].clone()),
        (400, json!("keys: at most 100000 keys per report"))
    );
    let grown = peak_rss_kb(s.pid()).saturating_sub(before);
    eprintln!(
        "peak RSS grew by {grown} kB over three hostile reports ({:?})",
        t.elapsed()
    );
    // Was ~390 MB resident (~1 GB peak) for the first alone: bounded by the body now.
    assert!(grown < 80_000, "peak RSS grew by {grown} kB");
}

#[test]
fn counts_saturate_and_an_overflowed_count_does_not_break_a_key() {
    let (s, dir) = sqlite("overflow", &[]);
    let (st, _) = create(&s, json!({"prefix": "hk_live_", "id": "big"}));
    assert_eq!(st, 201);
    let t = now() - 10;
    let one = |id: &str, n: u64| {
        format!(
            r#"{{"report_id":"{id}","keys":[{{"id":"big","requests":{n},"allowed":{n},"last_used":{t}}}]}}"#
        )
    };
    assert_eq!(report(&s, &one("r1", 1)).0, 200);
    // A count near the top (as many reports over years would make it), then more.
    sqlite_exec(
        &dir,
        "UPDATE usage_by_hour SET n = 9223372036854775000 WHERE key_id = 'big'",
    );
    assert_eq!(report(&s, &one("r2", 1 << 40)).0, 200);
    let (st, body) = s.admin("GET", "/v1/api-keys/big/usage", None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"]["total"]["requests"], json!(i64::MAX));
    assert_eq!(body["data"]["total"]["allowed"], json!(i64::MAX));
    // A count that overflowed into a float before (SQLite's own arithmetic) reads as the top.
    sqlite_exec(
        &dir,
        "UPDATE usage_by_hour SET n = 1.0e19 WHERE key_id = 'big'",
    );
    let (st, body) = s.admin("GET", "/v1/api-keys/big/usage", None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"]["total"]["requests"], json!(i64::MAX));
}

#[test]
fn totals_over_many_hours_saturate_instead_of_wrapping() {
    let (s, dir) = sqlite("wrap", &[]);
    assert_eq!(create(&s, json!({"prefix": "hk_live_", "id": "w"})).0, 201);
    let t = now() - 7200;
    for (i, when) in [t, t + 3600].iter().enumerate() {
        let r = format!(
            r#"{{"report_id":"w{i}","keys":[{{"id":"w","requests":1,"allowed":1,"last_used":{when}}}]}}"#
        );
        assert_eq!(report(&s, &r).0, 200);
    }
    sqlite_exec(
        &dir,
        "UPDATE usage_by_hour SET n = 9223372036854775000 WHERE key_id = 'w'",
    );
    let (st, body) = s.admin("GET", "/v1/api-keys/w/usage", None);
    assert_eq!(st, 200);
    assert_eq!(
        body["data"]["total"]["requests"],
        json!(i64::MAX),
        "not negative"
    );
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_limited() {
    // A header deadline long enough that the slots stay held while a loaded machine (make
    // test runs Envoys, databases and a browser beside this) accepts them late.
    let (s, _dir) = sqlite(
        "idle",
        &["--max-connections", "8", "--header-timeout-seconds", "6"],
    );
    // Eight connections that never send a byte hold every slot …
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", s.port)).unwrap())
        .collect();
    let held = Instant::now();
    // … and one more is closed at once (never queued behind them). A slot the service had not
    // yet filled when the next connection arrived (accepted late, or freed late by the start-up
    // health check) is taken by it: that one is kept with the idle ones and the next one tried.
    let mut refused_at_once = false;
    for _ in 0..6 {
        let mut extra = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let t = Instant::now();
        match extra.read(&mut [0u8; 16]) {
            // Closed long before any header deadline could free a slot.
            Ok(0) if t.elapsed() < Duration::from_millis(800) => {
                refused_at_once = true;
                break;
            }
            _ => idle.push(extra),
        }
    }
    assert!(
        refused_at_once,
        "a connection over the limit is closed at once"
    );
    assert!(
        held.elapsed() < Duration::from_secs(6),
        "the slots were held throughout"
    );
    // … and the idle ones are closed after the header deadline.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let t = Instant::now();
        assert_eq!(c.read(&mut [0u8; 16]).unwrap_or(0), 0);
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    // A half-sent request header too; then the service answers again.
    let mut half = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = half.read_to_end(&mut buf);
    assert!(wait_until(5, || call(
        &s.url(),
        "GET",
        "/healthz",
        None,
        None
    )
    .0 == 200));
    // HTTP/2 (the request log's gRPC): a client that sends only the start of the preface, or
    // the whole preface and its settings and then nothing, is closed by the same deadline; the
    // server's own SETTINGS and GOAWAY may come first.
    for opening in [
        &b"PR"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"[..],
    ] {
        let mut h2 = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        h2.write_all(opening).unwrap();
        h2.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let t = Instant::now();
        let mut sink = Vec::new();
        let _ = h2.read_to_end(&mut sink);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "an HTTP/2 connection without a request is closed ({} bytes sent)",
            opening.len()
        );
    }
    // A keep-alive connection left idle after an answer is closed too.
    let mut ka = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = vec![0u8; 4096];
    let n = ka.read(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert_eq!(ka.read(&mut got).unwrap_or(0), 0);
    // By the same header deadline (6 s) as a connection that never sent one.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "idle keep-alive closed"
    );
}

#[test]
fn sigterm_exits_within_the_grace_despite_a_half_sent_request() {
    let (mut s, _dir) = sqlite("sigterm", &["--shutdown-grace-seconds", "2"]);
    let mut half = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    half.write_all(b"POST /v1/api-keys HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    let took = s.terminate(Duration::from_secs(8));
    assert!(took.is_some(), "still running 8 s after SIGTERM");
    assert!(took.unwrap() < Duration::from_secs(5), "{took:?}");
}

fn nul_is_refused_the_same(s: &Service) {
    for (body, path) in [
        (json!({"prefix": "hk_live_", "name": "a\u{0}b"}), "name"),
        (
            json!({"prefix": "hk_live_", "tenant": "org\u{0}"}),
            "tenant",
        ),
        (json!({"prefix": "hk_live_\u{0}"}), "prefix"),
    ] {
        let (st, b) = create(s, body);
        assert_eq!(st, 400, "{path}: {b}");
        assert_eq!(b["code"], "BAD_REQUEST");
    }
    for path in [
        "/v1/api-keys/a%00b",
        "/v1/api-keys?tenant=x%00",
        "/v1/api-keys/a%00b/usage",
    ] {
        let (st, b) = s.admin("GET", path, None);
        assert_eq!(st, 400, "{path}: {b}");
    }
    let (st, b) = report(
        s,
        r#"{"report_id":"n","keys":[{"id":"a\u0000","requests":1,"allowed":1}]}"#,
    );
    assert_eq!(
        (st, b["error"].clone()),
        (400, json!("keys[0].id: is not a key id"))
    );
    // The service is unharmed.
    assert_eq!(create(s, json!({"prefix": "hk_live_"})).0, 201);
}

#[test]
fn nul_in_text_is_a_400_on_both_databases() {
    let (s, _dir) = sqlite("nul", &[]);
    nul_is_refused_the_same(&s);
    let pg = Postgres::start("hostile-nul");
    let db = pg.database("nul");
    let dir = scratch("nul-pg");
    let cfg = config(&dir);
    let s = Service::on(&db, &cfg);
    nul_is_refused_the_same(&s);
}

fn roll(s: &Service, id: &str, grace: u64) -> (u16, Value) {
    s.admin(
        "POST",
        &format!("/v1/api-keys/{id}/roll"),
        Some(&json!({"grace_seconds": grace}).to_string()),
    )
}

fn rolls_are_atomic(s: &Service, tag: &str) {
    // Ten concurrent rolls of one key: exactly one successor.
    let id = format!("r_{tag}");
    assert_eq!(create(s, json!({"prefix": "hk_live_", "id": id})).0, 201);
    let url = s.url();
    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            let (url, id) = (url.clone(), id.clone());
            thread::spawn(move || {
                call(
                    &url,
                    "POST",
                    &format!("/v1/api-keys/{id}/roll"),
                    Some("{}"),
                    Some(ADMIN_TOKEN),
                )
                .0
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    let (st, b) = roll(s, &id, 60);
    assert_eq!(
        (st, b["error"].clone()),
        (
            409,
            json!("The API key was rolled already; roll its successor instead")
        )
    );
    // grace 0 expires the old key at once: rolling it again is 409 expired.
    let id0 = format!("z_{tag}");
    assert_eq!(create(s, json!({"prefix": "hk_live_", "id": id0})).0, 201);
    assert_eq!(roll(s, &id0, 0).0, 201);
    let (st, b) = roll(s, &id0, 0);
    assert_eq!(st, 409);
    assert!(
        b["error"].as_str().unwrap().contains("expired")
            || b["error"].as_str().unwrap().contains("rolled"),
        "{b}"
    );
    // A roll racing a revoke: either the revoke came first (the roll is refused and there is
    // no successor) or the roll did (one successor, made while the key was not revoked).
    let keys = || {
        s.admin("GET", "/v1/api-keys", None).1["data"]
            .as_array()
            .unwrap()
            .len()
    };
    for i in 0..5 {
        let id = format!("v_{tag}_{i}");
        assert_eq!(create(s, json!({"prefix": "hk_live_", "id": id})).0, 201);
        let before = keys();
        let (u1, u2, i1, i2) = (url.clone(), url.clone(), id.clone(), id.clone());
        let r = thread::spawn(move || {
            call(
                &u1,
                "POST",
                &format!("/v1/api-keys/{i1}/roll"),
                Some("{}"),
                Some(ADMIN_TOKEN),
            )
        });
        let d = thread::spawn(move || {
            call(
                &u2,
                "DELETE",
                &format!("/v1/api-keys/{i2}"),
                None,
                Some(ADMIN_TOKEN),
            )
            .0
        });
        let (rolled, revoked) = (r.join().unwrap(), d.join().unwrap());
        assert_eq!(revoked, 200);
        match rolled.0 {
            201 => assert_eq!(keys(), before + 1, "one successor"),
            409 => {
                assert_eq!(
                    rolled.1["error"],
                    "The API key is revoked; create a new key instead"
                );
                assert_eq!(keys(), before, "a revoked key gains no successor");
            }
            other => panic!("roll answered {other}"),
        }
    }
}

#[test]
fn one_roll_wins_under_any_concurrency() {
    let (s, _dir) = sqlite("roll", &[]);
    rolls_are_atomic(&s, "sqlite");
    let pg = Postgres::start("hostile-roll");
    let db = pg.database("roll");
    let dir = scratch("roll-pg");
    let cfg = config(&dir);
    let a = Service::on(&db, &cfg);
    rolls_are_atomic(&a, "pg");
}

#[test]
fn reports_for_unknown_keys_are_dropped_not_stored() {
    let (s, _dir) = sqlite("unknown", &[]);
    let t = now() - 10;
    let r = format!(
        r#"{{"report_id":"u1","keys":[{{"id":"ghost","requests":5,"allowed":5,"last_used":{t}}},{{"id":"inline_1","requests":1,"allowed":1}}]}}"#
    );
    let (st, body) = report(&s, &r);
    assert_eq!(
        (st, body),
        (
            200,
            json!({"success": true, "report_id": "u1", "counted": true, "dropped": 2})
        )
    );
    // A key created later with that id starts with no usage.
    assert_eq!(
        create(&s, json!({"prefix": "hk_live_", "id": "ghost"})).0,
        201
    );
    let (_, body) = s.admin("GET", "/v1/api-keys/ghost/usage", None);
    assert_eq!(
        body["data"]["total"],
        json!({"requests": 0, "allowed": 0, "rejected": 0})
    );
}

#[test]
fn classes_that_hold_stay_held() {
    let (s, _dir) = sqlite("held", &[]);
    // Auth variants: none, wrong, empty, other schemes, the token in the query.
    for h in [
        vec![],
        vec![("authorization", "Bearer wrong".to_string())],
        vec![("authorization", "Bearer ".to_string())],
        vec![("authorization", format!("Basic {ADMIN_TOKEN}"))],
        vec![("authorization", ADMIN_TOKEN.to_string())],
        vec![("x-api-key", ADMIN_TOKEN.to_string())],
    ] {
        assert_eq!(
            call_raw(&s.url(), "GET", "/v1/api-keys", None, &h).0,
            401,
            "{h:?}"
        );
    }
    assert_eq!(
        call(
            &s.url(),
            "GET",
            &format!("/v1/api-keys?token={ADMIN_TOKEN}"),
            None,
            None
        )
        .0,
        401
    );
    // SQL metacharacters are data.
    for id in ["a'b", "x\"; DROP TABLE api_keys; --"] {
        let (st, _) = s.admin(
            "GET",
            &format!(
                "/v1/api-keys/{}",
                id.replace(' ', "%20")
                    .replace('"', "%22")
                    .replace(';', "%3B")
            ),
            None,
        );
        assert!(st == 404 || st == 400, "{id}: {st}");
    }
    let (st, b) = create(
        &s,
        json!({"prefix": "hk_live_", "name": "Robert'); DROP TABLE api_keys;--"}),
    );
    assert_eq!(st, 201, "{b}");
    assert_eq!(s.admin("GET", "/v1/api-keys", None).0, 200);
    // Deep and huge bodies: 400 and 413, and the service answers on.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    assert_eq!(s.admin("POST", "/v1/api-keys", Some(&deep)).0, 400);
    assert_eq!(report(&s, &deep).0, 400);
    let huge = format!(r#"{{"prefix":"hk_live_","name":"{}"}}"#, "a".repeat(70_000));
    assert_eq!(s.admin("POST", "/v1/api-keys", Some(&huge)).0, 413);
    assert_eq!(call(&s.url(), "GET", "/healthz", None, None).0, 200);
}
