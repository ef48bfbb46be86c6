//! Portal sessions' statements (SPEC §11): a code is exchanged once, by one atomic update that
//! only an unused, unexpired code matches, so of any number of concurrent exchanges one wins.

use super::audit;
use super::interface::{Actor, OpenedPortal, PortalSession, Result};
use sqlx::Row;

pub(super) async fn create(pool: &sqlx::AnyPool, s: &PortalSession, actor: &Actor) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO portal_sessions (id, tenant, code_sha256, code_expires_at, return_url, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&s.id)
    .bind(&s.tenant)
    .bind(&s.code_sha256)
    .bind(s.code_expires_at)
    .bind(&s.return_url)
    .bind(actor.at)
    .execute(&mut *tx)
    .await?;
    let tenant = Some(s.tenant.as_str());
    audit::append(
        &mut tx,
        actor,
        "portal_session.created",
        None,
        tenant,
        actor.at,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Opens the session of an unused, unexpired code: `None` if the code is unknown, used or
/// expired (or another exchange of it won).
pub(super) async fn open(
    pool: &sqlx::AnyPool,
    code_sha256: &str,
    session_sha256: &str,
    session_expires_at: i64,
    ip: Option<String>,
    now: i64,
) -> Result<Option<OpenedPortal>> {
    let mut tx = pool.begin().await?;
    let won = sqlx::query(
        "UPDATE portal_sessions SET opened_at = $1, session_sha256 = $2, session_expires_at = $3 \
         WHERE code_sha256 = $4 AND opened_at IS NULL AND code_expires_at > $5",
    )
    .bind(now)
    .bind(session_sha256)
    .bind(session_expires_at)
    .bind(code_sha256)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if won != 1 {
        tx.rollback().await?;
        return Ok(None);
    }
    let row =
        sqlx::query("SELECT id, tenant, return_url FROM portal_sessions WHERE code_sha256 = $1")
            .bind(code_sha256)
            .fetch_one(&mut *tx)
            .await?;
    let opened = OpenedPortal {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        return_url: row.try_get("return_url")?,
    };
    let actor = Actor {
        kind: "portal",
        id: Some(opened.id.clone()),
        ip,
        at: now,
    };
    let tenant = Some(opened.tenant.as_str());
    audit::append(&mut tx, &actor, "portal_session.opened", None, tenant, now).await?;
    tx.commit().await?;
    Ok(Some(opened))
}
