//! Where keys and usage live: one small trait, [`Store`], and its SQL implementation that runs on
//! SQLite (embedded, a file in WAL mode) and PostgreSQL (several service replicas on one
//! database) through sqlx's `Any` driver. The few places where the two dialects differ are in
//! [`Backend`].
//!
//! Versions of the key set: every change to `api_keys` takes the next value of one counter row
//! (`keygate_meta.seq`) inside its transaction. Taking it locks that row until commit, so writers
//! commit in counter order (on PostgreSQL across replicas too) and a reader's snapshot always holds
//! a prefix of the changes: `version` = `<database epoch>-<seq>`, and the delta since a version
//! is the rows with a larger `seq`. The epoch (random, made when the database is created) keeps
//! a version of another database from ever being taken for one of this one.

use super::model::{hour_of, StoredKey, UsageEntry, UsageRow};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::future::Future;

/// What can go wrong in storage (the API maps each to its answer).
#[derive(Debug)]
pub enum StoreError {
    /// The id (or, astronomically unlikely, the digest) exists already.
    Conflict,
    /// The database failed or cannot be reached.
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return StoreError::Conflict;
            }
        }
        StoreError::Unavailable(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The key-sync feed at one version.
#[derive(Debug)]
pub enum Feed {
    /// Every key (revoked ones included).
    Full {
        version: String,
        keys: Vec<StoredKey>,
    },
    /// The keys changed since `since` (a version this database issued).
    Delta {
        version: String,
        since: String,
        keys: Vec<StoredKey>,
    },
    /// Nothing changed since the version asked about.
    Unchanged { version: String },
}

/// The outcome of a roll.
#[derive(Debug, PartialEq, Eq)]
pub enum Rolled {
    Done,
    NotFound,
    Revoked,
}

/// Everything the service keeps. `scope` (a tenant) limits a call to that tenant's keys: a key
/// of another tenant is "not found".
pub trait Store: Send + Sync + 'static {
    fn create(&self, key: &StoredKey) -> impl Future<Output = Result<()>> + Send;
    fn list(&self, tenant: Option<&str>) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<StoredKey>>> + Send;
    /// `Ok(false)`: no such key.
    fn revoke(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Creates `new` and makes `old_id` expire at `old_expires_at` (or earlier, if it already
    /// expires earlier), as one change.
    fn roll(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_expires_at: i64,
    ) -> impl Future<Output = Result<Rolled>> + Send;
    fn feed(&self, since: Option<&str>) -> impl Future<Output = Result<Feed>> + Send;
    /// The current version alone (one indexed read): answers revalidation without the keys.
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
    /// Counts one usage report. `Ok(false)`: a report with this id was counted before (nothing
    /// is counted twice).
    fn record_usage(
        &self,
        report_id: &str,
        entries: &[UsageEntry],
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Usage rows of a key in the hours that overlap `[from, to)`.
    fn usage(
        &self,
        id: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> impl Future<Output = Result<Vec<UsageRow>>> + Send;
}

/// The two databases' differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Begins a read whose statements all see one snapshot.
    fn snapshot_read(self) -> Option<&'static str> {
        match self {
            // A SQLite read transaction in WAL mode is a snapshot from its first read.
            Backend::Sqlite => None,
            Backend::Postgres => Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
        }
    }

    /// Serialises schema migrations between replicas starting at once.
    fn migration_lock(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_advisory_xact_lock(7061766179)"),
        }
    }
}

/// Schema migrations, applied in order at start; each runs once (recorded in
/// `keygate_schema`). Portable SQL: both backends run the same statements.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE keygate_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        name TEXT,
        tenant TEXT,
        role TEXT,
        environment TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        revoked BIGINT NOT NULL DEFAULT 0,
        restrictions TEXT NOT NULL,
        last_used BIGINT,
        seq BIGINT NOT NULL
    )",
        "CREATE INDEX api_keys_seq ON api_keys (seq)",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant)",
        "CREATE TABLE usage_hours (
        key_id TEXT NOT NULL,
        hour BIGINT NOT NULL,
        decision TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (key_id, hour, decision)
    )",
        "CREATE TABLE usage_reports (report_id TEXT PRIMARY KEY, received_at BIGINT NOT NULL)",
        "CREATE INDEX usage_reports_received ON usage_reports (received_at)",
        "INSERT INTO keygate_meta (name, value) VALUES ('seq', 0)",
    ],
    // 2: last use in its own table, so that a usage report updates it in a few multi-row
    // statements (`api_keys.last_used` is no longer written).
    &[
        "CREATE TABLE key_last_used (key_id TEXT PRIMARY KEY, t BIGINT NOT NULL)",
        "INSERT INTO key_last_used (key_id, t) SELECT id, last_used FROM api_keys \
         WHERE last_used IS NOT NULL",
    ],
];

/// Rows per multi-row statement (4 parameters each: far below both databases' limits).
const ROWS_PER_STATEMENT: usize = 500;

/// Report ids are kept this long: a filter retries a report for far less time.
const REPORT_ID_RETENTION_S: i64 = 7 * 86_400;

/// The columns of a key and where they come from (`k`: api_keys, `u`: key_last_used).
const KEY_COLUMNS: &str = "k.id, k.sha256, k.prefix, k.name, k.tenant, k.role, k.environment, \
                           k.created_at, k.expires_at, k.revoked, k.restrictions, u.t AS last_used";
const KEYS_FROM: &str = "api_keys k LEFT JOIN key_last_used u ON u.key_id = k.id";

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Random, made with the database: part of every version.
    epoch: String,
}

impl SqlStore {
    /// Connects to `sqlite:PATH` (created if missing) or `postgres://…` and migrates the schema.
    pub async fn open(url: &str) -> std::result::Result<SqlStore, String> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a file path (sqlite:keys.db)".into());
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite://{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err("the database URL must start with sqlite: or postgres://".into());
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
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| format!("cannot open the database: {e}"))?;
        migrate(&pool, backend)
            .await
            .map_err(|e| format!("schema migration failed: {e}"))?;
        let epoch = ensure_epoch(&pool)
            .await
            .map_err(|e| format!("cannot read the database epoch: {e}"))?;
        Ok(SqlStore {
            pool,
            backend,
            epoch,
        })
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

async fn migrate(pool: &AnyPool, backend: Backend) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(lock) = backend.migration_lock() {
        sqlx::query(lock).execute(&mut *tx).await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS keygate_schema (version BIGINT PRIMARY KEY)")
        .execute(&mut *tx)
        .await?;
    let applied: i64 = sqlx::query("SELECT COUNT(*) AS n FROM keygate_schema")
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
    for (i, steps) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= applied {
            continue;
        }
        for step in *steps {
            sqlx::query(step).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO keygate_schema (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// The database's epoch: made once, at random, by whichever replica gets there first.
async fn ensure_epoch(pool: &AnyPool) -> std::result::Result<String, sqlx::Error> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let candidate = i64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], 0, 0,
    ]);
    sqlx::query(
        "INSERT INTO keygate_meta (name, value) VALUES ('epoch', $1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(candidate)
    .execute(pool)
    .await?;
    let epoch: i64 = sqlx::query("SELECT value FROM keygate_meta WHERE name = 'epoch'")
        .fetch_one(pool)
        .await?
        .try_get("value")?;
    Ok(format!("{epoch:x}"))
}

/// `($1, $2), ($3, $4), …`: `rows` tuples of `width` parameters.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    })
}

async fn insert_key(
    conn: &mut sqlx::AnyConnection,
    k: &StoredKey,
    seq: i64,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, sha256, prefix, name, tenant, role, environment, created_at, \
         expires_at, revoked, restrictions, last_used, seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
    .execute(conn)
    .await
    .map(|_| ())
}

impl Store for SqlStore {
    async fn create(&self, key: &StoredKey) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        insert_key(&mut tx, key, seq).await?;
        tx.commit().await?;
        Ok(())
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

    async fn revoke(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        let found = sqlx::query("SELECT revoked FROM api_keys WHERE id = $1")
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
        tx.commit().await?;
        Ok(true)
    }

    async fn roll(&self, old_id: &str, new: &StoredKey, old_expires_at: i64) -> Result<Rolled> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        let found = sqlx::query("SELECT revoked, expires_at FROM api_keys WHERE id = $1")
            .bind(old_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = found else {
            tx.rollback().await?;
            return Ok(Rolled::NotFound);
        };
        if row.try_get::<i64, _>("revoked")? != 0 {
            tx.rollback().await?;
            return Ok(Rolled::Revoked);
        }
        let current: Option<i64> = row.try_get("expires_at")?;
        let expires = current.map_or(old_expires_at, |c| c.min(old_expires_at));
        sqlx::query("UPDATE api_keys SET expires_at = $1, seq = $2 WHERE id = $3")
            .bind(expires)
            .bind(seq)
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, new, seq).await?;
        tx.commit().await?;
        Ok(Rolled::Done)
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
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
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
            return Ok(false);
        }
        // Summed per (key, hour, decision) first: one report may name a key twice, and one
        // multi-row upsert must not touch a row twice.
        let mut counts: BTreeMap<(&str, i64, &str), i64> = BTreeMap::new();
        let mut last_used: BTreeMap<&str, i64> = BTreeMap::new();
        for e in entries {
            // Counted in the hour of the key's last use in the report (reports cover seconds;
            // a report retried after an outage still lands in the hour it was made).
            let hour = hour_of(e.last_used.unwrap_or(now));
            for (decision, n) in e.counts() {
                *counts.entry((e.id.as_str(), hour, decision)).or_default() += n;
            }
            if let Some(t) = e.last_used {
                let slot = last_used.entry(e.id.as_str()).or_insert(t);
                *slot = (*slot).max(t);
            }
        }
        let counts: Vec<_> = counts.into_iter().collect();
        for chunk in counts.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO usage_hours (key_id, hour, decision, n) VALUES {} \
                 ON CONFLICT (key_id, hour, decision) DO UPDATE SET n = usage_hours.n + excluded.n",
                placeholders(chunk.len(), 4)
            );
            let mut q = sqlx::query(&sql);
            for ((id, hour, decision), n) in chunk {
                q = q.bind(*id).bind(*hour).bind(*decision).bind(*n);
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
        Ok(true)
    }

    async fn usage(&self, id: &str, from: Option<i64>, to: Option<i64>) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query(
            "SELECT hour, decision, n FROM usage_hours WHERE key_id = $1 AND hour >= $2 \
             AND hour < $3 ORDER BY hour, decision",
        )
        .bind(id)
        .bind(from.map_or(i64::MIN, hour_of))
        .bind(to.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    hour: r.try_get("hour")?,
                    decision: r.try_get("decision")?,
                    n: r.try_get("n")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
