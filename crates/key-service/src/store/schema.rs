//! The schema: what differs between SQLite and PostgreSQL, the migrations run at start, and
//! the database's epoch.

use sqlx::{AnyPool, Row};

/// The two databases' differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Begins a read whose statements all see one snapshot.
    pub(super) fn snapshot_read(self) -> Option<&'static str> {
        match self {
            // A SQLite read transaction in WAL mode is a snapshot from its first read.
            Backend::Sqlite => None,
            Backend::Postgres => Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
        }
    }

    /// Serialises schema migrations between replicas starting at once.
    pub(super) fn migration_lock(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("SELECT pg_advisory_xact_lock(7061766179)"),
        }
    }
}

/// Schema migrations, applied in order at start; each runs once (recorded in
/// `keygate_schema`). Portable SQL: both backends run the same statements (but for migration 8,
/// [`request_log_migration`]).
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
    // 3: a rolled key names its successor, so that it is rolled once (under any concurrency).
    &["ALTER TABLE api_keys ADD COLUMN rolled_to TEXT"],
    // 4: the audit log (append-only: no statement of the service updates or deletes it). `id`
    // orders entries of one second: the change's time in nanoseconds, then random bits.
    &[
        "CREATE TABLE audit_log (
        id TEXT PRIMARY KEY,
        time BIGINT NOT NULL,
        actor_type TEXT NOT NULL,
        actor_id TEXT,
        action TEXT NOT NULL,
        key_id TEXT,
        tenant TEXT,
        ip TEXT
    )",
        "CREATE INDEX audit_log_time ON audit_log (time, id)",
        "CREATE INDEX audit_log_tenant ON audit_log (tenant, time, id)",
        "CREATE INDEX audit_log_key ON audit_log (key_id, time, id)",
        // The change number of a key's creation: pages of keys, newest first, in the order
        // keys were made (seconds tie; this number never does).
        "ALTER TABLE api_keys ADD COLUMN created_seq BIGINT",
        "UPDATE api_keys SET created_seq = seq",
        "CREATE INDEX api_keys_created_seq ON api_keys (created_seq)",
    ],
    // 5: portal sessions (SPEC §11): the single-use code and the session it opens, as digests.
    &["CREATE TABLE portal_sessions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        code_sha256 TEXT NOT NULL UNIQUE,
        code_expires_at BIGINT NOT NULL,
        return_url TEXT,
        created_at BIGINT NOT NULL,
        opened_at BIGINT,
        session_sha256 TEXT UNIQUE,
        session_expires_at BIGINT
    )"],
    // 6: usage by route (SPEC §8), by the hour and by the day (see store/usage.rs); the
    // hourly rows so far become route "-", and their days.
    &[
        "CREATE TABLE usage_by_hour (
        key_id TEXT NOT NULL,
        hour BIGINT NOT NULL,
        route TEXT NOT NULL,
        decision TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (key_id, hour, route, decision)
    )",
        "CREATE INDEX usage_by_hour_time ON usage_by_hour (hour)",
        "INSERT INTO usage_by_hour (key_id, hour, route, decision, n) \
         SELECT key_id, hour, '-', decision, n FROM usage_hours",
        "CREATE TABLE usage_by_day (
        key_id TEXT NOT NULL,
        day BIGINT NOT NULL,
        route TEXT NOT NULL,
        decision TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (key_id, day, route, decision)
    )",
        "CREATE INDEX usage_by_day_time ON usage_by_day (day)",
        "INSERT INTO usage_by_day (key_id, day, route, decision, n) \
         SELECT key_id, hour - hour % 86400, '-', decision, CAST(SUM(n) AS BIGINT) FROM usage_hours \
         GROUP BY key_id, hour - hour % 86400, decision",
        "DROP TABLE usage_hours",
    ],
    // 7: operators' browser sessions (SPEC §11), by the digest of their cookie; each holds a
    // fingerprint of the admin token that opened it (a new token ends the old one's sessions).
    &["CREATE TABLE operator_sessions (
        id TEXT PRIMARY KEY,
        session_sha256 TEXT NOT NULL UNIQUE,
        admin_fingerprint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    )"],
];

/// Migration 8: the request log (SPEC §13, store/requests.rs), the one migration whose
/// statements differ: PostgreSQL partitions the log by day (an aged day is dropped whole), with
/// ids from a sequence (a partitioned table has no identity column before PostgreSQL 17).
const REQUEST_LOG_COLUMNS: &str = "time BIGINT NOT NULL,
        key_id TEXT,
        tenant TEXT,
        environment TEXT,
        decision TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        route TEXT,
        status INTEGER NOT NULL,
        client_ip TEXT,
        duration_ms BIGINT,
        user_agent TEXT";

fn request_log_migration(backend: Backend) -> Vec<String> {
    let table = match backend {
        Backend::Sqlite => {
            format!("CREATE TABLE request_log (id INTEGER PRIMARY KEY, {REQUEST_LOG_COLUMNS})")
        }
        Backend::Postgres => format!(
            "CREATE TABLE request_log (id BIGINT NOT NULL DEFAULT nextval('request_log_ids'), \
             {REQUEST_LOG_COLUMNS}) PARTITION BY RANGE (time)"
        ),
    };
    let mut steps = Vec::new();
    if backend == Backend::Postgres {
        steps.push("CREATE SEQUENCE request_log_ids".to_string());
    }
    steps.push(table);
    steps.extend(
        [
            "CREATE INDEX request_log_time ON request_log (time, id)",
            "CREATE INDEX request_log_key ON request_log (key_id, time, id)",
            "CREATE INDEX request_log_tenant ON request_log (tenant, time, id)",
            "CREATE TABLE request_log_ips (
        key_id TEXT NOT NULL,
        client_ip TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (key_id, client_ip)
    )",
        ]
        .map(String::from),
    );
    steps
}

/// Every migration's statements on `backend`, in order.
fn migrations(backend: Backend) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = MIGRATIONS
        .iter()
        .map(|steps| steps.iter().map(|s| s.to_string()).collect())
        .collect();
    all.push(request_log_migration(backend));
    all.push(LEAKS_AND_WEBHOOKS.iter().map(|s| s.to_string()).collect());
    all.push(CREDITS.iter().map(|s| s.to_string()).collect());
    all.push(TENANT_BALANCES.iter().map(|s| s.to_string()).collect());
    all
}

/// Migration 11 (SPEC §14): the top-ups and sets of a tenant's balance (its grant and refill are
/// the configuration's `tenants`), one row per tenant, changed in place.
const TENANT_BALANCES: &[&str] = &["CREATE TABLE tenant_balances (
        tenant TEXT PRIMARY KEY,
        top_up_period BIGINT,
        top_up_amount BIGINT,
        serial BIGINT NOT NULL
    )"];

/// Migration 10 (SPEC §14): a key's credits, as the proxies enforce them (`credits_granted`
/// NULL: none; `credits_refill` `day` or `month:<day>`; the top-ups of one period; the serial a
/// `set` raises, and when), then what the proxies reported spent (one row per key, the period
/// and serial it counts, reset in place: no growth with time) and the `credits.exhausted`
/// event last queued for a key (one row per key: once per period and serial).
const CREDITS: &[&str] = &[
    "ALTER TABLE api_keys ADD COLUMN credits_granted BIGINT",
    "ALTER TABLE api_keys ADD COLUMN credits_refill TEXT",
    "ALTER TABLE api_keys ADD COLUMN credits_top_up_period BIGINT",
    "ALTER TABLE api_keys ADD COLUMN credits_top_up_amount BIGINT",
    "ALTER TABLE api_keys ADD COLUMN credits_serial BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE api_keys ADD COLUMN credits_set_at BIGINT",
    "CREATE TABLE credit_balances (
        key_id TEXT PRIMARY KEY,
        period BIGINT NOT NULL,
        serial BIGINT NOT NULL,
        spent BIGINT NOT NULL
    )",
    "CREATE TABLE credit_alerts (
        key_id TEXT PRIMARY KEY,
        period BIGINT NOT NULL,
        serial BIGINT NOT NULL
    )",
];

/// Migration 9 (SPEC §15): what the audit log says beyond its columns (a leak report's origin,
/// url, source and action, as JSON); a key's first leak report (one per key: a report again is
/// a no-op); webhook deliveries, written in the transaction of the change they announce
/// (`next_attempt_at` NULL: delivered or given up).
const LEAKS_AND_WEBHOOKS: &[&str] = &[
    "ALTER TABLE audit_log ADD COLUMN details TEXT",
    "CREATE TABLE key_leaks (
        key_id TEXT PRIMARY KEY,
        reported_at BIGINT NOT NULL,
        origin TEXT NOT NULL,
        url TEXT,
        source TEXT,
        action TEXT NOT NULL
    )",
    "CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        next_attempt_at BIGINT,
        delivered_at BIGINT,
        last_status BIGINT,
        last_error TEXT
    )",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)",
    "CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at, id)",
];

pub(super) async fn migrate(
    pool: &AnyPool,
    backend: Backend,
) -> std::result::Result<(), sqlx::Error> {
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
    for (i, steps) in migrations(backend).iter().enumerate() {
        let version = i as i64 + 1;
        if version <= applied {
            continue;
        }
        for step in steps {
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
pub(super) async fn ensure_epoch(pool: &AnyPool) -> std::result::Result<String, sqlx::Error> {
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
