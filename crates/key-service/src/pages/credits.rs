//! A key's credits as the pages show them (SPEC §14): its balance on the key's page and in the
//! keys list (operators and customers alike), and the top-up form's amount read as the API
//! would read it (the form itself is [`super::key::change_credits`]'s). Plain functions,
//! unit-tested.

use super::html::{thousands, time_html};
use crate::views::{CreditsView, RefillView};
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
