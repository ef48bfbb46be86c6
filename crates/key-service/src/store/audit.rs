//! The audit log's statements (SPEC §7): an entry is written in the transaction of the change
//! it records (a change and its entry commit together or not at all), and read newest first.

use super::interface::{Actor, AuditQuery, AuditRecord, Result};
use sqlx::Row;

/// An entry's id: the time in nanoseconds, then random bits (hex, so ids sort by time).
fn entry_id() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    format!("{ns:016x}{}", hex::encode(random))
}

/// Appends one entry (in the caller's transaction).
pub(super) async fn append(
    conn: &mut sqlx::AnyConnection,
    actor: &Actor,
    action: &str,
    key_id: Option<&str>,
    tenant: Option<&str>,
    time: i64,
) -> std::result::Result<(), sqlx::Error> {
    append_with(conn, actor, action, key_id, tenant, time, None)
        .await
        .map(|_| ())
}

/// Appends one entry with `details` (a JSON object's text); answers the entry's id.
pub(super) async fn append_with(
    conn: &mut sqlx::AnyConnection,
    actor: &Actor,
    action: &str,
    key_id: Option<&str>,
    tenant: Option<&str>,
    time: i64,
    details: Option<&str>,
) -> std::result::Result<String, sqlx::Error> {
    let id = entry_id();
    sqlx::query(
        "INSERT INTO audit_log (id, time, actor_type, actor_id, action, key_id, tenant, ip, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(time)
    .bind(actor.kind)
    .bind(&actor.id)
    .bind(action)
    .bind(key_id)
    .bind(tenant)
    .bind(&actor.ip)
    .bind(details)
    .execute(conn)
    .await
    .map(|_| id)
}

/// Entries matching `q`, newest first, at most `q.limit`.
pub(super) async fn read(pool: &sqlx::AnyPool, q: &AuditQuery<'_>) -> Result<Vec<AuditRecord>> {
    let mut sql = String::from(
        "SELECT id, time, actor_type, actor_id, action, key_id, tenant, ip, details FROM audit_log \
         WHERE time >= $1 AND time < $2",
    );
    let mut n = 2;
    let mut next = |sql: &mut String, clause: &str| {
        n += 1;
        sql.push_str(&clause.replace('?', &format!("${n}")));
    };
    if q.tenant.is_some() {
        next(&mut sql, " AND tenant = ?");
    }
    if q.key.is_some() {
        next(&mut sql, " AND key_id = ?");
    }
    if q.before.is_some() {
        next(&mut sql, " AND id < ?");
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", q.limit));
    let mut query = sqlx::query(&sql)
        .bind(q.from.unwrap_or(i64::MIN))
        .bind(q.to.unwrap_or(i64::MAX));
    for v in [q.tenant, q.key, q.before].into_iter().flatten() {
        query = query.bind(v);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRecord {
                id: r.try_get("id")?,
                time: r.try_get("time")?,
                actor_type: r.try_get("actor_type")?,
                actor_id: r.try_get("actor_id")?,
                action: r.try_get("action")?,
                key_id: r.try_get("key_id")?,
                tenant: r.try_get("tenant")?,
                ip: r.try_get("ip")?,
                details: r.try_get("details")?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}
