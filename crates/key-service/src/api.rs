//! The routes: the admin API (`/v1/api-keys…`), the key-sync feed (`/keys`) and usage reports
//! (`/usage`). Handlers only read the request, ask the store and shape the answer.

use super::answer::{data, json_response, page, ApiError};
use super::auth::Caller;
use super::input::{read_roll, text_ok};
use super::metrics::{metrics, Answer, Report};
use super::model::{feed_answer, usage_answer, StoredKey};
use super::ops;
use super::report::read_report;
use super::request::{body_bytes, body_json, query_map, time_param};
use super::server::{Peer, ADMIN_BODY_LIMIT, REPORT_BODY_LIMIT};
use super::state::{actor, now, tenant_scope, App, Ctx};
use super::store::{AuditQuery, Feed, KeyCursor, Recorded, Store};
use super::views::{AuditActor, AuditEntry, Done, Key, KeyRequestsPage};
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keygate::keyset::{encode_binary_set, BINARY_MEDIA_TYPE};
use keygate::model::Gate;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// What a listener answers while the service cannot open its database yet: `/healthz` (the
/// process is alive), everything else `503 UNAVAILABLE` (`/readyz` too: not ready).
pub fn starting() -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &json!({"success": true})) }),
        )
        .fallback(|| async { ApiError::Unavailable })
}

/// The routes of one listener. The gateway listener (for Envoy, trusting keygate's identity
/// headers) serves the admin API only: never the feed or the usage endpoint.
pub fn router<S: Store>(app: Arc<App<S>>, gateway: bool) -> Router {
    let mut r = Router::new()
        .route("/v1/api-keys", post(create::<S>).get(list::<S>))
        .route(
            "/v1/api-keys/{id}",
            get(show::<S>).delete(revoke::<S>).patch(update::<S>),
        )
        .route("/v1/audit-log", get(audit_log::<S>))
        .route("/v1/usage", get(usage_summary::<S>))
        .route("/v1/portal-sessions", post(super::portal::create::<S>))
        .route("/v1/api-keys/{id}/roll", post(roll::<S>))
        .route("/v1/api-keys/{id}/credits", post(change_credits::<S>))
        .route(
            "/v1/tenants/{tenant}/credits",
            post(change_tenant_credits::<S>),
        )
        .route("/v1/api-keys/{id}/usage", get(usage::<S>))
        .route("/v1/requests", get(requests::<S>))
        .route("/v1/api-keys/{id}/requests", get(key_requests::<S>))
        .route("/v1/leaks/check", post(check_fingerprints::<S>))
        .route("/v1/webhook-deliveries", get(webhook_deliveries::<S>));
    if !gateway {
        r = r
            .route("/keys", get(feed::<S>))
            .route("/usage", post(report::<S>))
            // Portal links open on the listener the dashboard is on, never the gateway's.
            .route(
                "/portal/open",
                get(super::portal::open::<S>).post(super::portal::open_confirmed::<S>),
            )
            .merge(super::pages::routes::<S>());
    }
    // Envoy's access logger, on either listener (the sync token when the service has one).
    // Leak reports come from GitHub and GitLab (on either listener: the public one is wherever
    // the operator exposes the service).
    r.route(super::otlp::EXPORT_PATH, post(super::otlp::export::<S>))
        .route("/v1/leaks/github", post(super::partners::github::<S>))
        .route("/v1/leaks/gitlab", post(super::partners::gitlab::<S>))
        .route(
            "/v1/revocable_token_types",
            get(super::partners::revocable_token_types::<S>),
        )
        .route(
            "/v1/revoke_tokens",
            post(super::partners::revoke_tokens::<S>),
        )
        .route(
            "/openapi.json",
            get(|State(ctx): State<Ctx<S>>| async move {
                json_response(StatusCode::OK, &super::openapi::document(&ctx.app.gate))
            }),
        )
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &json!({"success": true})) }),
        )
        .route("/readyz", get(readyz::<S>))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().render(),
                )
            }),
        )
        .fallback(|| async {
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"success": false, "error": "No such endpoint", "code": "NOT_FOUND"}),
            )
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(measured))
        .with_state(Ctx { app, gateway })
}

async fn create<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    let body = body_json(body, ADMIN_BODY_LIMIT).await?;
    let created = ops::create(&ctx.app, &caller, &actor, &body).await?;
    Ok(data(StatusCode::CREATED, created))
}

async fn list<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let query = query_map(query)?;
    let Some(tenant) = tenant_scope(&caller, query.get("tenant")) else {
        return Ok(data(StatusCode::OK, Vec::<Key>::new()));
    };
    let Some(limit) = limit_param(&query, None)? else {
        let keys = ctx.app.store.list(tenant).await?;
        let listed: Vec<Key> = ops::with_leaks(&ctx.app, &keys, tenant).await?;
        return Ok(data(StatusCode::OK, listed));
    };
    let after = query
        .get("cursor")
        .map(|c| {
            KeyCursor::decode(c).ok_or_else(|| {
                ApiError::BadRequest("cursor: not a cursor this service gave".into())
            })
        })
        .transpose()?;
    let mut keys = ctx
        .app
        .store
        .list_page(tenant, limit + 1, after.as_ref())
        .await?;
    let more = keys.len() > limit;
    keys.truncate(limit);
    let next = keys.last().filter(|_| more).map(|(_, c)| c.encode());
    let keys: Vec<StoredKey> = keys.into_iter().map(|(k, _)| k).collect();
    let listed: Vec<Key> = ops::with_leaks(&ctx.app, &keys, tenant).await?;
    Ok(page(listed, next))
}

/// `limit`: 1–1000 (`default` when absent; `None` and no default: not paged).
fn limit_param(
    query: &HashMap<String, String>,
    default: Option<usize>,
) -> Result<Option<usize>, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::BadRequest(format!(
                "limit: {v:?} is not a whole number from 1 to 1000"
            ))),
        },
    }
}

/// `PATCH /v1/api-keys/{id}`: name, role, expiry, limits, restrictions (`null` clears one).
async fn update<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let id = key_id(id)?;
    let body = body_json(body, ADMIN_BODY_LIMIT).await?;
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    let key = ops::update(&ctx.app, &caller, &actor, &id, &body).await?;
    Ok(data(StatusCode::OK, key))
}

/// `GET /v1/audit-log`: entries newest first; a tenant admin sees its tenant's only.
async fn audit_log<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let query = query_map(query)?;
    let (from, to) = (time_param(&query, "from")?, time_param(&query, "to")?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::BadRequest("from: is after to".into()));
        }
    }
    let Some(tenant) = tenant_scope(&caller, query.get("tenant")) else {
        return Ok(page(Vec::<AuditEntry>::new(), None));
    };
    let limit = limit_param(&query, Some(100))?.unwrap_or(100);
    let before = query.get("cursor").map(String::as_str);
    if before.is_some_and(|c| c.len() != 32 || !c.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ApiError::BadRequest(
            "cursor: not a cursor this service gave".into(),
        ));
    }
    let mut entries = ctx
        .app
        .store
        .audit(&AuditQuery {
            tenant,
            key: query.get("key").map(String::as_str),
            from,
            to,
            before,
            limit: limit + 1,
        })
        .await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = entries.last().filter(|_| more).map(|e| e.id.clone());
    let customer = matches!(caller, Caller::Tenant(_));
    Ok(page(
        entries
            .into_iter()
            .map(|e| audit_entry(e, customer))
            .collect(),
        next,
    ))
}

/// An entry as shown; to a tenant's caller, the provider's own sessions and addresses are not
/// shown (its entries read `{"type":"admin","id":null}`, `ip` null).
fn audit_entry(mut e: super::store::AuditRecord, customer: bool) -> AuditEntry {
    if customer && e.actor_type == "admin" {
        e.actor_id = None;
        e.ip = None;
    }
    AuditEntry {
        time: keygate::timestamp::format_rfc3339(e.time),
        actor: AuditActor {
            kind: e.actor_type,
            id: e.actor_id,
        },
        action: e.action,
        key_id: e.key_id,
        tenant: e.tenant,
        ip: e.ip,
        details: e.details.and_then(|d| serde_json::from_str(&d).ok()),
    }
}

async fn show<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let id = key_id(id)?;
    let key = ops::visible(&ctx.app, &caller, &id).await?;
    let mut listed = ops::with_leaks(&ctx.app, std::slice::from_ref(&key), None).await?;
    Ok(data(StatusCode::OK, listed.pop()))
}

/// `POST /v1/leaks/check`: which fingerprints (SHA-256 digests) are live keys
/// (`keygate scan --check`; only digests travel).
async fn check_fingerprints<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let body = body_json(body, super::partners::LEAK_BODY_LIMIT).await?;
    let list = body
        .get("fingerprints")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("fingerprints: must be an array".into()))?;
    if list.len() > 10_000 {
        return Err(ApiError::BadRequest(
            "fingerprints: at most 10000 at once".into(),
        ));
    }
    let mut fingerprints = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        match f.as_str() {
            Some(h)
                if h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                fingerprints.push(h.to_string())
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "fingerprints[{i}]: must be a lowercase hex SHA-256 (64 characters)"
                )))
            }
        }
    }
    let checked = ops::check_fingerprints(&ctx.app, &caller, &fingerprints).await?;
    Ok(data(StatusCode::OK, checked))
}

/// `GET /v1/webhook-deliveries`: the latest deliveries, newest first (the provider's admin).
async fn webhook_deliveries<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    if caller != Caller::Admin {
        return Err(ApiError::Forbidden(
            "Only the provider's admin reads the webhook deliveries".into(),
        ));
    }
    let query = query_map(query)?;
    let limit = limit_param(&query, Some(100))?.unwrap_or(100);
    let list = ctx.app.store.deliveries(limit).await?;
    Ok(data(
        StatusCode::OK,
        list.iter().map(ops::delivery_entry).collect::<Vec<_>>(),
    ))
}

async fn revoke<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let id = key_id(id)?;
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    ops::revoke(&ctx.app, &caller, &actor, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &Done {
            success: true,
            message: "API key revoked successfully".into(),
        },
    ))
}

async fn roll<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    let id = key_id(id)?;
    let body = body_json(body, ADMIN_BODY_LIMIT).await?;
    let grace = read_roll(&body).map_err(ApiError::BadRequest)?;
    let created = ops::roll(&ctx.app, &caller, &actor, &id, grace).await?;
    Ok(data(StatusCode::CREATED, created))
}

/// `POST /v1/api-keys/{id}/credits`: `{"op":"set"|"add"|"subtract","amount":N}` (SPEC §14).
async fn change_credits<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let id = key_id(id)?;
    let body = body_json(body, ADMIN_BODY_LIMIT).await?;
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    let key = ops::change_credits(&ctx.app, &caller, &actor, &id, &body).await?;
    Ok(data(StatusCode::OK, key))
}

async fn change_tenant_credits<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    tenant: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let tenant = tenant
        .ok()
        .map(|p| p.0)
        .filter(|t| text_ok(t))
        .ok_or_else(|| ApiError::BadRequest("tenant: not a valid tenant".into()))?;
    let body = body_json(body, ADMIN_BODY_LIMIT).await?;
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    let answer = ops::change_tenant_credits(&ctx.app, &caller, &actor, &tenant, &body).await?;
    Ok(data(StatusCode::OK, answer))
}

/// The `{id}` of a path (after authentication: nothing is said about ids to strangers).
fn key_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.ok()
        .map(|p| p.0)
        .filter(|id| text_ok(id))
        .ok_or_else(|| ApiError::BadRequest("id: not a valid key id".into()))
}

async fn usage<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let id = key_id(id)?;
    let query = query_map(query)?;
    let (from, to) = (time_param(&query, "from")?, time_param(&query, "to")?);
    ops::visible(&ctx.app, &caller, &id).await?;
    let (hourly_from, _) = ctx.app.usage_retention.horizons(now());
    let rows = ctx.app.store.usage(&id, from, to, hourly_from).await?;
    Ok(data(StatusCode::OK, usage_answer(&id, &rows)))
}

/// `GET /v1/requests`: the request log, newest first, filtered and paged (SPEC §13).
async fn requests<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let query = query_map(query)?;
    let (rows, next) = ops::requests(&ctx.app, &caller, &query, 100).await?;
    Ok(page(
        rows.into_iter().map(ops::request_entry).collect(),
        next,
    ))
}

/// The client addresses listed with a key's requests at most.
const CLIENT_IPS: usize = 1000;

/// `GET /v1/api-keys/{id}/requests`: as `/v1/requests` for one key, with its client addresses.
async fn key_requests<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let id = key_id(id)?;
    let query = query_map(query)?;
    let (rows, next) = ops::key_requests(&ctx.app, &caller, &id, &query, 100).await?;
    let ips = ops::client_ips(&ctx.app, &caller, &id, CLIENT_IPS).await?;
    Ok(json_response(
        StatusCode::OK,
        &KeyRequestsPage {
            success: true,
            data: rows.into_iter().map(ops::request_entry).collect(),
            next_cursor: next,
            client_ips: ips.into_iter().map(ops::client_ip_entry).collect(),
        },
    ))
}

/// Keys as Envoy may read them: one the configuration no longer accepts (its role or prefix
/// removed since it was created) is served revoked, rather than making every Envoy refuse the
/// whole answer (and so stop seeing revocations).
fn servable(keys: Vec<StoredKey>, gate: &Gate) -> Vec<StoredKey> {
    keys.into_iter()
        .map(|k| k.with_tenant_balance(gate))
        .map(|k| if k.valid_under(gate) { k } else { k.disabled() })
        .collect()
}

fn etag(version: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// `GET /keys[?since=V]`: the key-sync answer of SPEC §4 for keygate.
async fn feed<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    ctx.app.auth.sync(&headers)?;
    let query = query_map(query)?;
    let since = query.get("since").map(String::as_str);
    // The answer's form depends on Accept (one ETag, the version, names both forms): a shared
    // cache in front of the service must keep them apart.
    let not_modified = |version: &str| {
        metrics().answer(Answer::not_modified);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, etag(version));
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept"));
        r
    };
    // keygate asks for the compact form of a full set (also one answering a `since=` this
    // database never issued); deltas and other clients get JSON.
    let binary = accepts_binary(&headers);
    let with_etag = |body: axum::body::Bytes, version: &str, binary: bool, form: Answer| {
        metrics().answer(form);
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if binary {
                BINARY_MEDIA_TYPE
            } else {
                "application/json"
            }),
        );
        r.headers_mut().insert(header::ETAG, etag(version));
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept"));
        r
    };
    // Revalidation first, from the version alone: no keys are read for a 304.
    let current = ctx.app.store.version().await?;
    let tag = etag(&current);
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == tag.as_bytes());
    if matches || since == Some(current.as_str()) {
        return Ok(not_modified(&current));
    }
    let cache = if binary {
        &ctx.app.full_feed_binary
    } else {
        &ctx.app.full_feed
    };
    let cached = cache
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .filter(|(v, _)| *v == current);
    if let (Some((version, body)), None) = (&cached, since) {
        return Ok(with_etag(body.clone(), version, binary, full(binary)));
    }
    match ctx.app.store.feed(since).await? {
        Feed::Unchanged { version } => Ok(not_modified(&version)),
        Feed::Full { version, keys } => {
            let body = axum::body::Bytes::from(if binary {
                binary_answer(&version, keys, &ctx.app.gate)
            } else {
                feed_answer(&version, None, &servable(keys, &ctx.app.gate)).into_bytes()
            });
            if let Ok(mut c) = cache.lock() {
                *c = Some((version.clone(), body.clone()));
            }
            Ok(with_etag(body, &version, binary, full(binary)))
        }
        Feed::Delta {
            version,
            since,
            keys,
        } => {
            let keys = servable(keys, &ctx.app.gate);
            let body = feed_answer(&version, Some(&since), &keys);
            Ok(with_etag(body.into(), &version, false, Answer::delta))
        }
    }
}

/// The form of a full answer, for the metrics.
fn full(binary: bool) -> Answer {
    if binary {
        Answer::full_compact
    } else {
        Answer::full_json
    }
}

/// The client takes the compact key-set form (listed in `Accept` without `q=0`).
fn accepts_binary(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case(BINARY_MEDIA_TYPE))
                && !parts.any(|p| {
                    let p = p.to_ascii_lowercase();
                    p.strip_prefix("q=")
                        .is_some_and(|q| !q.trim_matches('"').parse::<f32>().is_ok_and(|q| q > 0.0))
                })
        })
}

/// A full set in the compact form: each key's record as the filter would make it of its JSON
/// entry (one the configuration no longer accepts served revoked, as in [`servable`]). A key
/// whose revoked form is invalid too (a corrupt stored id or digest: the store never writes
/// one) is left out, where its JSON entry would make Envoy refuse the whole answer: either
/// way it admits nothing.
fn binary_answer(version: &str, keys: Vec<StoredKey>, gate: &Gate) -> Vec<u8> {
    let records: Vec<_> = keys
        .into_iter()
        .map(|k| k.with_tenant_balance(gate))
        .filter_map(|k| {
            k.record_under(gate)
                .or_else(|| k.disabled().entry_record(gate))
        })
        .collect();
    encode_binary_set(version, records.iter().map(|(d, r)| (d, r)), &gate.roles)
}

/// `POST /usage`: a usage report (SPEC §8); a report id seen before is acknowledged again and
/// not counted.
async fn report<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ctx.app.auth.sync(&headers)?;
    let body = body_bytes(body, REPORT_BODY_LIMIT).await?;
    let now = now();
    let (report_id, entries) = read_report(&body, now).map_err(|e| {
        metrics().report(Report::refused);
        ApiError::BadRequest(e)
    })?;
    // Counted in a task of its own: a client that gives up (a filter's timeout) does not roll
    // the report back, so its retry finds it counted.
    let app = ctx.app.clone();
    let id = report_id.clone();
    let recorded = tokio::spawn(async move {
        app.store
            .record_usage(&id, &entries, now, &app.gate.tenants)
            .await
    })
    .await
    .map_err(|_| ApiError::Unavailable)??;
    let answer = match recorded {
        Recorded::Counted { dropped } => {
            metrics().report(Report::counted);
            json!({"success": true, "report_id": report_id, "counted": true, "dropped": dropped})
        }
        Recorded::Seen => {
            metrics().report(Report::duplicate);
            json!({"success": true, "report_id": report_id, "counted": false})
        }
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/usage[?tenant=T][&key=ID][&from=T1&to=T2][&granularity=hour|day]`.
async fn usage_summary<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let query = query_map(query)?;
    let (_, summary) = ops::usage_summary(&ctx.app, &caller, &query).await?;
    Ok(data(StatusCode::OK, summary))
}

/// `GET /readyz`: 200 while the database answers a query within [`READY_TIMEOUT`], else 503
/// with the reason logged (a readiness probe takes a replica out of its Service meanwhile;
/// `/healthz` stays 200, so nothing restarts it).
async fn readyz<S: Store>(State(ctx): State<Ctx<S>>) -> Result<Response, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, ctx.app.store.version()).await {
        Ok(Ok(_)) => Ok(json_response(StatusCode::OK, &json!({"success": true}))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            metrics().database_error();
            eprintln!(
                "keygate serve: not ready: the database did not answer within {} s",
                READY_TIMEOUT.as_secs()
            );
            Err(ApiError::Unavailable)
        }
    }
}

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts and times every request by its route's pattern (never its path) and status.
async fn measured(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics().request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
