//! `make bench`, the request log (SPEC §13): records per second `keygate serve` stores,
//! sustained, on SQLite and on PostgreSQL (OTLP exports from concurrent connections, as a fleet
//! of Envoys sends them); the bytes a stored record takes; and a key's last 24 hours read
//! through the API with 10 million records stored (PostgreSQL). One run; medians.
#[path = "../tests/common/mod.rs"]
mod common;

use common::service::*;
use common::*;
use keygate_key_service::otlp::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent exporters (Envoy processes), records per export (Envoy's default 16 KiB buffer
/// holds about 60 of keygate's; a busy proxy flushes fuller ones), seconds of load.
const EXPORTERS: usize = 8;
const PER_EXPORT: usize = 500;
const SECONDS: u64 = 15;

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn text(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.as_bytes().to_vec(),
        value: Some(AnyValue {
            value: Some(Value::String(v.as_bytes().to_vec())),
        }),
    }
}

/// One export of `n` records, as Envoy's logger writes them (strings), spread over 100 keys and
/// 50 addresses.
fn export(n: usize, seed: usize) -> ExportLogsServiceRequest {
    let now = now_nanos();
    let records = (0..n)
        .map(|i| {
            let k = (seed * 31 + i) % 100;
            LogRecord {
                time_unix_nano: now + i as u64,
                observed_time_unix_nano: 0,
                attributes: vec![
                    text("key_id", &format!("key_{k:04}")),
                    text("tenant", &format!("org_{}", k % 10)),
                    text("environment", "LIVE"),
                    text(
                        "decision",
                        if i % 20 == 0 {
                            "rate_limited"
                        } else {
                            "allowed"
                        },
                    ),
                    text("method", "GET"),
                    text("path", &format!("/v1/orders/{}", i % 1000)),
                    text("route", "orders"),
                    text("status", if i % 20 == 0 { "429" } else { "200" }),
                    text("client_ip", &format!("203.0.113.{}", i % 50)),
                    text("duration_ms", "3"),
                    text("user_agent", "bench-client/1.0"),
                ],
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
            }],
        }],
    }
}

/// Sends exports from `EXPORTERS` connections for `SECONDS`: records stored per second.
fn ingest(port: u16) -> (f64, u64, u64) {
    let stored = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    runtime.block_on(async {
        let mut tasks = vec![];
        for e in 0..EXPORTERS {
            let (stored, refused) = (stored.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let channel =
                    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                        .expect("uri")
                        .connect()
                        .await
                        .expect("connect");
                let mut grpc = tonic::client::Grpc::new(channel);
                let mut seed = e;
                while start.elapsed() < Duration::from_secs(SECONDS) {
                    let mut req = tonic::Request::new(export(PER_EXPORT, seed));
                    req.metadata_mut().insert(
                        "authorization",
                        format!("Bearer {SYNC_TOKEN}").parse().expect("header"),
                    );
                    grpc.ready().await.expect("ready");
                    let answer = grpc
                        .unary(
                            req,
                            tonic::codegen::http::uri::PathAndQuery::from_static(
                                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                            ),
                            tonic_prost::ProstCodec::<
                                ExportLogsServiceRequest,
                                ExportLogsServiceResponse,
                            >::default(),
                        )
                        .await;
                    match answer {
                        Ok(_) => stored.fetch_add(PER_EXPORT as u64, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(PER_EXPORT as u64, Ordering::Relaxed),
                    };
                    seed += EXPORTERS;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let s = stored.load(Ordering::Relaxed);
    (
        s as f64 / start.elapsed().as_secs_f64(),
        s,
        refused.load(Ordering::Relaxed),
    )
}

fn service_on(database: &str, dir: &std::path::Path) -> Service {
    let cfg = dir.join("plugin.json");
    std::fs::write(
        &cfg,
        json!({"key_sources": [{"header": "x-api-key"}], "prefixes": [{"prefix": "bk_live_", "environment": "LIVE"}], "keys": []})
            .to_string(),
    )
    .expect("config");
    Service::start(ServiceOpts {
        database,
        config: &cfg,
        gateway: false,
        sync_token: true,
        port: None,
    })
}

fn pg_query(url: &str, sql: &str) -> Vec<sqlx::any::AnyRow> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.expect("connect");
        sqlx::query(sql).fetch_all(&pool).await.expect("query")
    })
}

fn pg_bytes_per_record(url: &str) -> (i64, f64) {
    use sqlx::Row;
    let rows = pg_query(
        url,
        "SELECT CAST((SELECT COUNT(*) FROM request_log) AS BIGINT) AS n, \
         CAST(COALESCE((SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_inherits i \
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
           WHERE p.relname = 'request_log'), 0) + pg_total_relation_size('request_log_ips') AS BIGINT) AS bytes",
    );
    let n: i64 = rows[0].get("n");
    let bytes: i64 = rows[0].get("bytes");
    (n, bytes as f64 / n.max(1) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench … -- query` runs the 10-million-record part only.
    let query_only = std::env::args().any(|a| a == "query");
    println!("\n## The request log (benches/request_log.rs)\n");
    println!(
        "OTLP exports of {PER_EXPORT} records from {EXPORTERS} connections for {SECONDS} s, into `keygate serve`; every export answered only once stored.\n"
    );
    println!("| store | records stored per second | records | refused (queue full) | bytes per stored record |");
    println!("|---|---|---|---|---|");
    // SQLite.
    let dir = scratch_dir("bench-reqlog-sqlite");
    if !query_only {
        let db = dir.join("keys.db");
        let s = service_on(&format!("sqlite:{}", db.display()), &dir);
        let (rate, n, refused) = ingest(s.port);
        drop(s);
        let size = ["", "-wal", "-shm"]
            .iter()
            .map(|x| std::fs::metadata(format!("{}{x}", db.display())).map_or(0, |m| m.len()))
            .sum::<u64>();
        println!(
        "| SQLite (WAL, synchronous=FULL) | {rate:.0} | {n} | {refused} | {:.0} (the file, indexes included) |",
        size as f64 / n.max(1) as f64
    );
    }
    // PostgreSQL.
    let pg = Postgres::start("bench-reqlog");
    let url = pg.database("keygate_bench_reqlog");
    let dir = scratch_dir("bench-reqlog-pg");
    let s = service_on(&url, &dir);
    if !query_only {
        let (rate, n, refused) = ingest(s.port);
        let (rows, per) = pg_bytes_per_record(&url);
        println!(
            "| PostgreSQL (fsync off in the test server) | {rate:.0} | {n} | {refused} | {per:.0} (heap, 3 indexes, TOAST; {rows} rows) |"
        );
    }

    // A key's last 24 hours with 10 million records stored: rows made in the database (100
    // keys, a week), then the API asked as an operator would.
    let total: i64 = 10_000_000;
    let start = Instant::now();
    let now_ms = (now_nanos() / 1_000_000) as i64;
    let week_ms: i64 = 7 * 86_400_000;
    let first_day = (now_ms - week_ms) / 86_400_000;
    for day in first_day..=now_ms / 86_400_000 {
        pg_query(
            &url,
            &format!(
                "CREATE TABLE IF NOT EXISTS request_log_d{day} PARTITION OF request_log \
                 FOR VALUES FROM ({}) TO ({})",
                day * 86_400_000,
                (day + 1) * 86_400_000
            ),
        );
    }
    let chunk: i64 = 1_000_000;
    for c in 0..(total / chunk) {
        pg_query(
            &url,
            &format!(
                "INSERT INTO request_log (time, key_id, tenant, environment, decision, method, path, route, \
                 status, client_ip, duration_ms, user_agent) \
                 SELECT {now_ms} - {week_ms} + (g * {week_ms} / {total}), 'key_' || lpad(CAST(g % 100 AS TEXT), 4, '0'), \
                 'org_' || CAST(g % 10 AS TEXT), 'LIVE', 'allowed', 'GET', '/v1/orders/' || CAST(g % 1000 AS TEXT), \
                 'orders', 200, '203.0.113.' || CAST(g % 50 AS TEXT), 3, 'bench-client/1.0' \
                 FROM generate_series(CAST({} AS BIGINT), CAST({} AS BIGINT)) AS g",
                c * chunk,
                (c + 1) * chunk - 1
            ),
        );
    }
    pg_query(&url, "ANALYZE request_log");
    let filled = start.elapsed();
    let (rows, per) = pg_bytes_per_record(&url);
    let (st, v) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(&json!({"prefix": "bk_live_", "id": "key_0042"}).to_string()),
    );
    assert_eq!(st, 201, "{v}");
    let from = keygate::timestamp::format_rfc3339(now_ms / 1000 - 86_400);
    let times = |path: &str| -> (f64, usize) {
        let mut ms = vec![];
        let mut got = 0;
        for _ in 0..21 {
            let t = Instant::now();
            let (st, v) = s.admin("GET", path, None);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(st, 200, "{v}");
            got = v["data"].as_array().map_or(0, Vec::len);
        }
        (median(ms), got)
    };
    println!(
        "\n{rows} records stored ({per:.0} bytes each; made in {:.0} s). A key's last 24 hours through the API, median of 21 calls:\n",
        filled.as_secs_f64()
    );
    println!("| call | median ms | records answered |");
    println!("|---|---|---|");
    for path in [
        format!("/v1/api-keys/key_0042/requests?from={from}&limit=100"),
        format!("/v1/api-keys/key_0042/requests?from={from}&limit=1000"),
        format!("/v1/requests?key_id=key_0042&from={from}&limit=100"),
        format!("/v1/requests?tenant=org_2&from={from}&limit=100"),
        format!("/v1/requests?key_id=key_0042&status=429&from={from}&limit=100"),
    ] {
        let (ms, got) = times(&path);
        println!("| `GET {path}` | {ms:.1} | {got} |");
    }
}
