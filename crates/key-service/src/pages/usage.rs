//! The usage page (SPEC §11): totals, requests over time stacked by outcome (an SVG drawn here:
//! no script needed), by key and by endpoint, for the last 24 hours / 7 / 30 days or a range of
//! days; and the CSV of what is shown. The numbers are `/v1/usage`'s ([`ops::usage_summary`]).

use super::html::CleanQuery;
use super::html::{csv_download, esc, page, thousands, Layout};
use super::session::{layout, SignedIn};
use crate::answer::ApiError;
use crate::ops;
use crate::state::{now, Ctx};
use crate::store::Store;
use crate::views::{Bucket, UsageSummary};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keygate::timestamp::{format_rfc3339, parse_rfc3339};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

const DAY: i64 = 86_400;

/// The range a page asks for, as `/v1/usage` parameters, and how it is named.
struct Asked {
    /// `24h`, `7d`, `30d` or `range`.
    preset: &'static str,
    query: HashMap<String, String>,
    from_date: String,
    to_date: String,
}

fn date(t: i64) -> String {
    format_rfc3339(t).get(..10).unwrap_or_default().to_string()
}

/// `r=24h|7d|30d` (default 7d), or `from`/`to` dates (whole UTC days, `to` included).
fn asked(q: &HashMap<String, String>, tenant: &str) -> Result<Asked, ApiError> {
    let now = now();
    let mut query = HashMap::new();
    if !tenant.is_empty() {
        query.insert("tenant".to_string(), tenant.to_string());
    }
    if let Some(k) = q.get("key").filter(|k| !k.is_empty()) {
        query.insert("key".to_string(), k.clone());
    }
    let day = |field: &str| -> Result<Option<i64>, ApiError> {
        match q.get(field).map(|d| d.trim()).filter(|d| !d.is_empty()) {
            None => Ok(None),
            Some(d) => parse_rfc3339(&format!("{d}T00:00:00Z"))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("{field}: {d:?} is not a date (2026-01-31)"))
                }),
        }
    };
    let (from, to) = (day("from")?, day("to")?);
    let (preset, from, to, hourly) = if from.is_some() || to.is_some() {
        let to = to.map_or(now, |t| t + DAY);
        let from = from.unwrap_or(to - 30 * DAY);
        ("range", from, to, to - from <= 7 * DAY)
    } else {
        match q.get("r").map(String::as_str) {
            Some("24h") => ("24h", now - DAY, now, true),
            Some("30d") => ("30d", now - 30 * DAY, now, false),
            _ => ("7d", now - 7 * DAY, now, true),
        }
    };
    query.insert("from".into(), format_rfc3339(from));
    query.insert("to".into(), format_rfc3339(to));
    query.insert(
        "granularity".into(),
        if hourly { "hour" } else { "day" }.into(),
    );
    Ok(Asked {
        preset,
        query,
        from_date: date(from),
        to_date: date((to - 1).max(from)),
    })
}

pub struct RangeLink {
    pub label: &'static str,
    pub href: String,
    pub active: bool,
}

pub struct Share {
    pub name: String,
    pub requests: String,
    pub allowed: String,
    pub rejected: String,
}

pub struct LegendEntry {
    pub class: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    l: Layout,
    key: String,
    error: Option<String>,
    ranges: Vec<RangeLink>,
    from_date: String,
    to_date: String,
    range_amp: String,
    csv_href: String,
    total_requests: String,
    total_allowed: String,
    total_rejected: String,
    bucket_label: &'static str,
    empty: bool,
    legend: Vec<LegendEntry>,
    chart: String,
    by_key: Vec<Share>,
    by_route: Vec<Share>,
}

/// Outcomes in the series: allowed first, then each rejection by name.
fn outcomes(series: &[Bucket]) -> Vec<String> {
    let rejected: BTreeSet<&String> = series.iter().flat_map(|b| b.rejected.keys()).collect();
    std::iter::once("allowed".to_string())
        .chain(rejected.into_iter().cloned())
        .collect()
}

/// A class name from a decision (`[a-z_]` only; anything else drawn as "other").
fn class(outcome: &str) -> String {
    if outcome.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        outcome.to_string()
    } else {
        "other".into()
    }
}

/// The chart's top: the next of 2, 4, 10 × 10ⁿ at or above `max` (its half is a whole number).
fn nice(max: i64) -> i64 {
    let mut scale = 1i64;
    loop {
        for step in [2i64, 4, 10] {
            let top = step.saturating_mul(scale);
            if top >= max || top == i64::MAX {
                return top;
            }
        }
        scale = scale.saturating_mul(10);
    }
}

/// Requests over time as a stacked bar chart (SVG; every value it shows was formatted here).
fn chart(series: &[Bucket], hourly: bool) -> String {
    let (w, h, left, bottom, top) = (960.0_f64, 240.0_f64, 56.0, 22.0, 8.0);
    let plot_h = h - bottom - top;
    let n = series.len().max(1) as f64;
    let bar_w = (w - left) / n;
    let max = nice(series.iter().map(|b| b.requests).max().unwrap_or(0)) as f64;
    let kinds = outcomes(series);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Requests over time, stacked by outcome\">"
    );
    for frac in [0.0, 0.5, 1.0] {
        let y = top + plot_h * (1.0 - frac);
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{w}\" y1=\"{y:.1}\" y2=\"{y:.1}\"></line><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 4.0,
            thousands((max * frac).round() as i64)
        );
    }
    let label_every = (series.len() / 8).max(1);
    for (i, b) in series.iter().enumerate() {
        let x = left + bar_w * i as f64;
        let mut y = top + plot_h;
        let mut title = format!("{}: {} requests", b.start, thousands(b.requests));
        let _ = write!(out, "<g>");
        for kind in &kinds {
            let n = if kind == "allowed" {
                b.allowed
            } else {
                b.rejected.get(kind).copied().unwrap_or(0)
            };
            if n == 0 {
                continue;
            }
            let seg = plot_h * n as f64 / max;
            y -= seg;
            let _ = write!(title, ", {} {}", thousands(n), kind.replace('_', " "));
            let _ = write!(
                out,
                "<rect class=\"o-{}\" x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{seg:.2}\"></rect>",
                class(kind),
                x + bar_w * 0.1,
                (bar_w * 0.8).max(0.5)
            );
        }
        let _ = write!(out, "<title>{}</title></g>", esc(&title));
        if i % label_every == 0 && x < w - 60.0 {
            let label = if hourly {
                b.start.get(5..16).unwrap_or_default().replace('T', " ")
            } else {
                b.start.get(5..10).unwrap_or_default().to_string()
            };
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 2.0,
                h - 6.0,
                esc(&label)
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn shares<'a>(rows: impl Iterator<Item = (&'a str, i64, i64, i64)>) -> Vec<Share> {
    rows.map(|(name, requests, allowed, rejected)| Share {
        name: name.to_string(),
        requests: thousands(requests),
        allowed: thousands(allowed),
        rejected: thousands(rejected),
    })
    .collect()
}

/// `GET /dashboard/usage[?r=24h|7d|30d][&from=D&to=D][&key=ID][&tenant=T]`.
pub async fn show<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    CleanQuery(q): CleanQuery,
) -> Result<Response, ApiError> {
    let l = layout(
        &ctx,
        &web,
        "Usage",
        "usage",
        "/dashboard/usage",
        q.get("tenant"),
    )
    .await;
    let key = q.get("key").cloned().unwrap_or_default();
    let key_amp = if key.is_empty() {
        String::new()
    } else {
        format!("&key={}", super::html::enc(&key))
    };
    let (asked, summary, error) = match asked(&q, &l.tenant) {
        Ok(a) => match ops::usage_summary(&ctx.app, &web.caller, &a.query).await {
            Ok((_, s)) => (Some(a), s, None),
            Err(ApiError::Unavailable) => return Err(ApiError::Unavailable),
            Err(ApiError::NotFound) => return Ok(super::html::error_page(l, ApiError::NotFound)),
            Err(e) => (Some(a), empty_summary(), Some(e.status_and_message().1)),
        },
        Err(e) => (None, empty_summary(), Some(e.status_and_message().1)),
    };
    let preset = asked.as_ref().map_or("", |a| a.preset);
    let hourly = asked
        .as_ref()
        .is_some_and(|a| a.query.get("granularity").map(String::as_str) == Some("hour"));
    let range_amp = match &asked {
        Some(a) if a.preset == "range" => format!("&from={}&to={}", a.from_date, a.to_date),
        Some(a) => format!("&r={}", a.preset),
        None => String::new(),
    };
    let ranges = [
        ("24h", "Last 24 hours"),
        ("7d", "7 days"),
        ("30d", "30 days"),
    ]
    .into_iter()
    .map(|(r, label)| RangeLink {
        label,
        href: format!("/dashboard/usage?r={r}{key_amp}{}", l.scope_amp),
        active: preset == r,
    })
    .collect();
    let csv_href = format!(
        "/dashboard/usage.csv?{}{key_amp}{}",
        range_amp.trim_start_matches('&'),
        l.scope_amp
    );
    let legend = outcomes(&summary.series)
        .into_iter()
        .map(|o| LegendEntry {
            class: class(&o),
            label: o.replace('_', " "),
        })
        .collect();
    let p = UsagePage {
        key,
        error: error.clone(),
        ranges,
        from_date: asked
            .as_ref()
            .map(|a| a.from_date.clone())
            .unwrap_or_default(),
        to_date: asked
            .as_ref()
            .map(|a| a.to_date.clone())
            .unwrap_or_default(),
        range_amp,
        csv_href,
        total_requests: thousands(summary.total.requests),
        total_allowed: thousands(summary.total.allowed),
        total_rejected: thousands(summary.total.rejected),
        bucket_label: if hourly {
            "by hour, UTC"
        } else {
            "by day, UTC"
        },
        empty: summary.total.requests == 0,
        legend,
        chart: chart(&summary.series, hourly),
        by_key: shares(
            summary
                .by_key
                .iter()
                .map(|k| (k.id.as_str(), k.requests, k.allowed, k.rejected)),
        ),
        by_route: shares(
            summary
                .by_route
                .iter()
                .map(|r| (r.route.as_str(), r.requests, r.allowed, r.rejected)),
        ),
        l,
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(page(status, p.render()))
}

fn empty_summary() -> UsageSummary {
    UsageSummary {
        total: Default::default(),
        series: Vec::new(),
        by_key: Vec::new(),
        by_route: Vec::new(),
    }
}

/// A CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` (a spreadsheet would run it as a formula).
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The CSV of what the page shows: the series (one row per hour or day, a column per outcome),
/// then by key and by route.
fn csv_of(s: &UsageSummary) -> String {
    let kinds = outcomes(&s.series);
    let mut out = String::from("section,start,name,requests");
    for k in &kinds {
        let _ = write!(out, ",{}", field(k));
    }
    out.push_str(",rejected\r\n");
    for b in &s.series {
        let _ = write!(out, "series,{},,{}", b.start, b.requests);
        for k in &kinds {
            let n = if k == "allowed" {
                b.allowed
            } else {
                b.rejected.get(k).copied().unwrap_or(0)
            };
            let _ = write!(out, ",{n}");
        }
        let _ = write!(out, ",{}\r\n", b.requests - b.allowed);
    }
    let blank = ",".repeat(kinds.len().saturating_sub(1));
    for k in &s.by_key {
        let _ = write!(
            out,
            "key,,{},{},{}{blank},{}\r\n",
            field(&k.id),
            k.requests,
            k.allowed,
            k.rejected
        );
    }
    for r in &s.by_route {
        let _ = write!(
            out,
            "route,,{},{},{}{blank},{}\r\n",
            field(&r.route),
            r.requests,
            r.allowed,
            r.rejected
        );
    }
    out
}

/// `GET /dashboard/usage.csv` (the page's parameters).
pub async fn csv<S: Store>(
    State(ctx): State<Ctx<S>>,
    SignedIn(web): SignedIn,
    CleanQuery(q): CleanQuery,
) -> Result<Response, ApiError> {
    let tenant = web.tenant(&q);
    let a = asked(&q, &tenant)?;
    let (_, s) = ops::usage_summary(&ctx.app, &web.caller, &a.query).await?;
    Ok(csv_download(
        csv_of(&s),
        &format!("keygate-usage-{}-{}.csv", a.from_date, a.to_date),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{KeyShare, RouteShare, Totals};
    use std::collections::BTreeMap;

    fn bucket(start: &str, allowed: i64, limited: i64) -> Bucket {
        let mut rejected = BTreeMap::new();
        if limited > 0 {
            rejected.insert("rate_limited".to_string(), limited);
        }
        Bucket {
            start: start.into(),
            requests: allowed + limited,
            allowed,
            rejected,
            credits: 0,
        }
    }

    #[test]
    fn the_chart_stacks_outcomes_and_escapes_what_it_shows() {
        let series = [
            bucket("2026-01-01T00:00:00Z", 10, 5),
            bucket("2026-01-02T00:00:00Z", 0, 0),
        ];
        let svg = chart(&series, false);
        assert_eq!(svg.matches("<rect class=\"o-allowed\"").count(), 1);
        assert_eq!(svg.matches("<rect class=\"o-rate_limited\"").count(), 1);
        assert!(svg.contains(
            "<title>2026-01-01T00:00:00Z: 15 requests, 10 allowed, 5 rate limited</title>"
        ));
        assert!(!svg.contains("<script"));
        assert_eq!(class("<b>"), "other");
        assert_eq!(
            [0, 1, 2, 3, 5, 11, 40, 41].map(nice),
            [2, 2, 2, 4, 10, 20, 40, 100]
        );
        assert_eq!(nice(i64::MAX), i64::MAX);
    }

    #[test]
    fn the_csv_holds_what_is_shown_and_defuses_formulas() {
        let s = UsageSummary {
            total: Totals {
                requests: 15,
                allowed: 10,
                rejected: 5,
                credits: 0,
            },
            series: vec![bucket("2026-01-01T00:00:00Z", 10, 5)],
            by_key: vec![KeyShare {
                id: "k1".into(),
                requests: 15,
                allowed: 10,
                rejected: 5,
                credits: 0,
            }],
            by_route: vec![RouteShare {
                route: "=cmd(),x".into(),
                requests: 15,
                allowed: 10,
                rejected: 5,
                credits: 0,
            }],
        };
        assert_eq!(
            csv_of(&s),
            "section,start,name,requests,allowed,rate_limited,rejected\r\n\
             series,2026-01-01T00:00:00Z,,15,10,5,5\r\n\
             key,,k1,15,10,,5\r\n\
             route,,\"'=cmd(),x\",15,10,,5\r\n"
        );
    }
}
