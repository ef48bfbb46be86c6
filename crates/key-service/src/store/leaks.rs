//! Leak reports (SPEC §15): a key's first report is kept (a report again is a no-op), with its
//! `key.leaked` audit entry; `sql.rs`' `record_leak` revokes a live key when its prefix's
//! policy says so, and queues the webhook events, in the same transaction.

use super::audit;
use super::interface::{Actor, Leak, LeakReport, Result};
use serde_json::json;
use sqlx::Row;

/// Records `report` against key `id` (in the caller's transaction); `revoke`: the policy says
/// revoke a live key. `None`: the key was reported before (nothing done), or does not exist;
/// else the action to take (`revoked`: the caller revokes it; `notified`; `none` for a key
/// already revoked or expired).
pub(super) async fn record(
    tx: &mut sqlx::AnyConnection,
    id: &str,
    report: &LeakReport,
    revoke: bool,
    actor: &Actor,
) -> Result<Option<&'static str>> {
    let Some(row) = sqlx::query("SELECT revoked, expires_at, tenant FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let expires_at: Option<i64> = row.try_get("expires_at")?;
    let live = row.try_get::<i64, _>("revoked")? == 0 && expires_at.is_none_or(|t| t > actor.at);
    let action = match (live, revoke) {
        (false, _) => "none",
        (true, true) => "revoked",
        (true, false) => "notified",
    };
    let inserted = sqlx::query(
        "INSERT INTO key_leaks (key_id, reported_at, origin, url, source, action) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(id)
    .bind(actor.at)
    .bind(report.origin)
    .bind(&report.url)
    .bind(&report.source)
    .bind(action)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    let tenant: Option<String> = row.try_get("tenant")?;
    let details = json!({
        "origin": report.origin, "url": report.url, "source": report.source, "action": action,
    });
    audit::append_with(
        tx,
        actor,
        "key.leaked",
        Some(id),
        tenant.as_deref(),
        actor.at,
        Some(&details.to_string()),
    )
    .await?;
    Ok(Some(action))
}

fn leak(r: &sqlx::any::AnyRow) -> std::result::Result<Leak, sqlx::Error> {
    Ok(Leak {
        key_id: r.try_get("key_id")?,
        reported_at: r.try_get("reported_at")?,
        origin: r.try_get("origin")?,
        url: r.try_get("url")?,
        source: r.try_get("source")?,
        action: r.try_get("action")?,
        rolled_to: r.try_get("rolled_to")?,
    })
}

/// The leak reports of one key, of a tenant's keys, or of every key (`None`).
pub(super) async fn reported(
    pool: &sqlx::AnyPool,
    key: Option<&str>,
    tenant: Option<&str>,
) -> Result<Vec<Leak>> {
    let base = "SELECT l.key_id, l.reported_at, l.origin, l.url, l.source, l.action, k.rolled_to \
                FROM key_leaks l JOIN api_keys k ON k.id = l.key_id";
    let rows = match (key, tenant) {
        (Some(k), _) => {
            sqlx::query(&format!("{base} WHERE l.key_id = $1"))
                .bind(k)
                .fetch_all(pool)
                .await?
        }
        (None, Some(t)) => {
            sqlx::query(&format!("{base} WHERE k.tenant = $1"))
                .bind(t)
                .fetch_all(pool)
                .await?
        }
        (None, None) => sqlx::query(base).fetch_all(pool).await?,
    };
    rows.iter()
        .map(leak)
        .collect::<std::result::Result<_, _>>()
        .map_err(Into::into)
}
