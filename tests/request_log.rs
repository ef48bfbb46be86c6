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
        gateway: true,
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
/// arrived. The probes are logged too (user agent `probe`). Answers how many were let through.
fn wait_for_key(e: &Envoy, key: &str) -> u64 {
    let mut allowed = 0;
    let ok = wait_until(15, || {
        (0..4).all(|_| {
            let h = [("x-api-key", key), ("user-agent", "probe")];
            let ok = send(e.port, "GET", "/probe", &h).status == 200;
            allowed += u64::from(ok);
            ok
        })
    });
    assert!(ok, "the key never reached Envoy");
    allowed
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

/// A request: method, path, headers, the status it gets.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);

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
    let cases: Vec<Case> = vec![
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
        // A client's own x-envoy-original-path is not the path logged.
        (
            "GET",
            "/v1/real",
            vec![("x-api-key", &reader), ("x-envoy-original-path", "/forged")],
            200,
        ),
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
    // A client's control character (a tab, which Envoy passes in a header value) is cleaned,
    // and neither that record nor the others of its export are lost.
    let tabbed = format!("{tag}-tab\tafter");
    let r = send(
        e.port,
        "GET",
        "/v1/tab",
        &[("x-api-key", &reader), ("user-agent", &tabbed)],
    );
    assert_eq!(r.status, 200);
    let (took, records) = wait_for_records(&s, &tag, cases.len() + 1, Duration::from_secs(2));
    assert_eq!(
        records.len(),
        cases.len() + 1,
        "records within 2 s ({took:?}): {records:#?}\n{}",
        s.log()
    );
    assert!(
        records
            .iter()
            .any(|r| r["user_agent"] == json!(format!("{tag}-tab\u{fffd}after"))),
        "{records:#?}"
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
        json!({"key_id": reader_id, "tenant": null, "environment": "SANDBOX", "decision": "allowed", "method": "GET", "path": "/v1/real", "route": null, "status": 200}),
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
    let mut decisions: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    // Newest first; two requests may start in the same millisecond (then either order).
    decisions.sort_unstable();
    assert_eq!(decisions, ["allowed", "rate_limited"]);
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
    assert_eq!(only("client_ip=127.0.0.1").len(), cases.len() + 1);
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

    // The CLI: the key's requests since an hour ago, and its addresses.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(keygate_bin())
            .args(["keys", "requests"])
            .args(args)
            .env("KEYGATE_SERVER", s.url())
            .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = cli(&[&limited_id, "--since", "1h"]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("DECISION"),
        "{out}"
    );
    // Newest first; the two requests may start in the same millisecond (then either order).
    let mut rows = [lines[1], lines[2]];
    rows.sort_by_key(|l| !l.contains(" 429 "));
    assert!(
        rows[0].contains(" 429 ") && rows[0].contains("rate_limited"),
        "{out}"
    );
    assert!(
        rows[1].contains(" 200 ") && rows[1].contains("allowed"),
        "{out}"
    );
    assert!(
        out.contains("CLIENT IP") && out.contains("127.0.0.1"),
        "{out}"
    );
    let (code, out) = cli(&[&limited_id, "--json", "--decision", "allowed"]);
    assert_eq!(code, Some(0), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["client_ips"][0]["requests"], json!(2));
    // A bad flag value is a usage error (2), as clap's own are.
    let (code, _) = cli(&[&limited_id, "--since", "1 week"]);
    assert_eq!(code, Some(2));

    // A customer (a tenant admin key, through the gateway listener) sees its tenant only.
    let (st, v) = as_tenant(&s, "org_b", "GET", "/v1/requests?limit=1000", None);
    assert_eq!(st, 200, "{v}");
    let mine = v["data"].as_array().unwrap();
    assert_eq!(mine.len(), 2, "{v:#}");
    assert!(mine.iter().all(|r| r["tenant"] == json!("org_b")));
    let (st, v) = as_tenant(&s, "org_b", "GET", "/v1/requests?tenant=org_a", None);
    assert_eq!((st, v["data"].as_array().map(Vec::len)), (200, Some(0)));
    let (st, v) = as_tenant(
        &s,
        "org_b",
        "GET",
        &format!("/v1/api-keys/{live_id}/requests"),
        None,
    );
    assert_eq!((st, v["code"].as_str()), (404, Some("NOT_FOUND")));
    let (st, v) = as_tenant(
        &s,
        "org_b",
        "GET",
        &format!("/v1/api-keys/{limited_id}/requests"),
        None,
    );
    assert_eq!((st, v["data"].as_array().map(Vec::len)), (200, Some(2)));
    // Bad filters: 400 with the parameter named.
    let (st, v) = s.admin("GET", "/v1/requests?status=abc", None);
    assert_eq!(
        (st, v),
        (
            400,
            json!({"success": false, "error": "status: \"abc\" is not an HTTP status", "code": "BAD_REQUEST"})
        )
    );
    let (st, _) = call(&s.url(), "GET", "/v1/requests", None, None);
    assert_eq!(st, 401);

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

/// All of Envoy's stats whose name holds `part`, as text (for messages).
fn stats_with(e: &Envoy, part: &str) -> String {
    let body = admin_get(e.admin, "/stats")
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.contains(part))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One of the request logger's counters in Envoy
/// (`access_logs.open_telemetry_access_log.<stat_prefix>.<name>`).
fn logger_stat(e: &Envoy, name: &str) -> u64 {
    e.counter(&format!(
        "access_logs.open_telemetry_access_log.keygate_request_log.{name}"
    ))
}

#[test]
fn the_service_away_for_ten_seconds_loses_records_counted_by_envoy_and_slows_nothing() {
    let dir = scratch("outage");
    let db = dir.join("keys.db");
    let mut s = service(&dir, &format!("sqlite:{}", db.display()));
    let up = Upstream::start("reqlog-outage");
    let cfg = plugin_config().to_string();
    let (id, key) = create(&s, json!({"prefix": "mlm_live_"}));
    let e = envoy("reqlog-outage-envoy", &s, up.port, &cfg);
    // The key's usage so far: the probes let through.
    let probes = wait_for_key(&e, &key);
    let usage = |s: &Service| {
        s.admin("GET", &format!("/v1/api-keys/{id}/usage"), None).1["data"]["total"]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(wait_until(10, || usage(&s) == probes));
    let dropped_before = logger_stat(&e, "logs_dropped");

    s.kill();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(10) {
        let t = Instant::now();
        let r = send(
            e.port,
            "GET",
            "/v1/outage",
            &[("x-api-key", &key), ("user-agent", "outage")],
        );
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.status, 200, "{r:?}");
        sent += 1;
        thread::sleep(Duration::from_millis(20));
    }
    // Nothing waited for the logger: no request took a flush interval, let alone a timeout.
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    let dropped = logger_stat(&e, "logs_dropped") - dropped_before;
    s.restart();
    // After: every request is logged again.
    for _ in 0..5 {
        assert_eq!(
            send(
                e.port,
                "GET",
                "/v1/after",
                &[("x-api-key", &key), ("user-agent", "after")]
            )
            .status,
            200
        );
    }
    let (_, after) = wait_for_records(&s, "after", 5, Duration::from_secs(10));
    assert_eq!(after.len(), 5, "{}", stats_with(&e, "keygate_request_log"));
    let outage: Vec<Value> = all_records(&s, "")
        .into_iter()
        .filter(|r| r["user_agent"] == json!("outage"))
        .collect();
    let stored = outage.len() as u64;
    let mut times: Vec<&str> = outage.iter().map(|r| r["time"].as_str().unwrap()).collect();
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), outage.len(), "a record stored twice");
    // Records were lost, and every one not stored is counted by Envoy (the last half second's,
    // still in Envoy's buffer when the service came back, arrive late; Envoy may count some of
    // those as dropped too, and the probes' records still buffered when the service went away:
    // its count is an upper bound, seen at sent + 14 on a loaded machine).
    println!("sent {sent}, stored {stored}, dropped {dropped}, slowest {slowest:?}");
    assert!(
        stored < sent && dropped > 0,
        "{}",
        stats_with(&e, "keygate_request_log")
    );
    assert!(
        stored + dropped >= sent,
        "{}",
        stats_with(&e, "keygate_request_log")
    );
    // Usage stays exact: every request of the outage is counted (reports are retried).
    let total = probes + sent + 5;
    assert!(
        wait_until(15, || usage(&s) == total),
        "usage {} != {total}",
        usage(&s)
    );
    // The service closes Envoy's HTTP/2 connection once it has been idle for the header
    // deadline (10 s); Envoy opens another for the next record, which arrives.
    // (Its GOAWAY counted by Envoy as a close notification; no connection left open.)
    let active = "cluster.keygate_request_log.upstream_cx_active";
    let notified = "cluster.keygate_request_log.upstream_cx_close_notify";
    assert!(
        wait_until(20, || e.counter(active) == 0 && e.counter(notified) > 0),
        "{}",
        stats_with(&e, "keygate_request_log.upstream_cx")
    );
    let h = [("x-api-key", key.as_str()), ("user-agent", "again")];
    assert_eq!(send(e.port, "GET", "/v1/again", &h).status, 200);
    let (_, again) = wait_for_records(&s, "again", 1, Duration::from_secs(5));
    assert_eq!(again.len(), 1, "{}", stats_with(&e, "keygate_request_log"));
}

/// Calls to `LogsService/Export` on one HTTP/2 connection, as Envoy makes them.
mod otlp_client {
    use keygate_key_service::otlp::ExportLogsServiceResponse;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::Channel;

    pub struct Client {
        pub runtime: tokio::runtime::Runtime,
        channel: Channel,
    }

    impl Client {
        pub fn connect(port: u16) -> Client {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let channel = runtime.block_on(async {
                Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap()
            });
            Client { runtime, channel }
        }

        pub fn export<M: prost::Message + Send + Sync + 'static>(
            &self,
            message: M,
            token: Option<&str>,
        ) -> Result<ExportLogsServiceResponse, tonic::Status> {
            self.export_with(message, token, false)
        }

        /// [`Client::export`], gzip-compressed when `gzip` (as a collector sends).
        pub fn export_with<M: prost::Message + Send + Sync + 'static>(
            &self,
            message: M,
            token: Option<&str>,
            gzip: bool,
        ) -> Result<ExportLogsServiceResponse, tonic::Status> {
            let channel = self.channel.clone();
            let token = token.map(|t| format!("Bearer {t}"));
            self.runtime.block_on(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                if gzip {
                    grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                grpc.ready().await.unwrap();
                let mut request = tonic::Request::new(message);
                if let Some(t) = token {
                    request
                        .metadata_mut()
                        .insert("authorization", t.parse().unwrap());
                }
                grpc.unary(
                    request,
                    PathAndQuery::from_static(
                        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                    ),
                    tonic_prost::ProstCodec::<M, ExportLogsServiceResponse>::default(),
                )
                .await
                .map(|r| r.into_inner())
            })
        }
    }
}

/// Not an OTLP export: field 1 as a number where a message belongs.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAnExport {
    #[prost(uint64, tag = "1")]
    resource_logs: u64,
}

fn export_of(
    records: Vec<Vec<(&str, &str)>>,
) -> keygate_key_service::otlp::ExportLogsServiceRequest {
    use keygate_key_service::otlp::*;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records
                    .into_iter()
                    .map(|attrs| LogRecord {
                        time_unix_nano: now,
                        observed_time_unix_nano: 0,
                        attributes: attrs
                            .into_iter()
                            .map(|(k, v)| KeyValue {
                                key: k.as_bytes().to_vec(),
                                value: Some(AnyValue {
                                    value: Some(Value::String(v.as_bytes().to_vec())),
                                }),
                            })
                            .collect(),
                    })
                    .collect(),
            }],
        }],
    }
}

#[test]
fn exports_need_the_sync_token_and_bad_ones_are_refused_whole_on_a_connection_that_stays_up() {
    let dir = scratch("grpc");
    let s = service(&dir, &format!("sqlite:{}", dir.join("keys.db").display()));
    let client = otlp_client::Client::connect(s.port);
    let good = |ua: &'static str| {
        vec![
            ("decision", "allowed"),
            ("method", "GET"),
            ("path", "/v1/x"),
            ("status", "200"),
            ("key_id", "k1"),
            ("user_agent", ua),
        ]
    };
    let stored = |ua: &str| {
        all_records(&s, "")
            .iter()
            .filter(|r| r["user_agent"] == json!(ua))
            .count()
    };
    // The sync token: none, or another, is refused.
    for token in [None, Some("not-the-token")] {
        let e = client
            .export(export_of(vec![good("no-token")]), token)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    // A service without a sync token takes no records at all.
    let open_dir = scratch("grpc-open");
    let cfg = open_dir.join("plugin.json");
    std::fs::write(&cfg, plugin_config().to_string()).unwrap();
    let open = Service::start(ServiceOpts {
        database: &format!("sqlite:{}", open_dir.join("keys.db").display()),
        config: &cfg,
        gateway: false,
        sync_token: false,
        port: None,
    });
    let e = otlp_client::Client::connect(open.port)
        .export(export_of(vec![good("open")]), None)
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("KEYGATE_SYNC_TOKEN_SHA256"), "{e:?}");
    drop(open);
    // One bad record refuses the whole export, naming it (what a client sends is cleaned, never
    // refused: a refusal means a misconfigured logger).
    let mut bad = good("bad");
    bad[3] = ("status", "600");
    let e = client
        .export(export_of(vec![good("bad-batch"), bad]), Some(SYNC_TOKEN))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "log record 1: status: not an HTTP status");
    // Not protobuf of an export.
    let e = client
        .export(NotAnExport { resource_logs: 7 }, Some(SYNC_TOKEN))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Over the size limit (2 MiB).
    let huge: &'static str = Box::leak("a".repeat(3 << 20).into_boxed_str());
    let e = client
        .export(export_of(vec![good(huge)]), Some(SYNC_TOKEN))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    // The same connection still takes a good export, and only that was stored.
    client
        .export(
            export_of(vec![good("ok-1"), good("ok-2")]),
            Some(SYNC_TOKEN),
        )
        .unwrap();
    assert_eq!((stored("ok-1"), stored("ok-2")), (1, 1));
    // gzip, as an OpenTelemetry Collector sends by default.
    client
        .export_with(export_of(vec![good("ok-gzip")]), Some(SYNC_TOKEN), true)
        .unwrap();
    assert_eq!(stored("ok-gzip"), 1);
    assert_eq!(stored("no-token") + stored("bad-batch") + stored("bad"), 0);
    // Records keygate did not judge (no decision) are skipped, not refused.
    client
        .export(
            export_of(vec![
                vec![("method", "GET"), ("path", "/public")],
                good("ok-3"),
            ]),
            Some(SYNC_TOKEN),
        )
        .unwrap();
    assert_eq!(stored("ok-3"), 1);
    assert_eq!(all_records(&s, "").len(), 4);
    // The service's own count of what became of records.
    let (_, _, metrics) = call_raw(&s.url(), "GET", "/metrics", None, &[]);
    for line in [
        "keygate_serve_request_log_records_total{outcome=\"stored\"} 4",
        "keygate_serve_request_log_records_total{outcome=\"refused\"} 2",
        "keygate_serve_request_log_records_total{outcome=\"not_judged\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

/// Records of days before today written straight into a store (Envoy never sends a record a day
/// old; a database that has run for days has them).
fn seed_old_days(database: &str, days_back: &[i64]) {
    use keygate_key_service::request_log::RequestRecord;
    use keygate_key_service::store::{SqlStore, Store};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<RequestRecord> = days_back
        .iter()
        .map(|d| RequestRecord {
            time_ms: now_ms - d * 86_400_000,
            key_id: Some("old".into()),
            tenant: None,
            environment: None,
            decision: "allowed".into(),
            method: "GET".into(),
            path: format!("/day-{d}"),
            route: None,
            status: 200,
            client_ip: Some("192.0.2.1".into()),
            duration_ms: Some(1),
            user_agent: None,
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqlStore::open(database).await.unwrap();
        store.record_requests(&records).await.unwrap();
    });
}

fn retention_drops_whole_days(database: &str, dir: &Path) {
    // Today, and 1, 2, 5 and 40 days ago.
    seed_old_days(database, &[0, 1, 2, 5, 40]);
    let cfg = dir.join("plugin.json");
    std::fs::write(&cfg, plugin_config().to_string()).unwrap();
    let opts = || ServiceOpts {
        database,
        config: &cfg,
        gateway: false,
        sync_token: true,
        port: None,
    };
    let paths = |s: &Service| -> Vec<String> {
        all_records(s, "")
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    };
    // `0` keeps everything.
    let s = Service::start_args(opts(), &["--request-log-days", "0"]);
    assert_eq!(
        paths(&s),
        ["/day-0", "/day-1", "/day-2", "/day-5", "/day-40"]
    );
    drop(s);
    // 3 days: today and the three before it; the pruning runs at start, then hourly.
    let s = Service::start_args(opts(), &["--request-log-days", "3"]);
    assert!(
        wait_until(10, || paths(&s) == ["/day-0", "/day-1", "/day-2"]),
        "{:?}\n{}",
        paths(&s),
        s.log()
    );
    // The key's address, last seen within the kept days, stays; one last seen before goes.
    let (_, v) = s.admin("GET", "/v1/requests?key_id=old", None);
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    drop(s);
    // 1 day: today and the day before (as usage's retention counts days).
    let s = Service::start_args(opts(), &["--request-log-days", "1"]);
    assert!(
        wait_until(10, || paths(&s) == ["/day-0", "/day-1"]),
        "{:?}",
        paths(&s)
    );
}

#[test]
fn sqlite_retention_drops_whole_days() {
    let dir = scratch("retention-sqlite");
    retention_drops_whole_days(&format!("sqlite:{}", dir.join("keys.db").display()), &dir);
}

#[test]
fn postgres_retention_drops_whole_days_as_partitions() {
    let pg = Postgres::start("reqlog-retention");
    let dir = scratch("retention-pg");
    let url = pg.database("keygate_retention");
    retention_drops_whole_days(&url, &dir);
    // What is left on PostgreSQL: yesterday's and today's partitions, and tomorrow's, made
    // ahead so that no write waits for a day to be made.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let parts: Vec<String> = rt.block_on(async {
        use sqlx::Row;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query(
            "SELECT CAST(c.relname AS TEXT) AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'request_log'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("name"))
        .collect()
    });
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let mut parts = parts;
    parts.sort();
    assert_eq!(
        parts,
        [today - 1, today, today + 1].map(|d| format!("request_log_d{d}"))
    );
}
