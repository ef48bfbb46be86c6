//! What every handler shares: the app (store, configuration, authentication, cached feeds) and
//! one listener's view of it; the clock; who a caller is in the audit log and which tenant it
//! may see.

use crate::auth::{Auth, Caller};
use crate::ingest::RequestLog;
use crate::input::text_ok;
use crate::server::Peer;
use crate::signing_keys::KeySource;
use crate::store::Actor;
use crate::usage::Retention;
use axum::http::HeaderMap;
use keygate::model::Gate;
use std::sync::Arc;

/// What every handler shares.
pub struct App<S> {
    pub store: S,
    pub gate: Gate,
    pub auth: Auth,
    /// The last full `/keys` answer and its version: a version names one state, so the same
    /// bytes serve every Envoy that asks for it (and are rebuilt only when the set changes).
    pub full_feed: std::sync::Mutex<Option<(String, axum::body::Bytes)>>,
    /// The same in the compact form (`Accept: application/vnd.keygate.keyset.v1`).
    pub full_feed_binary: std::sync::Mutex<Option<(String, axum::body::Bytes)>>,
    /// How long usage is kept by the hour (`/v1/usage` by the hour reaches no further back).
    pub usage_retention: Retention,
    /// Session cookies without `Secure` (`--insecure-cookies`: plain-HTTP localhost only).
    pub insecure_cookies: bool,
    /// The dashboard's address as customers reach it (`--public-url`): portal links point there.
    pub public_url: Option<String>,
    /// Where request-log exports are written (in batches, by one task).
    pub request_log: RequestLog,
    /// The keys GitHub's leak reports are signed with (SPEC §15; `None`: its endpoint is off).
    pub github_keys: Option<KeySource>,
    /// GitLab's (`None`: no `--gitlab-keys-url`, its endpoint is off).
    pub gitlab_keys: Option<KeySource>,
    /// Key events are sent to a webhook.
    pub webhooks: bool,
}

/// One listener's view of the app: `gateway` = trust keygate's identity headers.
pub struct Ctx<S> {
    pub app: Arc<App<S>>,
    pub gateway: bool,
}

impl<S> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Ctx {
            app: self.app.clone(),
            gateway: self.gateway,
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The audit log's view of a caller: who, from which address (on the gateway listener, the
/// client address Envoy appended to `X-Forwarded-For`), when.
pub fn actor<S>(ctx: &Ctx<S>, headers: &HeaderMap, caller: &Caller, peer: Option<Peer>) -> Actor {
    let (kind, id) = ctx.app.auth.actor_of(headers, caller);
    let forwarded = ctx
        .gateway
        .then(|| headers.get("x-forwarded-for")?.to_str().ok())
        .flatten()
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 64 && text_ok(v));
    Actor {
        kind,
        id,
        ip: forwarded.or_else(|| peer.map(|p| p.0.ip().to_string())),
        at: now(),
    }
}

/// Which tenant a call's `?tenant=` may see: the admin any (or all: `Some(None)`), a tenant
/// admin key its own; `None`: another tenant's, so nothing.
pub fn tenant_scope<'a>(caller: &'a Caller, asked: Option<&'a String>) -> Option<Option<&'a str>> {
    match (caller, asked.map(String::as_str)) {
        (Caller::Admin, t) => Some(t),
        (Caller::Tenant(t), None) => Some(Some(t.as_str())),
        (Caller::Tenant(t), Some(a)) if a == t => Some(Some(a)),
        (Caller::Tenant(_), Some(_)) => None,
    }
}
