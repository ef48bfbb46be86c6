//! The admin API's answers and bodies as types: each answer is serialised from these, and the
//! OpenAPI document (`GET /openapi.json`, [`super::openapi`]) is derived from the same types, so
//! the two cannot drift apart; the CLI (`keygate keys`) reads the answers into them. Fields are
//! in SPEC §7's order.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `{"success": true, "data": …}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Envelope<T> {
    /// Always `true`.
    pub success: bool,
    pub data: T,
}

/// `{"success": true, "data": [...], "next_cursor": …}`: one page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub success: bool,
    pub data: Vec<T>,
    /// Given back as `cursor` for the next page; `null` on the last page (absent from an
    /// unpaged list).
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Every error: `code` names the kind, `error` the problem (for a 400, the field's path first).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    #[schema(example = "expires_at: must be in the future")]
    pub error: String,
    #[schema(example = "BAD_REQUEST")]
    pub code: String,
}

/// A message without data (a revocation).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Done {
    pub success: bool,
    #[schema(example = "API key revoked successfully")]
    pub message: String,
}

/// A key as listed: never its key or digest. Times are RFC 3339 UTC, `null` when unset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Key {
    pub id: String,
    pub name: Option<String>,
    pub prefix: String,
    pub environment: Option<String>,
    pub tenant: Option<String>,
    /// The effective role: the key's, else its prefix's.
    pub role: Option<String>,
    #[schema(example = "2025-01-15T10:30:00Z")]
    pub created_at: String,
    pub last_used: Option<String>,
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// Present only for a key reported leaked (SPEC §15): who reported it, where, and what the
    /// service did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak: Option<LeakView>,
    /// Present only for a key with credits (SPEC §14): its grant and balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsView>,
}

/// A key's credits (SPEC §14) and its balance as the proxies reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreditsView {
    /// Credits per period (or in all, without a refill).
    #[schema(example = 10000)]
    pub granted: u64,
    /// When the balance is replaced by a new grant; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<RefillView>,
    /// `max(0, granted + this period's top-ups - spent)`.
    pub remaining: u64,
    /// What the proxies reported spent in the current period, since the balance was last `set`.
    pub spent: u64,
    /// The next refill (Unix seconds); `null` without a refill.
    pub reset: Option<i64>,
}

/// A tenant's balance as the key service changed it (`POST /v1/tenants/{tenant}/credits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantCredits {
    #[schema(example = "org_42")]
    pub tenant: String,
    pub credits: TenantBalanceView,
}

/// What every key of the tenant carries in the key set: the configuration's grant and refill,
/// this period's top-ups and the serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantBalanceView {
    /// Credits per period (the configuration's `tenants.<tenant>.credits.granted`).
    pub granted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<RefillView>,
    /// This period's top-ups (signed; `set` makes `granted + top_up` what remains).
    pub top_up: i64,
    /// Raised by each `set`: what was spent before no longer counts.
    pub serial: u32,
    /// The next refill (Unix seconds); `null` without a refill.
    pub reset: Option<i64>,
}

/// A refill: each day (00:00 UTC), or each month on `day` (1-31, clamped to the month's last
/// day; 00:00 UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefillView {
    #[schema(pattern = "^(day|month)$", example = "month")]
    pub interval: String,
    /// The day of the month (a monthly refill only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 31)]
    pub day: Option<u8>,
}

/// A key's leak report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeakView {
    #[schema(example = "2025-01-15T10:30:00Z")]
    pub reported_at: String,
    /// `github` or `gitlab`.
    pub origin: String,
    /// Where the key was found.
    pub url: Option<String>,
    /// What the partner says it was found in (`content`, `commit`, …).
    pub source: Option<String>,
    /// `revoked`, `notified`, or `none` (revoked or expired already).
    pub action: String,
}

/// Whether a fingerprint is a live key's (`POST /v1/leaks/check`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FingerprintCheck {
    pub fingerprint: String,
    pub live: bool,
}

/// One webhook delivery (`GET /v1/webhook-deliveries`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryEntry {
    pub id: String,
    pub event: String,
    pub created_at: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
}

/// A key just created or rolled: the only answer that ever holds the plaintext key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    /// The new key (its prefix and at least 128 random bits): shown once.
    pub key: String,
    pub name: Option<String>,
    pub prefix: String,
    pub environment: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// Present only for a key with credits (SPEC §14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsView>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Requests, allowed, and rejections as one number (a total).
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub requests: i64,
    pub allowed: i64,
    pub rejected: i64,
    /// Credits spent (SPEC §14), net of refunds, as the proxies reported them; absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credits: i64,
}

/// One hour or day: rejections by the filter's decision.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// The bucket's start, RFC 3339 UTC.
    pub start: String,
    pub requests: i64,
    pub allowed: i64,
    /// Decision (`invalid`, `revoked`, `rate_limited`, …) → requests.
    pub rejected: BTreeMap<String, i64>,
    /// Credits spent (SPEC §14), net of refunds; absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credits: i64,
}

/// `GET /v1/api-keys/{id}/usage`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyUsage {
    pub id: String,
    pub total: Totals,
    /// Hours with requests, oldest first.
    pub hours: Vec<Bucket>,
    /// Days older than the hourly retention (kept by the day only), oldest first; absent when
    /// there are none (the answer is then SPEC §7's exactly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Bucket>,
}

/// One key's share of a usage summary.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyShare {
    pub id: String,
    pub requests: i64,
    pub allowed: i64,
    pub rejected: i64,
    /// Credits spent (SPEC §14), net of refunds; absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credits: i64,
}

/// One Envoy route's share of a usage summary (`-`: a route without a name).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouteShare {
    pub route: String,
    pub requests: i64,
    pub allowed: i64,
    pub rejected: i64,
    /// Credits spent (SPEC §14), net of refunds; absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credits: i64,
}

/// `GET /v1/usage`: `total` equals the sum of `series`, of `by_key` and of `by_route`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageSummary {
    pub total: Totals,
    /// Every hour or day of the range, none missing.
    pub series: Vec<Bucket>,
    /// Most requests first.
    pub by_key: Vec<KeyShare>,
    /// Most requests first.
    pub by_route: Vec<RouteShare>,
}

/// Who made a change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditActor {
    /// `admin`, `key` (a tenant admin key) or `portal` (a portal session).
    #[serde(rename = "type")]
    pub kind: String,
    /// The tenant admin key's or session's id; `null` for the admin token.
    pub id: Option<String>,
}

/// One audit-log entry (never a key, digest, token or code).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub time: String,
    pub actor: AuditActor,
    #[schema(example = "key.created")]
    pub action: String,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub ip: Option<String>,
    /// What a `key.leaked` entry adds (`origin`, `url`, `source`, `action`), or a
    /// `key.credits` entry (`op`, `amount`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// One request of the request log (SPEC §13): never key material.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestEntry {
    /// The request's start, RFC 3339 with milliseconds.
    #[schema(example = "2026-12-06T10:30:00.123Z")]
    pub time: String,
    /// The key's id; `null` when no key was found (decision `missing` or `invalid`).
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub environment: Option<String>,
    #[schema(example = "allowed")]
    pub decision: String,
    pub method: String,
    /// The judged path, without the query.
    pub path: String,
    /// The Envoy route's name.
    pub route: Option<String>,
    /// The status the client got (`0`: the client went away before an answer).
    pub status: u16,
    pub client_ip: Option<String>,
    pub duration_ms: Option<i64>,
    pub user_agent: Option<String>,
}

/// A client address of a key: first and last seen and its requests since first seen (an address
/// not seen within the kept days is forgotten).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientIpEntry {
    pub client_ip: String,
    pub first_seen: String,
    pub last_seen: String,
    pub requests: i64,
}

/// `GET /v1/api-keys/{id}/requests`: a page of the key's requests, and its client addresses.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyRequestsPage {
    pub success: bool,
    pub data: Vec<RequestEntry>,
    /// Given back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// The key's distinct client addresses, the most recently seen first (at most 1000).
    pub client_ips: Vec<ClientIpEntry>,
}

/// A portal session just created: `url` opens it once, before `expires_at`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PortalSession {
    pub id: String,
    pub url: String,
    pub tenant: String,
    pub expires_at: String,
}

/// A rate limit: `requests` per window.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // a body's shape, read by the filter's own reader
pub struct RateLimit {
    #[schema(minimum = 1)]
    pub requests: u64,
    #[schema(pattern = "^(second|minute|hour|day)$", example = "minute")]
    pub per: String,
}

/// `POST /v1/api-keys` (the fields of a key entry of the plugin configuration).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreateBody {
    /// A configured prefix.
    #[schema(example = "mlm_live_")]
    pub prefix: String,
    pub name: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<String>,
    /// RFC 3339 UTC, in the future.
    pub expires_at: Option<String>,
    pub rate_limits: Option<Vec<RateLimit>>,
    /// CIDRs or addresses.
    pub allowed_ips: Option<Vec<String>>,
    pub allowed_referers: Option<Vec<String>>,
    pub allowed_paths: Option<Vec<String>>,
    /// An id of your choosing (`[A-Za-z0-9_.:-]`); made up when absent.
    pub id: Option<String>,
    /// Credits (SPEC §14): what the key may spend per period, or in all.
    pub credits: Option<CreditsBody>,
}

/// `PATCH /v1/api-keys/{id}`: any of these; `null` clears one.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PatchBody {
    pub name: Option<String>,
    pub role: Option<String>,
    pub expires_at: Option<String>,
    pub rate_limits: Option<Vec<RateLimit>>,
    pub allowed_ips: Option<Vec<String>>,
    pub allowed_referers: Option<Vec<String>>,
    pub allowed_paths: Option<Vec<String>>,
    /// New `granted` and `refill` (the period's top-ups and the balance carry on); `null`
    /// removes the key's credits.
    pub credits: Option<CreditsBody>,
}

/// A key's credits (SPEC §14): `granted` per period (or in all, without `refill`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreditsBody {
    #[schema(minimum = 0, maximum = 9007199254740991_i64, example = 10000)]
    pub granted: u64,
    pub refill: Option<RefillBody>,
}

/// A refill: `{"interval":"day"}` or `{"interval":"month","day":1}` (`day` 1-31, default 1).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RefillBody {
    #[schema(pattern = "^(day|month)$", example = "month")]
    pub interval: String,
    /// The day of the month (a monthly refill only; default 1).
    #[schema(minimum = 1, maximum = 31)]
    pub day: Option<u8>,
}

/// `POST /v1/api-keys/{id}/credits`: `add` or `subtract` changes this period's top-ups;
/// `set` makes the remaining balance `amount` (spending counts anew from now).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreditsOpBody {
    #[schema(pattern = "^(set|add|subtract)$", example = "add")]
    pub op: String,
    #[schema(minimum = 0, maximum = 9007199254740991_i64, example = 500)]
    pub amount: u64,
}

/// `POST /v1/leaks/check`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct FingerprintsBody {
    /// Lowercase hex SHA-256 digests of keys (`keygate scan`'s fingerprints), at most 10,000.
    #[schema(max_items = 10000, inline)]
    pub fingerprints: Vec<Fingerprint>,
}

/// A lowercase hex SHA-256 digest.
#[derive(Debug, ToSchema)]
#[schema(pattern = "^[0-9a-f]{64}$")]
#[allow(dead_code)]
pub struct Fingerprint(String);

/// `POST /v1/api-keys/{id}/roll`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RollBody {
    /// Seconds the old key keeps working (default 86400; at most a year).
    #[schema(minimum = 0, maximum = 31622400)]
    pub grace_seconds: Option<u64>,
}

/// `POST /v1/portal-sessions`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PortalSessionBody {
    #[schema(example = "org_42")]
    pub tenant: String,
    /// Seconds the link may be opened in (at most 3600).
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_seconds: Option<u64>,
    /// Where the portal's "back" link goes: this service's own origin only.
    pub return_url: Option<String>,
}
