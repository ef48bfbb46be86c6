//! The webhook page (SPEC §15): the latest deliveries of key events and where each stands, for
//! operators (a portal session gets a 404 page: the provider's webhooks are not a customer's).

use super::html::{error_page, page, time_html, Layout};
use super::session::{layout, SignedIn};
use crate::answer::ApiError;
use crate::ops;
use crate::state::Ctx;
use crate::store::Store;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

pub struct Row {
    pub id: String,
    pub event: String,
    pub created: String,
    pub status: String,
    pub attempts: i64,
    pub next: String,
    pub last: String,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    l: Layout,
    configured: bool,
    rows: Vec<Row>,
}

const SHOWN: usize = 100;

/// `GET /dashboard/webhooks`.
pub async fn show<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
) -> Result<Response, ApiError> {
    let l = layout(
        &ctx,
        &web,
        "Webhooks",
        "webhooks",
        "/dashboard/webhooks",
        None,
    )
    .await;
    if web.session.tenant.is_some() {
        return Ok(error_page(l, ApiError::NotFound));
    }
    let rows = ctx
        .app
        .store
        .deliveries(SHOWN)
        .await?
        .iter()
        .map(|d| {
            let e = ops::delivery_entry(d);
            Row {
                created: time_html(Some(&e.created_at)),
                next: time_html(e.next_attempt_at.as_deref()),
                last: match (e.last_status, e.last_error) {
                    (Some(s), _) => format!("HTTP {s}"),
                    (None, Some(err)) => err,
                    (None, None) => String::new(),
                },
                id: e.id,
                event: e.event,
                status: e.status,
                attempts: e.attempts,
            }
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        WebhooksPage {
            l,
            configured: ctx.app.webhooks,
            rows,
        }
        .render(),
    ))
}
