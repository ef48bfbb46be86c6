//! The keys pages (SPEC §11): the table (newest first, filterable) and create (the key shown
//! once, `no-store`); one key's page is [`super::key`]. Each form becomes the admin API's body and
//! goes through the same operation ([`ops`]), so a page refuses exactly what the API refuses, in
//! the API's words.

use super::html::CleanQuery;
use super::html::FormBody;
use super::html::{error_page, page, time_html, Layout};
use super::session::{check_form, layout, SignedIn, Web};
use crate::answer::ApiError;
use crate::model::StoredKey;
use crate::ops;
use crate::state::{now, Ctx};
use crate::store::Store;
use crate::views::CreatedKey;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Keys a page lists at once.
const PAGE: usize = 100;

/// A key as a table row shows it (times as `<time>` HTML, made from values the service wrote).
pub struct Row {
    pub id: String,
    pub name: Option<String>,
    pub prefix: String,
    pub environment: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<String>,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
    /// Reported leaked (SPEC §15): shown with a badge, and listed even when revoked.
    pub leaked: bool,
    /// Its credits (SPEC §14), if it has any.
    pub credits: Option<super::credits::Balance>,
}

pub(super) fn row(k: &StoredKey, app: &crate::state::App<impl Store>) -> Row {
    let v = k.listed(&app.gate);
    let state = if v.revoked {
        "revoked"
    } else if k.expires_at.is_some_and(|t| t <= now()) {
        "expired"
    } else {
        "active"
    };
    Row {
        credits: v.credits.as_ref().map(super::credits::balance),
        created: time_html(Some(&v.created_at)),
        last_used: time_html(v.last_used.as_deref()),
        expires: time_html(v.expires_at.as_deref()),
        id: v.id,
        name: v.name,
        prefix: v.prefix,
        environment: v.environment,
        tenant: v.tenant,
        role: v.role,
        state,
        leaked: false,
    }
}

pub struct PrefixChoice {
    pub prefix: String,
    pub environment: Option<String>,
    pub role: Option<String>,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    l: Layout,
    keys: Vec<Row>,
    /// Some key listed has credits: the table has a column for them.
    credits: bool,
    q: String,
    show_all: bool,
    next: Option<String>,
    prefixes: Vec<PrefixChoice>,
    roles: Vec<String>,
    error: Option<String>,
}

/// The types and roles a session may choose: a customer's never the role that manages a tenant's
/// keys (the provider's to give), nor a type that carries it.
pub(super) fn choices<S: Store>(ctx: &Ctx<S>, web: &Web) -> (Vec<PrefixChoice>, Vec<String>) {
    let gate = &ctx.app.gate;
    let reserved = web
        .session
        .tenant
        .is_some()
        .then_some(ctx.app.auth.tenant_admin_role.as_str());
    let prefixes = gate
        .prefixes
        .iter()
        .map(|p| PrefixChoice {
            prefix: p.prefix.clone(),
            environment: p.environment.clone(),
            role: gate.role(p.role).map(|r| r.name.clone()),
        })
        .filter(|p| p.role.is_none() || p.role.as_deref() != reserved)
        .collect();
    let roles = gate
        .roles
        .iter()
        .map(|r| r.name.clone())
        .filter(|r| Some(r.as_str()) != reserved)
        .collect();
    (prefixes, roles)
}

/// For a customer's session: refuses a role (given, or its type's) that is the provider's to give.
pub(super) fn role_allowed<S: Store>(
    ctx: &Ctx<S>,
    web: &Web,
    role: Option<&str>,
    prefix: Option<&str>,
) -> Result<(), ApiError> {
    if web.session.tenant.is_none() {
        return Ok(());
    }
    let gate = &ctx.app.gate;
    let effective = role.map(str::to_string).or_else(|| {
        let p = gate
            .prefixes
            .iter()
            .find(|p| Some(p.prefix.as_str()) == prefix)?;
        gate.role(p.role).map(|r| r.name.clone())
    });
    if effective.as_deref() == Some(ctx.app.auth.tenant_admin_role.as_str()) {
        return Err(ApiError::Forbidden(format!(
            "role: {:?} is given by your provider only",
            ctx.app.auth.tenant_admin_role
        )));
    }
    Ok(())
}

async fn keys_page<S: Store>(
    ctx: &Ctx<S>,
    web: &Web,
    query: &HashMap<String, String>,
    error: Option<(StatusCode, String)>,
) -> Result<Response, ApiError> {
    let l = layout(
        ctx,
        web,
        "API keys",
        "keys",
        "/dashboard/keys",
        query.get("tenant"),
    )
    .await;
    let tenant = (!l.tenant.is_empty()).then(|| l.tenant.clone());
    let q = query
        .get("q")
        .map(|q| q.trim().to_string())
        .unwrap_or_default();
    let show_all = query.get("all").is_some_and(|v| v == "1");
    let after = query
        .get("after")
        .and_then(|c| crate::store::KeyCursor::decode(c));
    // Newest first, a page at a time; a filter reads the tenant's keys and keeps the matches.
    let (mut keys, next) = if q.is_empty() {
        let page = ctx
            .app
            .store
            .list_page(tenant.as_deref(), PAGE + 1, after.as_ref())
            .await?;
        let more = page.len() > PAGE;
        let next = page.get(PAGE - 1).filter(|_| more).map(|(_, c)| {
            format!(
                "/dashboard/keys?after={}{}{}",
                c.encode(),
                l.scope_amp,
                if show_all { "&all=1" } else { "" }
            )
        });
        let keys: Vec<StoredKey> = page.into_iter().take(PAGE).map(|(k, _)| k).collect();
        (keys, next)
    } else {
        let needle = q.to_lowercase();
        let mut all = ctx.app.store.list(tenant.as_deref()).await?;
        all.retain(|k| {
            k.id.to_lowercase().contains(&needle)
                || k.name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
                || k.tenant
                    .as_deref()
                    .is_some_and(|t| t.to_lowercase().contains(&needle))
        });
        all.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        all.truncate(PAGE);
        (all, None)
    };
    let t = now();
    let leaks = ctx.app.store.leaks(None, tenant.as_deref()).await?;
    let leaked: std::collections::HashSet<&str> = leaks.iter().map(|l| l.key_id.as_str()).collect();
    // A leaked key stays in sight, revoked or not, until it is rolled.
    let unreplaced: std::collections::HashSet<&str> = leaks
        .iter()
        .filter(|l| l.rolled_to.is_none())
        .map(|l| l.key_id.as_str())
        .collect();
    if !show_all {
        keys.retain(|k| {
            unreplaced.contains(k.id.as_str()) || !k.revoked && k.expires_at.is_none_or(|e| e > t)
        });
    }
    let rows = keys
        .iter()
        .map(|k| Row {
            leaked: leaked.contains(k.id.as_str()),
            ..row(k, &ctx.app)
        })
        .collect::<Vec<Row>>();
    let credits = rows.iter().any(|r| r.credits.is_some());
    let (prefixes, roles) = choices(ctx, web);
    let (status, error) = match error {
        Some((status, message)) => (status, Some(message)),
        None => (StatusCode::OK, None),
    };
    Ok(page(
        status,
        KeysPage {
            l,
            keys: rows,
            credits,
            q,
            show_all,
            next,
            prefixes,
            roles,
            error,
        }
        .render(),
    ))
}

/// `GET /dashboard/keys[?tenant=T][&q=…][&all=1]`.
pub async fn list<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    CleanQuery(query): CleanQuery,
) -> Result<Response, ApiError> {
    keys_page(&ctx, &web, &query, None).await
}

/// A date input (`YYYY-MM-DD`) as the end of that day, UTC; empty: none.
pub(super) fn expiry(
    form: &HashMap<String, String>,
    field: &str,
) -> Result<Option<String>, ApiError> {
    let Some(d) = form.get(field).map(|d| d.trim()).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let t = format!("{d}T23:59:59Z");
    keygate::timestamp::parse_rfc3339(&t)
        .map(|_| Some(t))
        .ok_or_else(|| ApiError::BadRequest(format!("{field}: {d:?} is not a date (2027-01-31)")))
}

pub(super) fn text(form: &HashMap<String, String>, field: &str) -> Option<String> {
    form.get(field)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// One entry a line (blank lines dropped).
pub(super) fn lines(form: &HashMap<String, String>, field: &str) -> Vec<String> {
    form.get(field)
        .map(|v| {
            v.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `100/minute` lines as the API's `rate_limits`.
pub(super) fn limits(form: &HashMap<String, String>) -> Result<Vec<Value>, ApiError> {
    lines(form, "rate_limits")
        .iter()
        .map(|l| {
            let bad = || {
                ApiError::BadRequest(format!(
                    "rate_limits: {l:?} is not REQUESTS/PER, like 100/minute"
                ))
            };
            let (n, per) = l.split_once('/').ok_or_else(bad)?;
            let n: u64 = n.trim().replace(',', "").parse().map_err(|_| bad())?;
            Ok(json!({"requests": n, "per": per.trim()}))
        })
        .collect()
}

#[derive(Template)]
#[template(path = "key_shown.html")]
struct Shown {
    l: Layout,
    heading: String,
    key: CreatedKey,
    expires: String,
    rolled_from: Option<String>,
}

pub(super) fn shown(
    l: Layout,
    heading: &str,
    key: CreatedKey,
    rolled_from: Option<String>,
) -> Response {
    let expires = time_html(key.expires_at.as_deref());
    page(
        StatusCode::CREATED,
        Shown {
            l,
            heading: heading.into(),
            key,
            expires,
            rolled_from,
        }
        .render(),
    )
}

/// `POST /dashboard/keys`: creates a key and shows it, once.
pub async fn create<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    SignedIn(web): SignedIn,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    let l = layout(
        &ctx,
        &web,
        "New key",
        "keys",
        "/dashboard/keys",
        form.get("tenant"),
    )
    .await;
    if let Err(e) = check_form(&headers, &web, &form, ctx.app.insecure_cookies) {
        return Ok(error_page(l, e));
    }
    let mut body = Map::new();
    for field in ["prefix", "name", "role"] {
        if let Some(v) = text(&form, field) {
            body.insert(field.into(), Value::String(v));
        }
    }
    if web.session.tenant.is_none() {
        if let Some(t) = text(&form, "tenant") {
            body.insert("tenant".into(), Value::String(t));
        }
    }
    let allowed = role_allowed(
        &ctx,
        &web,
        text(&form, "role").as_deref(),
        text(&form, "prefix").as_deref(),
    );
    let result = match allowed.and_then(|()| expiry(&form, "expires")) {
        Ok(Some(t)) => {
            body.insert("expires_at".into(), Value::String(t));
            ops::create(&ctx.app, &web.caller, &web.actor(), &Value::Object(body)).await
        }
        Ok(None) => ops::create(&ctx.app, &web.caller, &web.actor(), &Value::Object(body)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(key) => Ok(shown(l, "Your new API key", key, None)),
        Err(ApiError::Unavailable) => Err(ApiError::Unavailable),
        Err(e) => {
            let refused = e.status_and_message();
            let mut query = HashMap::new();
            if let Some(t) = form.get("tenant") {
                query.insert("tenant".to_string(), t.clone());
            }
            keys_page(&ctx, &web, &query, Some(refused)).await
        }
    }
}
