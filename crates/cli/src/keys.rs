//! `keygate keys …`: the key service's commands (SPEC §5, §7), over [`crate::client`]. Tables for
//! people, `--json` for scripts; the admin token comes from `KEYGATE_ADMIN_TOKEN`, never from an
//! argument. The request log's command is [`crate::requests`].

use crate::client::{call, enc, json_text, or_dash, table, typed, Fail};
use keygate_key_service::input::PATCH_FIELDS;
use keygate_key_service::views::{
    AuditEntry, CreatedKey, CreditsView, Done, Envelope, Key, KeyUsage, Page, TenantCredits,
};
use serde_json::{json, Map, Value};

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
    /// Credits the key may spend per period (in all without --refill)
    #[arg(long, value_name = "N")]
    pub credits: Option<u64>,
    /// When its credits are granted again: day (00:00 UTC), month or month:DAY (DAY 1-31,
    /// default 1)
    #[arg(long, value_name = "INTERVAL", requires = "credits")]
    pub refill: Option<String>,
}

/// `--refill day|month[:DAY]` as the service's `refill` (the service checks the day's range).
fn refill(s: &str) -> Result<Value, Fail> {
    match s.split_once(':') {
        None if s == "day" => Ok(json!({"interval": "day"})),
        None if s == "month" => Ok(json!({"interval": "month"})),
        Some(("month", day)) => day
            .parse::<u64>()
            .map(|d| json!({"interval": "month", "day": d}))
            .map_err(|_| Fail::Usage(format!("--refill {s:?}: {day:?} is not a day of the month"))),
        _ => Err(Fail::Usage(format!(
            "--refill {s:?}: expected day, month or month:DAY"
        ))),
    }
}

/// `credits` of a create or update: `--credits N` and `--refill`.
fn credits_body(granted: Option<u64>, refill_flag: Option<&str>) -> Result<Option<Value>, Fail> {
    let Some(granted) = granted else {
        return Ok(None);
    };
    let mut c = json!({"granted": granted});
    if let Some(r) = refill_flag {
        c["refill"] = refill(r)?;
    }
    Ok(Some(c))
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
        ("credits", k.credits.as_ref().map(balance)),
    ] {
        eprintln!("  {field:<12} {}", or_dash(&value));
    }
    Ok(())
}

/// A balance as people read it: `7 of 10 left (3 spent), refilled 2026-04-01T00:00:00Z`.
fn balance(c: &CreditsView) -> String {
    let refill = match (&c.refill, c.reset) {
        (Some(r), Some(t)) => format!(
            ", refilled each {}{} (next {})",
            r.interval,
            r.day.map(|d| format!(" on day {d}")).unwrap_or_default(),
            keygate::timestamp::format_rfc3339(t)
        ),
        _ => ", never refilled".into(),
    };
    format!(
        "{} of {} left ({} spent){refill}",
        c.remaining, c.granted, c.spent
    )
}

/// `keygate keys credits`: one change of a key's balance.
#[derive(clap::Args)]
pub struct ChangeCredits {
    /// The key's id
    pub id: String,
    #[command(flatten)]
    pub op: CreditsOp,
}

/// `keygate keys tenant-credits`: one change of a tenant's balance (its grant is the
/// configuration's `tenants`).
#[derive(clap::Args)]
pub struct ChangeTenantCredits {
    /// The tenant
    pub tenant: String,
    #[command(flatten)]
    pub op: CreditsOp,
}

/// The change: exactly one of `--add`, `--subtract` and `--set`.
#[derive(clap::Args)]
#[group(id = "op", required = true, multiple = false)]
pub struct CreditsOp {
    /// Credits more in the current period
    #[arg(long, value_name = "N")]
    pub add: Option<u64>,
    /// Credits less in the current period
    #[arg(long, value_name = "N")]
    pub subtract: Option<u64>,
    /// What remains becomes N (what was spent so far no longer counts)
    #[arg(long, value_name = "N")]
    pub set: Option<u64>,
}

impl CreditsOp {
    /// The call's body: `{"op": …, "amount": N}`.
    fn body(&self) -> Result<Value, Fail> {
        let (op, amount) = match (self.add, self.subtract, self.set) {
            (Some(n), None, None) => ("add", n),
            (None, Some(n), None) => ("subtract", n),
            (None, None, Some(n)) => ("set", n),
            _ => {
                return Err(Fail::Usage(
                    "give one of --add N, --subtract N or --set N".into(),
                ))
            }
        };
        Ok(json!({"op": op, "amount": amount}))
    }
}

pub fn tenant_credits(server: &str, c: ChangeTenantCredits, as_json: bool) -> Result<(), Fail> {
    let answer = call(
        server,
        "POST",
        &format!("/v1/tenants/{}/credits", enc(&c.tenant)),
        Some(&c.op.body()?),
    )?;
    let t = typed::<Envelope<TenantCredits>>(answer, "a credits change")?.data;
    if as_json {
        println!("{}", json_text(&t));
    } else {
        let b = &t.credits;
        let total = i128::from(b.granted) + i128::from(b.top_up);
        println!(
            "{}: {} this period ({} granted, top-ups {:+}); spending counts under serial {}",
            t.tenant,
            total.max(0),
            b.granted,
            b.top_up,
            b.serial
        );
    }
    Ok(())
}

pub fn credits(server: &str, c: ChangeCredits, as_json: bool) -> Result<(), Fail> {
    let answer = call(
        server,
        "POST",
        &format!("/v1/api-keys/{}/credits", enc(&c.id)),
        Some(&c.op.body()?),
    )?;
    let k = typed::<Envelope<Key>>(answer, "a credits change")?.data;
    if as_json {
        println!("{}", json_text(&k));
    } else {
        println!(
            "{}: {}",
            k.id,
            k.credits
                .as_ref()
                .map_or_else(|| "no credits".into(), balance)
        );
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
    if let Some(c) = credits_body(k.credits, k.refill.as_deref())? {
        body.insert("credits".into(), c);
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
    /// Credits per period (in all without --refill): the grant; top-ups and what was spent
    /// carry on
    #[arg(long, value_name = "N")]
    pub credits: Option<u64>,
    /// With --credits: day (00:00 UTC), month or month:DAY (DAY 1-31, default 1); without it,
    /// none
    #[arg(long, value_name = "INTERVAL", requires = "credits")]
    pub refill: Option<String>,
    /// Clear a field (name, role, expires_at, rate_limits, allowed_ips, allowed_referers,
    /// allowed_paths, credits)
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
    let mut body = Map::new();
    for field in &u.clear {
        if !PATCH_FIELDS.contains(&field.as_str()) {
            return Err(Fail::Usage(format!(
                "--clear {field:?}: not a field; one of {}",
                PATCH_FIELDS.join(", ")
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
    set("credits", credits_body(u.credits, u.refill.as_deref())?);
    if let Some(limits) = u.rate_limits {
        eprintln!("keygate: --rate-limits is deprecated; repeat --rate-limit N/PER instead");
        let v: Value = serde_json::from_str(&limits)
            .map_err(|e| Fail::Usage(format!("--rate-limits: not JSON: {e}")))?;
        set("rate_limits", Some(v));
    }
    if body.is_empty() {
        return Err(Fail::Usage(
            "nothing to change: give --name, --role, --expires, --rate-limit, --allowed-ip, --credits, … or --clear FIELD"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_flags_become_the_services_credits() {
        assert_eq!(credits_body(None, None).unwrap(), None);
        assert_eq!(
            credits_body(Some(3), None).unwrap(),
            Some(json!({"granted": 3}))
        );
        assert_eq!(
            credits_body(Some(3), Some("day")).unwrap(),
            Some(json!({"granted": 3, "refill": {"interval": "day"}}))
        );
        assert_eq!(
            credits_body(Some(3), Some("month")).unwrap(),
            Some(json!({"granted": 3, "refill": {"interval": "month"}}))
        );
        assert_eq!(
            credits_body(Some(3), Some("month:15")).unwrap(),
            Some(json!({"granted": 3, "refill": {"interval": "month", "day": 15}}))
        );
        for bad in ["week", "month:x", "day:1", ""] {
            assert!(
                matches!(credits_body(Some(1), Some(bad)), Err(Fail::Usage(_))),
                "{bad}"
            );
        }
        let c = CreditsView {
            granted: 10,
            refill: Some(keygate_key_service::views::RefillView {
                interval: "month".into(),
                day: Some(1),
            }),
            remaining: 7,
            spent: 3,
            reset: Some(1_775_001_600),
        };
        assert_eq!(
            balance(&c),
            "7 of 10 left (3 spent), refilled each month on day 1 (next 2026-04-01T00:00:00Z)"
        );
    }
}
