//! The key operations behind both the admin API ([`super::api`]) and the web pages
//! ([`super::pages`]): who may do what, validation with the filter's own code, the store, and
//! the answer types. Nothing here knows how the request arrived.

use super::answer::ApiError;
use super::auth::Caller;
use super::input::{read_create, read_credits_op, read_patch, CreateRequest};
use super::model::StoredKey;
use super::state::{now, tenant_scope, App};
use super::store::{Actor, CreditsChanged, Rolled, Store, Updated, UsageQuery, UsageSummary};
use super::store::{Delivery, Leak, LeakReport};
use super::usage::{summary_answer, Range};
use super::views::{
    ClientIpEntry, CreatedKey, DeliveryEntry, FingerprintCheck, Key, LeakView, RequestEntry,
};
use crate::leaks::{revokes, Origin, Reported};
use crate::metrics::metrics;
use crate::mint;
use crate::request_log::{
    format_time_ms, parse_query, ClientIp, Cursor, RequestQuery, StoredRequest,
};
use keygate::keys::digest_hex;
use keygate::timestamp::format_rfc3339;
use serde_json::Value;
use std::collections::HashMap;
use std::collections::HashSet;

/// The key `id` if the caller may see it (else "not found": no probing other tenants' ids).
pub async fn visible<S: Store>(
    app: &App<S>,
    caller: &Caller,
    id: &str,
) -> Result<StoredKey, ApiError> {
    match app.store.get(id).await? {
        Some(k) if caller.may_see(k.tenant.as_deref()) => Ok(k),
        _ => Err(ApiError::NotFound),
    }
}

/// Mints a key for `request` and stores it with `store_it`.
async fn mint_and_store<S: Store>(
    app: &App<S>,
    request: &CreateRequest,
    id: Option<&str>,
    store_it: impl AsyncFnOnce(&StoredKey) -> Result<(), ApiError>,
) -> Result<CreatedKey, ApiError> {
    let fail = |e: String| {
        eprintln!("keygate serve: {e}");
        ApiError::Unavailable
    };
    let id = match id {
        Some(id) => id.to_string(),
        None => format!("key_{}", mint::random_base62(20).map_err(fail)?),
    };
    if app.gate.keys.records().any(|k| k.id == id) {
        return Err(ApiError::Conflict(
            "An API key with this id exists in the plugin configuration".into(),
        ));
    }
    let key = mint::new_key(&request.prefix, request.crc32).map_err(fail)?;
    let stored = request
        .stored(&id, &digest_hex(key.as_bytes()), &app.gate, now())
        .map_err(ApiError::BadRequest)?;
    store_it(&stored).await?;
    Ok(stored.created(&key, &app.gate))
}

/// Creates a key from a create body (SPEC §7): a tenant's caller creates keys of its own
/// tenant, without limits or an id of its choosing.
pub async fn create<S: Store>(
    app: &App<S>,
    caller: &Caller,
    actor: &Actor,
    body: &Value,
) -> Result<CreatedKey, ApiError> {
    let mut request = read_create(body, &app.gate).map_err(ApiError::BadRequest)?;
    if let Caller::Tenant(t) = caller {
        if request.tenant().is_some_and(|given| given != t) {
            return Err(ApiError::Forbidden(
                "A tenant's admin key creates keys of its own tenant only".into(),
            ));
        }
        // Quotas are the provider's, and ids of other tenants' keys are not to be probed.
        for field in ["rate_limits", "credits", "id"] {
            if body.get(field).is_some_and(|v| !v.is_null()) {
                return Err(ApiError::Forbidden(format!(
                    "{field}: only the provider's admin sets this"
                )));
            }
        }
        request.set_tenant(t);
    }
    let id = request.id.clone();
    mint_and_store(app, &request, id.as_deref(), async |k| {
        Ok(app.store.create(k, actor).await?)
    })
    .await
}

/// Applies a PATCH body (SPEC §7): a tenant's caller may not set limits.
pub async fn update<S: Store>(
    app: &App<S>,
    caller: &Caller,
    actor: &Actor,
    id: &str,
    body: &Value,
) -> Result<Key, ApiError> {
    let old = visible(app, caller, id).await?;
    if matches!(caller, Caller::Tenant(_)) {
        if let Some(field) = ["rate_limits", "credits"]
            .into_iter()
            .find(|f| body.get(f).is_some())
        {
            return Err(ApiError::Forbidden(format!(
                "{field}: only the provider's admin sets this"
            )));
        }
    }
    let new = read_patch(body, &old, &app.gate).map_err(ApiError::BadRequest)?;
    match app.store.update(&new, actor).await? {
        Updated::Done => {}
        Updated::NotFound => return Err(ApiError::NotFound),
        Updated::Revoked => {
            return Err(ApiError::Conflict(
                "The API key is revoked; a revoked key is not changed".into(),
            ))
        }
    }
    let key = app.store.get(id).await?.ok_or(ApiError::NotFound)?;
    Ok(key.listed(&app.gate))
}

/// Revokes a key the caller may see.
pub async fn revoke<S: Store>(
    app: &App<S>,
    caller: &Caller,
    actor: &Actor,
    id: &str,
) -> Result<(), ApiError> {
    visible(app, caller, id).await?;
    if !app.store.revoke(id, actor).await? {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

/// Rolls a key: a new key with the same settings; the old one expires `grace` seconds from now.
pub async fn roll<S: Store>(
    app: &App<S>,
    caller: &Caller,
    actor: &Actor,
    id: &str,
    grace: u64,
) -> Result<CreatedKey, ApiError> {
    let old = visible(app, caller, id).await?;
    let mut request = CreateRequest::from_stored(&old, &app.gate);
    // The new key is a new balance at the proxies: it starts with what the old one has left.
    if let Some(c) = &old.credits {
        request.set_credits(Some(&c.carried_over(actor.at)));
    }
    let old_expires = actor.at.saturating_add(grace as i64);
    mint_and_store(app, &request, None, async |k| {
        let refused = match app.store.roll(id, k, old_expires, actor).await? {
            Rolled::Done => return Ok(()),
            Rolled::NotFound => return Err(ApiError::NotFound),
            Rolled::Revoked => "The API key is revoked; create a new key instead",
            Rolled::Expired => "The API key has expired; create a new key instead",
            Rolled::AlreadyRolled => "The API key was rolled already; roll its successor instead",
        };
        Err(ApiError::Conflict(refused.into()))
    })
    .await
    .map_err(|e| match e {
        // The old key's settings no longer pass the current configuration.
        ApiError::BadRequest(m) => ApiError::Conflict(format!(
            "The key's settings are not valid under the current configuration: {m}"
        )),
        e => e,
    })
}

/// `POST /v1/api-keys/{id}/credits` (SPEC §14): `add`, `subtract` or `set` a key's balance
/// (the provider's admin only: balances are quotas); answers the key as changed.
pub async fn change_credits<S: Store>(
    app: &App<S>,
    caller: &Caller,
    actor: &Actor,
    id: &str,
    body: &Value,
) -> Result<Key, ApiError> {
    visible(app, caller, id).await?;
    if matches!(caller, Caller::Tenant(_)) {
        return Err(ApiError::Forbidden(
            "credits: only the provider's admin changes a balance".into(),
        ));
    }
    let (op, amount) = read_credits_op(body).map_err(ApiError::BadRequest)?;
    match app.store.change_credits(id, op, amount, actor).await? {
        CreditsChanged::Done => {}
        CreditsChanged::NotFound => return Err(ApiError::NotFound),
        CreditsChanged::Revoked => {
            return Err(ApiError::Conflict(
                "The API key is revoked; a revoked key is not changed".into(),
            ))
        }
        CreditsChanged::NoCredits => {
            return Err(ApiError::Conflict(
                "The API key has no credits; give it credits with PATCH first".into(),
            ))
        }
        CreditsChanged::Refused(m) => return Err(ApiError::BadRequest(m)),
    }
    let key = app.store.get(id).await?.ok_or(ApiError::NotFound)?;
    let mut listed = with_leaks(app, std::slice::from_ref(&key), None).await?;
    listed.pop().ok_or(ApiError::NotFound)
}

/// `POST /v1/tenants/{tenant}/credits` (SPEC §14): `add`, `subtract` or `set` a tenant's
/// balance, whose grant and refill are the configuration's `tenants.<tenant>.credits` (the
/// provider's admin only). Every key of the tenant carries it in the key set from then on.
pub async fn change_tenant_credits<S: Store>(
    app: &App<S>,
    caller: &Caller,
    actor: &Actor,
    tenant: &str,
    body: &Value,
) -> Result<super::views::TenantCredits, ApiError> {
    if matches!(caller, Caller::Tenant(_)) {
        return Err(ApiError::Forbidden(
            "credits: only the provider's admin changes a balance".into(),
        ));
    }
    let (op, amount) = read_credits_op(body).map_err(ApiError::BadRequest)?;
    let Some(base) = app.gate.tenant_credits(tenant) else {
        return Err(ApiError::Conflict(format!(
            "The tenant has no credits: give it some in the configuration (tenants.{tenant}.credits)"
        )));
    };
    let changed = app
        .store
        .change_tenant_credits(tenant, base, op, amount, actor)
        .await?
        .map_err(ApiError::BadRequest)?;
    let view = crate::credits::KeyCredits {
        credits: changed,
        set_at: None,
        spent: None,
    }
    .view(actor.at);
    Ok(super::views::TenantCredits {
        tenant: tenant.to_string(),
        credits: super::views::TenantBalanceView {
            granted: changed.granted,
            refill: view.refill,
            top_up: crate::credits::top_up_now(&changed, actor.at),
            serial: changed.serial,
            reset: view.reset,
        },
    })
}

/// The usage summary of SPEC §7 for a query (`tenant`, `key`, `from`, `to`, `granularity`).
pub async fn usage_summary<S: Store>(
    app: &App<S>,
    caller: &Caller,
    query: &HashMap<String, String>,
) -> Result<(Range, super::views::UsageSummary), ApiError> {
    let range = Range::read(query, now(), app.usage_retention)?;
    let key = query
        .get("key")
        .map(String::as_str)
        .filter(|k| !k.is_empty());
    if let Some(id) = key {
        visible(app, caller, id).await?;
    }
    let asked = query.get("tenant").filter(|t| !t.is_empty());
    // Another tenant's usage looks like that of a tenant without keys: all zeros.
    let Some(tenant) = tenant_scope(caller, asked) else {
        return Ok((range, summary_answer(&range, &UsageSummary::default())));
    };
    let s = app
        .store
        .usage_summary(&UsageQuery {
            tenant,
            key,
            from: range.from,
            to: range.to,
            by_day: range.by_day,
        })
        .await?;
    Ok((range, summary_answer(&range, &s)))
}

/// A page of the request log as `caller` may see it: a tenant's caller, its tenant only (another
/// tenant asked for: nothing). `Err` for a bad filter.
pub async fn requests<S: Store>(
    app: &App<S>,
    caller: &Caller,
    params: &HashMap<String, String>,
    default_limit: usize,
) -> Result<(Vec<StoredRequest>, Option<String>), ApiError> {
    let mut q = parse_query(params, default_limit).map_err(ApiError::BadRequest)?;
    let Some(tenant) = tenant_scope(caller, q.tenant.as_ref()) else {
        return Ok((vec![], None));
    };
    q.tenant = tenant.map(str::to_string);
    page_of(app, q).await
}

/// A page of one key's requests (the key visible to `caller`, else `NotFound`).
pub async fn key_requests<S: Store>(
    app: &App<S>,
    caller: &Caller,
    id: &str,
    params: &HashMap<String, String>,
    default_limit: usize,
) -> Result<(Vec<StoredRequest>, Option<String>), ApiError> {
    visible(app, caller, id).await?;
    let mut q = parse_query(params, default_limit).map_err(ApiError::BadRequest)?;
    q.key_id = Some(id.to_string());
    // The key's own records: a tenant filter beside it narrows nothing a caller may not see.
    q.tenant = None;
    page_of(app, q).await
}

async fn page_of<S: Store>(
    app: &App<S>,
    mut q: RequestQuery,
) -> Result<(Vec<StoredRequest>, Option<String>), ApiError> {
    let limit = q.limit;
    q.limit = limit + 1;
    let mut rows = app.store.requests(&q).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = rows.last().filter(|_| more).map(|r| {
        Cursor {
            time_ms: r.record.time_ms,
            id: r.id,
        }
        .encode()
    });
    Ok((rows, next))
}

/// A key's client addresses (the key visible to `caller`).
pub async fn client_ips<S: Store>(
    app: &App<S>,
    caller: &Caller,
    id: &str,
    limit: usize,
) -> Result<Vec<ClientIp>, ApiError> {
    visible(app, caller, id).await?;
    Ok(app.store.client_ips(id, limit).await?)
}

pub fn request_entry(r: StoredRequest) -> RequestEntry {
    let r = r.record;
    RequestEntry {
        time: format_time_ms(r.time_ms),
        key_id: r.key_id,
        tenant: r.tenant,
        environment: r.environment,
        decision: r.decision,
        method: r.method,
        path: r.path,
        route: r.route,
        status: r.status,
        client_ip: r.client_ip,
        duration_ms: r.duration_ms,
        user_agent: r.user_agent,
    }
}

pub fn client_ip_entry(c: ClientIp) -> ClientIpEntry {
    ClientIpEntry {
        client_ip: c.client_ip,
        first_seen: format_time_ms(c.first_seen_ms),
        last_seen: format_time_ms(c.last_seen_ms),
        requests: c.requests,
    }
}

/// Acts on a leak report (SPEC §15): every reported token that is a key of this service is
/// recorded against it (once: a key reported again is a no-op), and a live one is revoked when
/// its prefix's policy says so. Answers the digests of the keys the service knows.
pub async fn report_leaks<S: Store>(
    app: &App<S>,
    origin: Origin,
    actor: &Actor,
    reported: &[Reported],
) -> Result<HashSet<String>, ApiError> {
    let mut digests: Vec<String> = reported.iter().map(|r| r.digest.clone()).collect();
    digests.sort_unstable();
    digests.dedup();
    let keys = app.store.keys_by_digest(&digests).await?;
    for key in &keys {
        let Some(first) = reported.iter().find(|r| r.digest == key.sha256) else {
            continue;
        };
        let (environment, _) = key.effective(&app.gate);
        let revoke = revokes(&app.gate, &key.prefix, environment.as_deref());
        let report = LeakReport {
            origin: origin.as_str(),
            url: first.url.clone(),
            source: first.source.clone(),
        };
        match app
            .store
            .record_leak(&key.id, &report, revoke, actor)
            .await?
        {
            Some(action) => {
                metrics().leaked_key(origin.as_str(), action);
                eprintln!(
                    "keygate serve: key {} reported leaked by {} ({}): {action}",
                    key.id,
                    origin.as_str(),
                    first.url.as_deref().unwrap_or("no url")
                );
            }
            None => metrics().leaked_key(origin.as_str(), "repeated"),
        }
    }
    Ok(keys.into_iter().map(|k| k.sha256).collect())
}

/// Which of `fingerprints` (SHA-256 digests) are live keys the caller may see.
pub async fn check_fingerprints<S: Store>(
    app: &App<S>,
    caller: &Caller,
    fingerprints: &[String],
) -> Result<Vec<FingerprintCheck>, ApiError> {
    let at = now();
    let live: HashSet<String> = app
        .store
        .keys_by_digest(fingerprints)
        .await?
        .into_iter()
        .filter(|k| caller.may_see(k.tenant.as_deref()))
        .filter(|k| !k.revoked && k.expires_at.is_none_or(|t| t > at))
        .map(|k| k.sha256)
        .collect();
    Ok(fingerprints
        .iter()
        .map(|f| FingerprintCheck {
            fingerprint: f.clone(),
            live: live.contains(f),
        })
        .collect())
}

pub fn leak_view(l: &Leak) -> LeakView {
    LeakView {
        reported_at: format_rfc3339(l.reported_at),
        origin: l.origin.clone(),
        url: l.url.clone(),
        source: l.source.clone(),
        action: l.action.clone(),
    }
}

/// `keys` as listed, each with its leak report if it has one.
pub async fn with_leaks<S: Store>(
    app: &App<S>,
    keys: &[StoredKey],
    tenant: Option<&str>,
) -> Result<Vec<Key>, ApiError> {
    let leaks = if let [one] = keys {
        app.store.leaks(Some(&one.id), None).await?
    } else if keys.is_empty() {
        vec![]
    } else {
        app.store.leaks(None, tenant).await?
    };
    let by_key: HashMap<&str, &Leak> = leaks.iter().map(|l| (l.key_id.as_str(), l)).collect();
    Ok(keys
        .iter()
        .map(|k| {
            let mut listed = k.listed(&app.gate);
            listed.leak = by_key.get(k.id.as_str()).map(|l| leak_view(l));
            listed
        })
        .collect())
}

pub fn delivery_entry(d: &Delivery) -> DeliveryEntry {
    let status = match (d.delivered_at, d.next_attempt_at) {
        (Some(_), _) => "delivered",
        (None, Some(_)) => "pending",
        (None, None) => "failed",
    };
    DeliveryEntry {
        id: d.id.clone(),
        event: d.event.clone(),
        created_at: format_rfc3339(d.created_at),
        status: status.into(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at.map(format_rfc3339),
        delivered_at: d.delivered_at.map(format_rfc3339),
        last_status: d.last_status,
        last_error: d.last_error.clone(),
    }
}
