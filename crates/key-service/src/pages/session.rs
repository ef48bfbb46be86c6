//! Who is asking (SPEC §11): an operator signed in with the admin token (cookie
//! `keygate_session`, `SameSite=Strict`, 12 h) or a customer's portal session (cookie
//! `keygate_portal`, opened by a portal code). Cookies are 192 random bits, stored as SHA-256
//! digests. Every form carries a token derived from the session's cookie (an attacker's page
//! cannot read it) and is refused from another origin.

use super::html::{page, see_other, FormBody, Layout};
use crate::answer::ApiError;
use crate::auth::Caller;
use crate::mint;
use crate::server::Peer;
use crate::state::{now, Ctx};
use crate::store::{Actor, SessionKind, Store, WebSession};
use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate::keys::digest_hex;
use std::collections::HashMap;

/// The operator's session cookie.
pub const COOKIE: &str = "keygate_session";
/// The cookie of a portal session (opened by [`crate::portal`]).
pub const PORTAL_COOKIE: &str = "keygate_portal";
/// An operator's session lasts this long (SPEC §11: 12 h).
pub const TTL: i64 = 12 * 3600;

/// A signed-in browser: its session, what it may touch, its form token.
pub struct Web {
    pub session: WebSession,
    pub caller: Caller,
    pub csrf: String,
    pub ip: Option<String>,
}

impl Web {
    /// The tenant a page shows: a portal session's own, else the operator's `?tenant=` (`""`:
    /// every tenant).
    pub fn tenant(&self, q: &HashMap<String, String>) -> String {
        match &self.session.tenant {
            Some(t) => t.clone(),
            None => q.get("tenant").cloned().unwrap_or_default(),
        }
    }

    /// The audit log's view of this session's changes.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: if self.session.tenant.is_some() {
                "portal"
            } else {
                "admin"
            },
            id: Some(self.session.id.clone()),
            ip: self.ip.clone(),
            at: now(),
        }
    }
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// The form token of a session: derived from its cookie, which another site's page can neither
/// read nor guess.
fn csrf_of(cookie: &str) -> String {
    let d = digest_hex(format!("keygate-csrf\0{cookie}").as_bytes());
    d.get(..32).unwrap_or_default().to_string()
}

/// The fingerprint of the admin token an operator's session is bound to: a session opened with
/// a token the service no longer has is no session.
pub fn admin_fingerprint<S: Store>(ctx: &Ctx<S>) -> String {
    let d = digest_hex(
        format!(
            "keygate-operator-session\0{}",
            hex::encode(ctx.app.auth.admin_sha256)
        )
        .as_bytes(),
    );
    d.get(..32).unwrap_or_default().to_string()
}

/// The session of this request, if any (an operator's cookie first).
pub async fn current<S: Store>(
    ctx: &Ctx<S>,
    headers: &HeaderMap,
    peer: Option<Peer>,
) -> Result<Option<Web>, ApiError> {
    Ok(all(ctx, headers, peer).await?.into_iter().next())
}

/// Every live session the request carries: an operator's (under `keygate_session` only) and a
/// portal's (under `keygate_portal` only).
pub async fn all<S: Store>(
    ctx: &Ctx<S>,
    headers: &HeaderMap,
    peer: Option<Peer>,
) -> Result<Vec<Web>, ApiError> {
    let mut found = Vec::new();
    let operator = SessionKind::Operator {
        admin_fingerprint: admin_fingerprint(ctx),
    };
    for (name, kind) in [(COOKIE, operator), (PORTAL_COOKIE, SessionKind::Portal)] {
        let Some(value) = cookie(headers, name) else {
            continue;
        };
        let Some(session) = ctx
            .app
            .store
            .web_session(&digest_hex(value.as_bytes()), now(), &kind)
            .await?
        else {
            continue;
        };
        let caller = match &session.tenant {
            Some(t) => Caller::Tenant(t.clone()),
            None => Caller::Admin,
        };
        found.push(Web {
            session,
            caller,
            csrf: csrf_of(value),
            ip: peer.map(|p| p.0.ip().to_string()),
        });
    }
    Ok(found)
}

/// A signed-in session, as a page handler's argument: a request without one is answered with
/// a redirect to the sign-in (`/`), and a store that cannot answer with its error.
pub struct SignedIn(pub Web);

impl<S: Store> FromRequestParts<Ctx<S>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx<S>) -> Result<Self, Response> {
        let peer = parts.extensions.get::<Peer>().copied();
        match current(ctx, &parts.headers, peer).await {
            Ok(Some(web)) => Ok(SignedIn(web)),
            Ok(None) => Err(see_other("/")),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A state-changing form is this site's own: its token matches and, where the browser says
/// where it came from, it came from here.
pub fn check_form(
    headers: &HeaderMap,
    web: &Web,
    form: &HashMap<String, String>,
    insecure: bool,
) -> Result<(), ApiError> {
    if !same_origin(headers, insecure) {
        return Err(ApiError::Forbidden(
            "This form was sent from another site and was refused".into(),
        ));
    }
    let given = form.get("csrf").map(String::as_bytes).unwrap_or_default();
    let expected = web.csrf.as_bytes();
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(ApiError::Forbidden(
            "The form has expired or did not come from this page; reload the page and try again"
                .into(),
        ));
    }
    Ok(())
}

/// `Origin` (when sent) names this host, over `https` (also `http` with `--insecure-cookies`,
/// for plain-HTTP localhost); `Sec-Fetch-Site` (when sent) says same origin.
pub fn same_origin(headers: &HeaderMap, insecure: bool) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://").filter(|_| insecure))
    });
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// The frame of a signed-in page. `tenant`: an operator's chosen tenant (a portal session's is
/// its own, whatever is asked).
pub async fn layout<S: Store>(
    ctx: &Ctx<S>,
    web: &Web,
    title: &str,
    nav: &'static str,
    path: &str,
    tenant: Option<&String>,
) -> Layout {
    let (portal_tenant, tenant, tenants) = match &web.session.tenant {
        Some(t) => (Some(t.clone()), t.clone(), Vec::new()),
        None => (
            None,
            tenant.cloned().unwrap_or_default(),
            ctx.app.store.tenants().await.unwrap_or_default(),
        ),
    };
    let scoped = portal_tenant.is_none() && !tenant.is_empty();
    Layout {
        title: title.into(),
        nav,
        signed_in: true,
        csrf: web.csrf.clone(),
        scope: if scoped {
            format!("?tenant={}", super::html::enc(&tenant))
        } else {
            String::new()
        },
        scope_amp: if scoped {
            format!("&tenant={}", super::html::enc(&tenant))
        } else {
            String::new()
        },
        portal_tenant,
        tenant,
        tenants,
        path: path.into(),
    }
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignIn {
    l: Layout,
    error: Option<String>,
}

/// `GET /`: the keys page when signed in, else the sign-in.
pub async fn home<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
) -> Result<Response, ApiError> {
    if current(&ctx, &headers, peer.map(|p| p.0)).await?.is_some() {
        return Ok(see_other("/dashboard/keys"));
    }
    Ok(sign_in_page(StatusCode::OK, None))
}

pub fn sign_in_page(status: StatusCode, error: Option<String>) -> Response {
    page(
        status,
        SignIn {
            l: Layout::anonymous("Sign in"),
            error,
        }
        .render(),
    )
}

fn set_cookie(r: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// `POST /sign-in`: the admin token opens an operator's session.
pub async fn sign_in<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    if !same_origin(&headers, ctx.app.insecure_cookies) {
        return Ok(sign_in_page(
            StatusCode::FORBIDDEN,
            Some("This sign-in was sent from another site and was refused".into()),
        ));
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    if token.is_empty() || !ctx.app.auth.is_admin_token(token.as_bytes()) {
        return Ok(sign_in_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token of this key service".into()),
        ));
    }
    let fail = |e: String| {
        eprintln!("keygate serve: {e}");
        ApiError::Unavailable
    };
    let secret = mint::random_secret().map_err(fail)?;
    let id = format!("os_{}", mint::random_base62(20).map_err(fail)?);
    let actor = Actor {
        kind: "admin",
        id: Some(id.clone()),
        ip: peer.map(|p| p.0 .0.ip().to_string()),
        at: now(),
    };
    ctx.app
        .store
        .sign_in(
            &id,
            &digest_hex(secret.as_bytes()),
            &admin_fingerprint(&ctx),
            actor.at + TTL,
            &actor,
        )
        .await?;
    let secure = if ctx.app.insecure_cookies {
        ""
    } else {
        "; Secure"
    };
    let mut r = see_other("/dashboard/keys");
    set_cookie(
        &mut r,
        &format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={TTL}{secure}"),
    );
    Ok(r)
}

/// `POST /sign-out`: ends every session the browser holds at once (an operator who also opened a
/// customer's link holds two) and forgets both cookies.
pub async fn sign_out<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    FormBody(form): FormBody,
) -> Result<Response, ApiError> {
    let sessions = all(&ctx, &headers, peer.map(|p| p.0)).await?;
    // The form's token is the first session's (the one its page was shown for).
    let Some(first) = sessions.first() else {
        return Ok(see_other("/"));
    };
    if let Err(e) = check_form(&headers, first, &form, ctx.app.insecure_cookies) {
        return Ok(super::html::error_page(Layout::anonymous("Refused"), e));
    }
    for web in &sessions {
        ctx.app.store.sign_out(&web.session, &web.actor()).await?;
    }
    let mut r = see_other("/");
    for name in [COOKIE, PORTAL_COOKIE] {
        set_cookie(&mut r, &format!("{name}=; Path=/; HttpOnly; Max-Age=0"));
    }
    Ok(r)
}
