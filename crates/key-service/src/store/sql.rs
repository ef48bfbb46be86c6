//! [`SqlStore`]: the statements, the same on both databases.

use super::interface::{
    Actor, AuditQuery, AuditRecord, Feed, KeyCursor, OpenedPortal, PortalSession, Pruned, Recorded,
    Result, Rolled, SessionKind, Store, Updated, UsageQuery, UsageSummary, WebSession,
};
use super::interface::{CreditsChanged, Delivery, DeliveryOutcome, Leak, LeakReport};
use super::requests::{self, Partitions};
use super::schema::{ensure_epoch, migrate, Backend};
use super::usage;
use super::{audit, credits, leaks, portal, sessions, webhooks};
use crate::credits::{apply, Op};
use crate::model::{StoredKey, UsageEntry, UsageRow};
use crate::request_log::{ClientIp, RequestQuery, RequestRecord, StoredRequest};
use keygate::model::Credits;
use serde_json::json;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyConnection;
use sqlx::Connection;
use sqlx::{AnyPool, Row};

/// The columns of a key and where they come from (`k`: api_keys, `u`: key_last_used, `b`:
/// credit_balances, [`credits::COLUMNS`]).
const KEY_COLUMNS: &str = "k.id, k.sha256, k.prefix, k.name, k.tenant, k.role, k.environment, \
     k.created_at, k.expires_at, k.revoked, k.restrictions, u.t AS last_used, \
     k.credits_granted, k.credits_refill, k.credits_top_up_period, k.credits_top_up_amount, \
     k.credits_serial, k.credits_set_at, b.period AS spent_period, b.serial AS spent_serial, \
     b.spent AS spent, tb.top_up_period AS tenant_top_up_period, \
     tb.top_up_amount AS tenant_top_up_amount, tb.serial AS tenant_serial";
const KEYS_FROM: &str = "api_keys k LEFT JOIN key_last_used u ON u.key_id = k.id \
     LEFT JOIN credit_balances b ON b.key_id = k.id \
     LEFT JOIN tenant_balances tb ON tb.tenant = k.tenant";

/// Why [`SqlStore::open`] did not open the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The URL is not one this service can use: trying again cannot help.
    Invalid(String),
    /// The database did not answer, refused, or failed a step: it may later.
    Unreachable(String),
}

/// How long opening waits for the database's first answer.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Random, made with the database: part of every version.
    epoch: String,
    /// The request log's days made so far (PostgreSQL).
    partitions: Partitions,
    /// Key events are queued for webhook delivery (`--webhook-url`).
    webhooks: bool,
}

impl SqlStore {
    /// Connects to `sqlite:PATH` (created if missing) or `postgres://…` and migrates the schema.
    pub async fn open(url: &str) -> std::result::Result<SqlStore, OpenError> {
        use OpenError::{Invalid, Unreachable};
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Invalid("sqlite: needs a file path (sqlite:keys.db)".into()));
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite://{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(Invalid(
                "the database URL must start with sqlite: or postgres://".into(),
            ));
        };
        let mut options = AnyPoolOptions::new().max_connections(8);
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL: readers never wait for the writer; FULL keeps every commit durable.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        // One connection first: its error names the cause (refused, unknown host, password,
        // no such database), where the pool's would only say it timed out.
        match tokio::time::timeout(OPEN_TIMEOUT, AnyConnection::connect(&url)).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
            }
            Ok(Err(e)) => return Err(Unreachable(format!("cannot open the database: {e}"))),
            Err(_) => {
                return Err(Unreachable(format!(
                    "cannot open the database: no answer within {} s",
                    OPEN_TIMEOUT.as_secs()
                )))
            }
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| Unreachable(format!("cannot open the database: {e}")))?;
        migrate(&pool, backend)
            .await
            .map_err(|e| Unreachable(format!("schema migration failed: {e}")))?;
        let epoch = ensure_epoch(&pool)
            .await
            .map_err(|e| Unreachable(format!("cannot read the database epoch: {e}")))?;
        Ok(SqlStore {
            pool,
            backend,
            epoch,
            partitions: Partitions::default(),
            webhooks: false,
        })
    }

    /// Queues key events for webhook delivery from now on (SPEC §15).
    pub fn with_webhooks(mut self, on: bool) -> SqlStore {
        self.webhooks = on;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn version_of(&self, seq: i64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// The seq of a version this database issued (`None`: another database's, or not one).
    fn seq_of(&self, version: &str) -> Option<i64> {
        let (epoch, seq) = version.rsplit_once('-')?;
        (epoch == self.epoch).then_some(())?;
        seq.parse().ok().filter(|s: &i64| *s >= 0)
    }
}

/// Takes the next change number; holds the counter row's lock until the transaction ends.
async fn next_seq(conn: &mut sqlx::AnyConnection) -> std::result::Result<i64, sqlx::Error> {
    sqlx::query("UPDATE keygate_meta SET value = value + 1 WHERE name = 'seq' RETURNING value")
        .fetch_one(conn)
        .await?
        .try_get("value")
}

async fn current_seq(conn: &mut sqlx::AnyConnection) -> std::result::Result<i64, sqlx::Error> {
    sqlx::query("SELECT value FROM keygate_meta WHERE name = 'seq'")
        .fetch_one(conn)
        .await?
        .try_get("value")
}

/// What a key event says of a key and of who acted (never a key or digest).
fn event_data(key: &StoredKey, actor: &Actor) -> serde_json::Value {
    json!({
        "key_id": key.id, "tenant": key.tenant, "prefix": key.prefix, "name": key.name,
        "environment": key.environment,
        "actor": {"type": actor.kind, "id": actor.id},
    })
}

/// Queues `event` about key `id` (as it is in this transaction), with `extra` fields.
async fn announce(
    tx: &mut AnyConnection,
    event: &str,
    id: &str,
    actor: &Actor,
    extra: serde_json::Value,
) -> std::result::Result<(), sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let mut data = event_data(&key_from_row(&row)?, actor);
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    webhooks::enqueue(tx, event, data, actor.at).await
}

fn key_from_row(row: &AnyRow) -> std::result::Result<StoredKey, sqlx::Error> {
    let restrictions: String = row.try_get("restrictions")?;
    Ok(StoredKey {
        id: row.try_get("id")?,
        sha256: row.try_get("sha256")?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        tenant: row.try_get("tenant")?,
        role: row.try_get("role")?,
        environment: row.try_get("environment")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
        restrictions: serde_json::from_str(&restrictions)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        last_used: row.try_get("last_used")?,
        credits: credits::from_row(row)?,
        tenant_balance: credits::tenant_from_row(row)?,
        tenant_credits: None,
    })
}

async fn insert_key(
    conn: &mut sqlx::AnyConnection,
    k: &StoredKey,
    seq: i64,
) -> std::result::Result<(), sqlx::Error> {
    let (granted, refill, top_up_period, top_up_amount, serial, set_at) =
        credits::params(k.credits.as_ref());
    sqlx::query(
        "INSERT INTO api_keys (id, sha256, prefix, name, tenant, role, environment, created_at, \
         expires_at, revoked, restrictions, last_used, seq, created_seq, credits_granted, \
         credits_refill, credits_top_up_period, credits_top_up_amount, credits_serial, \
         credits_set_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20)",
    )
    .bind(&k.id)
    .bind(&k.sha256)
    .bind(&k.prefix)
    .bind(&k.name)
    .bind(&k.tenant)
    .bind(&k.role)
    .bind(&k.environment)
    .bind(k.created_at)
    .bind(k.expires_at)
    .bind(i64::from(k.revoked))
    .bind(k.restrictions.to_string())
    .bind(k.last_used)
    .bind(seq)
    .bind(seq)
    .bind(granted)
    .bind(refill)
    .bind(top_up_period)
    .bind(top_up_amount)
    .bind(serial)
    .bind(set_at)
    .execute(conn)
    .await
    .map(|_| ())
}

impl Store for SqlStore {
    async fn create(&self, key: &StoredKey, actor: &Actor) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        insert_key(&mut tx, key, seq).await?;
        let (id, tenant) = (Some(key.id.as_str()), key.tenant.as_deref());
        audit::append(&mut tx, actor, "key.created", id, tenant, actor.at).await?;
        if self.webhooks {
            webhooks::enqueue(&mut tx, "key.created", event_data(key, actor), actor.at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_page(
        &self,
        tenant: Option<&str>,
        limit: usize,
        after: Option<&KeyCursor>,
    ) -> Result<Vec<(StoredKey, KeyCursor)>> {
        let mut sql = format!("SELECT {KEY_COLUMNS}, k.created_seq FROM {KEYS_FROM} WHERE 1 = 1");
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if tenant.is_some() {
            sql.push_str(&format!(" AND k.tenant = {}", param()));
        }
        if after.is_some() {
            sql.push_str(&format!(" AND k.created_seq < {}", param()));
        }
        sql.push_str(&format!(" ORDER BY k.created_seq DESC LIMIT {limit}"));
        let mut q = sqlx::query(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        if let Some(c) = after {
            q = q.bind(c.seq);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let seq = r.try_get::<Option<i64>, _>("created_seq")?.unwrap_or(0);
                Ok((key_from_row(r)?, KeyCursor { seq }))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()?)
    }

    async fn update(&self, key: &StoredKey, actor: &Actor) -> Result<Updated> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        let found = sqlx::query("SELECT revoked, tenant FROM api_keys WHERE id = $1")
            .bind(&key.id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = found else {
            tx.rollback().await?;
            return Ok(Updated::NotFound);
        };
        if row.try_get::<i64, _>("revoked")? != 0 {
            tx.rollback().await?;
            return Ok(Updated::Revoked);
        }
        let tenant: Option<String> = row.try_get("tenant")?;
        // The grant and refill only: the period's top-ups and the serial are the credits
        // call's (a call in between is never undone), dropped only with the credits.
        let (granted, refill, ..) = credits::params(key.credits.as_ref());
        let drop_top_up = if granted.is_none() {
            ", credits_top_up_period = NULL, credits_top_up_amount = NULL"
        } else {
            ""
        };
        sqlx::query(&format!(
            "UPDATE api_keys SET name = $1, role = $2, expires_at = $3, restrictions = $4, \
             seq = $5, credits_granted = $6, credits_refill = $7{drop_top_up} WHERE id = $8"
        ))
        .bind(&key.name)
        .bind(&key.role)
        .bind(key.expires_at)
        .bind(key.restrictions.to_string())
        .bind(seq)
        .bind(granted)
        .bind(refill)
        .bind(&key.id)
        .execute(&mut *tx)
        .await?;
        let id = Some(key.id.as_str());
        audit::append(
            &mut tx,
            actor,
            "key.updated",
            id,
            tenant.as_deref(),
            actor.at,
        )
        .await?;
        tx.commit().await?;
        Ok(Updated::Done)
    }

    async fn audit(&self, q: &AuditQuery<'_>) -> Result<Vec<AuditRecord>> {
        audit::read(&self.pool, q).await
    }

    async fn create_portal_session(&self, session: &PortalSession, actor: &Actor) -> Result<()> {
        portal::create(&self.pool, session, actor).await
    }

    async fn open_portal_session(
        &self,
        code_sha256: &str,
        session_sha256: &str,
        session_expires_at: i64,
        ip: Option<String>,
        now: i64,
    ) -> Result<Option<OpenedPortal>> {
        portal::open(
            &self.pool,
            code_sha256,
            session_sha256,
            session_expires_at,
            ip,
            now,
        )
        .await
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<StoredKey>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.tenant = $1 ORDER BY k.created_at, k.id"
                ))
                .bind(t)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} ORDER BY k.created_at, k.id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(key_from_row)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn get(&self, id: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(key_from_row).transpose()?)
    }

    async fn revoke(&self, id: &str, actor: &Actor) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        let found = sqlx::query("SELECT revoked, tenant FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = found else {
            tx.rollback().await?;
            return Ok(false);
        };
        if row.try_get::<i64, _>("revoked")? != 0 {
            // Already revoked: no change, no new version.
            tx.rollback().await?;
            return Ok(true);
        }
        sqlx::query("UPDATE api_keys SET revoked = 1, seq = $1 WHERE id = $2")
            .bind(seq)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let tenant: Option<String> = row.try_get("tenant")?;
        audit::append(
            &mut tx,
            actor,
            "key.revoked",
            Some(id),
            tenant.as_deref(),
            actor.at,
        )
        .await?;
        if self.webhooks {
            announce(&mut tx, "key.revoked", id, actor, json!({})).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn roll(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_expires_at: i64,
        actor: &Actor,
    ) -> Result<Rolled> {
        let now = actor.at;
        let mut tx = self.pool.begin().await?;
        // The counter row's lock first: every change before this one has committed, and none
        // after it can start, until this roll ends (one roll of a key wins; a revoke is either
        // before it, and refuses it, or after it).
        let seq = next_seq(&mut tx).await?;
        // Revoked by a leak report (not by hand, and not reported after it was revoked).
        let found = sqlx::query(
            "SELECT revoked, expires_at, rolled_to, \
             (SELECT COUNT(*) FROM key_leaks l WHERE l.key_id = api_keys.id \
              AND l.action = 'revoked') AS leaked \
             FROM api_keys WHERE id = $1",
        )
        .bind(old_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = found else {
            tx.rollback().await?;
            return Ok(Rolled::NotFound);
        };
        let current: Option<i64> = row.try_get("expires_at")?;
        let rolled_to: Option<String> = row.try_get("rolled_to")?;
        // A key revoked because it leaked may be rolled: its successor is the replacement the
        // owner needs (the leaked key stays revoked).
        let revoked = row.try_get::<i64, _>("revoked")? != 0;
        let leaked = row.try_get::<i64, _>("leaked")? != 0;
        let refused = if revoked && !leaked {
            Some(Rolled::Revoked)
        } else if !revoked && current.is_some_and(|t| t <= now) {
            Some(Rolled::Expired)
        } else if rolled_to.is_some() {
            Some(Rolled::AlreadyRolled)
        } else {
            None
        };
        if let Some(r) = refused {
            tx.rollback().await?;
            return Ok(r);
        }
        let expires = current.map_or(old_expires_at, |c| c.min(old_expires_at));
        sqlx::query("UPDATE api_keys SET expires_at = $1, rolled_to = $2, seq = $3 WHERE id = $4")
            .bind(expires)
            .bind(&new.id)
            .bind(seq)
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, new, seq).await?;
        let tenant = new.tenant.as_deref();
        audit::append(&mut tx, actor, "key.rolled", Some(old_id), tenant, now).await?;
        if self.webhooks {
            let extra = json!({"new_key_id": new.id});
            announce(&mut tx, "key.rolled", old_id, actor, extra).await?;
        }
        tx.commit().await?;
        Ok(Rolled::Done)
    }

    async fn sign_in(
        &self,
        id: &str,
        session_sha256: &str,
        admin_fingerprint: &str,
        expires_at: i64,
        actor: &Actor,
    ) -> Result<()> {
        sessions::sign_in(
            &self.pool,
            id,
            session_sha256,
            admin_fingerprint,
            expires_at,
            actor,
        )
        .await
    }

    async fn web_session(
        &self,
        session_sha256: &str,
        now: i64,
        kind: &SessionKind,
    ) -> Result<Option<WebSession>> {
        sessions::find(&self.pool, session_sha256, now, kind).await
    }

    async fn sign_out(&self, session: &WebSession, actor: &Actor) -> Result<()> {
        sessions::sign_out(&self.pool, session, actor).await
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        sessions::tenants(&self.pool).await
    }

    async fn feed(&self, since: Option<&str>) -> Result<Feed> {
        let mut tx = self.pool.begin().await?;
        if let Some(stmt) = self.backend.snapshot_read() {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        let seq = current_seq(&mut tx).await?;
        let version = self.version_of(seq);
        let since_seq = since.and_then(|v| self.seq_of(v)).filter(|s| *s <= seq);
        let feed = match (since, since_seq) {
            (Some(_), Some(s)) if s == seq => Feed::Unchanged { version },
            (Some(since), Some(s)) => {
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.seq > $1 AND k.seq <= $2 ORDER BY k.id"
                ))
                .bind(s)
                .bind(seq)
                .fetch_all(&mut *tx)
                .await?;
                Feed::Delta {
                    version,
                    since: since.to_string(),
                    keys: rows
                        .iter()
                        .map(key_from_row)
                        .collect::<std::result::Result<_, _>>()?,
                }
            }
            _ => {
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.seq <= $1 ORDER BY k.id"
                ))
                .bind(seq)
                .fetch_all(&mut *tx)
                .await?;
                Feed::Full {
                    version,
                    keys: rows
                        .iter()
                        .map(key_from_row)
                        .collect::<std::result::Result<_, _>>()?,
                }
            }
        };
        tx.commit().await?;
        Ok(feed)
    }

    async fn version(&self) -> Result<String> {
        let mut conn = self.pool.acquire().await?;
        Ok(self.version_of(current_seq(&mut conn).await?))
    }

    async fn record_usage(
        &self,
        report_id: &str,
        entries: &[UsageEntry],
        now: i64,
        tenant_credits: &[(String, Credits)],
    ) -> Result<Recorded> {
        let mut tx = self.pool.begin().await?;
        let Some((dropped, known)) = usage::record(&mut tx, report_id, entries, now).await? else {
            tx.rollback().await?;
            return Ok(Recorded::Seen);
        };
        // What the keys spent goes to their balances, and with webhooks a key refused for
        // credits gets its `credits.exhausted` event, in the report's transaction.
        let alerts = self.webhooks.then_some(tenant_credits);
        credits::record(&mut tx, &known, now, alerts).await?;
        tx.commit().await?;
        Ok(Recorded::Counted { dropped })
    }

    async fn change_credits(
        &self,
        id: &str,
        op: Op,
        amount: u64,
        actor: &Actor,
    ) -> Result<CreditsChanged> {
        let mut tx = self.pool.begin().await?;
        // The counter row's lock first: no other change of this key (another credits call, a
        // PATCH) runs between this read and this write, on either database.
        let seq = next_seq(&mut tx).await?;
        let found = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let key = match found.as_ref().map(key_from_row).transpose()? {
            None => Err(CreditsChanged::NotFound),
            Some(k) if k.revoked => Err(CreditsChanged::Revoked),
            Some(k) => k
                .credits
                .map(|c| (k.tenant, c))
                .ok_or(CreditsChanged::NoCredits),
        };
        let (tenant, current) = match key {
            Ok(k) => k,
            Err(refused) => {
                tx.rollback().await?;
                return Ok(refused);
            }
        };
        let changed = match apply(&current.credits, op, amount, actor.at) {
            Ok(c) => c,
            Err(m) => {
                tx.rollback().await?;
                return Ok(CreditsChanged::Refused(m));
            }
        };
        let set_at = if op == Op::Set {
            Some(actor.at)
        } else {
            current.set_at
        };
        credits::write_balance(&mut tx, id, &changed, set_at, seq).await?;
        let details = json!({"op": op.as_str(), "amount": amount}).to_string();
        audit::append_with(
            &mut tx,
            actor,
            "key.credits",
            Some(id),
            tenant.as_deref(),
            actor.at,
            Some(&details),
        )
        .await?;
        tx.commit().await?;
        Ok(CreditsChanged::Done)
    }

    async fn change_tenant_credits(
        &self,
        tenant: &str,
        base: &Credits,
        op: Op,
        amount: u64,
        actor: &Actor,
    ) -> Result<std::result::Result<Credits, String>> {
        let mut tx = self.pool.begin().await?;
        // The counter row's lock first: one change of the key set at a time.
        let seq = next_seq(&mut tx).await?;
        let changed =
            credits::change_tenant(&mut tx, tenant, base, op, amount, actor.at, seq).await?;
        if changed.is_err() {
            tx.rollback().await?;
            return Ok(changed);
        }
        let details = json!({"op": op.as_str(), "amount": amount}).to_string();
        audit::append_with(
            &mut tx,
            actor,
            "tenant.credits",
            None,
            Some(tenant),
            actor.at,
            Some(&details),
        )
        .await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn usage(
        &self,
        id: &str,
        from: Option<i64>,
        to: Option<i64>,
        hourly_from: i64,
    ) -> Result<Vec<UsageRow>> {
        usage::of_key(&self.pool, self.backend, id, from, to, hourly_from).await
    }

    async fn usage_summary(&self, q: &UsageQuery<'_>) -> Result<UsageSummary> {
        usage::summary(&self.pool, self.backend, q).await
    }

    async fn prune_usage(&self, hours_before: i64, days_before: i64) -> Result<Pruned> {
        usage::prune(&self.pool, hours_before, days_before).await
    }

    async fn record_requests(&self, records: &[RequestRecord]) -> Result<()> {
        requests::record(&self.pool, self.backend, &self.partitions, records).await
    }

    async fn requests(&self, q: &RequestQuery) -> Result<Vec<StoredRequest>> {
        requests::read(&self.pool, self.backend, q).await
    }

    async fn client_ips(&self, key_id: &str, limit: usize) -> Result<Vec<ClientIp>> {
        requests::client_ips(&self.pool, key_id, limit).await
    }

    async fn prune_requests(&self, before_day: i64, today: i64) -> Result<u64> {
        requests::prune(
            &self.pool,
            self.backend,
            &self.partitions,
            before_day,
            today,
        )
        .await
    }

    async fn keys_by_digest(&self, digests: &[String]) -> Result<Vec<StoredKey>> {
        let mut keys = Vec::new();
        for chunk in digests.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM {KEYS_FROM} WHERE k.sha256 IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q.bind(d);
            }
            for row in q.fetch_all(&self.pool).await? {
                keys.push(key_from_row(&row)?);
            }
        }
        Ok(keys)
    }

    async fn record_leak(
        &self,
        id: &str,
        report: &LeakReport,
        revoke: bool,
        actor: &Actor,
    ) -> Result<Option<&'static str>> {
        let mut tx = self.pool.begin().await?;
        let Some(action) = leaks::record(&mut tx, id, report, revoke, actor).await? else {
            // Reported before (or no such key): no change.
            tx.rollback().await?;
            return Ok(None);
        };
        // Only a revocation changes the key set (a new version); a report that notifies, or
        // finds the key dead already, changes no key.
        if action == "revoked" {
            let seq = next_seq(&mut tx).await?;
            sqlx::query("UPDATE api_keys SET revoked = 1, seq = $1 WHERE id = $2")
                .bind(seq)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if self.webhooks {
            let extra = json!({
                "origin": report.origin, "url": report.url, "source": report.source,
                "action": action,
            });
            announce(&mut tx, "key.leaked", id, actor, extra).await?;
            if action == "revoked" {
                announce(&mut tx, "key.revoked", id, actor, json!({})).await?;
            }
        }
        tx.commit().await?;
        Ok(Some(action))
    }

    async fn leaks(&self, key: Option<&str>, tenant: Option<&str>) -> Result<Vec<Leak>> {
        leaks::reported(&self.pool, key, tenant).await
    }

    async fn claim_deliveries(&self, now: i64, limit: usize) -> Result<Vec<Delivery>> {
        webhooks::claim_due(&self.pool, now, limit).await
    }

    async fn finish_delivery(&self, id: &str, outcome: &DeliveryOutcome, now: i64) -> Result<()> {
        webhooks::finish(&self.pool, id, outcome, now).await
    }

    async fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>> {
        webhooks::latest(&self.pool, limit).await
    }

    async fn prune_deliveries(&self, before: i64) -> Result<u64> {
        webhooks::prune(&self.pool, before).await
    }
}
