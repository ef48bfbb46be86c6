//! Usage over time, by key and by route (SPEC §7's `GET /v1/usage`, answered in [`crate::api`]):
//! the range a call asks for, the summary it gets, and the retention that prunes hourly and daily
//! rows.

use super::answer::ApiError;
use super::model::Tally;
use super::request::time_param;
use super::store::{ByDecision, UsageSummary};
use super::views::{self, Totals};
use std::collections::HashMap;

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// The longest range one call may cover.
pub const MAX_RANGE_DAYS: i64 = 400;

/// How long usage rows are kept (`keygate serve --usage-hourly-days/--usage-daily-days`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Hourly rows are deleted once older than this many days (daily rows hold the same).
    pub hourly_days: u32,
    /// Daily rows are deleted once older than this many days.
    pub daily_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            hourly_days: 90,
            daily_days: 365,
        }
    }
}

impl Retention {
    /// The first day still kept by the hour, and the first kept at all, at `now`.
    pub fn horizons(&self, now: i64) -> (i64, i64) {
        let day = |days: u32| (now - i64::from(days) * DAY).div_euclid(DAY) * DAY;
        (day(self.hourly_days), day(self.daily_days))
    }
}

/// The range and buckets a call asked for, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
    pub by_day: bool,
}

impl Range {
    /// `granularity` (`hour`|`day`, default `day`), `from` and `to` (default: the 30 days, or
    /// with `hour` the 24 hours, up to now), aligned to whole buckets.
    pub fn read(
        query: &HashMap<String, String>,
        now: i64,
        retention: Retention,
    ) -> Result<Range, ApiError> {
        let by_day = match query.get("granularity").map(String::as_str) {
            None | Some("day") => true,
            Some("hour") => false,
            Some(g) => {
                return Err(ApiError::BadRequest(format!(
                    "granularity: {g:?} is not hour or day"
                )))
            }
        };
        let step = if by_day { DAY } else { HOUR };
        let to = time_param(query, "to")?.unwrap_or(now);
        let from = time_param(query, "from")?.unwrap_or(to - if by_day { 30 * DAY } else { DAY });
        if from > to {
            return Err(ApiError::BadRequest("from: is after to".into()));
        }
        let (from, to) = (
            from.div_euclid(step) * step,
            to.div_euclid(step) * step + step * i64::from(to % step != 0),
        );
        if to - from > MAX_RANGE_DAYS * DAY {
            return Err(ApiError::BadRequest(format!(
                "to: the range is at most {MAX_RANGE_DAYS} days"
            )));
        }
        let (hourly_from, _) = retention.horizons(now);
        if !by_day && from < hourly_from {
            return Err(ApiError::BadRequest(format!(
                "granularity: usage by the hour is kept for {} days; ask for granularity=day",
                retention.hourly_days
            )));
        }
        Ok(Range { from, to, by_day })
    }
}

fn tally(by: &ByDecision) -> Tally {
    let mut t = Tally::default();
    for (d, n) in by {
        t.add(d, *n);
    }
    t
}

/// Entries with their totals, most requests first (then by name).
fn ranked<T>(
    map: &std::collections::BTreeMap<String, ByDecision>,
    make: impl Fn(String, Totals) -> T,
) -> Vec<T> {
    let mut list: Vec<(&String, Tally)> = map.iter().map(|(k, by)| (k, tally(by))).collect();
    list.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
    list.into_iter()
        .map(|(k, t)| make(k.clone(), t.total()))
        .collect()
}

/// The answer: the total, the series with every bucket of the range, by key and by route.
pub fn summary_answer(range: &Range, s: &UsageSummary) -> views::UsageSummary {
    let step = if range.by_day { DAY } else { HOUR };
    let mut total = Tally::default();
    let mut series = Vec::new();
    let mut start = range.from;
    while start < range.to {
        let t = s.series.get(&start).map(tally).unwrap_or_default();
        for (d, n) in s.series.get(&start).into_iter().flatten() {
            total.add(d, *n);
        }
        series.push(t.bucket(start));
        start += step;
    }
    views::UsageSummary {
        total: total.total(),
        series,
        by_key: ranked(&s.by_key, |id, t| views::KeyShare {
            id,
            requests: t.requests,
            allowed: t.allowed,
            rejected: t.rejected,
            credits: t.credits,
        }),
        by_route: ranked(&s.by_route, |route, t| views::RouteShare {
            route,
            requests: t.requests,
            allowed: t.allowed,
            rejected: t.rejected,
            credits: t.credits,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const NOW: i64 = 1_760_000_000; // 2025-10-09T08:53:20Z

    fn bad(r: Result<Range, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn ranges_align_to_buckets_and_bad_ones_name_the_field() {
        let r = Retention::default();
        let day = Range::read(&q(&[]), NOW, r).unwrap();
        assert!(day.by_day && day.to % DAY == 0 && day.to > NOW && day.to - day.from == 31 * DAY);
        let hour = Range::read(&q(&[("granularity", "hour")]), NOW, r).unwrap();
        assert_eq!((hour.to - hour.from, hour.to % HOUR), (25 * HOUR, 0));
        let exact = Range::read(
            &q(&[
                ("from", "2025-10-01T00:00:00Z"),
                ("to", "2025-10-03T00:00:00Z"),
            ]),
            NOW,
            r,
        )
        .unwrap();
        assert_eq!(exact.to - exact.from, 2 * DAY);
        assert_eq!(
            bad(Range::read(
                &q(&[
                    ("from", "2025-10-03T00:00:00Z"),
                    ("to", "2025-10-01T00:00:00Z")
                ]),
                NOW,
                r
            )),
            "from: is after to"
        );
        assert_eq!(
            bad(Range::read(
                &q(&[
                    ("from", "2024-01-01T00:00:00Z"),
                    ("to", "2025-10-01T00:00:00Z")
                ]),
                NOW,
                r
            )),
            "to: the range is at most 400 days"
        );
        assert!(
            bad(Range::read(&q(&[("granularity", "minute")]), NOW, r)).starts_with("granularity:")
        );
        assert!(bad(Range::read(
            &q(&[
                ("granularity", "hour"),
                ("from", "2025-01-01T00:00:00Z"),
                ("to", "2025-01-02T00:00:00Z")
            ]),
            NOW,
            r
        ))
        .starts_with("granularity: usage by the hour is kept for 90 days"));
        assert!(bad(Range::read(&q(&[("from", "yesterday")]), NOW, r)).starts_with("from:"));
    }

    #[test]
    fn the_series_is_zero_filled_and_the_total_adds_up() {
        let range = Range {
            from: 0,
            to: 3 * DAY,
            by_day: true,
        };
        let mut s = UsageSummary::default();
        s.add_series(DAY, "allowed".into(), 5);
        s.add_series(DAY, "revoked".into(), 2);
        s.add_key("a".into(), "allowed".into(), 5);
        s.add_key("b".into(), "revoked".into(), 2);
        s.add_route("-".into(), "allowed".into(), 5);
        s.add_route("-".into(), "revoked".into(), 2);
        let v = serde_json::to_value(summary_answer(&range, &s)).unwrap();
        assert_eq!(
            v["total"],
            json!({"requests": 7, "allowed": 5, "rejected": 2})
        );
        assert_eq!(
            v["series"],
            json!([
                {"start": "1970-01-01T00:00:00Z", "requests": 0, "allowed": 0, "rejected": {}},
                {"start": "1970-01-02T00:00:00Z", "requests": 7, "allowed": 5, "rejected": {"revoked": 2}},
                {"start": "1970-01-03T00:00:00Z", "requests": 0, "allowed": 0, "rejected": {}}])
        );
        assert_eq!(
            v["by_key"],
            json!([{"id": "a", "requests": 5, "allowed": 5, "rejected": 0},
                   {"id": "b", "requests": 2, "allowed": 0, "rejected": 2}])
        );
        assert_eq!(
            v["by_route"],
            json!([{"route": "-", "requests": 7, "allowed": 5, "rejected": 2}])
        );
    }
}
