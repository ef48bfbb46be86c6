//! The request log (SPEC §13), its plain parts: a record as Envoy's access logger describes it
//! (attributes by name, checked here), the query the API and the pages ask, the cursor of a page,
//! and the CSV line. No I/O: the gRPC adapter ([`crate::otlp`]) hands attributes in, the store
//! ([`crate::store`]) keeps what comes out.
//!
//! A record is never key material: the filter puts the key's id, tenant, environment and
//! decision in its filter state, and Envoy adds its own facts (method, path, status, …); no
//! attribute of a record is a header a key arrives in.

use keygate::timestamp::format_rfc3339;

/// The decisions a record may carry (SPEC §2's, as the filter writes them in its filter state).
pub const DECISIONS: &[&str] = &[
    "allowed",
    "missing",
    "invalid",
    "revoked",
    "expired",
    "forbidden",
    "rate_limited",
    "unavailable",
    "bad_request",
    "usage_exceeded",
];

/// Longest accepted values, in bytes. The shipped Envoy configurations cut the client's free
/// text shorter (`%REQ(USER-AGENT):256%`, the path at 1024) so that Envoy never sends more.
pub const MAX_PATH: usize = 2048;
pub const MAX_USER_AGENT: usize = 512;
/// Ids, tenants, environments, routes: as long as the key set allows and more.
pub const MAX_NAME: usize = 256;
/// An IPv6 address with a zone is under 64 bytes.
pub const MAX_IP: usize = 64;

/// A record may be this far in the future (clocks of proxies and service differ a little) and
/// this far in the past (Envoy sends a record within seconds of the request's end; an older
/// one is not from an Envoy).
pub const FUTURE_SLACK_MS: i64 = 5 * 60 * 1000;
pub const PAST_LIMIT_MS: i64 = 24 * 3600 * 1000;

/// One judged request, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The request's start, in milliseconds since the epoch (UTC).
    pub time_ms: i64,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub environment: Option<String>,
    pub decision: String,
    pub method: String,
    /// The judged path, without the query.
    pub path: String,
    pub route: Option<String>,
    /// The status the client got (`0`: none, the client went away first).
    pub status: u16,
    pub client_ip: Option<String>,
    pub duration_ms: Option<i64>,
    pub user_agent: Option<String>,
}

/// What a record of Envoy's access logger is made of: its time and its attributes by name.
pub struct Attributes<'a> {
    pub time_ms: i64,
    pub values: Vec<(&'a str, AttributeValue<'a>)>,
}

/// An attribute's value as OTLP carries it: Envoy's formatter sends strings; numbers are
/// accepted as well (a collector between may have typed them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeValue<'a> {
    Text(&'a [u8]),
    Int(i64),
    /// A boolean, a float, bytes, a list or a map: no field of a record is one.
    Other,
    Absent,
}

/// Why a record was refused: its index in the export and the attribute at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub record: usize,
    pub problem: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "log record {}: {}", self.record, self.problem)
    }
}

/// Text of an attribute: Envoy writes `-` (or nothing) for a value it does not have.
///
/// Text is never a reason to refuse a record: much of it is the client's (a path, a user agent,
/// a method), and one client's odd header must not cost every record of the export. Control
/// characters and bytes that are not UTF-8 are stored as U+FFFD; text longer than `max` bytes is
/// cut (at a character boundary).
fn text(v: AttributeValue<'_>, name: &str, max: usize) -> Result<Option<String>, String> {
    match v {
        AttributeValue::Absent => Ok(None),
        AttributeValue::Other => Err(format!("{name}: not a string")),
        AttributeValue::Int(n) => Ok(Some(n.to_string())),
        AttributeValue::Text(b) if b.is_empty() || b == b"-" => Ok(None),
        AttributeValue::Text(b) => {
            let mut s: String = String::from_utf8_lossy(b)
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect();
            if s.len() > max {
                let mut end = max;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
            Ok(Some(s))
        }
    }
}

fn number(v: AttributeValue<'_>, name: &str) -> Result<Option<i64>, String> {
    match v {
        AttributeValue::Absent => Ok(None),
        AttributeValue::Other => Err(format!("{name}: not a number")),
        AttributeValue::Text(b) if b.is_empty() || b == b"-" => Ok(None),
        AttributeValue::Int(n) => Ok(Some(n)),
        AttributeValue::Text(b) => std::str::from_utf8(b)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| format!("{name}: not a number")),
    }
}

/// What becomes of one record of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Keep(Box<RequestRecord>),
    /// Not judged by keygate (no decision in its filter state: a public path, a request the
    /// filter never saw): skipped.
    NotJudged,
    /// Started more than a day ago (a long-lived stream): older than any record Envoy sends
    /// fresh, and possibly older than the kept days: skipped.
    Stale,
}

/// Checks one record of an export at `now_ms`. A record is refused (`Err`, naming the
/// attribute) only for what a correctly configured logger never sends: a decision keygate does
/// not make, a status or number that is not one, a time in the future, no method or path.
/// Unknown attributes are ignored (an operator may log more to another sink from the same
/// logger).
pub fn check(a: &Attributes<'_>, now_ms: i64) -> Result<Fate, String> {
    let get = |n: &str| {
        a.values
            .iter()
            .find(|(k, _)| *k == n)
            .map_or(AttributeValue::Absent, |(_, v)| *v)
    };
    let Some(decision) = text(get("decision"), "decision", MAX_NAME)? else {
        return Ok(Fate::NotJudged);
    };
    if !DECISIONS.contains(&decision.as_str()) {
        return Err(format!(
            "decision: {decision:?} is not one of keygate's decisions"
        ));
    }
    if a.time_ms > now_ms + FUTURE_SLACK_MS {
        return Err("time: in the future".into());
    }
    if a.time_ms <= 0 {
        return Err("time: missing".into());
    }
    let status = match number(get("status"), "status")? {
        None => 0,
        Some(s) if s == 0 || (100..=599).contains(&s) => s as u16,
        Some(_) => return Err("status: not an HTTP status".into()),
    };
    let method = text(get("method"), "method", 32)?.ok_or("method: missing")?;
    let path = text(get("path"), "path", MAX_PATH)?.ok_or("path: missing")?;
    // Never a query string (a key misplaced in one), whatever the logger was told to send.
    let path = match path.split_once('?') {
        Some((p, _)) => p.to_string(),
        None => path,
    };
    let duration_ms = number(get("duration_ms"), "duration_ms")?.filter(|d| *d >= 0);
    let record = RequestRecord {
        time_ms: a.time_ms,
        key_id: text(get("key_id"), "key_id", MAX_NAME)?,
        tenant: text(get("tenant"), "tenant", MAX_NAME)?,
        environment: text(get("environment"), "environment", MAX_NAME)?,
        decision,
        method,
        path,
        route: text(get("route"), "route", MAX_NAME)?,
        status,
        // Envoy's own address (as the filter spells it); anything else (a pipe's path) is none.
        client_ip: text(get("client_ip"), "client_ip", MAX_IP)?
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_string()),
        duration_ms,
        user_agent: text(get("user_agent"), "user_agent", MAX_USER_AGENT)?,
    };
    if a.time_ms < now_ms - PAST_LIMIT_MS {
        return Ok(Fate::Stale);
    }
    Ok(Fate::Keep(Box::new(record)))
}

/// The day a time falls in (days since the epoch, UTC): the unit the log is dropped in.
pub fn day_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(86_400_000)
}

/// RFC 3339 with milliseconds (`2026-12-06T10:30:00.123Z`).
pub fn format_time_ms(time_ms: i64) -> String {
    let s = format_rfc3339(time_ms.div_euclid(1000));
    format!(
        "{}.{:03}Z",
        s.trim_end_matches('Z'),
        time_ms.rem_euclid(1000)
    )
}

/// Where a page of the log ends: the last record's time and id. Newest first, so the next page
/// holds what sorts before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time_ms: i64,
    pub id: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.time_ms, self.id)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (t, i) = s.split_once('.')?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 19 && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(t) || !digits(i) {
            return None;
        }
        Some(Cursor {
            time_ms: t.parse().ok()?,
            id: i.parse().ok()?,
        })
    }
}

/// What a reader asks of the log. Every filter is optional; `tenant: Some` scopes to a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestQuery {
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    /// Milliseconds; `from` inclusive, `to` exclusive.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub status: Option<u16>,
    pub decision: Option<String>,
    pub client_ip: Option<String>,
    pub path_prefix: Option<String>,
    pub before: Option<Cursor>,
    pub limit: usize,
}

/// Reads the filters of `GET /v1/requests` (and of the pages) from a query string's pairs;
/// `Err` names the parameter. `limit` is 1–1000 (default `default_limit`); `from`/`to` are
/// RFC 3339.
pub fn parse_query(
    params: &std::collections::HashMap<String, String>,
    default_limit: usize,
) -> Result<RequestQuery, String> {
    let get = |n: &str| params.get(n).map(String::as_str).filter(|v| !v.is_empty());
    let time = |n: &str| -> Result<Option<i64>, String> {
        get(n)
            .map(|v| {
                keygate::timestamp::parse_rfc3339(v)
                    .map(|s| s.saturating_mul(1000))
                    .ok_or_else(|| {
                        format!("{n}: {v:?} is not an RFC 3339 time (2025-01-15T10:30:00Z)")
                    })
            })
            .transpose()
    };
    let printable = |n: &str, max: usize| -> Result<Option<String>, String> {
        match get(n) {
            None => Ok(None),
            Some(v) if v.len() <= max && v.bytes().all(|c| c.is_ascii_graphic() || c == b' ') => {
                Ok(Some(v.to_string()))
            }
            Some(_) => Err(format!("{n}: not printable ASCII of at most {max} bytes")),
        }
    };
    let limit = match get("limit") {
        None => default_limit,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return Err(format!("limit: {v:?} is not a whole number from 1 to 1000")),
        },
    };
    let (from_ms, to_ms) = (time("from")?, time("to")?);
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f > t {
            return Err("from: is after to".into());
        }
    }
    let status = match get("status") {
        None => None,
        Some(v) => match v.parse::<u16>() {
            Ok(n) if n == 0 || (100..=599).contains(&n) => Some(n),
            _ => return Err(format!("status: {v:?} is not an HTTP status")),
        },
    };
    let decision = get("decision").map(str::to_string);
    if let Some(d) = &decision {
        if !DECISIONS.contains(&d.as_str()) {
            return Err(format!(
                "decision: {d:?} is not one of {}",
                DECISIONS.join(", ")
            ));
        }
    }
    let client_ip = match get("client_ip") {
        None => None,
        Some(v) => match v.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip.to_string()),
            Err(_) => return Err(format!("client_ip: {v:?} is not an IP address")),
        },
    };
    let path_prefix = get("path_prefix").map(str::to_string);
    if path_prefix.as_deref().is_some_and(|p| {
        !p.starts_with('/') || p.len() > MAX_PATH || p.chars().any(char::is_control)
    }) {
        return Err("path_prefix: not a path (it starts with /)".into());
    }
    let before = match get("cursor") {
        None => None,
        Some(c) => Some(Cursor::decode(c).ok_or("cursor: not a cursor this service gave")?),
    };
    Ok(RequestQuery {
        key_id: printable("key_id", MAX_NAME)?,
        tenant: printable("tenant", MAX_NAME)?,
        from_ms,
        to_ms,
        status,
        decision,
        client_ip,
        path_prefix,
        before,
        limit,
    })
}

/// One client address of a key: when it was first and last seen, how many requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIp {
    pub client_ip: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub requests: i64,
}

/// A stored record with its id (the order of records of one millisecond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub id: i64,
    pub record: RequestRecord,
}

/// The CSV header and lines (RFC 4180: fields with a comma, quote or line break are quoted;
/// a field a spreadsheet would run as a formula gets a leading `'`).
pub const CSV_HEADER: &str = "time,key_id,tenant,environment,decision,method,path,route,status,client_ip,duration_ms,user_agent\r\n";

pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s != "-" {
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

pub fn csv_line(r: &RequestRecord) -> String {
    let o = |v: &Option<String>| v.as_deref().map(csv_field).unwrap_or_default();
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
        format_time_ms(r.time_ms),
        o(&r.key_id),
        o(&r.tenant),
        o(&r.environment),
        csv_field(&r.decision),
        csv_field(&r.method),
        csv_field(&r.path),
        o(&r.route),
        r.status,
        o(&r.client_ip),
        r.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
        o(&r.user_agent),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttributeValue::{Int, Text};

    const NOW: i64 = 1_765_000_000_000;

    fn attrs(values: Vec<(&'static str, AttributeValue<'static>)>) -> Attributes<'static> {
        Attributes {
            time_ms: NOW - 1000,
            values,
        }
    }

    fn full() -> Vec<(&'static str, AttributeValue<'static>)> {
        vec![
            ("key_id", Text(b"k1")),
            ("tenant", Text(b"org_1")),
            ("environment", Text(b"LIVE")),
            ("decision", Text(b"allowed")),
            ("method", Text(b"GET")),
            ("path", Text(b"/v1/things")),
            ("route", Text(b"things")),
            ("status", Text(b"200")),
            ("client_ip", Text(b"203.0.113.9")),
            ("duration_ms", Text(b"12")),
            ("user_agent", Text(b"curl/8.0")),
        ]
    }

    fn keep(a: &Attributes<'_>) -> RequestRecord {
        match check(a, NOW) {
            Ok(Fate::Keep(r)) => *r,
            other => panic!("not kept: {other:?}"),
        }
    }

    #[test]
    fn a_full_record_is_kept_field_by_field() {
        assert_eq!(
            keep(&attrs(full())),
            RequestRecord {
                time_ms: NOW - 1000,
                key_id: Some("k1".into()),
                tenant: Some("org_1".into()),
                environment: Some("LIVE".into()),
                decision: "allowed".into(),
                method: "GET".into(),
                path: "/v1/things".into(),
                route: Some("things".into()),
                status: 200,
                client_ip: Some("203.0.113.9".into()),
                duration_ms: Some(12),
                user_agent: Some("curl/8.0".into()),
            }
        );
    }

    #[test]
    fn envoy_dashes_are_absent_values_and_numbers_may_be_typed() {
        let mut v = full();
        v[0].1 = Text(b"-");
        v[1].1 = Text(b"");
        v[7].1 = Int(429);
        v[9].1 = AttributeValue::Absent;
        let r = keep(&attrs(v));
        assert_eq!(
            (r.key_id, r.tenant, r.status, r.duration_ms),
            (None, None, 429, None)
        );
    }

    #[test]
    fn without_a_decision_a_record_is_not_judged_and_skipped() {
        let mut v = full();
        v[3].1 = Text(b"-");
        assert_eq!(check(&attrs(v), NOW), Ok(Fate::NotJudged));
    }

    #[test]
    fn only_what_a_correct_logger_never_sends_refuses_a_record() {
        let cases: Vec<(usize, AttributeValue<'static>, &str)> = vec![
            (3, Text(b"maybe"), "decision"),
            (4, Text(b"-"), "method: missing"),
            (5, Text(b"-"), "path: missing"),
            (7, Text(b"2000"), "status: not an HTTP status"),
            (7, Text(b"42"), "status: not an HTTP status"),
            (7, Text(b"x1"), "status: not a number"),
            (7, Int(-1), "status: not an HTTP status"),
            (9, Text(b"1e9"), "duration_ms: not a number"),
            (5, AttributeValue::Other, "path: not a string"),
            (9, AttributeValue::Other, "duration_ms: not a number"),
        ];
        for (i, value, want) in cases {
            let mut v = full();
            v[i].1 = value;
            let got = check(&attrs(v), NOW).unwrap_err();
            assert!(got.starts_with(want), "{got:?} for {want}");
        }
    }

    #[test]
    fn what_a_client_sends_is_cleaned_never_a_reason_to_refuse() {
        let long: &'static [u8] = Box::leak(vec![b'a'; MAX_USER_AGENT + 10].into_boxed_slice());
        let mut v = full();
        v[4].1 = Text(b"GET.X\tY"); // a token method over HTTP/2, a tab
        v[5].1 = Text(b"/v1/a\x01b?api_key=secret");
        v[10].1 = Text(long);
        v[8].1 = Text(b"/run/envoy.sock"); // a pipe's address
        v[6].1 = Text("r\u{e9}gion".as_bytes()); // an operator's route name
        let r = keep(&attrs(v));
        assert_eq!(r.method, "GET.X\u{fffd}Y");
        assert_eq!(r.path, "/v1/a\u{fffd}b", "the query is never kept");
        assert_eq!(r.user_agent.map(|u| u.len()), Some(MAX_USER_AGENT));
        assert_eq!(r.client_ip, None);
        assert_eq!(r.route.as_deref(), Some("r\u{e9}gion"));
        let mut v = full();
        v[10].1 = Text(b"agent\xff");
        v[8].1 = Text(b"2001:DB8:0:0::1");
        let r = keep(&attrs(v));
        assert_eq!(r.user_agent.as_deref(), Some("agent\u{fffd}"));
        assert_eq!(
            r.client_ip.as_deref(),
            Some("2001:db8::1"),
            "as the filter spells it"
        );
        // Cut at a character boundary.
        let mut v = full();
        let mut ua = vec![b'a'; MAX_USER_AGENT - 1];
        ua.extend_from_slice("\u{e9}".as_bytes());
        let ua: &'static [u8] = Box::leak(ua.into_boxed_slice());
        v[10].1 = Text(ua);
        assert_eq!(
            keep(&attrs(v)).user_agent.map(|u| u.len()),
            Some(MAX_USER_AGENT - 1)
        );
    }

    #[test]
    fn times_in_the_future_are_refused_and_a_day_old_skipped() {
        let mut a = attrs(full());
        a.time_ms = NOW + FUTURE_SLACK_MS + 1;
        assert_eq!(check(&a, NOW).unwrap_err(), "time: in the future");
        a.time_ms = NOW - PAST_LIMIT_MS - 1;
        assert_eq!(check(&a, NOW), Ok(Fate::Stale));
        a.time_ms = 0;
        assert_eq!(check(&a, NOW).unwrap_err(), "time: missing");
        a.time_ms = NOW + FUTURE_SLACK_MS;
        assert!(matches!(check(&a, NOW), Ok(Fate::Keep(_))));
    }

    #[test]
    fn queries_are_read_and_every_bad_parameter_is_named() {
        let q = |pairs: &[(&str, &str)]| {
            let m: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            parse_query(&m, 100)
        };
        let got = q(&[
            ("key_id", "k1"),
            ("from", "2026-01-01T00:00:00Z"),
            ("status", "429"),
            ("decision", "rate_limited"),
            ("client_ip", "2001:db8:0::1"),
            ("path_prefix", "/v1/"),
            ("limit", "5"),
            ("cursor", "1000.7"),
        ])
        .unwrap();
        assert_eq!(got.key_id.as_deref(), Some("k1"));
        assert_eq!(got.from_ms, Some(1_767_225_600_000));
        assert_eq!(got.status, Some(429));
        assert_eq!(got.client_ip.as_deref(), Some("2001:db8::1"));
        assert_eq!(got.limit, 5);
        assert_eq!(
            got.before,
            Some(Cursor {
                time_ms: 1000,
                id: 7
            })
        );
        assert_eq!(q(&[]).unwrap().limit, 100);
        for (pair, want) in [
            (("limit", "0"), "limit:"),
            (("limit", "1001"), "limit:"),
            (("status", "99"), "status:"),
            (("decision", "ok"), "decision:"),
            (("client_ip", "x"), "client_ip:"),
            (("path_prefix", "v1"), "path_prefix:"),
            (("cursor", "zz"), "cursor:"),
            (("from", "yesterday"), "from:"),
            (("key_id", "a\u{7f}"), "key_id:"),
        ] {
            let e = q(&[pair]).unwrap_err();
            assert!(e.starts_with(want), "{e} for {pair:?}");
        }
        assert_eq!(
            q(&[
                ("from", "2026-01-02T00:00:00Z"),
                ("to", "2026-01-01T00:00:00Z")
            ])
            .unwrap_err(),
            "from: is after to"
        );
    }

    #[test]
    fn cursors_go_and_come_back_and_nothing_else_is_one() {
        let c = Cursor {
            time_ms: NOW,
            id: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.-1",
            "99999999999999999999.1",
            "1.2.3",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_have_milliseconds_and_days_are_utc() {
        assert_eq!(format_time_ms(1_000_123), "1970-01-01T00:16:40.123Z");
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(day_of(86_400_000 - 1), 0);
        assert_eq!(day_of(86_400_000), 1);
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("/plain"), "/plain");
        let r = keep(&attrs(full()));
        assert_eq!(
            csv_line(&r),
            format!(
                "{},k1,org_1,LIVE,allowed,GET,/v1/things,things,200,203.0.113.9,12,curl/8.0\r\n",
                format_time_ms(NOW - 1000)
            )
        );
        assert_eq!(
            CSV_HEADER.matches(',').count(),
            csv_line(&r).matches(',').count()
        );
    }
}
