//! The request log's statements (SPEC §13).
//!
//! Tables (migration 8): `request_log (id, time, key_id, tenant, environment, decision, method,
//! path, route, status, client_ip, duration_ms, user_agent)`, `time` in milliseconds, read
//! newest first by `(time, id)` through one of three indexes (every record, a key's, a tenant's);
//! and `request_log_ips (key_id, client_ip, first_seen, last_seen, n)`, a key's addresses kept
//! as records arrive, so that "which IPs used this key" reads a few rows, never the log.
//!
//! Dropping whole days: on PostgreSQL the log is partitioned by day (`request_log_d<day>`, made
//! when the first record of a day arrives) and an aged day is one `DROP TABLE`; on SQLite the
//! day's rows are deleted in bounded steps (one writer at a time: no step holds it long).

use super::interface::Result;
use super::schema::Backend;
use super::usage::placeholders;
use crate::request_log::{day_of, ClientIp, RequestQuery, RequestRecord, StoredRequest};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Rows per multi-row insert: 12 parameters each, far below both databases' limits.
const ROWS_PER_INSERT: usize = 400;
/// Rows a SQLite pruning step deletes.
const ROWS_PER_DELETE: i64 = 20_000;
const DAY_MS: i64 = 86_400_000;

const COLUMNS: &str = "time, key_id, tenant, environment, decision, method, path, route, status, \
                       client_ip, duration_ms, user_agent";

/// The days whose partition this process has seen made (PostgreSQL): each is made once.
#[derive(Default)]
pub struct Partitions(Mutex<BTreeSet<i64>>);

impl Partitions {
    fn known(&self, day: i64) -> bool {
        self.0.lock().map(|s| s.contains(&day)).unwrap_or(false)
    }
    fn add(&self, day: i64) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(day);
        }
    }
    fn forget_before(&self, day: i64) {
        if let Ok(mut s) = self.0.lock() {
            s.retain(|d| *d >= day);
        }
    }
    /// After a failed write: a day another replica dropped is made again on the next.
    fn forget_all(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.clear();
        }
    }
}

fn partition_name(day: i64) -> String {
    format!("request_log_d{day}")
}

async fn ensure_partitions(
    pool: &AnyPool,
    partitions: &Partitions,
    days: impl IntoIterator<Item = i64>,
) -> Result<()> {
    for day in days {
        if partitions.known(day) {
            continue;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF request_log FOR VALUES FROM ({}) TO ({})",
            partition_name(day),
            day * DAY_MS,
            (day + 1) * DAY_MS
        );
        // Two replicas making one day at once: one of them may fail on the catalogue's
        // uniqueness; the day exists then, which a second try sees.
        if sqlx::query(&sql).execute(pool).await.is_err() {
            sqlx::query(&sql).execute(pool).await?;
        }
        partitions.add(day);
    }
    Ok(())
}

/// Writes records in one transaction: the log's rows, and each key's addresses.
pub(super) async fn record(
    pool: &AnyPool,
    backend: Backend,
    partitions: &Partitions,
    records: &[RequestRecord],
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        let days: BTreeSet<i64> = records.iter().map(|r| day_of(r.time_ms)).collect();
        ensure_partitions(pool, partitions, days).await?;
    }
    let written = insert(pool, records).await;
    if written.is_err() {
        partitions.forget_all();
    }
    written
}

async fn insert(pool: &AnyPool, records: &[RequestRecord]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO request_log ({COLUMNS}) VALUES {}",
            placeholders(chunk.len(), 12)
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.time_ms)
                .bind(r.key_id.clone())
                .bind(r.tenant.clone())
                .bind(r.environment.clone())
                .bind(r.decision.clone())
                .bind(r.method.clone())
                .bind(r.path.clone())
                .bind(r.route.clone())
                .bind(i64::from(r.status))
                .bind(r.client_ip.clone())
                .bind(r.duration_ms)
                .bind(r.user_agent.clone());
        }
        q.execute(&mut *tx).await?;
    }
    // A key's addresses, summed per (key, address) first (one upsert must not touch a row
    // twice), in key order (replicas writing the same rows take their locks in one order).
    let mut ips: BTreeMap<(&str, &str), (i64, i64, i64)> = BTreeMap::new();
    for r in records {
        if let (Some(k), Some(ip)) = (r.key_id.as_deref(), r.client_ip.as_deref()) {
            let e = ips.entry((k, ip)).or_insert((r.time_ms, r.time_ms, 0));
            e.0 = e.0.min(r.time_ms);
            e.1 = e.1.max(r.time_ms);
            e.2 += 1;
        }
    }
    let ips: Vec<_> = ips.into_iter().collect();
    for chunk in ips.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO request_log_ips (key_id, client_ip, first_seen, last_seen, n) VALUES {} \
             ON CONFLICT (key_id, client_ip) DO UPDATE SET \
             first_seen = CASE WHEN excluded.first_seen < request_log_ips.first_seen \
                 THEN excluded.first_seen ELSE request_log_ips.first_seen END, \
             last_seen = CASE WHEN excluded.last_seen > request_log_ips.last_seen \
                 THEN excluded.last_seen ELSE request_log_ips.last_seen END, \
             n = request_log_ips.n + excluded.n",
            placeholders(chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for ((k, ip), (first, last, n)) in chunk {
            q = q.bind(*k).bind(*ip).bind(*first).bind(*last).bind(*n);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn stored(r: &AnyRow) -> std::result::Result<StoredRequest, sqlx::Error> {
    let status: i64 = r.try_get("status")?;
    Ok(StoredRequest {
        id: r.try_get("id")?,
        record: RequestRecord {
            time_ms: r.try_get("time")?,
            key_id: r.try_get("key_id")?,
            tenant: r.try_get("tenant")?,
            environment: r.try_get("environment")?,
            decision: r.try_get("decision")?,
            method: r.try_get("method")?,
            path: r.try_get("path")?,
            route: r.try_get("route")?,
            status: u16::try_from(status).unwrap_or(0),
            client_ip: r.try_get("client_ip")?,
            duration_ms: r.try_get("duration_ms")?,
            user_agent: r.try_get("user_agent")?,
        },
    })
}

/// A page of records, newest first.
pub(super) async fn read(
    pool: &AnyPool,
    backend: Backend,
    q: &RequestQuery,
) -> Result<Vec<StoredRequest>> {
    let mut clauses: Vec<String> = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    // Binds in the order the clauses name them.
    enum Bind<'a> {
        Text(&'a str),
        Int(i64),
    }
    let mut binds: Vec<Bind<'_>> = Vec::new();
    if let Some(k) = &q.key_id {
        clauses.push(format!("key_id = {}", next()));
        binds.push(Bind::Text(k));
    }
    if let Some(t) = &q.tenant {
        clauses.push(format!("tenant = {}", next()));
        binds.push(Bind::Text(t));
    }
    if let Some(f) = q.from_ms {
        clauses.push(format!("time >= {}", next()));
        binds.push(Bind::Int(f));
    }
    if let Some(t) = q.to_ms {
        clauses.push(format!("time < {}", next()));
        binds.push(Bind::Int(t));
    }
    if let Some(s) = q.status {
        clauses.push(format!("status = {}", next()));
        binds.push(Bind::Int(i64::from(s)));
    }
    if let Some(d) = &q.decision {
        clauses.push(format!("decision = {}", next()));
        binds.push(Bind::Text(d));
    }
    if let Some(ip) = &q.client_ip {
        clauses.push(format!("client_ip = {}", next()));
        binds.push(Bind::Text(ip));
    }
    if let Some(p) = &q.path_prefix {
        // A prefix as a range (no LIKE: `%` and `_` in a path are plain characters).
        clauses.push(format!("path >= {}", next()));
        binds.push(Bind::Text(p));
        clauses.push(format!(
            "substr(path, 1, {}) = {}",
            p.chars().count(),
            next()
        ));
        binds.push(Bind::Text(p));
    }
    if let Some(c) = q.before {
        // A row comparison: both databases seek the (…, time, id) index to it.
        let (t, i) = (next(), next());
        clauses.push(format!("(time, id) < ({t}, {i})"));
        binds.push(Bind::Int(c.time_ms));
        binds.push(Bind::Int(c.id));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT id, {COLUMNS} FROM request_log {filter} ORDER BY time DESC, id DESC LIMIT {}",
        q.limit.min(10_000)
    );
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            Bind::Text(t) => query.bind(t),
            Bind::Int(i) => query.bind(i),
        };
    }
    // On PostgreSQL a read of the log gives up after 5 s: a filter no index serves must not
    // hold the connections key sync and usage reports need.
    let rows = match backend {
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL statement_timeout = 5000")
                .execute(&mut *tx)
                .await?;
            let rows = query.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        }
        Backend::Sqlite => query.fetch_all(pool).await?,
    };
    Ok(rows
        .iter()
        .map(stored)
        .collect::<std::result::Result<_, _>>()?)
}

/// A key's client addresses, the most recently seen first.
pub(super) async fn client_ips(
    pool: &AnyPool,
    key_id: &str,
    limit: usize,
) -> Result<Vec<ClientIp>> {
    let sql = format!(
        "SELECT client_ip, first_seen, last_seen, n FROM request_log_ips WHERE key_id = $1 \
         ORDER BY last_seen DESC, client_ip LIMIT {}",
        limit.min(10_000)
    );
    let rows = sqlx::query(&sql).bind(key_id).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(ClientIp {
            client_ip: r.try_get("client_ip")?,
            first_seen_ms: r.try_get("first_seen")?,
            last_seen_ms: r.try_get("last_seen")?,
            requests: r.try_get("n")?,
        });
    }
    Ok(out)
}

/// Drops the days before `before_day`: the records, and the addresses last seen then.
/// Answers how many days (PostgreSQL) or rows (SQLite) went. On PostgreSQL it also makes
/// today's and tomorrow's partitions, so that no write waits for a day to be made.
pub(super) async fn prune(
    pool: &AnyPool,
    backend: Backend,
    partitions: &Partitions,
    before_day: i64,
    today: i64,
) -> Result<u64> {
    let cutoff = before_day.saturating_mul(DAY_MS);
    let mut gone = 0u64;
    match backend {
        Backend::Postgres => {
            ensure_partitions(pool, partitions, [today, today + 1]).await?;
            let rows = sqlx::query(
                "SELECT CAST(c.relname AS TEXT) AS name FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = 'request_log'",
            )
            .fetch_all(pool)
            .await?;
            partitions.forget_before(before_day);
            for r in rows {
                let name: String = r.try_get("name")?;
                let day = name
                    .strip_prefix("request_log_d")
                    .and_then(|d| d.parse::<i64>().ok());
                if let Some(day) = day.filter(|d| *d < before_day) {
                    // Dropping locks the whole log for a moment: it waits at most 2 s for
                    // reads in flight (then it is tried again at the next hour).
                    let mut tx = pool.begin().await?;
                    sqlx::query("SET LOCAL lock_timeout = 2000")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&format!("DROP TABLE IF EXISTS {}", partition_name(day)))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    gone += 1;
                }
            }
        }
        Backend::Sqlite => loop {
            let deleted = sqlx::query(
                "DELETE FROM request_log WHERE id IN \
                 (SELECT id FROM request_log WHERE time < $1 ORDER BY time LIMIT $2)",
            )
            .bind(cutoff)
            .bind(ROWS_PER_DELETE)
            .execute(pool)
            .await?
            .rows_affected();
            gone += deleted;
            if deleted < ROWS_PER_DELETE as u64 {
                break;
            }
        },
    }
    sqlx::query("DELETE FROM request_log_ips WHERE last_seen < $1")
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok(gone)
}
