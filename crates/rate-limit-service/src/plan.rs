//! One `ShouldRateLimit` call as counters (pure): the request checked, each descriptor named
//! as a Redis key, and the script's answer turned into the response.
//!
//! Keys: `kg{<tag>}<id><unit>`, where `<tag>` (16 hex) hashes the domain and the descriptor's
//! first entry (`key_id` for keygate), so every counter of one keygate request shares a Redis
//! Cluster hash slot and one script can count them atomically, and `<id>` (24 hex) hashes the
//! domain and every entry. Keys have a fixed length whatever the entries: memory per counter
//! is bounded.

use super::proto::{
    DescriptorStatus, Duration, RateLimit, RateLimitRequest, RateLimitResponse, CODE_OK,
    CODE_OVER_LIMIT,
};
use sha2::{Digest, Sha256};

/// Bounds on what one call may ask (anything beyond is `INVALID_ARGUMENT`).
pub const MAX_DESCRIPTORS: usize = 16;
pub const MAX_ENTRIES: usize = 8;
pub const MAX_TEXT: usize = 256;
/// The most one request may add to a counter.
pub const MAX_HITS: u64 = 1_000_000;

/// One counter of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub key: String,
    pub limit: u64,
    pub unit: i32,
    /// 0: a balance of credits (below), not a window.
    pub window_ms: u64,
    /// 0: checked, not counted.
    pub hits: u64,
    /// A balance's end (ms; its next refill), 0 for one without refill (kept while spent from,
    /// [`BALANCE_IDLE_MS`] after the last spend).
    pub until_ms: u64,
}

/// How long a balance without refill is kept after it was last spent from.
pub const BALANCE_IDLE_MS: u64 = 400 * 86_400_000;

/// A descriptor is a balance of credits (SPEC §14) when an entry names it: `credits` (the
/// period's start and serial, which make the counter's name, so a refill or a `set` starts a
/// new one) and `until` (the next refill, Unix seconds; 0 for none). Its limit is what the
/// period grants and its `hits_addend` what the request costs; windows and balances of one
/// request are counted all or nothing.
fn balance_end(d: &super::proto::RateLimitDescriptor) -> Result<Option<u64>, String> {
    if !d.entries.iter().any(|e| e.key == "credits") {
        return Ok(None);
    }
    let until = d
        .entries
        .iter()
        .find(|e| e.key == "until")
        .and_then(|e| e.value.parse::<u64>().ok())
        .ok_or("a credits descriptor needs an entry until: <unix seconds, or 0>")?;
    until
        .checked_mul(1000)
        .map(Some)
        .ok_or_else(|| "until is out of range".to_string())
}

fn window_ms(unit: i32) -> Option<u64> {
    match unit {
        1 => Some(1_000),
        2 => Some(60_000),
        3 => Some(3_600_000),
        4 => Some(86_400_000),
        _ => None,
    }
}

fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed: no two lists of parts hash the same bytes.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The counters of a request, or why it is refused (`INVALID_ARGUMENT`).
pub fn plan(req: &RateLimitRequest) -> Result<Vec<Counter>, String> {
    if req.domain.is_empty() || req.domain.len() > MAX_TEXT {
        return Err(format!("domain must be 1-{MAX_TEXT} bytes"));
    }
    if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(format!("1-{MAX_DESCRIPTORS} descriptors per request"));
    }
    let request_hits = match req.hits_addend {
        0 => 1,
        n => u64::from(n),
    };
    let first = req.descriptors.first().and_then(|d| d.entries.first());
    let mut out: Vec<Counter> = Vec::with_capacity(req.descriptors.len());
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return Err(format!("descriptors[{i}]: 1-{MAX_ENTRIES} entries"));
        }
        for e in &d.entries {
            if e.key.is_empty()
                || e.value.is_empty()
                || e.key.len() > MAX_TEXT
                || e.value.len() > MAX_TEXT
            {
                return Err(format!(
                    "descriptors[{i}]: entry keys and values must be 1-{MAX_TEXT} bytes"
                ));
            }
        }
        if d.entries.first() != first {
            return Err(format!(
                "descriptors[{i}]: every descriptor of a request must start with the same entry (its counters share a Redis Cluster slot)"
            ));
        }
        let Some(limit) = &d.limit else {
            return Err(format!(
                "descriptors[{i}]: no limit (keygate ratelimit has no limits of its own: each descriptor carries its limit)"
            ));
        };
        // A balance has no window (keygate sends unit UNKNOWN, which older services refuse).
        let (window_ms, until_ms) =
            match balance_end(d).map_err(|e| format!("descriptors[{i}]: {e}"))? {
                Some(until) => (0, until),
                None => match window_ms(limit.unit) {
                    Some(w) => (w, 0),
                    None => {
                        return Err(format!(
                            "descriptors[{i}]: unit {} is not SECOND, MINUTE, HOUR or DAY",
                            limit.unit
                        ))
                    }
                },
            };
        let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
        if hits > MAX_HITS {
            return Err(format!("descriptors[{i}]: hits_addend above {MAX_HITS}"));
        }
        let tag_parts = d
            .entries
            .first()
            .map(|e| [e.key.as_str(), e.value.as_str()]);
        let tag =
            hash_parts(std::iter::once(req.domain.as_str()).chain(tag_parts.into_iter().flatten()));
        let id = hash_parts(
            std::iter::once(req.domain.as_str()).chain(
                d.entries
                    .iter()
                    .flat_map(|e| [e.key.as_str(), e.value.as_str()]),
            ),
        );
        let key = format!("kg{{{}}}{}{}", &tag[..16], &id[..24], limit.unit);
        if out.iter().any(|c| c.key == key) {
            return Err(format!(
                "descriptors[{i}]: names the same counter as an earlier descriptor"
            ));
        }
        out.push(Counter {
            key,
            limit: u64::from(limit.requests_per_unit),
            unit: limit.unit,
            window_ms,
            hits,
            until_ms,
        });
    }
    Ok(out)
}

/// The time a call has, from its `grpc-timeout` header (`<digits><H|M|S|m|u|n>`, as Envoy sends
/// it for `timeout_ms`); `None` if absent or malformed.
pub fn grpc_timeout(header: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let digits = header.get(..header.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match header.as_bytes().last()? {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long this service may spend counting a call with `timeout` left: a fifth (at least
/// 5 ms) is kept for the answer's way back, so a caller that gave up finds nothing counted.
/// Capped at `cap`, the service's own bound on a Redis call.
pub fn budget(
    timeout: Option<std::time::Duration>,
    cap: std::time::Duration,
) -> std::time::Duration {
    use std::time::Duration;
    match timeout {
        Some(t) => t
            .saturating_sub((t / 5).max(Duration::from_millis(5)))
            .min(cap),
        None => cap,
    }
}

/// What the script answers: whether the request was counted, Redis's clock (ms), and per
/// counter its count before this request and when its window resets (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub admitted: bool,
    /// The call's deadline had passed when Redis ran the script: nothing was counted.
    pub expired: bool,
    pub now_ms: u64,
    pub before: Vec<u64>,
    pub reset_ms: Vec<u64>,
}

impl Counted {
    /// Reads the script's flat answer: `[admitted, now_ms, before₁, reset₁, …]`, or
    /// `[-1, now_ms]` when the call's deadline had passed.
    pub fn from_reply(reply: &[i64], counters: usize) -> Option<Counted> {
        let (head, rest) = reply.split_at_checked(2)?;
        if head.first() == Some(&-1) && rest.is_empty() {
            return Some(Counted {
                admitted: false,
                expired: true,
                now_ms: u64::try_from(*head.get(1)?).ok()?,
                before: vec![],
                reset_ms: vec![],
            });
        }
        if rest.len() != counters * 2 {
            return None;
        }
        let u = |v: &i64| u64::try_from(*v).ok();
        Some(Counted {
            admitted: *head.first()? == 1,
            expired: false,
            now_ms: u(head.get(1)?)?,
            before: rest.iter().step_by(2).map(u).collect::<Option<_>>()?,
            reset_ms: rest
                .iter()
                .skip(1)
                .step_by(2)
                .map(u)
                .collect::<Option<_>>()?,
        })
    }
}

/// The response: one status per descriptor, in order.
pub fn respond(counters: &[Counter], counted: &Counted) -> RateLimitResponse {
    let statuses = counters
        .iter()
        .zip(counted.before.iter().zip(&counted.reset_ms))
        .map(|(c, (&before, &reset_ms))| {
            let after = before.saturating_add(c.hits);
            let over = after > c.limit;
            let used = if counted.admitted { after } else { before };
            let until = reset_ms.saturating_sub(counted.now_ms);
            DescriptorStatus {
                code: if over { CODE_OVER_LIMIT } else { CODE_OK },
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: u32::try_from(c.limit).unwrap_or(u32::MAX),
                    unit: c.unit,
                }),
                limit_remaining: u32::try_from(c.limit.saturating_sub(used)).unwrap_or(u32::MAX),
                duration_until_reset: Some(Duration {
                    seconds: i64::try_from(until / 1000).unwrap_or(i64::MAX),
                    nanos: i32::try_from((until % 1000) * 1_000_000).unwrap_or(0),
                }),
            }
        })
        .collect();
    RateLimitResponse {
        overall_code: if counted.admitted {
            CODE_OK
        } else {
            CODE_OVER_LIMIT
        },
        statuses,
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::*;
    use super::*;

    fn desc(id: &str, per: &str, requests: u32, unit: i32) -> RateLimitDescriptor {
        RateLimitDescriptor::keygate(id, per, requests, unit)
    }

    fn req(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "keygate".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn a_credits_descriptor_is_a_balance_named_by_its_period_and_ended_by_its_refill() {
        let entry = |key: &str, value: &str| Entry {
            key: key.into(),
            value: value.into(),
        };
        let balance = |until: Option<&str>, cost: u64| RateLimitDescriptor {
            entries: [entry("tenant", "org_1"), entry("credits", "1764547200.2")]
                .into_iter()
                .chain(until.map(|u| entry("until", u)))
                .collect(),
            limit: Some(RateLimitOverride {
                requests_per_unit: 100,
                unit: 0,
            }),
            hits_addend: Some(UInt64Value { value: cost }),
        };
        let mut window = desc("k", "day", 10, 4);
        window.entries.insert(0, entry("tenant", "org_1"));
        let counters = plan(&req(vec![window, balance(Some("1767225600"), 5)])).unwrap();
        assert_eq!(
            (
                counters[0].window_ms,
                counters[0].until_ms,
                counters[0].hits
            ),
            (86_400_000, 0, 1)
        );
        assert_eq!(
            (
                counters[1].window_ms,
                counters[1].until_ms,
                counters[1].hits,
                counters[1].limit
            ),
            (0, 1_767_225_600_000, 5, 100)
        );
        // One slot for the call: both names carry the tenant's tag.
        assert_eq!(counters[0].key[..20], counters[1].key[..20]);
        // Another period or serial: another counter.
        let mut next = balance(Some("1767225600"), 5);
        next.entries[1].value = "1764547200.3".into();
        assert_ne!(plan(&req(vec![next])).unwrap()[0].key, counters[1].key);
        assert_eq!(
            plan(&req(vec![balance(Some("0"), 1)])).unwrap()[0].until_ms,
            0
        );
        assert!(plan(&req(vec![balance(None, 1)]))
            .unwrap_err()
            .contains("needs an entry until"));
        assert!(plan(&req(vec![balance(Some("soon"), 1)])).is_err());
        // The script's idle bound is the one documented here.
        assert!(crate::store::SCRIPT.contains(&format!("BALANCE_IDLE_MS = {BALANCE_IDLE_MS}\n")));
    }

    #[test]
    fn a_keygate_request_becomes_counters_in_one_slot() {
        let c = plan(&req(vec![
            desc("k1", "minute", 10, 2),
            desc("k1", "day", 100, 4),
        ]))
        .unwrap();
        assert_eq!(c.len(), 2);
        let tag = |k: &str| k[2..k.find('}').unwrap() + 1].to_string();
        assert_eq!(tag(&c[0].key), tag(&c[1].key));
        assert_ne!(c[0].key, c[1].key);
        assert_eq!((c[0].limit, c[0].window_ms, c[0].hits), (10, 60_000, 1));
        assert_eq!((c[1].limit, c[1].window_ms), (100, 86_400_000));
        assert!(c.iter().all(|c| c.key.len() == 2 + 18 + 24 + 1));
        // Another key id: another slot and other counters.
        let d = plan(&req(vec![desc("k2", "minute", 10, 2)])).unwrap();
        assert_ne!(tag(&c[0].key), tag(&d[0].key));
        // The same descriptor always names the same counter (stateless replicas agree).
        assert_eq!(
            plan(&req(vec![desc("k1", "minute", 99, 2)])).unwrap()[0].key,
            c[0].key
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let refused = |r: RateLimitRequest| plan(&r).unwrap_err();
        assert!(refused(req(vec![])).contains("descriptors per request"));
        let mut no_limit = desc("k", "minute", 1, 2);
        no_limit.limit = None;
        assert!(refused(req(vec![no_limit])).contains("no limit"));
        assert!(refused(req(vec![desc("k", "week", 1, 7)])).contains("unit 7"));
        assert!(refused(req(vec![desc("k", "x", 1, 0)])).contains("unit 0"));
        let mut huge = req(vec![desc("k", "minute", 1, 2)]);
        huge.descriptors[0].hits_addend = Some(UInt64Value { value: u64::MAX });
        assert!(refused(huge).contains("hits_addend"));
        assert!(
            refused(req(vec![desc("k", "minute", 1, 2); MAX_DESCRIPTORS + 1]))
                .contains("descriptors per request")
        );
        assert!(refused(req(vec![
            desc("a", "minute", 1, 2),
            desc("b", "minute", 1, 2)
        ]))
        .contains("same entry"));
        assert!(refused(req(vec![
            desc("a", "minute", 1, 2),
            desc("a", "minute", 5, 2)
        ]))
        .contains("same counter"));
        assert!(refused(req(vec![desc("", "minute", 1, 2)])).contains("1-256 bytes"));
        let mut no_domain = req(vec![desc("k", "minute", 1, 2)]);
        no_domain.domain.clear();
        assert!(refused(no_domain).contains("domain"));
    }

    #[test]
    fn a_call_keeps_a_fifth_of_its_timeout_for_the_way_back() {
        use std::time::Duration;
        let cap = Duration::from_secs(1);
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
        assert_eq!(budget(grpc_timeout("100m"), cap), Duration::from_millis(80));
        assert_eq!(budget(grpc_timeout("10m"), cap), Duration::from_millis(5));
        assert_eq!(budget(grpc_timeout("3m"), cap), Duration::ZERO);
        assert_eq!(budget(grpc_timeout("1H"), cap), cap);
        assert_eq!(budget(None, cap), cap);
    }

    #[test]
    fn the_answer_reports_each_window() {
        let c = plan(&req(vec![
            desc("k", "minute", 10, 2),
            desc("k", "day", 100, 4),
        ]))
        .unwrap();
        let counted =
            Counted::from_reply(&[1, 1_000_030_250, 3, 1_000_060_000, 50, 1_000_080_000], 2)
                .unwrap();
        let r = respond(&c, &counted);
        assert_eq!(r.overall_code, CODE_OK);
        assert_eq!(r.statuses[0].limit_remaining, 6);
        assert_eq!(r.statuses[1].limit_remaining, 49);
        assert_eq!(
            r.statuses[0].duration_until_reset,
            Some(Duration {
                seconds: 29,
                nanos: 750_000_000
            })
        );
        // Refused: nothing counted; the full window says OVER_LIMIT, the other OK.
        let counted =
            Counted::from_reply(&[0, 1_000_030_250, 10, 1_000_060_000, 50, 1_000_080_000], 2)
                .unwrap();
        let r = respond(&c, &counted);
        assert_eq!(r.overall_code, CODE_OVER_LIMIT);
        assert_eq!(
            (r.statuses[0].code, r.statuses[0].limit_remaining),
            (CODE_OVER_LIMIT, 0)
        );
        assert_eq!(
            (r.statuses[1].code, r.statuses[1].limit_remaining),
            (CODE_OK, 50)
        );
        assert_eq!(Counted::from_reply(&[1, 5, 1], 1), None);
        assert!(Counted::from_reply(&[-1, 5], 1).unwrap().expired);
        assert_eq!(Counted::from_reply(&[1, -5, 1, 1], 1), None);
    }
}
