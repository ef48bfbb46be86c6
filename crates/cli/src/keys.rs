//! `keygate keys …`: the key service's client (SPEC §5, §7). Tables for people, `--json` for
//! scripts; the admin token comes from `KEYGATE_ADMIN_TOKEN`, never from an argument.

use keygate_key_service::views::{
    AuditEntry, CreatedKey, Done, Envelope, Key, KeyRequestsPage, KeyUsage, Page,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Why a `keys` command failed, and so its exit status: `Usage` (2) for what the command line
/// or the environment gets wrong (a flag's value, no admin token), `Refused` (1) for what the
/// service refused or could not answer.
#[derive(Debug)]
pub enum Fail {
    Usage(String),
    Refused(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Refused(e)
    }
}

impl Fail {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fail::Usage(_) => 2,
            Fail::Refused(_) => 1,
        }
    }
    pub fn message(self) -> String {
        match self {
            Fail::Usage(m) | Fail::Refused(m) => m,
        }
    }
}

/// An answer read into the service's own answer types (a field missing or of another type is
/// an error, never a silent "-").
fn typed<T: DeserializeOwned>(answer: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(answer)
        .map_err(|e| format!("the key service's answer to {what} is not the documented one: {e}"))
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A call's outcome: the answer's JSON, or a message for stderr.
fn call(server: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
    let token = std::env::var("KEYGATE_ADMIN_TOKEN").map_err(|_| {
        Fail::Usage("set KEYGATE_ADMIN_TOKEN to the key service's admin token".to_string())
    })?;
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
        ("PATCH", body) => agent
            .patch(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_default()),
        (_, body) => agent
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_default()),
    };
    let mut response = response.map_err(|e| Fail::Refused(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    // A list of many keys is large: no 10 MiB cap here.
    let text = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .map_err(|e| Fail::Refused(format!("{url}: reading the answer: {e}")))?;
    let value: Value = serde_json::from_str(&text).map_err(|_| {
        Fail::Refused(format!(
            "{url}: answered {status} with a body that is not JSON"
        ))
    })?;
    if (200..300).contains(&status) {
        return Ok(value);
    }
    Err(Fail::Refused(format!(
        "{status} {}: {}",
        value["code"].as_str().unwrap_or("ERROR"),
        value["error"].as_str().unwrap_or("(no message)")
    )))
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
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

/// Prints rows as a left-aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// `keygate keys create`'s arguments.
#[derive(clap::Args)]
pub struct NewKey {
    /// A prefix of the service's configuration, e.g. mlm_live_
    #[arg(long)]
    pub prefix: String,
    /// Key id (default: generated)
    #[arg(long)]
    pub id: Option<String>,
    /// Human-readable name
    #[arg(long)]
    pub name: Option<String>,
    /// The tenant (organisation) the key belongs to
    #[arg(long)]
    pub tenant: Option<String>,
    /// A role of the configuration (default: the prefix's)
    #[arg(long)]
    pub role: Option<String>,
    /// Expiry, RFC 3339 (2027-01-01T00:00:00Z)
    #[arg(long, value_name = "RFC3339")]
    pub expires: Option<String>,
    /// A rate limit, REQUESTS/PER (second, minute, hour, day), e.g. 100/minute
    #[arg(long = "rate-limit", value_name = "N/PER")]
    pub rate_limits: Vec<String>,
    /// An allowed caller address or CIDR
    #[arg(long = "allowed-ip", value_name = "IP_OR_CIDR")]
    pub allowed_ips: Vec<String>,
    /// An allowed Referer pattern
    #[arg(long = "allowed-referer", value_name = "PATTERN")]
    pub allowed_referers: Vec<String>,
    /// An allowed path pattern (/v1/orders/*)
    #[arg(long = "allowed-path", value_name = "PATTERN")]
    pub allowed_paths: Vec<String>,
}

fn rate_limit(s: &str) -> Result<Value, Fail> {
    let (n, per) = s.split_once('/').ok_or_else(|| {
        Fail::Usage(format!(
            "--rate-limit {s:?}: expected REQUESTS/PER, e.g. 100/minute"
        ))
    })?;
    let n: u64 = n
        .parse()
        .map_err(|_| Fail::Usage(format!("--rate-limit {s:?}: {n:?} is not a number")))?;
    Ok(json!({"requests": n, "per": per}))
}

fn print_created(answer: Value, as_json: bool) -> Result<(), Fail> {
    let k = typed::<Envelope<CreatedKey>>(answer, "a create")?.data;
    if as_json {
        println!("{}", json_text(&k));
        return Ok(());
    }
    eprintln!("keygate: this key is shown once; store it now. The service keeps only its SHA-256.");
    println!("{}", k.key);
    for (field, value) in [
        ("id", Some(k.id)),
        ("name", k.name),
        ("prefix", Some(k.prefix)),
        ("environment", k.environment),
        ("tenant", k.tenant),
        ("role", k.role),
        ("created_at", Some(k.created_at)),
        ("expires_at", k.expires_at),
    ] {
        eprintln!("  {field:<12} {}", or_dash(&value));
    }
    Ok(())
}

pub fn create(server: &str, k: NewKey, as_json: bool) -> Result<(), Fail> {
    let mut body = Map::new();
    body.insert("prefix".into(), json!(k.prefix));
    for (field, v) in [
        ("id", k.id),
        ("name", k.name),
        ("tenant", k.tenant),
        ("role", k.role),
        ("expires_at", k.expires),
    ] {
        if let Some(v) = v {
            body.insert(field.into(), json!(v));
        }
    }
    if !k.rate_limits.is_empty() {
        let limits: Result<Vec<Value>, Fail> =
            k.rate_limits.iter().map(|s| rate_limit(s)).collect();
        body.insert("rate_limits".into(), Value::Array(limits?));
    }
    for (field, list) in [
        ("allowed_ips", k.allowed_ips),
        ("allowed_referers", k.allowed_referers),
        ("allowed_paths", k.allowed_paths),
    ] {
        if !list.is_empty() {
            body.insert(field.into(), json!(list));
        }
    }
    let answer = call(server, "POST", "/v1/api-keys", Some(&Value::Object(body)))?;
    print_created(answer, as_json)
}

pub fn list(server: &str, tenant: Option<&str>, as_json: bool) -> Result<(), Fail> {
    let path = match tenant {
        Some(t) => format!("/v1/api-keys?tenant={}", enc(t)),
        None => "/v1/api-keys".into(),
    };
    let keys = typed::<Envelope<Vec<Key>>>(call(server, "GET", &path, None)?, "a list")?.data;
    if as_json {
        println!("{}", json_text(&keys));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .into_iter()
        .map(|k| {
            vec![
                k.id,
                or_dash(&k.name),
                or_dash(&k.environment),
                or_dash(&k.tenant),
                or_dash(&k.role),
                k.created_at,
                or_dash(&k.last_used),
                or_dash(&k.expires_at),
                if k.revoked { "revoked" } else { "active" }.into(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ENV",
            "TENANT",
            "ROLE",
            "CREATED",
            "LAST USED",
            "EXPIRES",
            "STATE",
        ],
        &rows,
    );
    Ok(())
}

pub fn revoke(server: &str, id: &str, as_json: bool) -> Result<(), Fail> {
    let answer = call(server, "DELETE", &format!("/v1/api-keys/{}", enc(id)), None)?;
    let done: Done = typed(answer, "a revocation")?;
    if as_json {
        println!("{}", json_text(&done));
    } else {
        println!("{id}: {}", done.message);
    }
    Ok(())
}

pub fn roll(server: &str, id: &str, grace_seconds: Option<u64>, as_json: bool) -> Result<(), Fail> {
    let body = match grace_seconds {
        Some(g) => json!({"grace_seconds": g}),
        None => json!({}),
    };
    let answer = call(
        server,
        "POST",
        &format!("/v1/api-keys/{}/roll", enc(id)),
        Some(&body),
    )?;
    print_created(answer, as_json)?;
    if !as_json {
        eprintln!("  {id} keeps working until its grace period ends, then expires");
    }
    Ok(())
}

pub fn usage(
    server: &str,
    id: &str,
    from: Option<&str>,
    to: Option<&str>,
    as_json: bool,
) -> Result<(), Fail> {
    let mut query = Vec::new();
    if let Some(f) = from {
        query.push(format!("from={}", enc(f)));
    }
    if let Some(t) = to {
        query.push(format!("to={}", enc(t)));
    }
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let answer = call(
        server,
        "GET",
        &format!("/v1/api-keys/{}/usage{q}", enc(id)),
        None,
    )?;
    let usage = typed::<Envelope<KeyUsage>>(answer, "a usage query")?.data;
    if as_json {
        println!("{}", json_text(&usage));
        return Ok(());
    }
    // Days past the hourly retention first (they are older), then hours.
    let rows: Vec<Vec<String>> = usage
        .days
        .iter()
        .map(|d| (d, " (day)"))
        .chain(usage.hours.iter().map(|h| (h, "")))
        .map(|(b, span)| {
            let rejected: Vec<String> =
                b.rejected.iter().map(|(d, n)| format!("{d}={n}")).collect();
            vec![
                format!("{}{span}", b.start),
                b.requests.to_string(),
                b.allowed.to_string(),
                rejected.join(" "),
            ]
        })
        .collect();
    table(&["HOUR", "REQUESTS", "ALLOWED", "REJECTED"], &rows);
    let t = &usage.total;
    println!(
        "total: {} requests, {} allowed, {} rejected",
        t.requests, t.allowed, t.rejected
    );
    Ok(())
}

/// `keygate keys update`: what a PATCH changes. The same spellings as `keys create`; a list
/// flag given replaces that list.
#[derive(clap::Args)]
pub struct Update {
    /// The key's id
    pub id: String,
    /// Human-readable name
    #[arg(long)]
    pub name: Option<String>,
    /// A role of the configuration
    #[arg(long)]
    pub role: Option<String>,
    /// Expiry, RFC 3339 (2027-01-01T00:00:00Z)
    #[arg(long, value_name = "RFC3339")]
    pub expires: Option<String>,
    /// A rate limit, REQUESTS/PER (second, minute, hour, day); the ones given replace the key's
    #[arg(long = "rate-limit", value_name = "N/PER")]
    pub rate_limit: Vec<String>,
    /// An allowed caller address or CIDR; the ones given replace the key's
    #[arg(long = "allowed-ip", value_name = "IP_OR_CIDR")]
    pub allowed_ip: Vec<String>,
    /// An allowed Referer pattern; the ones given replace the key's
    #[arg(long = "allowed-referer", value_name = "PATTERN")]
    pub allowed_referer: Vec<String>,
    /// An allowed path pattern; the ones given replace the key's
    #[arg(long = "allowed-path", value_name = "PATTERN")]
    pub allowed_path: Vec<String>,
    /// Clear a field (name, role, expires_at, rate_limits, allowed_ips, allowed_referers,
    /// allowed_paths)
    #[arg(long, value_name = "FIELD")]
    pub clear: Vec<String>,
    /// Deprecated: --rate-limit N/PER, repeated
    #[arg(long, hide = true)]
    pub rate_limits: Option<String>,
    /// Deprecated: --allowed-ip, repeated
    #[arg(long, value_delimiter = ',', hide = true)]
    pub allowed_ips: Option<Vec<String>>,
    /// Deprecated: --allowed-referer, repeated
    #[arg(long, value_delimiter = ',', hide = true)]
    pub allowed_referers: Option<Vec<String>>,
    /// Deprecated: --allowed-path, repeated
    #[arg(long, value_delimiter = ',', hide = true)]
    pub allowed_paths: Option<Vec<String>>,
}

/// A list flag and its deprecated comma-separated spelling, as one list (`None`: neither given).
fn list_flag(
    new: Vec<String>,
    old: Option<Vec<String>>,
    old_name: &str,
    new_name: &str,
) -> Option<Vec<String>> {
    if old.is_some() {
        eprintln!("keygate: {old_name} is deprecated; repeat {new_name} instead");
    }
    match (new.is_empty(), old) {
        (true, None) => None,
        (_, old) => Some(new.into_iter().chain(old.unwrap_or_default()).collect()),
    }
}

pub fn update(server: &str, u: Update, as_json: bool) -> Result<(), Fail> {
    const FIELDS: [&str; 7] = [
        "name",
        "role",
        "expires_at",
        "rate_limits",
        "allowed_ips",
        "allowed_referers",
        "allowed_paths",
    ];
    let mut body = Map::new();
    for field in &u.clear {
        if !FIELDS.contains(&field.as_str()) {
            return Err(Fail::Usage(format!(
                "--clear {field:?}: not a field; one of {}",
                FIELDS.join(", ")
            )));
        }
        body.insert(field.clone(), Value::Null);
    }
    let mut set = |field: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(field.into(), v);
        }
    };
    set("name", u.name.map(Value::String));
    set("role", u.role.map(Value::String));
    set("expires_at", u.expires.map(Value::String));
    set(
        "allowed_ips",
        list_flag(u.allowed_ip, u.allowed_ips, "--allowed-ips", "--allowed-ip").map(|v| json!(v)),
    );
    set(
        "allowed_referers",
        list_flag(
            u.allowed_referer,
            u.allowed_referers,
            "--allowed-referers",
            "--allowed-referer",
        )
        .map(|v| json!(v)),
    );
    set(
        "allowed_paths",
        list_flag(
            u.allowed_path,
            u.allowed_paths,
            "--allowed-paths",
            "--allowed-path",
        )
        .map(|v| json!(v)),
    );
    if !u.rate_limit.is_empty() {
        let limits: Result<Vec<Value>, Fail> = u.rate_limit.iter().map(|s| rate_limit(s)).collect();
        set("rate_limits", Some(Value::Array(limits?)));
    }
    if let Some(limits) = u.rate_limits {
        eprintln!("keygate: --rate-limits is deprecated; repeat --rate-limit N/PER instead");
        let v: Value = serde_json::from_str(&limits)
            .map_err(|e| Fail::Usage(format!("--rate-limits: not JSON: {e}")))?;
        set("rate_limits", Some(v));
    }
    if body.is_empty() {
        return Err(Fail::Usage(
            "nothing to change: give --name, --role, --expires, --rate-limit, --allowed-ip, … or --clear FIELD"
                .into(),
        ));
    }
    let answer = call(
        server,
        "PATCH",
        &format!("/v1/api-keys/{}", enc(&u.id)),
        Some(&Value::Object(body)),
    )?;
    let k = typed::<Envelope<Key>>(answer, "an edit")?.data;
    if as_json {
        println!("{}", json_text(&k));
    } else {
        println!(
            "{}: updated (name {}, role {}, expires {})",
            k.id,
            or_dash(&k.name),
            or_dash(&k.role),
            or_dash(&k.expires_at)
        );
    }
    Ok(())
}

/// `keygate keys audit`: the audit log, newest first.
#[derive(clap::Args)]
pub struct Audit {
    #[arg(long)]
    pub tenant: Option<String>,
    /// Entries about this key id
    #[arg(long)]
    pub key: Option<String>,
    /// From (RFC 3339)
    #[arg(long)]
    pub from: Option<String>,
    /// To (RFC 3339)
    #[arg(long)]
    pub to: Option<String>,
    /// Entries at most (1-1000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

pub fn audit(server: &str, a: Audit, as_json: bool) -> Result<(), Fail> {
    let mut query = vec![format!("limit={}", a.limit)];
    for (name, v) in [
        ("tenant", &a.tenant),
        ("key", &a.key),
        ("from", &a.from),
        ("to", &a.to),
    ] {
        if let Some(v) = v {
            query.push(format!("{name}={}", enc(v)));
        }
    }
    let answer = call(
        server,
        "GET",
        &format!("/v1/audit-log?{}", query.join("&")),
        None,
    )?;
    let entries = typed::<Page<AuditEntry>>(answer, "an audit-log query")?.data;
    if as_json {
        println!("{}", json_text(&entries));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|e| {
            let actor = match &e.actor.id {
                Some(id) => format!("{}:{id}", e.actor.kind),
                None => e.actor.kind.clone(),
            };
            vec![
                e.time,
                actor,
                e.action,
                or_dash(&e.key_id),
                or_dash(&e.tenant),
                or_dash(&e.ip),
            ]
        })
        .collect();
    table(&["TIME", "ACTOR", "ACTION", "KEY", "TENANT", "IP"], &rows);
    Ok(())
}

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
