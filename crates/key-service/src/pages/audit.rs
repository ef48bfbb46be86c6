//! The audit page (SPEC §11): the audit log for what the session may see, newest first (one
//! key's with `?key=`).

use super::html::CleanQuery;
use super::html::{page, time_html, Layout};
use super::session::{layout, SignedIn};
use crate::answer::ApiError;
use crate::state::Ctx;
use crate::store::{AuditQuery, Store};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

pub struct Entry {
    pub time: String,
    pub actor: String,
    pub action: String,
    /// What a `key.leaked`, `key.credits` or `tenant.credits` entry adds, in words.
    pub detail: Option<String>,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub ip: Option<String>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    l: Layout,
    entries: Vec<Entry>,
    next: Option<String>,
}

const PAGE: usize = 100;

/// What an entry's `details` add, in words: a leak report's origin and action (`github:
/// revoked`), a balance's change (`add 500`, `set 1,000`); nothing for other entries.
fn detail(action: &str, details: Option<&str>) -> Option<String> {
    let d = serde_json::from_str::<serde_json::Value>(details?).ok()?;
    let s = |f: &str| d.get(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
    match action {
        "key.credits" | "tenant.credits" => Some(format!(
            "{} {}",
            s("op"),
            super::credits::count(d.get("amount")?.as_u64()?)
        )),
        _ if d.get("origin").is_some() => Some(format!("{}: {}", s("origin"), s("action"))),
        _ => None,
    }
}

/// `GET /dashboard/audit[?tenant=T][&before=C]`.
pub async fn show<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    CleanQuery(q): CleanQuery,
) -> Result<Response, ApiError> {
    let l = layout(
        &ctx,
        &web,
        "Audit log",
        "audit",
        "/dashboard/audit",
        q.get("tenant"),
    )
    .await;
    // A portal session: its tenant only; an operator: the tenant chosen, or every tenant.
    let tenant = match &web.session.tenant {
        Some(t) => Some(t.clone()),
        None => (!l.tenant.is_empty()).then(|| l.tenant.clone()),
    };
    let before = q
        .get("before")
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(String::as_str);
    let mut records = ctx
        .app
        .store
        .audit(&AuditQuery {
            tenant: tenant.as_deref(),
            key: q
                .get("key")
                .map(String::as_str)
                .filter(|k| super::html::id_ok(k)),
            from: None,
            to: None,
            before,
            limit: PAGE + 1,
        })
        .await?;
    let more = records.len() > PAGE;
    records.truncate(PAGE);
    let next = records.last().filter(|_| more).map(|r| {
        let key = q
            .get("key")
            .filter(|k| super::html::id_ok(k))
            .and_then(|k| serde_urlencoded::to_string([("key", k)]).ok())
            .map(|k| format!("&{k}"))
            .unwrap_or_default();
        format!("/dashboard/audit?before={}{key}{}", r.id, l.scope_amp)
    });
    // A customer sees its own sessions' entries in full; the provider's changes to its keys as
    // "provider", without the provider's session ids or addresses.
    let customer = web.session.tenant.is_some();
    let entries = records
        .into_iter()
        .map(|r| {
            // Leak reports name their origin (GitHub, GitLab) to everyone.
            let provider =
                customer && !matches!(r.actor_type.as_str(), "portal" | "github" | "gitlab");
            let detail = detail(&r.action, r.details.as_deref());
            Entry {
                time: time_html(Some(&keygate::timestamp::format_rfc3339(r.time))),
                actor: match (&r.actor_id, provider) {
                    (_, true) => "provider".to_string(),
                    (Some(id), false) => format!("{} {id}", r.actor_type),
                    (None, false) => r.actor_type.clone(),
                },
                action: r.action,
                detail,
                key_id: r.key_id,
                tenant: r.tenant,
                ip: if provider { None } else { r.ip },
            }
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        AuditPage { l, entries, next }.render(),
    ))
}

#[cfg(test)]
mod tests {
    use super::detail;

    #[test]
    fn an_entrys_details_in_words() {
        assert_eq!(
            detail("key.credits", Some(r#"{"op":"add","amount":1500}"#)).as_deref(),
            Some("add 1,500")
        );
        assert_eq!(
            detail("key.credits", Some(r#"{"op":"set","amount":0}"#)).as_deref(),
            Some("set 0")
        );
        assert_eq!(
            detail(
                "key.leaked",
                Some(r#"{"origin":"github","action":"revoked","url":"https://x"}"#)
            )
            .as_deref(),
            Some("github: revoked")
        );
        assert_eq!(
            detail("tenant.credits", Some(r#"{"op":"subtract","amount":250}"#)).as_deref(),
            Some("subtract 250")
        );
        assert_eq!(detail("key.credits", Some(r#"{"op":"add"}"#)), None);
        assert_eq!(detail("key.updated", Some("{}")), None);
        assert_eq!(detail("key.leaked", Some("not json")), None);
        assert_eq!(detail("key.created", None), None);
    }
}
