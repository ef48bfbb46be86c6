//! The whole loop with real parts: `keygate serve` (SQLite), a real Envoy with two workers
//! syncing keys from it and reporting usage to it, the CLI, and a real upstream.
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const INTERVAL: u64 = 1;

fn scratch(name: &str) -> PathBuf {
    let d = repo()
        .join("target/itest")
        .join(format!("svc-envoy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn plugin_config(token: Option<&str>, timeout_ms: u64) -> Value {
    let mut c = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "mlm_live_", "environment": "LIVE", "role": "admin"},
            {"prefix": "mlm_sandbox_", "environment": "SANDBOX", "role": "reader"}
        ],
        "roles": {"admin": {"methods": ["*"]}, "reader": {"methods": ["GET", "HEAD"]}},
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": INTERVAL, "timeout_ms": timeout_ms},
        "usage_report": {"cluster": "keyservice", "path": "/usage", "interval_seconds": INTERVAL, "timeout_ms": timeout_ms},
        "public_paths": ["/healthz"]
    });
    if let Some(t) = token {
        c["key_sync"]["token"] = json!(t);
        c["usage_report"]["token"] = json!(t);
    }
    c
}

fn write(dir: &Path, c: &Value) -> PathBuf {
    let p = dir.join("plugin.json");
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("keys.db").display())
}

/// `keygate serve` on a SQLite file in `dir`, validating with `cfg`.
fn service(dir: &Path, cfg: &Value, gateway: bool, sync_token: bool) -> Service {
    Service::start(ServiceOpts {
        database: &sqlite(dir),
        config: &write(dir, cfg),
        gateway,
        sync_token,
        port: None,
    })
}

/// `keygate keys …` against `s`: (exit code, stdout).
fn cli(s: &Service, args: &[&str]) -> (i32, String) {
    let out = Command::new(common::keygate_bin())
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

/// Creates a key with the CLI: (id, key).
fn create(s: &Service, args: &[&str]) -> (String, String) {
    let mut all = vec!["create", "--json"];
    all.extend_from_slice(args);
    let (code, out) = cli(s, &all);
    assert_eq!(code, 0, "{out}");
    let d: Value = serde_json::from_str(out.trim()).unwrap();
    (
        d["id"].as_str().unwrap().into(),
        d["key"].as_str().unwrap().into(),
    )
}

fn usage_total(s: &Service, id: &str) -> Value {
    s.admin("GET", &format!("/v1/api-keys/{id}/usage"), None).1["data"]["total"].clone()
}

/// Polls until `cond` holds; the time it took (panics after `limit`).
fn time_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn status(e: &Envoy, method: &str, key: &str) -> u16 {
    send(e.port, method, "/v1/things", &[("x-api-key", key)]).status
}

#[test]
fn create_use_list_revoke_roll_and_exact_usage_over_both_workers() {
    let dir = scratch("loop");
    let cfg = plugin_config(Some(SYNC_TOKEN), 1000);
    let s = service(&dir, &cfg, false, true);
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("svc-loop", &cfg_text, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);

    // Created with the CLI: enforced within interval + 1 s.
    let (writer_id, writer) = create(
        &s,
        &[
            "--prefix",
            "mlm_live_",
            "--tenant",
            "org_1",
            "--name",
            "writer",
        ],
    );
    let (reader_id, reader) = create(&s, &["--prefix", "mlm_sandbox_", "--tenant", "org_1"]);
    let mut allowed_w = 0u64;
    let took = time_until(
        Duration::from_secs(INTERVAL + 1),
        "a created key admitted",
        || {
            let ok = status(&e, "GET", &writer) == 200;
            allowed_w += u64::from(ok);
            ok
        },
    );
    eprintln!("created → admitted: {took:?}");
    // keygate's key service answers the full set in its compact form (issue 20). Envoy writes
    // its log file in batches: the line may arrive after the key was admitted.
    assert!(
        wait_until(10, || e.log().contains("(compact answer read in")),
        "no compact answer published:\n{}",
        e.log()
    );
    let r = get(e.port, "/v1/things", &[("x-api-key", &writer)]);
    allowed_w += 1;
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some(writer_id.as_str())
    );
    assert_eq!(r.upstream_header("x-tenant-id").as_deref(), Some("org_1"));
    assert_eq!(r.header("x-environment"), Some("LIVE"));

    // Traffic on fresh connections, spread over both workers.
    let (mut allowed_r, mut forbidden_r) = (0u64, 0u64);
    for i in 0..60 {
        assert_eq!(status(&e, "POST", &writer), 200);
        allowed_w += 1;
        if i % 3 == 0 {
            let st = status(&e, if i % 2 == 0 { "GET" } else { "DELETE" }, &reader);
            match st {
                200 => allowed_r += 1,
                403 => forbidden_r += 1,
                other => panic!("reader got {other}"),
            }
        }
    }
    let workers = per_worker_connections(&e);
    assert!(
        workers.len() >= 2 && workers.iter().all(|n| *n > 0),
        "both workers served: {workers:?}"
    );
    assert!(allowed_r > 0 && forbidden_r > 0);

    // Usage exact once the reports are in (2 × interval + 1 s).
    let took = time_until(
        Duration::from_secs(2 * INTERVAL + 1),
        "usage reported",
        || usage_total(&s, &writer_id)["requests"] == json!(allowed_w),
    );
    eprintln!("requests → usage visible: {took:?}");
    assert_eq!(
        usage_total(&s, &writer_id),
        json!({"requests": allowed_w, "allowed": allowed_w, "rejected": 0})
    );
    time_until(Duration::from_secs(5), "reader usage", || {
        usage_total(&s, &reader_id)["requests"] == json!(allowed_r + forbidden_r)
    });
    let (_, u) = s.admin("GET", &format!("/v1/api-keys/{reader_id}/usage"), None);
    assert_eq!(
        u["data"]["hours"][0]["rejected"],
        json!({"forbidden": forbidden_r})
    );
    // Nothing more arrives later (no report counted twice).
    thread::sleep(Duration::from_secs(2 * INTERVAL + 1));
    assert_eq!(usage_total(&s, &writer_id)["requests"], json!(allowed_w));

    // The list shows the last use.
    let (code, out) = cli(&s, &["list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    let w = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == writer_id.as_str())
        .unwrap();
    assert!(w["last_used"].is_string(), "{w}");
    let (code, table) = cli(&s, &["list"]);
    assert_eq!(code, 0);
    assert!(
        table.starts_with("ID ") && table.contains(&writer_id),
        "{table}"
    );

    // Revoked with the CLI: 401 revoked on every worker within interval + 1 s.
    let (code, out) = cli(&s, &["revoke", &writer_id]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("{writer_id}: API key revoked successfully").as_str()
        )
    );
    let took = time_until(
        Duration::from_secs(INTERVAL + 1),
        "a revoked key refused",
        || status(&e, "GET", &writer) == 401,
    );
    eprintln!("revoked → refused: {took:?}");
    for _ in 0..10 {
        assert_json(
            &get(e.port, "/v1/things", &[("x-api-key", &writer)]),
            401,
            r#"{"error":"API key has been revoked","code":"UNAUTHORIZED"}"#,
        );
    }

    // Rolled: the new key works within interval + 1 s; the old one during its grace period.
    let (code, out) = cli(
        &s,
        &["roll", &reader_id, "--grace-seconds", "600", "--json"],
    );
    assert_eq!(code, 0);
    let rolled: Value = serde_json::from_str(out.trim()).unwrap();
    let new_key = rolled["key"].as_str().unwrap().to_string();
    time_until(
        Duration::from_secs(INTERVAL + 1),
        "a rolled key admitted",
        || status(&e, "GET", &new_key) == 200,
    );
    assert_eq!(
        status(&e, "GET", &reader),
        200,
        "the old key works during its grace period"
    );
    assert_eq!(
        status(&e, "DELETE", &new_key),
        403,
        "the new key has the old one's role"
    );

    // No plaintext key in Envoy's logs, the service's log or the database.
    for k in [&writer, &reader, &new_key] {
        assert!(!e.log().contains(k.as_str()));
        assert!(!s.log().contains(k.as_str()));
        for f in ["keys.db", "keys.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.join(f)) {
                assert!(!bytes.windows(k.len()).any(|w| w == k.as_bytes()), "{f}");
            }
        }
    }
}

#[test]
fn the_service_killed_and_restarted_during_traffic_loses_and_doubles_nothing() {
    let dir = scratch("restart");
    let cfg = plugin_config(None, 1000);
    let mut s = service(&dir, &cfg, false, false);
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("svc-restart", &cfg_text, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);
    let (id, key) = create(&s, &["--prefix", "mlm_live_"]);
    time_until(Duration::from_secs(10), "admitted", || {
        status(&e, "GET", &key) == 200
    });
    let mut sent = 1u64;

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let orders = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, count, orders, key, port) = (
            stop.clone(),
            count.clone(),
            orders.clone(),
            key.clone(),
            e.port,
        );
        thread::spawn(move || {
            // Bounded: at most 3,000 requests, every third on the route named "orders".
            for i in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let path = if i % 3 == 0 { "/orders/1" } else { "/v1/x" };
                let st = send(port, "GET", path, &[("x-api-key", &key)]).status;
                assert_eq!(
                    st, 200,
                    "the last good key set keeps working while the service is down"
                );
                if i % 3 == 0 {
                    orders.fetch_add(1, Ordering::Relaxed);
                }
                count.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    time_until(Duration::from_secs(20), "traffic", || {
        count.load(Ordering::Relaxed) > 100
    });
    s.kill();
    let failures_before = e.counter("wasmcustom.keygate.usage_report_failures");
    time_until(Duration::from_secs(20), "reports failing", || {
        e.counter("wasmcustom.keygate.usage_report_failures") >= failures_before + 2
    });
    s.restart();
    time_until(Duration::from_secs(20), "more traffic", || {
        count.load(Ordering::Relaxed) > 400
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    sent += count.load(Ordering::Relaxed) as u64;
    let on_orders = orders.load(Ordering::Relaxed) as u64;
    time_until(
        Duration::from_secs(2 * INTERVAL + 1 + 5),
        "every request counted",
        || usage_total(&s, &id)["requests"] == json!(sent),
    );
    thread::sleep(Duration::from_secs(2 * INTERVAL + 1));
    assert_eq!(
        usage_total(&s, &id),
        json!({"requests": sent, "allowed": sent, "rejected": 0})
    );
    // By route, over time: exact per route, the series adding up to the same total.
    for granularity in ["hour", "day"] {
        let (code, body) = s.admin(
            "GET",
            &format!("/v1/usage?key={id}&granularity={granularity}"),
            None,
        );
        assert_eq!(code, 200, "{body}");
        let d = &body["data"];
        assert_eq!(
            d["by_route"],
            json!([
                {"route": "-", "requests": sent - on_orders, "allowed": sent - on_orders, "rejected": 0},
                {"route": "orders", "requests": on_orders, "allowed": on_orders, "rejected": 0}
            ])
        );
        assert_eq!(
            d["total"],
            json!({"requests": sent, "allowed": sent, "rejected": 0})
        );
        assert_eq!(
            d["by_key"],
            json!([{"id": id, "requests": sent, "allowed": sent, "rejected": 0}])
        );
        let series: u64 = d["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(series, sent);
    }
    eprintln!("{sent} requests across a service restart, counted exactly");
}

/// Between Envoy and the service: holds back the answers to the first `delay` usage reports
/// past Envoy's timeout (the service has counted them; Envoy sees a timeout and resends).
struct SlowProxy {
    port: u16,
    duplicates_acknowledged: Arc<AtomicUsize>,
}

fn read_http(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl SlowProxy {
    fn start(target: u16, delay: usize, hold: Duration) -> SlowProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let left = Arc::new(Mutex::new(delay));
        let dups = Arc::new(AtomicUsize::new(0));
        let d2 = dups.clone();
        thread::spawn(move || {
            for client in l.incoming().flatten() {
                let (left, dups) = (left.clone(), d2.clone());
                thread::spawn(move || {
                    let mut client = client;
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                        return;
                    };
                    while let Some(req) = read_http(&mut client) {
                        let is_usage = req.starts_with(b"POST /usage");
                        if server.write_all(&req).is_err() {
                            return;
                        }
                        let Some(resp) = read_http(&mut server) else {
                            return;
                        };
                        if is_usage && String::from_utf8_lossy(&resp).contains("\"counted\":false")
                        {
                            dups.fetch_add(1, Ordering::Relaxed);
                        }
                        let hold_it = is_usage && {
                            let mut l = left.lock().unwrap();
                            let h = *l > 0;
                            *l = l.saturating_sub(1);
                            h
                        };
                        if hold_it {
                            thread::sleep(hold);
                        }
                        if client.write_all(&resp).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowProxy {
            port,
            duplicates_acknowledged: dups,
        }
    }
}

#[test]
fn a_report_that_arrived_but_timed_out_is_resent_and_not_counted_twice() {
    let dir = scratch("timeout");
    let cfg = plugin_config(None, 400);
    let s = service(&dir, &cfg, false, false);
    let proxy = SlowProxy::start(s.port, 3, Duration::from_millis(1200));
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("svc-timeout", &cfg_text, up.port);
    o.key_service = Some(proxy.port);
    let e = Envoy::start(&o);
    let (id, key) = create(&s, &["--prefix", "mlm_live_"]);
    let mut sent = 0u64;
    time_until(Duration::from_secs(10), "admitted", || {
        let ok = status(&e, "GET", &key) == 200;
        sent += u64::from(ok);
        ok
    });
    for _ in 0..30 {
        assert_eq!(status(&e, "GET", &key), 200);
        sent += 1;
    }
    time_until(Duration::from_secs(20), "usage after retries", || {
        usage_total(&s, &id)["requests"] == json!(sent)
    });
    thread::sleep(Duration::from_secs(2 * INTERVAL + 1));
    assert_eq!(usage_total(&s, &id)["requests"], json!(sent));
    assert!(
        e.counter("wasmcustom.keygate.usage_report_failures") >= 1,
        "Envoy timed out on a report"
    );
    assert!(
        proxy.duplicates_acknowledged.load(Ordering::Relaxed) >= 1,
        "a resent report reached the service and was acknowledged without counting"
    );
}

#[test]
fn a_tenant_admin_key_behind_keygate_manages_its_own_tenant_only() {
    let dir = scratch("tenant");
    let cfg = plugin_config(None, 1000);
    let s = service(&dir, &cfg, true, false);
    let cfg_text = cfg.to_string();
    // Envoy's upstream is the service's gateway listener; keys sync from its main listener.
    let mut o = EnvoyOpts::new("svc-tenant", &cfg_text, s.gateway_port.unwrap());
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);
    let (_, a_admin) = create(&s, &["--prefix", "mlm_live_", "--tenant", "org_a"]);
    let (_, a_reader) = create(&s, &["--prefix", "mlm_sandbox_", "--tenant", "org_a"]);
    let (b_id, _) = create(&s, &["--prefix", "mlm_live_", "--tenant", "org_b"]);
    time_until(Duration::from_secs(10), "synced", || {
        send(e.port, "GET", "/v1/api-keys", &[("x-api-key", &a_admin)]).status == 200
    });
    let as_a = |method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("x-api-key", a_admin.as_str())];
        h.extend_from_slice(extra);
        send(e.port, method, path, &h)
    };
    // Listing: only org_a's keys, whatever tenant the client claims.
    for extra in [&[][..], &[("x-tenant-id", "org_b")][..]] {
        let r = as_a("GET", "/v1/api-keys", extra);
        assert_eq!(r.status, 200);
        let list = r.json()["data"].as_array().unwrap().clone();
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list.iter().all(|k| k["tenant"] == "org_a"));
    }
    let r = as_a("GET", "/v1/api-keys?tenant=org_b", &[]);
    assert_eq!(r.json()["data"], json!([]));
    // Another tenant's key does not exist for org_a.
    for (m, p) in [
        ("GET", format!("/v1/api-keys/{b_id}")),
        ("DELETE", format!("/v1/api-keys/{b_id}")),
        ("GET", format!("/v1/api-keys/{b_id}/usage")),
    ] {
        assert_json(
            &as_a(m, &p, &[]),
            404,
            r#"{"success":false,"error":"API key not found","code":"NOT_FOUND"}"#,
        );
    }
    assert_eq!(
        s.admin("GET", &format!("/v1/api-keys/{b_id}"), None).1["data"]["revoked"],
        false
    );
    // Creating: always in org_a. (The body goes through Envoy: send it raw.)
    let created = post_json(
        e.port,
        "/v1/api-keys",
        &a_admin,
        r#"{"prefix":"mlm_sandbox_"}"#,
    );
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["data"]["tenant"], "org_a");
    let other = post_json(
        e.port,
        "/v1/api-keys",
        &a_admin,
        r#"{"prefix":"mlm_sandbox_","tenant":"org_b"}"#,
    );
    assert_eq!(
        (other.0, other.1["code"].clone()),
        (403, json!("FORBIDDEN"))
    );
    // A key without the admin role: the service refuses.
    let r = send(e.port, "GET", "/v1/api-keys", &[("x-api-key", &a_reader)]);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("FORBIDDEN"))
    );
    // keygate's identity headers are trusted on the gateway listener only.
    let (st, _, _) = call_raw(
        &s.url(),
        "GET",
        "/v1/api-keys",
        None,
        &[
            ("x-tenant-id", "org_a".into()),
            ("x-api-key-role", "admin".into()),
        ],
    );
    assert_eq!(st, 401);
    // The admin token works everywhere.
    assert_eq!(
        call(&s.url(), "GET", "/v1/api-keys", None, Some(ADMIN_TOKEN)).1["data"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

/// A POST with a JSON body through Envoy: (status, JSON).
fn post_json(port: u16, path: &str, key: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let raw = read_http(&mut s).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn usage_stays_exact_across_configuration_swaps() {
    let dir = scratch("swap");
    let cfg = plugin_config(None, 1000);
    let s = service(&dir, &cfg, false, false);
    let up = Upstream::start("api");
    let first = cfg.to_string();
    let mut o = EnvoyOpts::new("svc-swap", &first, up.port);
    o.key_service = Some(s.port);
    let mut e = Envoy::start_dynamic(&o);
    let (id, key) = create(&s, &["--prefix", "mlm_live_"]);
    let mut sent = 0u64;
    time_until(Duration::from_secs(10), "admitted", || {
        let ok = status(&e, "GET", &key) == 200;
        sent += u64::from(ok);
        ok
    });
    // Each swap replaces the filter's root contexts; their unreported counts must not be lost.
    for round in 0..3u64 {
        for _ in 0..25 {
            assert_eq!(status(&e, "GET", &key), 200);
            sent += 1;
        }
        let mut next = cfg.clone();
        next["public_paths"] = json!([format!("/healthz{round}")]);
        let text = next.to_string();
        let mut o2 = EnvoyOpts::new("svc-swap", &text, up.port);
        o2.key_service = Some(s.port);
        assert!(e.update_plugin_config(&o2), "swap {round} accepted");
        // Right after the swap, requests go to the new configuration (once it has the set).
        time_until(Duration::from_secs(10), "admitted after the swap", || {
            let ok = status(&e, "GET", &key) == 200;
            sent += u64::from(ok);
            ok
        });
    }
    time_until(
        Duration::from_secs(2 * INTERVAL + 1 + 10),
        "every request counted",
        || usage_total(&s, &id)["requests"] == json!(sent),
    );
    thread::sleep(Duration::from_secs(2 * INTERVAL + 1));
    assert_eq!(
        usage_total(&s, &id)["requests"],
        json!(sent),
        "{sent} requests over 3 swaps"
    );
}

#[test]
fn an_edited_role_is_enforced_by_envoy_within_the_interval() {
    let dir = scratch("edit");
    let cfg = plugin_config(None, 1000);
    let s = service(&dir, &cfg, false, false);
    let up = Upstream::start("api");
    let cfg_text = cfg.to_string();
    let mut o = EnvoyOpts::new("svc-edit", &cfg_text, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);
    let (id, key) = create(&s, &["--prefix", "mlm_live_", "--tenant", "org_e"]);
    time_until(
        Duration::from_secs(INTERVAL + 1),
        "a created key admitted",
        || status(&e, "POST", &key) == 200,
    );
    // Edited with the CLI to the reader role: a POST is refused within interval + 1 s.
    let (code, out) = cli(
        &s,
        &["update", &id, "--role", "reader", "--name", "read only"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("updated"), "{out}");
    let took = time_until(
        Duration::from_secs(INTERVAL + 1),
        "an edited role enforced",
        || status(&e, "POST", &key) == 403,
    );
    eprintln!("edited → enforced on every worker: {took:?}");
    for _ in 0..10 {
        assert_eq!(status(&e, "POST", &key), 403);
        assert_eq!(status(&e, "GET", &key), 200);
    }
    // The audit log, from the CLI.
    let (code, out) = cli(&s, &["audit", "--key", &id]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{out}");
    assert!(
        lines[1].contains("key.updated") && lines[2].contains("key.created"),
        "{out}"
    );
    assert!(
        lines[1].contains("org_e") && lines[1].contains("127.0.0.1"),
        "{out}"
    );
    let (_, json_out) = cli(&s, &["audit", "--key", &id, "--json"]);
    let entries: Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!(entries[0]["actor"], json!({"type": "admin", "id": null}));

    // One flag language: update takes create's spellings (a list flag repeated replaces the
    // key's list); the old ones still work, with a note.
    let (code, out) = cli(
        &s,
        &[
            "update",
            &id,
            "--rate-limit",
            "3/minute",
            "--allowed-ip",
            "10.0.0.0/8",
            "--allowed-ip",
            "192.0.2.1",
            "--allowed-path",
            "/v1/*",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let k = s.admin("GET", &format!("/v1/api-keys/{id}"), None).1;
    let (_, feed) = call(&s.url(), "GET", "/keys", None, None);
    let entry = feed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(id))
        .cloned()
        .unwrap();
    assert_eq!(
        entry["rate_limits"],
        json!([{"requests": 3, "per": "minute"}]),
        "{k}"
    );
    assert_eq!(entry["allowed_ips"], json!(["10.0.0.0/8", "192.0.2.1"]));
    assert_eq!(entry["allowed_paths"], json!(["/v1/*"]));
    let out = std::process::Command::new(common::keygate_bin())
        .args([
            "keys",
            "update",
            &id,
            "--allowed-ips",
            "10.1.0.0/16,192.0.2.2",
        ])
        .env("KEYGATE_SERVER", s.url())
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allowed-ips is deprecated"));
    // Exit codes: 2 for what the command line or environment gets wrong, 1 for what the
    // service refuses.
    let code_of = |args: &[&str], token: bool| {
        let mut c = std::process::Command::new(common::keygate_bin());
        c.arg("keys").args(args).env("KEYGATE_SERVER", s.url());
        if token {
            c.env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN);
        } else {
            c.env_remove("KEYGATE_ADMIN_TOKEN");
        }
        c.output().unwrap().status.code()
    };
    assert_eq!(code_of(&["list"], false), Some(2), "no admin token");
    assert_eq!(
        code_of(&["update", &id, "--rate-limit", "3"], true),
        Some(2)
    );
    assert_eq!(
        code_of(&["update", &id, "--clear", "colour"], true),
        Some(2)
    );
    assert_eq!(
        code_of(&["update", &id], true),
        Some(2),
        "nothing to change"
    );
    assert_eq!(
        code_of(&["update", &id, "--frobnicate"], true),
        Some(2),
        "clap's own"
    );
    assert_eq!(code_of(&["revoke", "no_such_key"], true), Some(1), "404");
    assert_eq!(
        code_of(&["update", &id, "--role", "no_such_role"], true),
        Some(1),
        "400"
    );
}

#[test]
fn usage_stays_exact_across_a_swap_while_the_service_is_down() {
    let dir = scratch("swap-down");
    let cfg = plugin_config(None, 1000);
    let mut s = service(&dir, &cfg, false, false);
    let up = Upstream::start("api");
    let first = cfg.to_string();
    let mut o = EnvoyOpts::new("svc-swap-down", &first, up.port);
    o.key_service = Some(s.port);
    let mut e = Envoy::start_dynamic(&o);
    let (id, key) = create(&s, &["--prefix", "mlm_live_"]);
    let mut sent = 0u64;
    time_until(Duration::from_secs(10), "admitted", || {
        let ok = status(&e, "GET", &key) == 200;
        sent += u64::from(ok);
        ok
    });
    // The service goes away; Envoy keeps its key set and counts on.
    s.kill();
    for _ in 0..30 {
        assert_eq!(status(&e, "GET", &key), 200);
        sent += 1;
    }
    // A swap removes the root contexts that hold those counts while nobody can take them.
    let mut next = cfg.clone();
    next["public_paths"] = json!(["/healthz-2"]);
    let text = next.to_string();
    let mut o2 = EnvoyOpts::new("svc-swap-down", &text, up.port);
    o2.key_service = Some(s.port);
    assert!(e.update_plugin_config(&o2), "swap accepted");
    for _ in 0..20 {
        if status(&e, "GET", &key) == 200 {
            sent += 1;
        }
    }
    assert!(
        wait_until(10, || e
            .counter("wasmcustom.keygate.usage_reports_handed_over")
            > 0),
        "the removed VMs handed their reports over"
    );
    s.restart();
    time_until(
        Duration::from_secs(2 * INTERVAL + 1 + 15),
        "every request counted",
        || usage_total(&s, &id)["requests"] == json!(sent),
    );
    assert!(e.counter("wasmcustom.keygate.usage_reports_adopted") > 0);
    thread::sleep(Duration::from_secs(2 * INTERVAL + 1));
    assert_eq!(
        usage_total(&s, &id)["requests"],
        json!(sent),
        "{sent} requests, a swap while the service was down"
    );
}

/// docs/key-service.md's "The lifecycle, from the CLI", run as written: the service started
/// from nothing, a key created, listed, updated, rolled, revoked, and the audit log.
#[test]
fn the_cli_lifecycle_in_the_docs_runs_as_written() {
    let dir = scratch("cli-lifecycle");
    let run = common::run_doc_block(
        "docs/key-service.md",
        "## The lifecycle, from the CLI",
        &[(18090, None)],
        &dir,
    );
    let log = std::fs::read_to_string(dir.join("keygate-serve.log")).unwrap_or_default();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "{:?}: {}\n{}\n{log}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(run.cleaned_up, "the service still runs");
    let out = &run.stdout;
    assert!(
        out.lines().any(|l| l.starts_with("acme_prod ")
            && l.contains("Production")
            && l.contains("org_42")
            && l.ends_with("active")),
        "{out}"
    );
    assert!(
        out.contains("acme_prod: API key revoked successfully"),
        "{out}"
    );
    let audit: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("TIME")).collect();
    for (line, action) in
        audit[1..]
            .iter()
            .zip(["key.revoked", "key.rolled", "key.updated", "key.created"])
    {
        assert!(line.contains(action), "{out}");
    }
    assert!(
        run.stderr.contains("this key is shown once"),
        "{}",
        run.stderr
    );
}
