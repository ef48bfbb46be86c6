//! Usage's statements (SPEC §7, §8): reports counted once per id into hourly rows per key,
//! route and decision; hourly rows older than the retention rolled into daily rows; the
//! per-key history and the summary (`/v1/usage`) read from both.
//!
//! Tables (migration 6): `usage_by_hour (key_id, hour, route, decision, n)` and
//! `usage_by_day (key_id, day, route, decision, n)`, each keyed in that order (a key's rows
//! together: the per-key call and a tenant's keys read a range of the primary key) with an
//! index on the time (a summary of every tenant reads a time range).

use super::schema::Backend;
use super::{Recorded, Result, RolledUp, StoreError, UsageQuery, UsageSummary};
use crate::service::model::{hour_of, UsageEntry, UsageRow};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::{BTreeMap, BTreeSet};

/// Rows per multi-row statement (5 parameters each: far below both databases' limits).
pub(super) const ROWS_PER_STATEMENT: usize = 400;

/// Report ids are kept this long: a filter retries a report for far less time.
const REPORT_ID_RETENTION_S: i64 = 7 * 86_400;

pub(super) const DAY: i64 = 86_400;

/// `($1, $2), ($3, $4), …`: `rows` tuples of `width` parameters.
pub(super) fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SUM(n)` as a BIGINT on both databases (PostgreSQL's sum of bigints is a numeric; it is
/// capped at the largest count, as stored counts are).
fn sum_n(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "SUM(n)",
        Backend::Postgres => "CAST(LEAST(SUM(n), 9223372036854775807) AS BIGINT)",
    }
}

/// A count column: a SQLite count that overflowed into a float before counts saturated reads as
/// the largest count (not an error that breaks the key for good).
fn count(r: &AnyRow, column: &str) -> std::result::Result<i64, sqlx::Error> {
    r.try_get::<i64, _>(column).or_else(|_| {
        r.try_get::<f64, _>(column)
            .map(|f| f.clamp(0.0, i64::MAX as f64) as i64)
    })
}

/// Adds to a row of either table, saturating at the largest count.
fn upsert(table: &str, time: &str, rows: usize) -> String {
    format!(
        "INSERT INTO {table} (key_id, {time}, route, decision, n) VALUES {} \
         ON CONFLICT (key_id, {time}, route, decision) DO UPDATE SET n = CASE \
         WHEN {table}.n > {MAX} - excluded.n THEN {MAX} ELSE {table}.n + excluded.n END",
        placeholders(rows, 5),
        MAX = i64::MAX
    )
}

/// Of `ids`, those the service has.
async fn known_ids(conn: &mut AnyConnection, ids: &[&str]) -> Result<BTreeSet<String>> {
    let mut known = BTreeSet::new();
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT id FROM api_keys WHERE id IN ({})", list.join(", "));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            known.insert(row.try_get("id")?);
        }
    }
    Ok(known)
}

pub(super) async fn record(
    pool: &AnyPool,
    report_id: &str,
    entries: &[UsageEntry],
    now: i64,
) -> Result<Recorded> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO usage_reports (report_id, received_at) VALUES ($1, $2) \
         ON CONFLICT (report_id) DO NOTHING",
    )
    .bind(report_id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(Recorded::Seen);
    }
    // Only keys of this service are stored: counts for an id it does not have (a key of the
    // plugin configuration, a made-up id) would be waiting for a key created later with that
    // id, which never made them.
    let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let known = known_ids(&mut tx, &ids).await?;
    let dropped = entries.iter().filter(|e| !known.contains(&e.id)).count();
    let entries = entries.iter().filter(|e| known.contains(&e.id));
    // Summed per row first: one report may name a key twice, and one multi-row upsert must not
    // touch a row twice.
    let mut counts: BTreeMap<(&str, i64, &str, &str), i64> = BTreeMap::new();
    let mut last_used: BTreeMap<&str, i64> = BTreeMap::new();
    for e in entries {
        // Counted in the hour of the key's last use in the report (reports cover seconds; a
        // report retried after an outage still lands in the hour it was made).
        let hour = hour_of(e.last_used.unwrap_or(now));
        for (route, decision, n) in e.route_counts() {
            let slot = counts
                .entry((e.id.as_str(), hour, route, decision))
                .or_default();
            *slot = slot.saturating_add(n);
        }
        if let Some(t) = e.last_used {
            let slot = last_used.entry(e.id.as_str()).or_insert(t);
            *slot = (*slot).max(t);
        }
    }
    let counts: Vec<_> = counts.into_iter().collect();
    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
        let sql = upsert("usage_by_hour", "hour", chunk.len());
        let mut q = sqlx::query(&sql);
        for ((id, hour, route, decision), n) in chunk {
            q = q
                .bind(*id)
                .bind(*hour)
                .bind(*route)
                .bind(*decision)
                .bind(*n);
        }
        q.execute(&mut *tx).await?;
    }
    let last_used: Vec<_> = last_used.into_iter().collect();
    for chunk in last_used.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO key_last_used (key_id, t) VALUES {} ON CONFLICT (key_id) DO UPDATE \
             SET t = CASE WHEN excluded.t > key_last_used.t THEN excluded.t ELSE key_last_used.t END",
            placeholders(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (id, t) in chunk {
            q = q.bind(*id).bind(*t);
        }
        q.execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM usage_reports WHERE received_at < $1")
        .bind(now - REPORT_ID_RETENTION_S)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Recorded::Counted { dropped })
}

/// A key's rows in `[from, to)`, summed over routes: hourly rows, then the daily rows of days
/// rolled up (each marked `day`).
pub(super) async fn of_key(
    pool: &AnyPool,
    backend: Backend,
    id: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Vec<UsageRow>> {
    let sum = sum_n(backend);
    let mut out = Vec::new();
    let mut tx = pool.begin().await?;
    if let Some(stmt) = backend.snapshot_read() {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    for (table, time, day, start) in [
        (
            "usage_by_hour",
            "hour",
            false,
            from.map_or(i64::MIN, hour_of),
        ),
        (
            "usage_by_day",
            "day",
            true,
            from.map_or(i64::MIN, |f| f.div_euclid(DAY) * DAY),
        ),
    ] {
        let rows = sqlx::query(&format!(
            "SELECT {time} AS t, decision, {sum} AS n FROM {table} WHERE key_id = $1 \
             AND {time} >= $2 AND {time} < $3 GROUP BY {time}, decision ORDER BY {time}, decision"
        ))
        .bind(id)
        .bind(start)
        .bind(to.unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            out.push(UsageRow {
                hour: r.try_get("t")?,
                decision: r.try_get("decision")?,
                n: count(r, "n")?,
                day,
            });
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// `WHERE` of a summary over one table, its parameters from `$1`.
fn filter(q: &UsageQuery<'_>, time: &str) -> (String, String) {
    let mut from = String::new();
    let mut cond = format!("u.{time} >= $1 AND u.{time} < $2");
    let mut n = 2;
    if q.tenant.is_some() {
        n += 1;
        from = " JOIN api_keys k ON k.id = u.key_id".into();
        cond.push_str(&format!(" AND k.tenant = ${n}"));
    }
    if q.key.is_some() {
        n += 1;
        cond.push_str(&format!(" AND u.key_id = ${n}"));
    }
    (from, cond)
}

/// The summary of SPEC §7's `GET /v1/usage`: counts by time bucket, by key and by route.
/// Buckets are hours, or days (hourly rows summed by their day, and the daily rows).
pub(super) async fn summary(
    pool: &AnyPool,
    backend: Backend,
    q: &UsageQuery<'_>,
) -> Result<UsageSummary> {
    let sum = sum_n(backend);
    let mut out = UsageSummary::default();
    let mut tx = pool.begin().await?;
    if let Some(stmt) = backend.snapshot_read() {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    let mut tables = vec![("usage_by_hour", "hour")];
    if q.by_day {
        tables.push(("usage_by_day", "day"));
    }
    for (table, time) in tables {
        let (join, cond) = filter(q, time);
        let bucket = if q.by_day && time == "hour" {
            format!("(u.hour - u.hour % {DAY})")
        } else {
            format!("u.{time}")
        };
        for (group, into) in [(bucket.as_str(), 0usize), ("u.key_id", 1), ("u.route", 2)] {
            let sql = format!(
                "SELECT {group} AS g, u.decision AS decision, {sum} AS n FROM {table} u{join} \
                 WHERE {cond} GROUP BY {group}, u.decision"
            );
            let mut query = sqlx::query(&sql).bind(q.from).bind(q.to);
            if let Some(t) = q.tenant {
                query = query.bind(t);
            }
            if let Some(k) = q.key {
                query = query.bind(k);
            }
            for r in query.fetch_all(&mut *tx).await? {
                let decision: String = r.try_get("decision")?;
                let n = count(&r, "n")?;
                match into {
                    0 => out.add_series(r.try_get("g")?, decision, n),
                    1 => out.add_key(r.try_get("g")?, decision, n),
                    _ => out.add_route(r.try_get("g")?, decision, n),
                }
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// Rolls hourly rows of days before `hours_before` (a day's start) into daily rows and
/// deletes daily rows of days before `days_before`. Replicas may run it at once: on
/// PostgreSQL a transaction lock lets one at a time in, and each reads what the previous one
/// left (a row is never rolled twice).
pub(super) async fn roll_up(
    pool: &AnyPool,
    backend: Backend,
    hours_before: i64,
    days_before: i64,
) -> Result<RolledUp> {
    let mut tx = pool.begin().await?;
    if let Some(lock) = backend.rollup_lock() {
        sqlx::query(lock).execute(&mut *tx).await?;
    }
    let sum = sum_n(backend);
    // Summed in the database, written back through the same saturating upsert the reports use.
    let rows = sqlx::query(&format!(
        "SELECT key_id, hour - hour % {DAY} AS day, route, decision, {sum} AS n FROM usage_by_hour \
         WHERE hour < $1 GROUP BY key_id, hour - hour % {DAY}, route, decision"
    ))
    .bind(hours_before)
    .fetch_all(&mut *tx)
    .await?;
    let mut rolled = Vec::with_capacity(rows.len());
    for r in &rows {
        rolled.push((
            r.try_get::<String, _>("key_id")?,
            r.try_get::<i64, _>("day")?,
            r.try_get::<String, _>("route")?,
            r.try_get::<String, _>("decision")?,
            count(r, "n")?,
        ));
    }
    for chunk in rolled.chunks(ROWS_PER_STATEMENT) {
        let sql = upsert("usage_by_day", "day", chunk.len());
        let mut q = sqlx::query(&sql);
        for (id, day, route, decision, n) in chunk {
            q = q.bind(id).bind(*day).bind(route).bind(decision).bind(*n);
        }
        q.execute(&mut *tx).await?;
    }
    let hours = sqlx::query("DELETE FROM usage_by_hour WHERE hour < $1")
        .bind(hours_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let days = sqlx::query("DELETE FROM usage_by_day WHERE day < $1")
        .bind(days_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await.map_err(StoreError::from)?;
    Ok(RolledUp {
        hourly_rows_rolled: hours,
        daily_rows_deleted: days,
    })
}
