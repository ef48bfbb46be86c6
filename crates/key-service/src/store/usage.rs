//! Usage's statements (SPEC §7, §8): a report, counted once per id, adds to an hourly row and a
//! daily row per key, route and decision; the retention deletes hourly rows after
//! `--usage-hourly-days` and daily rows after `--usage-daily-days`. Summaries by the day read the
//! daily rows only (a busy key has 24 times fewer); by the hour, the hourly rows.
//!
//! Tables (migration 6): `usage_by_hour (key_id, hour, route, decision, n)` and
//! `usage_by_day (key_id, day, route, decision, n)`, each keyed in that order (a key's rows
//! together: the per-key call and a tenant's keys read a range of the primary key) with an
//! index on the time (a summary of every tenant reads a time range). Writing both costs a
//! report a second upsert per row, and spares every roll-up (no row is ever moved, so none can be
//! counted twice by replicas pruning at once). Credits spent (SPEC §14) are rows of the
//! pseudo-decision `credits` (`crate::model::CREDITS_ROW`) beside the decisions': summed the same
//! way, never counted as requests.

use super::interface::{Pruned, Result, StoreError, UsageQuery, UsageSummary};
use super::schema::Backend;
use crate::model::{hour_of, UsageEntry, UsageRow};
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

/// The sum of counts in a summary, never an error: PostgreSQL's sum of bigints is a numeric,
/// capped at the largest count (as stored counts are); SQLite's `SUM` fails on overflow, so its
/// `TOTAL` (a float: exact to 2^53 requests, then read as the nearest, capped) is used.
fn sum_n(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "TOTAL(n)",
        Backend::Postgres => "CAST(LEAST(SUM(n), 9223372036854775807) AS BIGINT)",
    }
}

/// A count column: a SQLite count that overflowed into a float before counts saturated reads as
/// the largest count (not an error that breaks the key for good). Credits spent, net of
/// refunds, may be below zero.
fn count(r: &AnyRow, column: &str) -> std::result::Result<i64, sqlx::Error> {
    r.try_get::<i64, _>(column).or_else(|_| {
        r.try_get::<f64, _>(column)
            .map(|f| f.clamp(-(i64::MAX as f64), i64::MAX as f64) as i64)
    })
}

/// `a + b`, saturating at ±(2^63 - 1), in SQL that never overflows (PostgreSQL fails on an
/// overflowing bigint; SQLite turns it into a float). `b` may be of either sign.
pub(super) fn saturating_sum(a: &str, b: &str) -> String {
    format!(
        "CASE WHEN {b} >= 0 THEN (CASE WHEN {a} > {MAX} - {b} THEN {MAX} ELSE {a} + {b} END) \
         ELSE (CASE WHEN {a} < -{MAX} - {b} THEN -{MAX} ELSE {a} + {b} END) END",
        MAX = i64::MAX
    )
}

/// Adds to a row of either table, saturating at the largest count (credits spent, net of
/// refunds, may be negative: saturating at the smallest too).
fn upsert(table: &str, time: &str, rows: usize) -> String {
    format!(
        "INSERT INTO {table} (key_id, {time}, route, decision, n) VALUES {} \
         ON CONFLICT (key_id, {time}, route, decision) DO UPDATE SET n = {}",
        placeholders(rows, 5),
        saturating_sum(&format!("{table}.n"), "excluded.n"),
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

/// Counts one report in `tx`, once per id: its counts by key, hour or day, route and decision
/// (credits spent as [`crate::model::CREDITS_ROW`] beside them) and each key's last use.
/// `None`: a report with this id was counted before (the caller rolls back); else how many
/// entries named no key of this service, and the others (for their balances).
pub(super) async fn record<'e>(
    tx: &mut AnyConnection,
    report_id: &str,
    entries: &'e [UsageEntry],
    now: i64,
) -> Result<Option<(usize, Vec<&'e UsageEntry>)>> {
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
        return Ok(None);
    }
    // Only keys of this service are stored: counts for an id it does not have (a key of the
    // plugin configuration, a made-up id) would be waiting for a key created later with that
    // id, which never made them.
    let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let known = known_ids(&mut *tx, &ids).await?;
    let dropped = entries.iter().filter(|e| !known.contains(&e.id)).count();
    let entries: Vec<&UsageEntry> = entries.iter().filter(|e| known.contains(&e.id)).collect();
    // Summed per row first: one report may name a key twice, and one multi-row upsert must not
    // touch a row twice.
    let mut counts: BTreeMap<(&str, i64, &str, &str), i64> = BTreeMap::new();
    let mut last_used: BTreeMap<&str, i64> = BTreeMap::new();
    for e in entries.iter().copied() {
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
    for (table, time, span) in [
        ("usage_by_hour", "hour", 3600),
        ("usage_by_day", "day", DAY),
    ] {
        // By the day, the rows of one day are summed first (one upsert per row).
        let mut rows: BTreeMap<(&str, i64, &str, &str), i64> = BTreeMap::new();
        for ((id, hour, route, decision), n) in &counts {
            let slot = rows
                .entry((*id, hour - hour.rem_euclid(span), *route, *decision))
                .or_default();
            *slot = slot.saturating_add(*n);
        }
        let rows: Vec<_> = rows.into_iter().collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = upsert(table, time, chunk.len());
            let mut q = sqlx::query(&sql);
            for ((id, t, route, decision), n) in chunk {
                q = q.bind(*id).bind(*t).bind(*route).bind(*decision).bind(*n);
            }
            q.execute(&mut *tx).await?;
        }
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
    Ok(Some((dropped, entries)))
}

/// A key's rows that overlap `[from, to)` (one per route: the answer sums them, saturating):
/// hourly rows from `hourly_from` (the first day kept by the hour), then daily rows of the days
/// before it (each marked `day`).
pub(super) async fn of_key(
    pool: &AnyPool,
    backend: Backend,
    id: &str,
    from: Option<i64>,
    to: Option<i64>,
    hourly_from: i64,
) -> Result<Vec<UsageRow>> {
    let mut out = Vec::new();
    let mut tx = pool.begin().await?;
    if let Some(stmt) = backend.snapshot_read() {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    let to = to.unwrap_or(i64::MAX);
    for (table, time, day, start, end) in [
        (
            "usage_by_hour",
            "hour",
            false,
            from.map_or(hourly_from, |f| hour_of(f).max(hourly_from)),
            to,
        ),
        (
            "usage_by_day",
            "day",
            true,
            from.map_or(i64::MIN, |f| f.div_euclid(DAY) * DAY),
            to.min(hourly_from),
        ),
    ] {
        let rows = sqlx::query(&format!(
            "SELECT {time} AS t, decision, n FROM {table} WHERE key_id = $1 \
             AND {time} >= $2 AND {time} < $3 ORDER BY {time}, decision"
        ))
        .bind(id)
        .bind(start)
        .bind(end)
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

/// The summary of SPEC §7's `GET /v1/usage`: counts by time bucket, by key and by route, from
/// the hourly or the daily rows.
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
    let (table, time) = if q.by_day {
        ("usage_by_day", "day")
    } else {
        ("usage_by_hour", "hour")
    };
    let (join, cond) = filter(q, time);
    // Two scans of the range: by bucket and route (the series and by_route both sum it; routes
    // are the configuration's, so this is small), and by key.
    for (group, by_key) in [
        (format!("u.{time}, u.route"), false),
        ("u.key_id".to_string(), true),
    ] {
        let sql = format!(
            "SELECT {group}, u.decision AS decision, {sum} AS n FROM {table} u{join} \
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
            if by_key {
                out.add_key(r.try_get("key_id")?, decision, n);
            } else {
                out.add_series(r.try_get(time)?, decision.clone(), n);
                out.add_route(r.try_get("route")?, decision, n);
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// Deletes hourly rows before `hours_before` and daily rows before `days_before`.
pub(super) async fn prune(pool: &AnyPool, hours_before: i64, days_before: i64) -> Result<Pruned> {
    let mut tx = pool.begin().await?;
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
    Ok(Pruned {
        hourly_rows_deleted: hours,
        daily_rows_deleted: days,
    })
}
