//! `keygate keys requests`: a key's calls from the request log (SPEC §13) and the addresses it
//! was used from, over [`crate::client`].

use crate::client::{call, enc, json_text, or_dash, table, typed, Fail};
use keygate_key_service::views::KeyRequestsPage;

/// `keygate keys requests ID`: the key's requests from the request log, newest first, and its
/// client addresses.
#[derive(clap::Args)]
pub struct Requests {
    /// The key's id
    pub id: String,
    /// From: RFC 3339 (2026-12-01T00:00:00Z), or a time ago (90m, 24h, 7d)
    #[arg(long)]
    pub since: Option<String>,
    /// To: RFC 3339, or a time ago
    #[arg(long)]
    pub until: Option<String>,
    /// Only this status (429)
    #[arg(long)]
    pub status: Option<u16>,
    /// Only this decision (allowed, forbidden, rate_limited, …)
    #[arg(long)]
    pub decision: Option<String>,
    /// Only this client address
    #[arg(long)]
    pub client_ip: Option<String>,
    /// Only paths that start with this
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Requests at most (1-1000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// The next page: the cursor the previous page printed
    #[arg(long)]
    pub cursor: Option<String>,
}

/// A time for `--since`/`--until`: RFC 3339 as given, or `N` `m`/`h`/`d` before `now` (seconds
/// since the epoch).
pub fn since_time(v: &str, now: i64) -> Result<String, String> {
    if keygate::timestamp::parse_rfc3339(v).is_some() {
        return Ok(v.to_string());
    }
    let bad =
        || format!("{v:?}: expected RFC 3339 (2026-12-01T00:00:00Z) or a time ago (90m, 24h, 7d)");
    let (n, unit) = v.split_at(v.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if !(0..=36_500 * 86_400).contains(&n.saturating_mul(seconds)) {
        return Err(bad());
    }
    Ok(keygate::timestamp::format_rfc3339(now - n * seconds))
}

pub fn requests(server: &str, r: Requests, as_json: bool) -> Result<(), Fail> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut query = vec![format!("limit={}", r.limit)];
    let since = r
        .since
        .as_deref()
        .map(|v| since_time(v, now))
        .transpose()
        .map_err(|e| Fail::Usage(format!("--since {e}")))?;
    let until = r
        .until
        .as_deref()
        .map(|v| since_time(v, now))
        .transpose()
        .map_err(|e| Fail::Usage(format!("--until {e}")))?;
    for (name, v) in [
        ("from", since),
        ("to", until),
        ("status", r.status.map(|s| s.to_string())),
        ("decision", r.decision),
        ("client_ip", r.client_ip),
        ("path_prefix", r.path_prefix),
        ("cursor", r.cursor),
    ] {
        if let Some(v) = v {
            query.push(format!("{name}={}", enc(&v)));
        }
    }
    let answer = call(
        server,
        "GET",
        &format!("/v1/api-keys/{}/requests?{}", enc(&r.id), query.join("&")),
        None,
    )?;
    let page = typed::<KeyRequestsPage>(answer, "a request-log query")?;
    if as_json {
        println!("{}", json_text(&page));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .data
        .iter()
        .map(|e| {
            vec![
                e.time.clone(),
                e.method.clone(),
                e.path.clone(),
                e.status.to_string(),
                e.decision.clone(),
                or_dash(&e.client_ip),
                e.duration_ms.map_or("-".into(), |d| d.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "TIME",
            "METHOD",
            "PATH",
            "STATUS",
            "DECISION",
            "CLIENT IP",
            "MS",
        ],
        &rows,
    );
    if let Some(c) = &page.next_cursor {
        println!("more: --cursor {c}");
    }
    println!();
    let ips: Vec<Vec<String>> = page
        .client_ips
        .iter()
        .map(|i| {
            vec![
                i.client_ip.clone(),
                i.first_seen.clone(),
                i.last_seen.clone(),
                i.requests.to_string(),
            ]
        })
        .collect();
    table(&["CLIENT IP", "FIRST SEEN", "LAST SEEN", "REQUESTS"], &ips);
    Ok(())
}

#[cfg(test)]
mod since_tests {
    use super::since_time;

    #[test]
    fn since_takes_rfc3339_or_a_time_ago() {
        let now = 1_765_000_000;
        assert_eq!(
            since_time("2026-01-01T00:00:00Z", now).unwrap(),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            since_time("24h", now).unwrap(),
            keygate::timestamp::format_rfc3339(now - 86_400)
        );
        assert_eq!(
            since_time("90m", now).unwrap(),
            keygate::timestamp::format_rfc3339(now - 5400)
        );
        for bad in ["", "h", "7w", "-1d", "yesterday", "99999999999d"] {
            assert!(since_time(bad, now).is_err(), "{bad}");
        }
    }
}
