//! A key's credits as the pages show them (SPEC §14): its balance on the key's page and in the
//! keys list (operators and customers alike), its tenant's shared balance for a key without
//! credits of its own, and the top-up forms' amount read as the API would read it (the forms
//! themselves are [`super::key`]'s). Plain functions, unit-tested, and [`tenant_balance`], which
//! reads what they need from the store.

use super::html::{thousands, time_html};
use crate::answer::ApiError;
use crate::model::StoredKey;
use crate::state::Ctx;
use crate::store::{AuditQuery, Store, UsageQuery};
use crate::views::{CreditsView, RefillView};
use keygate::model::Credits;
use keygate::timestamp::format_rfc3339;
use serde_json::Value;

/// A balance as the pages show it (numbers with separators; the refill as `<time>` HTML made
/// from a time the service computed).
pub struct Balance {
    /// `10,000`.
    pub granted: String,
    /// `per day`, `per month on day 1`, `in all`.
    pub per: String,
    /// Refilled: what was spent is of this period; else of the grant.
    pub refills: bool,
    pub spent: String,
    pub remaining: String,
    /// `remaining / granted`, for the keys list.
    pub short: String,
    /// The next refill as `<time>` HTML, `None` without a refill.
    pub next_refill: Option<String>,
    /// The bar: `remaining` of the larger of the grant and what remains (a top-up may pass the
    /// grant), and where it turns low (a tenth of it).
    pub meter_value: u64,
    pub meter_max: u64,
    pub meter_low: u64,
}

/// A count with separators (any `u64`: a balance is at most 2^53 - 1, but never panics).
pub fn count(n: u64) -> String {
    i64::try_from(n).map_or_else(|_| n.to_string(), thousands)
}

/// How often the grant is given: `per day`, `per month on day N` (a day past the 28th is
/// clamped to a shorter month's last day), or `in all` without a refill.
pub fn per(refill: Option<&RefillView>) -> String {
    match refill {
        None => "in all".into(),
        Some(r) if r.interval == "day" => "per day".into(),
        Some(r) => match r.day.unwrap_or(1) {
            31 => "per month on its last day".into(),
            d @ 29..=30 => format!("per month on day {d} (a shorter month's last day)"),
            d => format!("per month on day {d}"),
        },
    }
}

pub fn balance(v: &CreditsView) -> Balance {
    let max = v.granted.max(v.remaining);
    Balance {
        granted: count(v.granted),
        per: per(v.refill.as_ref()),
        refills: v.refill.is_some(),
        spent: count(v.spent),
        remaining: count(v.remaining),
        short: format!("{} / {}", count(v.remaining), count(v.granted)),
        next_refill: v.reset.map(|t| time_html(Some(&format_rfc3339(t)))),
        meter_value: v.remaining,
        meter_max: max,
        meter_low: max / 10,
    }
}

/// A tenant's shared balance as a key's page shows it (for a key without credits of its own).
pub struct TenantShown {
    pub tenant: String,
    pub b: Balance,
    /// This period's top-ups as the key service holds them: `+1,500`, `−200`, or `none`.
    pub top_up: String,
    /// The balance was set this period: spent is counted from the start of that hour (`<time>`
    /// HTML).
    pub since_set: Option<String>,
    /// Where the operator's form posts: `/dashboard/tenants/{tenant}/credits`.
    pub action: String,
}

fn signed(n: i64) -> String {
    match n {
        0 => "none".into(),
        n if n > 0 => format!("+{}", thousands(n)),
        n => format!("\u{2212}{}", thousands(n).trim_start_matches('-')),
    }
}

/// The balance `c` of `tenant` at `now`, with `spent` reported in its current period (since
/// `since_set`, the start of the hour of this period's last `set`, if there was one):
/// `remaining = max(0, granted + this period's top-ups − spent)`.
pub fn tenant_shown(
    tenant: &str,
    c: &Credits,
    spent: i64,
    since_set: Option<i64>,
    now: i64,
) -> TenantShown {
    let at = u64::try_from(now).unwrap_or(0);
    let (start, _) = keygate::credits::period(c, at);
    let spent = spent.max(0);
    let left = i128::from(keygate::credits::granted_in(c, start)) - i128::from(spent);
    let mut view = crate::credits::KeyCredits {
        credits: *c,
        set_at: None,
        spent: None,
    }
    .view(now);
    view.remaining = u64::try_from(left.max(0)).unwrap_or(u64::MAX);
    view.spent = u64::try_from(spent).unwrap_or(0);
    TenantShown {
        tenant: tenant.to_string(),
        b: balance(&view),
        top_up: signed(crate::credits::top_up_now(c, now)),
        since_set: since_set.map(|t| time_html(Some(&format_rfc3339(t)))),
        action: format!("/dashboard/tenants/{}/credits", super::html::enc(tenant)),
    }
}

/// The audit entries read to find this period's last `set` of a tenant's balance.
const AUDIT_LOOKBACK: usize = 500;

/// The shared balance `k` draws from: its tenant's (the configuration's grant, with the top-up
/// and serial the key service holds, as the key carries them), when `k` has no credits of its
/// own and the configuration gives its tenant credits; else `None`. Spent is what the usage
/// reports say the tenant's keys without credits of their own spent in the current period (by
/// the hour, or by the day past the hourly retention), from the start of the hour of the
/// period's last `set` (the audit log's `tenant.credits`) if there was one.
pub async fn tenant_balance<S: Store>(
    ctx: &Ctx<S>,
    k: &StoredKey,
) -> Result<Option<TenantShown>, ApiError> {
    if k.credits.is_some() {
        return Ok(None);
    }
    let Some(tenant) = k.tenant.as_deref() else {
        return Ok(None);
    };
    let gate = &ctx.app.gate;
    let Some(base) = gate.tenant_credits(tenant).copied() else {
        return Ok(None);
    };
    let c = k
        .clone()
        .with_tenant_balance(gate)
        .tenant_credits
        .unwrap_or(base);
    let now = crate::state::now();
    let (start, _) = keygate::credits::period(&c, u64::try_from(now).unwrap_or(0));
    let start = i64::try_from(start).unwrap_or(0);
    let set_at = ctx
        .app
        .store
        .audit(&AuditQuery {
            tenant: Some(tenant),
            from: Some(start),
            limit: AUDIT_LOOKBACK,
            ..AuditQuery::default()
        })
        .await?
        .into_iter()
        .find(|r| {
            r.action == "tenant.credits"
                && r.details
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .is_some_and(|d| d["op"] == "set")
        })
        .map(|r| crate::model::hour_of(r.time));
    let from = set_at.unwrap_or(start).max(start);
    const DAY: i64 = 86_400;
    let (hourly_from, _) = ctx.app.usage_retention.horizons(now);
    let by_day = from < hourly_from;
    let (from, to) = if by_day {
        (from.div_euclid(DAY) * DAY, now.div_euclid(DAY) * DAY + DAY)
    } else {
        (from, crate::model::hour_of(now) + 3600)
    };
    let drawing: std::collections::HashSet<String> = ctx
        .app
        .store
        .list(Some(tenant))
        .await?
        .into_iter()
        .filter(|k| k.credits.is_none())
        .map(|k| k.id)
        .collect();
    let summary = ctx
        .app
        .store
        .usage_summary(&UsageQuery {
            tenant: Some(tenant),
            key: None,
            from,
            to,
            by_day,
        })
        .await?;
    let spent = summary
        .by_key
        .iter()
        .filter(|(id, _)| drawing.contains(*id))
        .filter_map(|(_, by)| by.get("credits"))
        .fold(0i64, |sum, n| sum.saturating_add(*n));
    Ok(Some(tenant_shown(tenant, &c, spent, set_at, now)))
}

/// The form's `amount` as the API's body would carry it: a whole number as a number (commas
/// and spaces between digits allowed: `10,000`); a number past `u64` as `u64::MAX` (the API
/// then says how large it may be); a negative or fractional number as that number, anything
/// else as the text it is (the API then says what it expected); empty: absent (required).
pub fn amount_json(s: &str) -> Option<Value> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let digits: String = s.chars().filter(|c| !matches!(c, ',' | ' ')).collect();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Value::from(digits.parse::<u64>().unwrap_or(u64::MAX)));
    }
    if let Ok(n) = digits.parse::<i64>() {
        return Some(Value::from(n));
    }
    match digits.parse::<f64>() {
        Ok(f) if f.is_finite() => Some(Value::from(f)),
        _ => Some(Value::String(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(granted: u64, refill: Option<(&str, Option<u8>)>, remaining: u64) -> CreditsView {
        CreditsView {
            granted,
            refill: refill.map(|(i, d)| RefillView {
                interval: i.into(),
                day: d,
            }),
            remaining,
            spent: 1234,
            reset: refill.map(|_| 1_775_001_600),
        }
    }

    #[test]
    fn a_balance_in_words() {
        let b = balance(&view(10_000, Some(("month", Some(1))), 8_766));
        assert_eq!(
            (b.granted.as_str(), b.per.as_str(), b.spent.as_str()),
            ("10,000", "per month on day 1", "1,234")
        );
        assert_eq!(
            (b.remaining.as_str(), b.short.as_str()),
            ("8,766", "8,766 / 10,000")
        );
        assert_eq!(
            b.next_refill.as_deref(),
            Some("<time datetime=\"2026-04-01T00:00:00Z\">2026-04-01 00:00:00 UTC</time>")
        );
        assert!(b.refills);
        assert_eq!(
            (b.meter_value, b.meter_max, b.meter_low),
            (8_766, 10_000, 1_000)
        );
        // A top-up past the grant: the bar is full, never past its end.
        let b = balance(&view(100, None, 250));
        assert_eq!(
            (b.per.as_str(), b.next_refill, b.refills),
            ("in all", None, false)
        );
        assert_eq!((b.meter_value, b.meter_max), (250, 250));
        assert_eq!(balance(&view(5, Some(("day", None)), 0)).per, "per day");
        assert_eq!(count(u64::MAX), "18446744073709551615");
        assert_eq!(count(9_007_199_254_740_991), "9,007,199,254,740,991");
    }

    #[test]
    fn a_tenant_balance_in_words() {
        let day = keygate::model::Refill::Day;
        let now = 1_775_001_600 + 3_600;
        let c = Credits {
            granted: 1_000,
            refill: Some(day),
            top_up: Some((1_775_001_600, 500)),
            serial: 0,
        };
        let t = tenant_shown("org <x>", &c, 120, None, now);
        assert_eq!(
            (t.b.granted.as_str(), t.b.per.as_str(), t.top_up.as_str()),
            ("1,000", "per day", "+500")
        );
        assert_eq!(
            (t.b.spent.as_str(), t.b.remaining.as_str()),
            ("120", "1,380")
        );
        assert_eq!(t.action, "/dashboard/tenants/org%20%3Cx%3E/credits");
        assert_eq!(
            t.b.next_refill.as_deref(),
            Some("<time datetime=\"2026-04-02T00:00:00Z\">2026-04-02 00:00:00 UTC</time>")
        );
        // A top-up of an ended period counts as none; never below zero.
        let old = Credits {
            top_up: Some((1_774_915_200, -300)),
            ..c
        };
        let t = tenant_shown("t", &old, 5_000, Some(now), now);
        assert_eq!((t.top_up.as_str(), t.b.remaining.as_str()), ("none", "0"));
        assert!(t.since_set.is_some());
        let less = Credits {
            top_up: Some((1_775_001_600, -200)),
            ..c
        };
        assert_eq!(
            tenant_shown("t", &less, -7, None, now).top_up,
            "\u{2212}200"
        );
        assert_eq!(tenant_shown("t", &less, -7, None, now).b.remaining, "800");
    }

    #[test]
    fn the_refill_day_in_words() {
        let month = |d| {
            per(Some(&RefillView {
                interval: "month".into(),
                day: Some(d),
            }))
        };
        assert_eq!(month(28), "per month on day 28");
        assert_eq!(
            month(30),
            "per month on day 30 (a shorter month's last day)"
        );
        assert_eq!(month(31), "per month on its last day");
    }

    #[test]
    fn the_typed_amount_as_the_api_reads_it() {
        for (typed, body) in [
            ("500", Some(json!(500))),
            (" 10,000 ", Some(json!(10000))),
            ("1 000", Some(json!(1000))),
            ("0", Some(json!(0))),
            ("99999999999999999999999", Some(json!(u64::MAX))),
            ("-5", Some(json!(-5))),
            ("1.5", Some(json!(1.5))),
            ("ten", Some(json!("ten"))),
            ("1e3x", Some(json!("1e3x"))),
            ("NaN", Some(json!("NaN"))),
            ("", None),
            ("   ", None),
        ] {
            assert_eq!(amount_json(typed), body, "{typed:?}");
        }
    }
}
