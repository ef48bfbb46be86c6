//! The dashboard and the customer portal (SPEC §11): server-rendered pages (askama templates in
//! `templates/`, escaped by default) over the same operations as the admin API
//! ([`super::ops`]). Every action is a plain HTML form; `assets/app.js` only enhances.
//!
//! The flow: [`session`] (sign-in, sign-out, who is asking, CSRF) → [`keys`] (with [`key`] and
//! its [`credits`]), [`usage`], [`requests`], [`audit`], [`webhooks`] (one page each) → [`html`]
//! (the frame and the headers every page sends).

mod audit;
mod credits;
pub(crate) mod html;
mod key;
mod keys;
mod requests;
pub(crate) mod session;
mod usage;
mod webhooks;

use crate::state::Ctx;
use crate::store::Store;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// The pages' routes (on the main listener; `/keys` and `/usage` there are Envoy's, so the pages
/// live under `/dashboard/`).
pub fn routes<S: Store>() -> Router<Ctx<S>> {
    Router::new()
        .route("/", get(session::home::<S>))
        .route("/sign-in", post(session::sign_in::<S>))
        .route("/sign-out", post(session::sign_out::<S>))
        .route(
            "/dashboard/keys",
            get(keys::list::<S>).post(keys::create::<S>),
        )
        .route(
            "/dashboard/keys/{id}",
            get(key::show::<S>).post(key::edit::<S>),
        )
        .route("/dashboard/keys/{id}/roll", post(key::roll::<S>))
        .route(
            "/dashboard/keys/{id}/credits",
            post(key::change_credits::<S>),
        )
        .route(
            "/dashboard/tenants/{tenant}/credits",
            post(key::change_tenant_credits::<S>),
        )
        .route(
            "/dashboard/keys/{id}/revoke",
            get(key::confirm_revoke::<S>).post(key::revoke::<S>),
        )
        .route("/dashboard/usage", get(usage::show::<S>))
        .route("/dashboard/usage.csv", get(usage::csv::<S>))
        .route("/dashboard/audit", get(audit::show::<S>))
        .route("/dashboard/requests", get(requests::show::<S>))
        .route("/dashboard/requests.csv", get(requests::csv::<S>))
        .route("/dashboard/webhooks", get(webhooks::show::<S>))
        .route(
            "/assets/app.css",
            get(|| asset("text/css", include_str!("../../assets/app.css"))),
        )
        .route(
            "/assets/app.js",
            get(|| asset("text/javascript", include_str!("../../assets/app.js"))),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
