//! One key's pages (SPEC §11): its settings and edit form, its credits (SPEC §14: the balance,
//! shown as [`super::credits`] words it, and the operator's form that changes it) or, for a key
//! without, its tenant's shared balance and the operator's form for that, roll with a
//! chosen grace (the new key shown once), revoke after a confirmation page. Another tenant's
//! key, or an id the store could not be asked about, is a 404 page.

use super::html::CleanQuery;
use super::html::FormBody;
use super::html::{error_page, page, see_other, Layout};
use super::keys::{choices, expiry, limits, lines, role_allowed, row, shown, text, Row};
use super::session::{check_form, layout, SignedIn, Web};
use crate::answer::ApiError;
use crate::ops;
use crate::state::Ctx;
use crate::store::Store;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keygate::timestamp::format_rfc3339;
use serde_json::{json, Map, Value};

/// Signed in and asking about an id the store can be asked about; else the sign-in or a 404.
async fn known_id<S: Store>(ctx: &Ctx<S>, web: &Web, id: &str) -> Result<(), Response> {
    if super::html::id_ok(id) {
        return Ok(());
    }
    let l = layout(ctx, web, "Not found", "keys", "/dashboard/keys", None).await;
    Err(error_page(l, ApiError::NotFound))
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    l: Layout,
    /// Its latest requests and client addresses (the request log).
    recent: super::requests::Recent,
    /// The request table's rows (the shared table template reads `rows`).
    rows: Vec<super::requests::Row>,
    k: Row,
    roles: Vec<String>,
    own_role: String,
    name: String,
    expires_date: String,
    allowed_ips: String,
    allowed_referers: String,
    allowed_paths: String,
    rate_limits: String,
    error: Option<String>,
    notice: Option<String>,
    /// Its leak report, if it was reported leaked.
    leak: Option<Leaked>,
    /// The credits form as typed (after a refusal), else empty.
    credits_op: String,
    credits_amount: String,
    /// Its tenant's shared balance, for a key without credits of its own.
    tenant_credits: Option<super::credits::TenantShown>,
    /// The tenant's credits form as typed (after a refusal), else empty.
    tenant_op: String,
    tenant_amount: String,
}

/// What was typed into a credits form (the key's, or its tenant's), shown again with its
/// refusal.
struct Typed {
    op: String,
    amount: String,
    tenant: bool,
}

/// A credits form's body for the API (`op` and `amount` as typed; each left out when empty),
/// and what was typed.
fn credits_body(form: &std::collections::HashMap<String, String>) -> (String, String, Value) {
    let field = |f: &str| {
        form.get(f)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let (op, amount) = (field("op"), field("amount"));
    let mut body = Map::new();
    if !op.is_empty() {
        body.insert("op".into(), Value::String(op.clone()));
    }
    if let Some(a) = super::credits::amount_json(&amount) {
        body.insert("amount".into(), a);
    }
    (op, amount, Value::Object(body))
}

/// A leak report as the key's page tells it.
struct Leaked {
    origin: &'static str,
    reported: String,
    /// Where it was found: a link only for an http(s) URL.
    url: Option<String>,
    href: Option<String>,
    source: Option<String>,
    action: &'static str,
    /// The key still works: rolling it is urgent.
    live: bool,
    /// It may be rolled from here: live, or revoked by this report, and not rolled yet.
    rollable: bool,
    /// Its successor, once rolled.
    rolled_to: Option<String>,
}

fn leaked(l: &crate::store::Leak, state: &str) -> Leaked {
    let href = l
        .url
        .clone()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    Leaked {
        origin: match l.origin.as_str() {
            "github" => "GitHub secret scanning",
            "gitlab" => "GitLab secret detection",
            _ => "a scanner",
        },
        reported: super::html::time_html(Some(&format_rfc3339(l.reported_at))),
        url: l.url.clone(),
        href,
        source: l.source.clone(),
        action: match l.action.as_str() {
            "revoked" => "revoked at once",
            "notified" => {
                "recorded and announced; the key still works (its type's leak policy is \"notify\")"
            }
            _ => "none: the key was already revoked or expired",
        },
        live: state == "active",
        rollable: l.rolled_to.is_none() && (state == "active" || l.action == "revoked"),
        rolled_to: l.rolled_to.clone(),
    }
}

fn list_text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The key's page; with a refusal (its status and message) and what the credits form held.
async fn key_page<S: Store>(
    ctx: &Ctx<S>,
    web: &Web,
    id: &str,
    tenant: Option<&String>,
    error: Option<(StatusCode, String)>,
    notice: Option<String>,
    typed: Option<Typed>,
) -> Result<Response, ApiError> {
    let l = layout(ctx, web, "API key", "keys", "/dashboard/keys", tenant).await;
    let k = match ops::visible(&ctx.app, &web.caller, id).await {
        Ok(k) => k,
        Err(e) => return Ok(error_page(l, e)),
    };
    let r = &k.restrictions;
    let rate_limits = r
        .get("rate_limits")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|l| format!("{}/{}", l["requests"], l["per"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let (status, error) = match error {
        Some((status, message)) => (status, Some(message)),
        None => (StatusCode::OK, None),
    };
    let typed = typed.unwrap_or(Typed {
        op: String::new(),
        amount: String::new(),
        tenant: false,
    });
    let tenant_credits = super::credits::tenant_balance(ctx, &k).await?;
    let (credits_typed, tenant_typed) = if typed.tenant {
        ((String::new(), String::new()), (typed.op, typed.amount))
    } else {
        ((typed.op, typed.amount), (String::new(), String::new()))
    };
    let (_, roles) = choices(ctx, web);
    let k_row = row(&k, &ctx.app);
    let leak = ctx
        .app
        .store
        .leaks(Some(id), None)
        .await?
        .first()
        .map(|l| leaked(l, k_row.state));
    let mut recent = super::requests::recent_for_key(ctx, web, id).await;
    let rows = std::mem::take(&mut recent.rows);
    let p = KeyPage {
        recent,
        rows,
        own_role: k.role.clone().unwrap_or_default(),
        name: k.name.clone().unwrap_or_default(),
        expires_date: k
            .expires_at
            .map(|t| format_rfc3339(t).get(..10).unwrap_or_default().to_string())
            .unwrap_or_default(),
        allowed_ips: list_text(r, "allowed_ips"),
        allowed_referers: list_text(r, "allowed_referers"),
        allowed_paths: list_text(r, "allowed_paths"),
        rate_limits,
        k: k_row,
        l,
        roles,
        error,
        notice,
        leak,
        credits_op: credits_typed.0,
        credits_amount: credits_typed.1,
        tenant_credits,
        tenant_op: tenant_typed.0,
        tenant_amount: tenant_typed.1,
    };
    Ok(page(status, p.render()))
}

/// `GET /dashboard/keys/{id}`: a key, its settings and its actions (another tenant's: 404).
pub async fn show<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    Path(id): Path<String>,
    CleanQuery(query): CleanQuery,
) -> Result<Response, ApiError> {
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    let notice = query.get("done").map(|d| match d.as_str() {
        "edited" => "Saved. Every Envoy syncing from this service applies it within seconds.",
        "revoked" => "Revoked. Every Envoy syncing from this service refuses it within seconds.",
        "credits" => {
            "Credits changed. Every Envoy syncing from this service has the new balance within seconds."
        }
        "tenant-credits" => {
            "The tenant's balance changed. Every Envoy syncing from this service has it within seconds."
        }
        _ => "Done.",
    });
    key_page(
        &ctx,
        &web,
        &id,
        query.get("tenant"),
        None,
        notice.map(str::to_string),
        None,
    )
    .await
}

/// `POST /dashboard/keys/{id}`: the edit form, as a PATCH of every field it shows.
pub async fn edit<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    SignedIn(web): SignedIn,
    Path(id): Path<String>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    if let Err(e) = check_form(&headers, &web, &form, ctx.app.insecure_cookies) {
        let l = layout(&ctx, &web, "Refused", "keys", "/dashboard/keys", None).await;
        return Ok(error_page(l, e));
    }
    let mut body = Map::new();
    let opt = |v: Option<String>| v.map_or(Value::Null, Value::String);
    body.insert("name".into(), opt(text(&form, "name")));
    body.insert("role".into(), opt(text(&form, "role")));
    let patch = expiry(&form, "expires").and_then(|e| {
        body.insert("expires_at".into(), opt(e));
        for field in ["allowed_ips", "allowed_referers", "allowed_paths"] {
            let l = lines(&form, field);
            body.insert(
                field.into(),
                if l.is_empty() { Value::Null } else { json!(l) },
            );
        }
        if web.session.tenant.is_none() {
            let l = limits(&form)?;
            body.insert(
                "rate_limits".into(),
                if l.is_empty() {
                    Value::Null
                } else {
                    Value::Array(l)
                },
            );
        }
        Ok(Value::Object(body))
    });
    // A customer may keep a role it was given, not give a key the provider's own.
    let old_role = ops::visible(&ctx.app, &web.caller, &id)
        .await
        .ok()
        .and_then(|k| k.role);
    let patch = patch.and_then(|body| {
        let role = text(&form, "role");
        if role != old_role {
            role_allowed(&ctx, &web, role.as_deref(), None)?;
        }
        Ok(body)
    });
    let result = match patch {
        Ok(body) => ops::update(&ctx.app, &web.caller, &web.actor(), &id, &body)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(see_other(&format!(
            "/dashboard/keys/{}?done=edited",
            super::html::enc(&id)
        ))),
        Err(ApiError::Unavailable) => Err(ApiError::Unavailable),
        Err(ApiError::NotFound) => {
            let l = layout(&ctx, &web, "Not found", "keys", "/dashboard/keys", None).await;
            Ok(error_page(l, ApiError::NotFound))
        }
        Err(e) => {
            key_page(
                &ctx,
                &web,
                &id,
                None,
                Some(e.status_and_message()),
                None,
                None,
            )
            .await
        }
    }
}

/// `POST /dashboard/keys/{id}/roll`: a new key with the same settings, shown once.
pub async fn roll<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    SignedIn(web): SignedIn,
    Path(id): Path<String>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    let l = layout(&ctx, &web, "Rolled key", "keys", "/dashboard/keys", None).await;
    if let Err(e) = check_form(&headers, &web, &form, ctx.app.insecure_cookies) {
        return Ok(error_page(l, e));
    }
    let grace = form
        .get("grace_seconds")
        .and_then(|g| g.parse::<u64>().ok())
        .filter(|g| *g <= 366 * 86_400)
        .unwrap_or(86_400);
    match ops::roll(&ctx.app, &web.caller, &web.actor(), &id, grace).await {
        Ok(key) => Ok(shown(l, "The new key", key, Some(id))),
        Err(ApiError::Unavailable) => Err(ApiError::Unavailable),
        Err(ApiError::NotFound) => Ok(error_page(l, ApiError::NotFound)),
        Err(e) => {
            key_page(
                &ctx,
                &web,
                &id,
                None,
                Some(e.status_and_message()),
                None,
                None,
            )
            .await
        }
    }
}

/// `POST /dashboard/keys/{id}/credits` (`op`, `amount`; SPEC §14): the admin API's operation
/// ([`ops::change_credits`]), so the form refuses what `POST /v1/api-keys/{id}/credits` refuses,
/// in the API's words and with its status; a customer's session is refused there (balances are
/// quotas, the provider's to change) and never offered the form. Done: the key's page with a
/// notice, after a redirect (reloading does not change it twice); refused: the key's page with
/// the message and what was typed.
pub async fn change_credits<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    SignedIn(web): SignedIn,
    Path(id): Path<String>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    if let Err(e) = check_form(&headers, &web, &form, ctx.app.insecure_cookies) {
        let l = layout(&ctx, &web, "Refused", "keys", "/dashboard/keys", None).await;
        return Ok(error_page(l, e));
    }
    let (op, amount, body) = credits_body(&form);
    let changed = ops::change_credits(&ctx.app, &web.caller, &web.actor(), &id, &body)
        .await
        .map(|_| ());
    let typed = Typed {
        op,
        amount,
        tenant: false,
    };
    credits_answered(&ctx, &web, &id, changed, "credits", typed).await
}

/// What a credits form gets: after a change, a redirect to the key's page with the notice
/// `done`; refused, the key's page with the message and what was typed.
async fn credits_answered<S: Store>(
    ctx: &Ctx<S>,
    web: &Web,
    id: &str,
    changed: Result<(), ApiError>,
    done: &str,
    typed: Typed,
) -> Result<Response, ApiError> {
    match changed {
        Ok(()) => Ok(see_other(&format!(
            "/dashboard/keys/{}?done={done}",
            super::html::enc(id)
        ))),
        Err(ApiError::Unavailable) => Err(ApiError::Unavailable),
        Err(ApiError::NotFound) => {
            let l = layout(ctx, web, "Not found", "keys", "/dashboard/keys", None).await;
            Ok(error_page(l, ApiError::NotFound))
        }
        Err(e) => {
            key_page(
                ctx,
                web,
                id,
                None,
                Some(e.status_and_message()),
                None,
                Some(typed),
            )
            .await
        }
    }
}

/// `POST /dashboard/tenants/{tenant}/credits` (`op`, `amount`, and `key`: the page it came from,
/// a key of that tenant the session may see; SPEC §14): the admin API's operation
/// ([`ops::change_tenant_credits`]), so the form refuses what `POST /v1/tenants/{tenant}/credits`
/// refuses, in the API's words and with its status (a customer's session: 403; a tenant the
/// configuration gives no credits: 409). Done: a redirect to the key's page with a notice;
/// refused: the key's page with the message and what was typed. A `key` that is missing, not
/// visible or of another tenant: a 404 page, and nothing changed.
pub async fn change_tenant_credits<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    SignedIn(web): SignedIn,
    Path(tenant): Path<String>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    if let Err(e) = check_form(&headers, &web, &form, ctx.app.insecure_cookies) {
        let l = layout(&ctx, &web, "Refused", "keys", "/dashboard/keys", None).await;
        return Ok(error_page(l, e));
    }
    let id = form
        .get("key")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    match ops::visible(&ctx.app, &web.caller, &id).await {
        Ok(k) if k.tenant.as_deref() == Some(tenant.as_str()) => {}
        Err(ApiError::Unavailable) => return Err(ApiError::Unavailable),
        _ => {
            let l = layout(&ctx, &web, "Not found", "keys", "/dashboard/keys", None).await;
            return Ok(error_page(l, ApiError::NotFound));
        }
    }
    let (op, amount, body) = credits_body(&form);
    let changed = ops::change_tenant_credits(&ctx.app, &web.caller, &web.actor(), &tenant, &body)
        .await
        .map(|_| ());
    let typed = Typed {
        op,
        amount,
        tenant: true,
    };
    credits_answered(&ctx, &web, &id, changed, "tenant-credits", typed).await
}

#[derive(Template)]
#[template(path = "key_revoke.html")]
struct RevokePage {
    l: Layout,
    k: Row,
}

/// `GET /dashboard/keys/{id}/revoke`: the confirmation.
pub async fn confirm_revoke<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    Path(id): Path<String>,
    CleanQuery(query): CleanQuery,
) -> Result<Response, ApiError> {
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    let l = layout(
        &ctx,
        &web,
        "Revoke key",
        "keys",
        "/dashboard/keys",
        query.get("tenant"),
    )
    .await;
    match ops::visible(&ctx.app, &web.caller, &id).await {
        Ok(k) => Ok(page(
            StatusCode::OK,
            RevokePage {
                k: row(&k, &ctx.app),
                l,
            }
            .render(),
        )),
        Err(e) => Ok(error_page(l, e)),
    }
}

/// `POST /dashboard/keys/{id}/revoke` (with `confirm=yes`, from the confirmation page).
pub async fn revoke<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    SignedIn(web): SignedIn,
    Path(id): Path<String>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    if let Err(r) = known_id(&ctx, &web, &id).await {
        return Ok(r);
    }
    let l = layout(&ctx, &web, "Revoke key", "keys", "/dashboard/keys", None).await;
    if let Err(e) = check_form(&headers, &web, &form, ctx.app.insecure_cookies) {
        return Ok(error_page(l, e));
    }
    if form.get("confirm").map(String::as_str) != Some("yes") {
        return Ok(see_other(&format!(
            "/dashboard/keys/{}/revoke",
            super::html::enc(&id)
        )));
    }
    match ops::revoke(&ctx.app, &web.caller, &web.actor(), &id).await {
        Ok(()) => Ok(see_other(&format!(
            "/dashboard/keys/{}?done=revoked",
            super::html::enc(&id)
        ))),
        Err(ApiError::Unavailable) => Err(ApiError::Unavailable),
        Err(e) => Ok(error_page(l, e)),
    }
}
