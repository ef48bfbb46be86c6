//! Portal sessions, the API half (SPEC §7, §11): `POST /v1/portal-sessions` hands out a URL with
//! a single-use code; `GET /portal/open?code=…` exchanges it, once, for a session scoped to one
//! tenant (a cookie) and redirects. Codes and sessions are random (192 bits) and stored only as
//! SHA-256 digests; neither is ever logged or put in the audit log.

use super::answer::{data, ApiError};
use super::auth::Caller;
use super::pages;
use super::pages::session::PORTAL_COOKIE;
use super::request::body_json;
use super::server::Peer;
use super::server::ADMIN_BODY_LIMIT;
use super::state::{actor, now, Ctx};
use super::store::{PortalSession, Store};
use crate::mint;
use askama::Template;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate::keys::digest_hex;
use serde_json::Value;
use std::collections::HashMap;

/// A code is valid this long unless the caller asks for less (at most [`MAX_TTL`]).
pub const DEFAULT_TTL: u64 = 900;
pub const MAX_TTL: u64 = 3600;
/// A portal session lasts this long once opened (SPEC §11: at most 24 h).
pub const SESSION_TTL: i64 = 12 * 3600;

/// `{"tenant", "ttl_seconds"?, "return_url"?}`, checked.
fn read_request(body: &Value) -> Result<(String, u64, Option<String>), String> {
    let Some(map) = body.as_object() else {
        return Err("$: expected an object".into());
    };
    if let Some(k) = map
        .keys()
        .find(|k| !["tenant", "ttl_seconds", "return_url"].contains(&k.as_str()))
    {
        return Err(format!("{k}: unknown field"));
    }
    let tenant = match map.get("tenant") {
        Some(Value::String(t)) if !t.is_empty() && t.len() <= 128 => t.clone(),
        None | Some(Value::Null) => return Err("tenant: is required".into()),
        Some(_) => return Err("tenant: expected 1-128 characters".into()),
    };
    let ttl = match map.get("ttl_seconds") {
        None | Some(Value::Null) => DEFAULT_TTL,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_TTL).contains(&n) => n,
            _ => {
                return Err(format!(
                    "ttl_seconds: must be a whole number from 1 to {MAX_TTL}"
                ))
            }
        },
    };
    let return_url = match map.get("return_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if same_origin_path(u) => Some(u.clone()),
        Some(_) => {
            return Err(
                "return_url: must be a path on this service (same origin), like /keys".into(),
            )
        }
    };
    Ok((tenant, ttl, return_url))
}

/// A path on this origin: `/…`, never `//host` or `/\host` (which browsers take as another
/// origin), no scheme, no control characters.
fn same_origin_path(u: &str) -> bool {
    let b = u.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && u.len() <= 2048
        && b.iter().all(|c| (0x21..0x7f).contains(c))
}

/// `POST /v1/portal-sessions`: the admin token (any tenant) or a tenant admin key (its own).
pub async fn create<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = ctx.app.auth.admin(&headers, ctx.gateway)?;
    let body = body_json(body, ADMIN_BODY_LIMIT).await?;
    let (tenant, ttl, return_url) = read_request(&body).map_err(ApiError::BadRequest)?;
    if let Caller::Tenant(t) = &caller {
        if *t != tenant {
            // Another tenant's existence is not confirmed: as for its keys, "not found".
            return Err(ApiError::TenantNotFound);
        }
    }
    let actor = actor(&ctx, &headers, &caller, peer.map(|p| p.0));
    let fail = |e: String| {
        eprintln!("keygate serve: {e}");
        ApiError::Unavailable
    };
    let code = mint::random_secret().map_err(fail)?;
    let session = PortalSession {
        id: format!("ps_{}", mint::random_base62(20).map_err(fail)?),
        tenant,
        code_sha256: digest_hex(code.as_bytes()),
        code_expires_at: actor.at.saturating_add(ttl as i64),
        return_url,
    };
    ctx.app
        .store
        .create_portal_session(&session, &actor)
        .await?;
    let path = format!("/portal/open?code={code}");
    let url = link(&ctx, &headers, &path);
    let mut r = data(
        StatusCode::CREATED,
        super::views::PortalSession {
            id: session.id,
            url,
            tenant: session.tenant,
            expires_at: keygate::timestamp::format_rfc3339(session.code_expires_at),
        },
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Where a portal link points: `--public-url` (the dashboard's address as customers reach it),
/// else the host this request named, `https` unless the service runs with `--insecure-cookies`
/// (a code must not travel in clear text where cookies are `Secure`).
fn link<S: Store>(ctx: &Ctx<S>, headers: &HeaderMap, path: &str) -> String {
    if let Some(base) = &ctx.app.public_url {
        return format!("{}{path}", base.trim_end_matches('/'));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| (0x21..0x7f).contains(&b)));
    let scheme = if ctx.app.insecure_cookies {
        "http"
    } else {
        "https"
    };
    host.map_or(path.to_string(), |h| format!("{scheme}://{h}{path}"))
}

fn refused() -> Response {
    message(
        StatusCode::UNAUTHORIZED,
        "This link cannot be used",
        "It was used already or has expired. Ask for a new portal link.",
    )
}

fn message(status: StatusCode, heading: &str, text: &str) -> Response {
    let m = pages::html::Message {
        l: pages::html::Layout::anonymous(heading),
        heading: heading.into(),
        text: text.into(),
    };
    pages::html::page(status, m.render())
}

#[derive(Template)]
#[template(path = "portal_confirm.html")]
struct Confirm {
    l: pages::html::Layout,
    tenant: String,
    code: String,
}

fn code_ok(code: &str) -> bool {
    code.len() == 32 && code.bytes().all(|b| b.is_ascii_graphic())
}

/// `GET /portal/open?code=…`: the code's one exchange. A session cookie and a redirect to the
/// session's `return_url` (or `/`); a used, expired or unknown code is `401`, a page saying so.
/// A browser already in a portal session is asked first (a link from someone else must not
/// silently swap the customer's session for another tenant's).
pub async fn open<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let code = query.as_ref().ok().and_then(|q| q.0.get("code"));
    let Some(code) = code.filter(|c| code_ok(c)) else {
        return Ok(refused());
    };
    let peer = peer.map(|p| p.0);
    let sessions = pages::session::all(&ctx, &headers, peer).await?;
    if let Some(t) = sessions.iter().find_map(|w| w.session.tenant.clone()) {
        let c = Confirm {
            l: pages::html::Layout::anonymous("Open another portal"),
            tenant: t,
            code: code.clone(),
        };
        return Ok(pages::html::page(StatusCode::OK, c.render()));
    }
    exchange(&ctx, &headers, peer, code).await
}

/// `POST /portal/open` (the confirmation's form): the exchange, from this origin only.
pub async fn open_confirmed<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    pages::html::FormBody(form): pages::html::FormBody,
) -> Result<Response, ApiError> {
    if !pages::session::same_origin(&headers, ctx.app.insecure_cookies) {
        return Ok(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form was sent from another site and was refused",
        ));
    }
    match form.get("code").filter(|c| code_ok(c)) {
        Some(code) => exchange(&ctx, &headers, peer.map(|p| p.0), code).await,
        None => Ok(refused()),
    }
}

async fn exchange<S: Store>(
    ctx: &Ctx<S>,
    headers: &HeaderMap,
    peer: Option<Peer>,
    code: &str,
) -> Result<Response, ApiError> {
    let session = mint::random_secret().map_err(|e| {
        eprintln!("keygate serve: {e}");
        ApiError::Unavailable
    })?;
    let now = now();
    let caller = Caller::Admin; // the actor is the portal session itself (see the store)
    let ip = actor(ctx, headers, &caller, peer).ip;
    let opened = ctx
        .app
        .store
        .open_portal_session(
            &digest_hex(code.as_bytes()),
            &digest_hex(session.as_bytes()),
            now.saturating_add(SESSION_TTL),
            ip,
            now,
        )
        .await?;
    let Some(opened) = opened else {
        return Ok(refused());
    };
    let secure = if ctx.app.insecure_cookies {
        ""
    } else {
        "; Secure"
    };
    let cookie = format!(
        "{PORTAL_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_TTL}{secure}"
    );
    let location = opened.return_url.unwrap_or_else(|| "/".into());
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    if let (Ok(c), Ok(l)) = (
        HeaderValue::from_str(&cookie),
        HeaderValue::from_str(&location),
    ) {
        h.insert(header::SET_COOKIE, c);
        h.insert(header::LOCATION, l);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(r)
}
