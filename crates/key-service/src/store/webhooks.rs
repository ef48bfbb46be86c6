//! Webhook deliveries (SPEC §15): an event is written in the transaction of the change it
//! announces (the change and its delivery commit together, so a restart loses none), then
//! delivered by `crate::webhooks`' task: claimed by one replica at a time, retried with backoff.

use super::interface::{Delivery, DeliveryOutcome, Result};
use keygate::timestamp::format_rfc3339;
use serde_json::{json, Value};
use sqlx::Row;

/// Events keygate announces (SPEC §15; `credits.exhausted`: §14).
pub const EVENTS: &[&str] = &[
    "key.created",
    "key.revoked",
    "key.rolled",
    "key.leaked",
    "credits.exhausted",
];

/// How long a claimed delivery is another replica's before it may be tried again.
pub const CLAIM_SECONDS: i64 = 60;

/// Queues `event` (in the caller's transaction): due at once.
pub(super) async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    event: &str,
    data: Value,
    at: i64,
) -> std::result::Result<(), sqlx::Error> {
    let mut random = [0u8; 12];
    getrandom::fill(&mut random).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let id = format!("evt_{}", hex::encode(random));
    let body = json!({"id": id, "type": event, "created_at": format_rfc3339(at), "data": data});
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event, body, created_at, attempts, next_attempt_at) \
         VALUES ($1, $2, $3, $4, 0, $5)",
    )
    .bind(&id)
    .bind(event)
    .bind(body.to_string())
    .bind(at)
    .bind(at)
    .execute(conn)
    .await
    .map(|_| ())
}

const COLUMNS: &str = "id, event, body, created_at, attempts, next_attempt_at, delivered_at, \
                       last_status, last_error";

fn delivery(r: &sqlx::any::AnyRow) -> std::result::Result<Delivery, sqlx::Error> {
    Ok(Delivery {
        id: r.try_get("id")?,
        event: r.try_get("event")?,
        body: r.try_get("body")?,
        created_at: r.try_get("created_at")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        delivered_at: r.try_get("delivered_at")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
    })
}

/// Claims up to `limit` deliveries due at `now` for this replica: each one's next attempt is
/// moved [`CLAIM_SECONDS`] ahead by a compare-and-set, so another replica skips it (and takes
/// it again if this one dies mid-delivery).
pub(super) async fn claim_due(
    pool: &sqlx::AnyPool,
    now: i64,
    limit: usize,
) -> Result<Vec<Delivery>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE next_attempt_at <= $1 \
         ORDER BY next_attempt_at, id LIMIT {limit}"
    ))
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::new();
    for r in &rows {
        let d = delivery(r)?;
        let taken = sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = $1 \
             WHERE id = $2 AND next_attempt_at = $3",
        )
        .bind(now + CLAIM_SECONDS)
        .bind(&d.id)
        .bind(d.next_attempt_at)
        .execute(pool)
        .await?;
        if taken.rows_affected() == 1 {
            claimed.push(d);
        }
    }
    Ok(claimed)
}

/// Records an attempt's outcome.
pub(super) async fn finish(
    pool: &sqlx::AnyPool,
    id: &str,
    outcome: &DeliveryOutcome,
    now: i64,
) -> Result<()> {
    let (next, delivered, status, error) = match outcome {
        DeliveryOutcome::Delivered { status } => (None, Some(now), Some(*status), None),
        DeliveryOutcome::Retry { at, status, error } => (Some(*at), None, *status, Some(error)),
        DeliveryOutcome::GaveUp { status, error } => (None, None, *status, Some(error)),
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $1, \
         delivered_at = $2, last_status = $3, last_error = $4 WHERE id = $5",
    )
    .bind(next)
    .bind(delivered)
    .bind(status)
    .bind(error)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The latest deliveries, newest first.
pub(super) async fn latest(pool: &sqlx::AnyPool, limit: usize) -> Result<Vec<Delivery>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries ORDER BY created_at DESC, id DESC LIMIT {limit}"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(delivery)
        .collect::<std::result::Result<_, _>>()
        .map_err(Into::into)
}

/// Deletes finished deliveries made before `before`.
pub(super) async fn prune(pool: &sqlx::AnyPool, before: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM webhook_deliveries WHERE next_attempt_at IS NULL AND created_at < $1",
    )
    .bind(before)
    .execute(pool)
    .await?
    .rows_affected())
}
