//! What a store is: the [`Store`] trait every backend implements, the records it takes and
//! answers, and its errors. [`super::sql`] implements it on SQLite and PostgreSQL.

use crate::credits::Op;
use crate::model::{StoredKey, UsageEntry, UsageRow};
use crate::request_log::{ClientIp, RequestQuery, RequestRecord, StoredRequest};
use keygate::model::Credits;
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

/// The outcome of a roll: done, or why not (checked in the roll's own transaction, after
/// every earlier change to the key, so exactly one roll of a key succeeds).
#[derive(Debug, PartialEq, Eq)]
pub enum Rolled {
    Done,
    NotFound,
    /// A revoked key (perhaps leaked) never gains a successor.
    Revoked,
    /// Its expiry has passed (a roll with `grace_seconds: 0` expires it at once).
    Expired,
    /// It was rolled before: its successor is the key to roll.
    AlreadyRolled,
}

/// Who made a change, from where, when: what the audit log records of a caller (never a key,
/// digest, token or code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `admin` (the admin token), `key` (a tenant admin key) or `portal` (a portal session).
    pub kind: &'static str,
    /// The tenant admin key's id, or the session's; `None` for the admin token.
    pub id: Option<String>,
    /// The client's address (behind keygate: the one Envoy saw).
    pub ip: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Orders entries (newest first) and pages them.
    pub id: String,
    pub time: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub ip: Option<String>,
    /// A JSON object's text: what a `key.leaked` entry adds (origin, url, source, action).
    pub details: Option<String>,
}

/// Which entries: all filters optional; `before` an entry id (the page after it).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditQuery<'a> {
    pub tenant: Option<&'a str>,
    pub key: Option<&'a str>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub before: Option<&'a str>,
    pub limit: usize,
}

/// The outcome of an edit.
#[derive(Debug, PartialEq, Eq)]
pub enum Updated {
    Done,
    NotFound,
    /// A revoked key stays as it was revoked.
    Revoked,
}

/// The outcome of a credits call.
#[derive(Debug, PartialEq, Eq)]
pub enum CreditsChanged {
    Done,
    NotFound,
    /// A revoked key stays as it was revoked.
    Revoked,
    /// The key has no credits to change.
    NoCredits,
    /// The change is not one a balance can take (the message of a 400).
    Refused(String),
}

/// Where a page of keys starts (newest first): after the key created by change `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCursor {
    pub seq: i64,
}

impl KeyCursor {
    /// Opaque to clients: `k` and the number in hex.
    pub fn encode(&self) -> String {
        format!("k{:x}", self.seq)
    }

    pub fn decode(s: &str) -> Option<KeyCursor> {
        let hex = s
            .strip_prefix('k')
            .filter(|h| (1..=16).contains(&h.len()))?;
        Some(KeyCursor {
            seq: i64::from_str_radix(hex, 16).ok().filter(|n| *n >= 0)?,
        })
    }
}

/// A portal session as created: its code is known only to the caller (stored as a digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSession {
    pub id: String,
    pub tenant: String,
    pub code_sha256: String,
    pub code_expires_at: i64,
    pub return_url: Option<String>,
}

/// A portal session whose code was just exchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedPortal {
    pub id: String,
    pub tenant: String,
    pub return_url: Option<String>,
}

/// What a usage report did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Counted; `dropped` entries named no key of this service and were not stored.
    Counted { dropped: usize },
    /// A report with this id was counted before: nothing is counted twice.
    Seen,
}

/// Which usage a summary covers: `[from, to)` (bucket-aligned), optionally one tenant's keys or
/// one key.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery<'a> {
    pub tenant: Option<&'a str>,
    pub key: Option<&'a str>,
    pub from: i64,
    pub to: i64,
    /// Buckets of a day (else of an hour).
    pub by_day: bool,
}

/// Counts by decision.
pub type ByDecision = BTreeMap<String, i64>;

/// A usage summary's sums (sparse: the API fills the series' empty buckets).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UsageSummary {
    pub series: BTreeMap<i64, ByDecision>,
    pub by_key: BTreeMap<String, ByDecision>,
    pub by_route: BTreeMap<String, ByDecision>,
}

fn add(map: &mut ByDecision, decision: String, n: i64) {
    let slot = map.entry(decision).or_default();
    *slot = slot.saturating_add(n);
}

impl UsageSummary {
    pub fn add_series(&mut self, start: i64, decision: String, n: i64) {
        add(self.series.entry(start).or_default(), decision, n);
    }
    pub fn add_key(&mut self, id: String, decision: String, n: i64) {
        add(self.by_key.entry(id).or_default(), decision, n);
    }
    pub fn add_route(&mut self, route: String, decision: String, n: i64) {
        add(self.by_route.entry(route).or_default(), decision, n);
    }
}

/// A leak report of one key (SPEC §15): where it came from, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakReport {
    /// `github` or `gitlab`.
    pub origin: &'static str,
    pub url: Option<String>,
    pub source: Option<String>,
}

/// A key's (first) leak report and the action taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub key_id: String,
    pub reported_at: i64,
    pub origin: String,
    pub url: Option<String>,
    pub source: Option<String>,
    /// `revoked`, `notified`, or `none` (the key was revoked or expired already).
    pub action: String,
    /// The key's successor, once it was rolled.
    pub rolled_to: Option<String>,
}

/// One webhook delivery (SPEC §15): its event and where its attempts stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub event: String,
    /// The JSON sent, as sent.
    pub body: String,
    pub created_at: i64,
    pub attempts: i64,
    /// `None`: delivered, or given up.
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
}

/// How an attempt to deliver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered {
        status: i64,
    },
    Retry {
        at: i64,
        status: Option<i64>,
        error: String,
    },
    GaveUp {
        status: Option<i64>,
        error: String,
    },
}

/// What pruning usage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub hourly_rows_deleted: u64,
    pub daily_rows_deleted: u64,
}

/// A browser session (SPEC §11): an operator's (`tenant` `None`: every tenant) or a portal
/// session's (one tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// `os_…` (an operator's) or `ps_…` (a portal session's): what the audit log names.
    pub id: String,
    pub tenant: Option<String>,
}

/// Which cookie a session is looked up for: each kind only under its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// An operator's: valid only with the fingerprint of the current admin token.
    Operator {
        admin_fingerprint: String,
    },
    Portal,
}

/// Everything the service keeps.
/// Every change is written with its audit-log entry, in one transaction.
pub trait Store: Send + Sync + 'static {
    fn create(&self, key: &StoredKey, actor: &Actor) -> impl Future<Output = Result<()>> + Send;
    fn list(&self, tenant: Option<&str>) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;
    /// At most `limit` keys, newest first, after `after`.
    fn list_page(
        &self,
        tenant: Option<&str>,
        limit: usize,
        after: Option<&KeyCursor>,
    ) -> impl Future<Output = Result<Vec<(StoredKey, KeyCursor)>>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<StoredKey>>> + Send;
    /// `Ok(false)`: no such key.
    fn revoke(&self, id: &str, actor: &Actor) -> impl Future<Output = Result<bool>> + Send;
    /// Replaces a key's editable settings (name, role, expiry, limits, restrictions, and its
    /// credits' grant and refill) with `key`'s; refused for a revoked key. Removing credits
    /// drops the period's top-ups; the serial stays.
    fn update(
        &self,
        key: &StoredKey,
        actor: &Actor,
    ) -> impl Future<Output = Result<Updated>> + Send;
    fn create_portal_session(
        &self,
        session: &PortalSession,
        actor: &Actor,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Exchanges a code for a session, once: `None` for a code unknown, used or expired.
    fn open_portal_session(
        &self,
        code_sha256: &str,
        session_sha256: &str,
        session_expires_at: i64,
        ip: Option<String>,
        now: i64,
    ) -> impl Future<Output = Result<Option<OpenedPortal>>> + Send;
    /// Opens an operator's session (signed in with the admin token).
    fn sign_in(
        &self,
        id: &str,
        session_sha256: &str,
        admin_fingerprint: &str,
        expires_at: i64,
        actor: &Actor,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The live session of this kind whose cookie has this digest.
    fn web_session(
        &self,
        session_sha256: &str,
        now: i64,
        kind: &SessionKind,
    ) -> impl Future<Output = Result<Option<WebSession>>> + Send;
    /// Ends a session at once.
    fn sign_out(
        &self,
        session: &WebSession,
        actor: &Actor,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every tenant that has a key.
    fn tenants(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Audit-log entries, newest first.
    fn audit(&self, q: &AuditQuery<'_>) -> impl Future<Output = Result<Vec<AuditRecord>>> + Send;
    /// Creates `new` and makes `old_id` expire at `old_expires_at` (or earlier, if it already
    /// expires earlier), as one change; refused for a key revoked, expired at `now`, or rolled.
    fn roll(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_expires_at: i64,
        actor: &Actor,
    ) -> impl Future<Output = Result<Rolled>> + Send;
    fn feed(&self, since: Option<&str>) -> impl Future<Output = Result<Feed>> + Send;
    /// The current version alone (one indexed read): answers revalidation without the keys.
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
    /// Counts one usage report, for the keys this service has: requests, credits spent (added
    /// to the keys' balances), and, with webhooks, `credits.exhausted` for a key refused for
    /// credits (its own balance's period, or its tenant's in `tenant_credits`).
    fn record_usage(
        &self,
        report_id: &str,
        entries: &[UsageEntry],
        now: i64,
        tenant_credits: &[(String, Credits)],
    ) -> impl Future<Output = Result<Recorded>> + Send;
    /// Changes key `id`'s balance by `op` of `amount` at `actor.at` (SPEC §14), with its audit
    /// entry (`key.credits`), as a change of the key set (a new version).
    fn change_credits(
        &self,
        id: &str,
        op: Op,
        amount: u64,
        actor: &Actor,
    ) -> impl Future<Output = Result<CreditsChanged>> + Send;
    /// Changes `tenant`'s balance (granted by the configuration: `base`) by `op` of `amount` at
    /// `actor.at` (SPEC §14), with its audit entry (`tenant.credits`), as a change of every key
    /// of the tenant in the key set (a new version). The new balance, or the message of a 400.
    fn change_tenant_credits(
        &self,
        tenant: &str,
        base: &Credits,
        op: Op,
        amount: u64,
        actor: &Actor,
    ) -> impl Future<Output = Result<std::result::Result<Credits, String>>> + Send;
    /// Usage rows of a key (summed over routes) in the hours that overlap `[from, to)` from
    /// `hourly_from` on, then those of the days before `hourly_from` that overlap it.
    fn usage(
        &self,
        id: &str,
        from: Option<i64>,
        to: Option<i64>,
        hourly_from: i64,
    ) -> impl Future<Output = Result<Vec<UsageRow>>> + Send;
    /// Usage summed by bucket, key and route.
    fn usage_summary(
        &self,
        q: &UsageQuery<'_>,
    ) -> impl Future<Output = Result<UsageSummary>> + Send;
    /// Deletes hourly rows before `hours_before` and daily rows before `days_before`.
    fn prune_usage(
        &self,
        hours_before: i64,
        days_before: i64,
    ) -> impl Future<Output = Result<Pruned>> + Send;
    /// Appends request-log records (SPEC §13) in one transaction.
    fn record_requests(&self, records: &[RequestRecord])
        -> impl Future<Output = Result<()>> + Send;
    /// A page of the request log, newest first.
    fn requests(&self, q: &RequestQuery)
        -> impl Future<Output = Result<Vec<StoredRequest>>> + Send;
    /// A key's client addresses with first and last seen, the latest first.
    fn client_ips(
        &self,
        key_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ClientIp>>> + Send;
    /// The keys (live or not) whose digests are among `digests`.
    fn keys_by_digest(
        &self,
        digests: &[String],
    ) -> impl Future<Output = Result<Vec<StoredKey>>> + Send;
    /// Records a leak report of key `id`, revoking it if `revoke` and it is live, with its
    /// audit entry: the action taken, or `None` when the key was reported before (a no-op).
    fn record_leak(
        &self,
        id: &str,
        report: &LeakReport,
        revoke: bool,
        actor: &Actor,
    ) -> impl Future<Output = Result<Option<&'static str>>> + Send;
    /// Leak reports of one key, a tenant's keys, or every key.
    fn leaks(
        &self,
        key: Option<&str>,
        tenant: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Leak>>> + Send;
    /// Claims webhook deliveries due at `now` (at most `limit`) for this replica.
    fn claim_deliveries(
        &self,
        now: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>>> + Send;
    /// Records how a delivery attempt ended.
    fn finish_delivery(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The latest webhook deliveries, newest first.
    fn deliveries(&self, limit: usize) -> impl Future<Output = Result<Vec<Delivery>>> + Send;
    /// Deletes finished deliveries made before `before`.
    fn prune_deliveries(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Drops the request log's days before `before_day` (days since the epoch); readies
    /// `today`'s and the next.
    fn prune_requests(
        &self,
        before_day: i64,
        today: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
}
