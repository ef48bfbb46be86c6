//! The Requests page (SPEC §13): the request log for what the session may see (an operator:
//! every tenant or the one chosen; a portal session: its tenant), filtered, newest first, a page
//! at a time, and as CSV. A key's page shows its latest requests and addresses
//! ([`recent_for_key`]).

use super::html::{csv_download, page, time_html, CleanQuery, Layout};
use super::session::{layout, SignedIn, Web};
use crate::answer::ApiError;
use crate::ops;
use crate::request_log::{csv_line, format_time_ms, StoredRequest, CSV_HEADER, DECISIONS};
use crate::state::Ctx;
use crate::store::Store;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;

/// One row of the table.
pub struct Row {
    pub time: String,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `ok` (2xx, 3xx), `bad` (4xx, 5xx) or `none` (no answer): the status's colour.
    pub class: &'static str,
    pub decision: String,
    pub client_ip: Option<String>,
    pub duration_ms: String,
}

fn row(r: StoredRequest) -> Row {
    let r = r.record;
    Row {
        time: time_html(Some(&format_time_ms(r.time_ms))),
        class: match r.status {
            0 => "none",
            100..=399 => "ok",
            _ => "bad",
        },
        key_id: r.key_id,
        tenant: r.tenant,
        method: r.method,
        path: r.path,
        status: r.status,
        decision: r.decision,
        client_ip: r.client_ip,
        duration_ms: r.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "requests.html")]
struct RequestsPage {
    l: Layout,
    rows: Vec<Row>,
    error: Option<String>,
    /// The filters as asked (shown back in the form).
    key_id: String,
    status: String,
    decision: String,
    client_ip: String,
    path_prefix: String,
    from: String,
    to: String,
    decisions: &'static [&'static str],
    next: Option<String>,
    csv_href: String,
}

/// The page's filters (dates for `from`/`to`) as the API's query: `from` a day's start, `to`
/// the end of the day named (both UTC).
fn api_query(q: &HashMap<String, String>, tenant: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for name in [
        "key_id",
        "status",
        "decision",
        "client_ip",
        "path_prefix",
        "cursor",
    ] {
        if let Some(v) = q.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            out.insert(name.to_string(), v.to_string());
        }
    }
    if let Some(d) = q.get("from").filter(|d| !d.is_empty()) {
        out.insert("from".into(), format!("{d}T00:00:00Z"));
    }
    if let Some(d) = q.get("to").filter(|d| !d.is_empty()) {
        // The day named is included: up to the start of the next.
        let next = keygate::timestamp::parse_rfc3339(&format!("{d}T00:00:00Z"))
            .map(|t| keygate::timestamp::format_rfc3339(t + 86_400));
        out.insert("to".into(), next.unwrap_or_else(|| d.clone()));
    }
    if !tenant.is_empty() {
        out.insert("tenant".into(), tenant.to_string());
    }
    out
}

/// The filters as a query string (without the cursor), for the next page and the CSV.
fn filters_query(q: &HashMap<String, String>, tenant: &str) -> String {
    let mut parts = Vec::new();
    for name in [
        "key_id",
        "status",
        "decision",
        "client_ip",
        "path_prefix",
        "from",
        "to",
    ] {
        if let Some(v) = q.get(name).filter(|v| !v.is_empty()) {
            parts.push(format!("{name}={}", super::html::enc(v)));
        }
    }
    if !tenant.is_empty() {
        parts.push(format!("tenant={}", super::html::enc(tenant)));
    }
    parts.join("&")
}

const PAGE: usize = 100;

/// `GET /dashboard/requests[?key_id&status&decision&client_ip&path_prefix&from&to&cursor]`.
pub async fn show<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    CleanQuery(q): CleanQuery,
) -> Result<Response, ApiError> {
    let l = layout(
        &ctx,
        &web,
        "Requests",
        "requests",
        "/dashboard/requests",
        q.get("tenant"),
    )
    .await;
    let tenant = web.tenant(&q);
    let filters = filters_query(&q, &tenant);
    let (rows, next, error) =
        match ops::requests(&ctx.app, &web.caller, &api_query(&q, &tenant), PAGE).await {
            Ok((rows, next)) => (rows, next, None),
            Err(ApiError::BadRequest(e)) => (vec![], None, Some(e)),
            Err(e) => return Err(e),
        };
    let sep = if filters.is_empty() { "" } else { "&" };
    let get = |n: &str| q.get(n).cloned().unwrap_or_default();
    let p = RequestsPage {
        rows: rows.into_iter().map(row).collect(),
        status: get("status"),
        key_id: get("key_id"),
        decision: get("decision"),
        client_ip: get("client_ip"),
        path_prefix: get("path_prefix"),
        from: get("from"),
        to: get("to"),
        decisions: DECISIONS,
        next: next.map(|c| format!("/dashboard/requests?{filters}{sep}cursor={c}")),
        csv_href: format!("/dashboard/requests.csv?{filters}"),
        error,
        l,
    };
    let status = if p.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(page(status, p.render()))
}

/// Rows a CSV download holds at most.
const CSV_ROWS: usize = 10_000;

/// `GET /dashboard/requests.csv`: the filtered log, newest first, at most 10,000 rows.
pub async fn csv<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    CleanQuery(q): CleanQuery,
) -> Result<Response, ApiError> {
    let tenant = web.tenant(&q);
    let mut query = api_query(&q, &tenant);
    let mut body = String::from(CSV_HEADER);
    let mut n = 0;
    while n < CSV_ROWS {
        let (rows, next) = ops::requests(&ctx.app, &web.caller, &query, 1000).await?;
        n += rows.len();
        for r in rows {
            body.push_str(&csv_line(&r.record));
        }
        match next {
            Some(c) => query.insert("cursor".into(), c),
            None => break,
        };
    }
    Ok(csv_download(body, "keygate-requests.csv"))
}

/// A key's latest requests and its client addresses, for its page.
pub struct Recent {
    pub rows: Vec<Row>,
    pub ips: Vec<RecentIp>,
}

pub struct RecentIp {
    pub client_ip: String,
    pub first_seen: String,
    pub last_seen: String,
    pub requests: i64,
}

pub async fn recent_for_key<S: Store>(ctx: &Ctx<S>, web: &Web, id: &str) -> Recent {
    let none = HashMap::new();
    let rows = ops::key_requests(&ctx.app, &web.caller, id, &none, 10)
        .await
        .map(|(r, _)| r)
        .unwrap_or_default();
    let ips = ops::client_ips(&ctx.app, &web.caller, id, 20)
        .await
        .unwrap_or_default();
    Recent {
        rows: rows.into_iter().map(row).collect(),
        ips: ips
            .into_iter()
            .map(|i| RecentIp {
                client_ip: i.client_ip,
                first_seen: time_html(Some(&format_time_ms(i.first_seen_ms))),
                last_seen: time_html(Some(&format_time_ms(i.last_seen_ms))),
                requests: i.requests,
            })
            .collect(),
    }
}
