//! Browser sessions' statements (SPEC §11): an operator's session (opened by signing in with
//! the admin token) and a portal session (opened by a portal code, [`super::portal`]) are both
//! found by the SHA-256 of their cookie; signing out ends either at once. `login` and `logout`
//! go into the audit log with the session's id (never the cookie).

use super::audit;
use super::interface::{Actor, Result, SessionKind, WebSession};
use sqlx::Row;

pub(super) async fn sign_in(
    pool: &sqlx::AnyPool,
    id: &str,
    session_sha256: &str,
    admin_fingerprint: &str,
    expires_at: i64,
    actor: &Actor,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO operator_sessions (id, session_sha256, admin_fingerprint, created_at, \
         expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(session_sha256)
    .bind(admin_fingerprint)
    .bind(actor.at)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    // Sessions that ended or expired a day ago are of no use to anyone: dropped as we go.
    sqlx::query("DELETE FROM operator_sessions WHERE expires_at < $1")
        .bind(actor.at - 86_400)
        .execute(&mut *tx)
        .await?;
    audit::append(&mut tx, actor, "login", None, None, actor.at).await?;
    tx.commit().await?;
    Ok(())
}

/// The live session of this kind whose cookie has this digest (an operator's only while the
/// admin token that opened it is the service's).
pub(super) async fn find(
    pool: &sqlx::AnyPool,
    session_sha256: &str,
    now: i64,
    kind: &SessionKind,
) -> Result<Option<WebSession>> {
    if let SessionKind::Operator { admin_fingerprint } = kind {
        let operator = sqlx::query(
            "SELECT id FROM operator_sessions WHERE session_sha256 = $1 AND expires_at > $2 \
             AND admin_fingerprint = $3",
        )
        .bind(session_sha256)
        .bind(now)
        .bind(admin_fingerprint)
        .fetch_optional(pool)
        .await?;
        return match operator {
            Some(row) => Ok(Some(WebSession {
                id: row.try_get("id")?,
                tenant: None,
            })),
            None => Ok(None),
        };
    }
    let portal = sqlx::query(
        "SELECT id, tenant FROM portal_sessions WHERE session_sha256 = $1 \
         AND session_expires_at > $2",
    )
    .bind(session_sha256)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(match portal {
        Some(row) => Some(WebSession {
            id: row.try_get("id")?,
            tenant: Some(row.try_get("tenant")?),
        }),
        None => None,
    })
}

/// Ends the session (whichever kind it is) at once.
pub(super) async fn sign_out(
    pool: &sqlx::AnyPool,
    session: &WebSession,
    actor: &Actor,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let statement = match session.tenant {
        None => "UPDATE operator_sessions SET expires_at = $1 WHERE id = $2",
        Some(_) => "UPDATE portal_sessions SET session_expires_at = $1 WHERE id = $2",
    };
    sqlx::query(statement)
        .bind(actor.at)
        .bind(&session.id)
        .execute(&mut *tx)
        .await?;
    let tenant = session.tenant.as_deref();
    audit::append(&mut tx, actor, "logout", None, tenant, actor.at).await?;
    tx.commit().await?;
    Ok(())
}

/// Every tenant with a key (an operator's tenant switch).
pub(super) async fn tenants(pool: &sqlx::AnyPool) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT DISTINCT tenant FROM api_keys WHERE tenant IS NOT NULL ORDER BY tenant",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("tenant").ok())
        .collect())
}
