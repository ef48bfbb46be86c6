//! What every page shares: the frame ([`Layout`]), the headers every page sends ([`page`]: a
//! strict CSP, no caching of what is private), forms and queries read safely, escaping and the
//! way numbers and times are shown, the message and error pages.

use crate::answer::ApiError;
use crate::input::text_ok;
use crate::request::body_bytes;
use crate::server::ADMIN_BODY_LIMIT;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// Every page's policy: scripts and styles from this origin only (no inline script or style),
/// forms post here only, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the frame of every page shows.
pub struct Layout {
    pub title: String,
    /// The section (`keys`, `usage`, `audit`) the navigation marks.
    pub nav: &'static str,
    pub signed_in: bool,
    /// The form token of this session.
    pub csrf: String,
    /// A portal session's tenant (the page shows nothing else).
    pub portal_tenant: Option<String>,
    /// An operator's chosen tenant (`""`: every tenant).
    pub tenant: String,
    /// The tenants an operator may switch to.
    pub tenants: Vec<String>,
    /// `?tenant=T` (or nothing): keeps an operator's tenant across links.
    pub scope: String,
    /// `&tenant=T` (or nothing): the same after other parameters.
    pub scope_amp: String,
    /// This page's path (the tenant switch reloads it).
    pub path: String,
}

impl Layout {
    /// A signed-out page (the sign-in, a message).
    pub fn anonymous(title: &str) -> Layout {
        Layout {
            title: title.into(),
            nav: "",
            signed_in: false,
            csrf: String::new(),
            portal_tenant: None,
            tenant: String::new(),
            tenants: Vec::new(),
            scope: String::new(),
            scope_amp: String::new(),
            path: "/".into(),
        }
    }
}

/// A form's fields (`application/x-www-form-urlencoded`), read as the admin API reads its bodies:
/// at most 64 KiB, within the body deadline. A body that is not a form reads as no fields (its
/// form token is then missing, and the form refused).
pub struct FormBody(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for FormBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req.into_body(), ADMIN_BODY_LIMIT).await?;
        let mut fields: HashMap<String, String> =
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        fields.retain(|k, v| text_ok(k) && text_ok(v));
        Ok(FormBody(fields))
    }
}

/// A page's query, without any value a database would refuse (NUL): such a value is dropped,
/// so bad input is a page about nothing, never a database error. A query that cannot be read
/// at all is an empty one.
pub struct CleanQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for CleanQuery {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut q = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default();
        q.retain(|k, v| text_ok(k) && text_ok(v));
        Ok(CleanQuery(q))
    }
}

/// A key id from a page's path that the store can be asked about.
pub fn id_ok(id: &str) -> bool {
    text_ok(id) && !id.is_empty() && id.len() <= 128
}

/// A page: the HTML with the headers every page sends. Pages are never stored by a cache (one
/// of them shows a new key; all show what only this session may see).
pub fn page(status: StatusCode, html: Result<String, askama::Error>) -> Response {
    let html = match html {
        Ok(h) => h,
        Err(e) => {
            eprintln!("keygate serve: a page did not render: {e}");
            return ApiError::Unavailable.into_response();
        }
    };
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// A redirect after a form (303: the browser follows with a GET).
pub fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(l) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, l);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Minimal HTML escaping for the few fragments built in Rust (times, the chart).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time as `<time>`: UTC in the text (the script shows the viewer's zone and keeps UTC on
/// hover); `—` when unset. Input is an RFC 3339 time the service wrote.
pub fn time_html(t: Option<&str>) -> String {
    match t {
        None => "<span class=\"muted\">—</span>".into(),
        Some(t) => {
            let shown = t.replacen('T', " ", 1).replace('Z', " UTC");
            format!("<time datetime=\"{}\">{}</time>", esc(t), esc(&shown))
        }
    }
}

/// A CSV file to download: not cached, not sniffed.
pub fn csv_download(body: String, filename: &str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `application/x-www-form-urlencoded` query part, encoded.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The message page (not found, refused, …).
#[derive(askama::Template)]
#[template(path = "message.html")]
pub struct Message {
    pub l: Layout,
    pub heading: String,
    pub text: String,
}

/// An operation's error as a page: not found is a 404 page; anything else is the API's words.
pub fn error_page(l: Layout, e: ApiError) -> Response {
    use askama::Template;
    let (status, heading, text) = match &e {
        ApiError::NotFound => (
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such key here.".to_string(),
        ),
        other => {
            let (status, message) = other.status_and_message();
            (status, "That did not work", message)
        }
    };
    let m = Message {
        l,
        heading: heading.into(),
        text,
    };
    page(status, m.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_are_shown_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1234), "-1,234");
        assert_eq!(
            time_html(Some("2025-01-15T10:30:00Z")),
            "<time datetime=\"2025-01-15T10:30:00Z\">2025-01-15 10:30:00 UTC</time>"
        );
        assert_eq!(esc("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
