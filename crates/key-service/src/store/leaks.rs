//! Leak reports (SPEC §15): a key's first report is kept (a report again is a no-op); a live
//! key is revoked at once when its prefix's policy says so, in the transaction that records
//! the report, its `key.leaked` audit entry and its webhook deliveries.

use super::interface::{Actor, Leak, LeakReport, Result};
use super::{audit, webhooks};
use serde_json::json;
use sqlx::Row;

/// Records `report` against key `id`; `revoke`: the policy says revoke a live key. `None`: the
/// key was reported before (nothing done), or does not exist; else the action taken
/// (`revoked`, `notified`, or `none` for a key already revoked or expired).
pub(super) async fn record(
    tx: &mut sqlx::AnyConnection,
    seq: i64,
    id: &str,
    report: &LeakReport,
    revoke: bool,
    actor: &Actor,
    webhooks_on: bool,
) -> Result<Option<&'static str>> {
    let Some(row) =
        sqlx::query("SELECT revoked, expires_at, tenant, prefix, name FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    let inserted = sqlx::query(
        "INSERT INTO key_leaks (key_id, reported_at, origin, url, source, action) \
         VALUES ($1, $2, $3, $4, $5, 'none') ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(id)
    .bind(actor.at)
    .bind(report.origin)
    .bind(&report.url)
    .bind(&report.source)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    let expires_at: Option<i64> = row.try_get("expires_at")?;
    let live = row.try_get::<i64, _>("revoked")? == 0 && expires_at.is_none_or(|t| t > actor.at);
    let action = match (live, revoke) {
        (false, _) => "none",
        (true, true) => "revoked",
        (true, false) => "notified",
    };
    if action == "revoked" {
        sqlx::query("UPDATE api_keys SET revoked = 1, seq = $1 WHERE id = $2")
            .bind(seq)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE key_leaks SET action = $1 WHERE key_id = $2")
        .bind(action)
        .bind(id)
        .execute(&mut *tx)
        .await?;
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
    if webhooks_on {
        let prefix: String = row.try_get("prefix")?;
        let name: Option<String> = row.try_get("name")?;
        let data = json!({
            "key_id": id, "tenant": tenant, "prefix": prefix, "name": name,
            "origin": report.origin, "url": report.url, "source": report.source,
            "action": action,
        });
        webhooks::enqueue(tx, "key.leaked", data, actor.at).await?;
        if action == "revoked" {
            let data = json!({
                "key_id": id, "tenant": tenant, "prefix": prefix, "name": name,
                "actor": {"type": actor.kind, "id": actor.id},
            });
            webhooks::enqueue(tx, "key.revoked", data, actor.at).await?;
        }
    }
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
    })
}

/// The leak reports of one key, of a tenant's keys, or of every key (`None`).
pub(super) async fn reported(
    pool: &sqlx::AnyPool,
    key: Option<&str>,
    tenant: Option<&str>,
) -> Result<Vec<Leak>> {
    let base = "SELECT l.key_id, l.reported_at, l.origin, l.url, l.source, l.action \
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
