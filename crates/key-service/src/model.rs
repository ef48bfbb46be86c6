//! What the key service keeps and how it shows it: stored keys (digests only), usage report
//! entries and hourly usage rows, and their JSON forms (SPEC §7, §8).

use super::views;
use crate::credits::{entry_json, KeyCredits};
use crate::json::core_value;
use keygate::decide::Decision;
use keygate::model::{Credits, Gate};
use keygate::timestamp::format_rfc3339;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The restriction fields of a key entry, kept as given (validated by the filter's code).
pub const RESTRICTIONS: [&str; 4] = [
    "rate_limits",
    "allowed_ips",
    "allowed_referers",
    "allowed_paths",
];

/// One key as stored: never its plaintext.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub id: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub sha256: String,
    pub prefix: String,
    pub name: Option<String>,
    pub tenant: Option<String>,
    /// The key's own role (the prefix's applies when `None`).
    pub role: Option<String>,
    /// The key's own environment (the prefix's applies when `None`).
    pub environment: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// A JSON object holding those of [`RESTRICTIONS`] the key has.
    pub restrictions: Value,
    pub last_used: Option<i64>,
    /// Its credits (SPEC §14), with what the proxies reported spent.
    pub credits: Option<KeyCredits>,
    /// The key service's top-up and serial of its tenant's balance, if it changed one
    /// (`POST /v1/tenants/{tenant}/credits`): served with the configuration's grant as the
    /// entry's `tenant_credits` ([`StoredKey::with_tenant_balance`]).
    pub tenant_balance: Option<TenantBalance>,
    /// That balance as served (set by [`StoredKey::with_tenant_balance`]).
    pub tenant_credits: Option<Credits>,
}

/// A tenant's balance as the key service changed it: its top-up and serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantBalance {
    pub top_up: Option<(u64, i64)>,
    pub serial: u32,
}

/// Unix seconds now (the answers' balances are as of now).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The start (Unix seconds) of the hour holding `t`.
pub fn hour_of(t: i64) -> i64 {
    t - t.rem_euclid(3600)
}

impl StoredKey {
    /// The environment and role the filter applies: the key's own, else its prefix's.
    pub fn effective(&self, gate: &Gate) -> (Option<String>, Option<String>) {
        let prefix = gate.prefixes.iter().find(|p| p.prefix == self.prefix);
        let environment = self
            .environment
            .clone()
            .or_else(|| prefix.and_then(|p| p.environment.clone()));
        let role = self.role.clone().or_else(|| {
            prefix
                .and_then(|p| gate.role(p.role))
                .map(|r| r.name.clone())
        });
        (environment, role)
    }

    /// The key as served under `gate`: its tenant's balance, if the key service changed it and
    /// the configuration grants the tenant credits, in full as the entry's `tenant_credits`.
    pub fn with_tenant_balance(mut self, gate: &Gate) -> StoredKey {
        self.tenant_credits = match (self.tenant_balance, self.tenant.as_deref()) {
            (Some(b), Some(t)) => gate.tenant_credits(t).map(|base| Credits {
                top_up: b.top_up,
                serial: b.serial,
                ..*base
            }),
            _ => None,
        };
        self
    }

    /// Whether the filter accepts this key's entry under `gate` (as `key_sync` will read it).
    pub fn valid_under(&self, gate: &Gate) -> bool {
        self.record_under(gate).is_some()
    }

    /// The record the filter makes of this key's entry under `gate` (as `key_sync` reads it);
    /// `None` if it would refuse the entry.
    pub fn record_under(
        &self,
        gate: &Gate,
    ) -> Option<(keygate::keys::Digest, keygate::model::KeyRecord)> {
        let known_prefix =
            gate.prefixes.is_empty() || gate.prefixes.iter().any(|p| p.prefix == self.prefix);
        if !known_prefix {
            return None;
        }
        self.entry_record(gate)
    }

    /// The record the filter makes of this key's feed entry, its prefix aside (a synced
    /// entry carries only the digest); `None` if it would refuse the entry.
    pub fn entry_record(
        &self,
        gate: &Gate,
    ) -> Option<(keygate::keys::Digest, keygate::model::KeyRecord)> {
        let mut errors = keygate::json_reader::Errors::default();
        let ctx = keygate::config::KeyContext {
            roles: &gate.roles,
            prefixes: &gate.prefixes,
        };
        keygate::config::read_key_entry("$", &core_value(&self.feed_entry()), &ctx, &mut errors)
    }

    /// The same key, reduced to "revoked": what is served for a key the configuration no
    /// longer accepts.
    pub fn disabled(self) -> StoredKey {
        StoredKey {
            name: None,
            tenant: None,
            role: None,
            environment: None,
            expires_at: None,
            revoked: true,
            restrictions: Value::Object(Map::new()),
            credits: None,
            tenant_balance: None,
            tenant_credits: None,
            ..self
        }
    }

    /// The key as the admin API lists it: never its key or digest.
    pub fn listed(&self, gate: &Gate) -> views::Key {
        let (environment, role) = self.effective(gate);
        views::Key {
            id: self.id.clone(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            environment,
            tenant: self.tenant.clone(),
            role,
            created_at: format_rfc3339(self.created_at),
            last_used: self.last_used.map(format_rfc3339),
            expires_at: self.expires_at.map(format_rfc3339),
            revoked: self.revoked,
            leak: None,
            credits: self.credits.map(|c| c.view(unix_now())),
        }
    }

    /// The answer to a create or roll: the only place the plaintext key ever appears.
    pub fn created(&self, key: &str, gate: &Gate) -> views::CreatedKey {
        let (environment, role) = self.effective(gate);
        views::CreatedKey {
            id: self.id.clone(),
            key: key.to_string(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            environment,
            tenant: self.tenant.clone(),
            role,
            created_at: format_rfc3339(self.created_at),
            expires_at: self.expires_at.map(format_rfc3339),
            credits: self.credits.map(|c| c.view(unix_now())),
        }
    }

    /// [`StoredKey::feed_entry`] written straight into `out` as JSON (the feed of a large set
    /// is built this way: no intermediate JSON values).
    pub fn write_feed_entry(&self, out: &mut String) {
        fn field(out: &mut String, name: &str, value: &impl serde::Serialize) {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
        }
        out.push_str("{\"id\":");
        out.push_str(&serde_json::to_string(&self.id).unwrap_or_default());
        field(out, "sha256", &self.sha256);
        for (name, value) in [
            ("name", &self.name),
            ("tenant", &self.tenant),
            ("role", &self.role),
            ("environment", &self.environment),
        ] {
            if let Some(v) = value {
                field(out, name, v);
            }
        }
        if self.revoked {
            out.push_str(",\"revoked\":true");
        }
        if let Some(t) = self.expires_at {
            field(out, "expires_at", &t);
        }
        if let Value::Object(r) = &self.restrictions {
            for name in RESTRICTIONS {
                if let Some(v) = r.get(name) {
                    field(out, name, v);
                }
            }
        }
        if let Some(c) = &self.credits {
            field(out, "credits", &entry_json(&c.credits));
        }
        if let Some(c) = &self.tenant_credits {
            field(out, "tenant_credits", &entry_json(c));
        }
        out.push('}');
    }

    /// The key as `key_sync` reads it (SPEC §1 `keys` entry; revoked keys stay, marked).
    pub fn feed_entry(&self) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("sha256".into(), json!(self.sha256));
        for (field, value) in [
            ("name", &self.name),
            ("tenant", &self.tenant),
            ("role", &self.role),
            ("environment", &self.environment),
        ] {
            if let Some(v) = value {
                o.insert(field.into(), json!(v));
            }
        }
        if self.revoked {
            o.insert("revoked".into(), Value::Bool(true));
        }
        if let Some(t) = self.expires_at {
            o.insert("expires_at".into(), json!(t));
        }
        if let Value::Object(r) = &self.restrictions {
            for field in RESTRICTIONS {
                if let Some(v) = r.get(field) {
                    o.insert(field.into(), v.clone());
                }
            }
        }
        if let Some(c) = &self.credits {
            o.insert("credits".into(), entry_json(&c.credits));
        }
        if let Some(c) = &self.tenant_credits {
            o.insert("tenant_credits".into(), entry_json(c));
        }
        Value::Object(o)
    }
}

/// One key's part of a usage report (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    pub id: String,
    pub allowed: i64,
    /// (decision, count), decisions from the filter's own list.
    pub rejected: Vec<(&'static str, i64)>,
    pub last_used: Option<i64>,
    /// The same counts by Envoy route (SPEC §8); empty: all on route `-`.
    pub routes: Vec<RouteUsage>,
    /// Credits spent (SPEC §14), net of refunds (a refund of an earlier report's spending may
    /// make it negative).
    pub credits: i64,
}

/// One route's part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUsage {
    pub route: String,
    pub allowed: i64,
    pub rejected: Vec<(&'static str, i64)>,
    /// Credits spent on this route, net of refunds.
    pub credits: i64,
}

/// The route counts without a route name go under.
pub const UNNAMED_ROUTE: &str = "-";

/// The usage rows' pseudo-decision that holds credits spent (SPEC §14): stored beside the
/// decisions' counts (by key, hour or day, and route), never counted as requests.
pub const CREDITS_ROW: &str = "credits";

fn nonzero_counts<'a>(
    allowed: i64,
    rejected: &'a [(&'static str, i64)],
) -> impl Iterator<Item = (&'static str, i64)> + 'a {
    std::iter::once(("allowed", allowed))
        .chain(rejected.iter().copied())
        .filter(|(_, n)| *n > 0)
}

impl RouteUsage {
    /// Every non-zero count by decision, `allowed` included.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        nonzero_counts(self.allowed, &self.rejected)
    }
}

impl UsageEntry {
    /// Every non-zero count by decision, `allowed` included.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        nonzero_counts(self.allowed, &self.rejected)
    }

    /// Every non-zero count by route and decision (route `-` for an entry without routes),
    /// credits spent as [`CREDITS_ROW`].
    pub fn route_counts(&self) -> Vec<(&str, &'static str, i64)> {
        let credits = |route, n: i64| (n != 0).then_some((route, CREDITS_ROW, n));
        if self.routes.is_empty() {
            return self
                .counts()
                .map(|(d, n)| (UNNAMED_ROUTE, d, n))
                .chain(credits(UNNAMED_ROUTE, self.credits))
                .collect();
        }
        self.routes
            .iter()
            .flat_map(|r| {
                r.counts()
                    .map(|(d, n)| (r.route.as_str(), d, n))
                    .chain(credits(r.route.as_str(), r.credits))
            })
            .collect()
    }

    /// Requests of decision `decision` in this entry.
    pub fn count_of(&self, decision: &str) -> i64 {
        self.counts()
            .filter(|(d, _)| *d == decision)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A rejection decision a report may carry (any decision but `allowed`).
pub fn rejection_name(name: &str) -> Option<&'static str> {
    Decision::ALL
        .iter()
        .map(|d| d.as_str())
        .find(|d| *d == name && *d != "allowed")
}

/// One stored count: a key's requests of one decision in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The hour's start, or the day's for a row of a day rolled up.
    pub hour: i64,
    pub decision: String,
    pub n: i64,
    /// A day's row (hourly rows older than the retention are kept by day).
    pub day: bool,
}

/// Requests, allowed and rejections by decision of one bucket (or one key, or one route).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub requests: i64,
    pub allowed: i64,
    pub rejected: BTreeMap<String, i64>,
    /// Credits spent (rows of [`CREDITS_ROW`]), net of refunds.
    pub credits: i64,
}

impl Tally {
    /// Counts saturate: sums that would pass 2^63 - 1 stay there, never wrap negative.
    pub fn add(&mut self, decision: &str, n: i64) {
        if decision == CREDITS_ROW {
            self.credits = self.credits.saturating_add(n);
            return;
        }
        let n = n.max(0);
        self.requests = self.requests.saturating_add(n);
        if decision == "allowed" {
            self.allowed = self.allowed.saturating_add(n);
        } else {
            let slot = self.rejected.entry(decision.to_string()).or_default();
            *slot = slot.saturating_add(n);
        }
    }

    pub fn rejected_total(&self) -> i64 {
        self.rejected
            .values()
            .fold(0i64, |a, n| a.saturating_add(*n))
    }

    /// A total: rejections as one number.
    pub fn total(&self) -> views::Totals {
        views::Totals {
            requests: self.requests,
            allowed: self.allowed,
            rejected: self.rejected_total(),
            credits: self.credits,
        }
    }

    /// A bucket of a series: rejections by decision.
    pub fn bucket(&self, start: i64) -> views::Bucket {
        views::Bucket {
            start: format_rfc3339(start),
            requests: self.requests,
            allowed: self.allowed,
            rejected: self.rejected.clone(),
            credits: self.credits,
        }
    }
}

/// The usage answer: totals over the rows, one entry per hour with counts, and (extension)
/// one per day whose hours were rolled up.
pub fn usage_answer(id: &str, rows: &[UsageRow]) -> views::KeyUsage {
    let mut total = Tally::default();
    let mut hours: Vec<(i64, Tally)> = Vec::new();
    let mut days: Vec<(i64, Tally)> = Vec::new();
    for r in rows {
        total.add(&r.decision, r.n);
        let list = if r.day { &mut days } else { &mut hours };
        if list.last().map(|h| h.0) != Some(r.hour) {
            list.push((r.hour, Tally::default()));
        }
        if let Some((_, t)) = list.last_mut() {
            t.add(&r.decision, r.n);
        }
    }
    let shown = |list: Vec<(i64, Tally)>| -> Vec<views::Bucket> {
        list.iter().map(|(start, t)| t.bucket(*start)).collect()
    };
    views::KeyUsage {
        id: id.to_string(),
        total: total.total(),
        hours: shown(hours),
        days: shown(days),
    }
}

/// A feed answer (`{"version","keys"}`, or a delta's `{"version","since","upserts","removed"}`)
/// as JSON text.
pub fn feed_answer(version: &str, since: Option<&str>, keys: &[StoredKey]) -> String {
    let mut out = String::with_capacity(64 + keys.len() * 160);
    out.push_str("{\"version\":");
    out.push_str(&serde_json::to_string(version).unwrap_or_default());
    match since {
        Some(s) => {
            out.push_str(",\"since\":");
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
            out.push_str(",\"upserts\":[");
        }
        None => out.push_str(",\"keys\":["),
    }
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        k.write_feed_entry(&mut out);
    }
    out.push(']');
    if since.is_some() {
        // Keys are never deleted (a revoked key stays, marked), so nothing is removed.
        out.push_str(",\"removed\":[]");
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_feed_is_the_feed_entries() {
        let mut k = StoredKey {
            id: "k1".into(),
            sha256: "ab".repeat(32),
            prefix: "p_".into(),
            name: Some("Quote \" and \\".into()),
            tenant: Some("org".into()),
            role: None,
            environment: Some("EU".into()),
            created_at: 1,
            expires_at: Some(99),
            revoked: true,
            restrictions: json!({"allowed_ips": ["10.0.0.0/8"], "rate_limits": [{"requests": 1, "per": "day"}]}),
            last_used: Some(5),
            credits: Some(KeyCredits {
                credits: keygate::model::Credits {
                    granted: 9,
                    refill: Some(keygate::model::Refill::Month { day: 31 }),
                    top_up: Some((1_000, -2)),
                    serial: 4,
                },
                set_at: Some(3),
                spent: None,
            }),
            tenant_balance: None,
            tenant_credits: None,
        };
        let text = feed_answer("v1", None, std::slice::from_ref(&k));
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, json!({"version": "v1", "keys": [k.feed_entry()]}));
        assert_eq!(
            k.feed_entry()["credits"],
            json!({"granted": 9, "refill": {"interval": "month", "day": 31},
                   "top_up": {"period": 1000, "amount": -2}, "serial": 4})
        );
        k.revoked = false;
        k.restrictions = json!({});
        let text = feed_answer("v2", Some("v1"), &[k.clone(), k.clone()]);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!({"version": "v2", "since": "v1", "upserts": [k.feed_entry(), k.feed_entry()], "removed": []})
        );
    }

    #[test]
    fn the_filter_reads_a_keys_credits_from_its_entry() {
        let gate = keygate::config::parse_config(br#"{"key_sources": [{"header": "x-api-key"}]}"#)
            .unwrap();
        let credits = keygate::model::Credits {
            granted: 5,
            refill: Some(keygate::model::Refill::Day),
            top_up: Some((86_400, 3)),
            serial: 1,
        };
        let k = StoredKey {
            id: "k1".into(),
            sha256: "ab".repeat(32),
            prefix: "p_".into(),
            name: None,
            tenant: None,
            role: None,
            environment: None,
            created_at: 1,
            expires_at: None,
            revoked: false,
            restrictions: json!({}),
            last_used: None,
            credits: Some(KeyCredits {
                credits,
                set_at: Some(7),
                spent: None,
            }),
            tenant_balance: None,
            tenant_credits: None,
        };
        let (_, record) = k.entry_record(&gate).unwrap();
        assert_eq!(record.credits, Some(credits));
        // A tenant's balance the service changed is served with the configuration's grant, in
        // full, to every key of the tenant; without that grant, not at all.
        let tenants = keygate::config::parse_config(
            br#"{"key_sources": [{"header": "x-api-key"}],
                 "tenants": {"org": {"credits": {"granted": 50, "refill": {"interval": "day"}}}}}"#,
        )
        .unwrap();
        let changed = TenantBalance {
            top_up: Some((86_400, 7)),
            serial: 2,
        };
        let of = |tenant: Option<&str>, gate: &Gate| {
            StoredKey {
                tenant: tenant.map(str::to_string),
                tenant_balance: Some(changed),
                ..k.clone()
            }
            .with_tenant_balance(gate)
        };
        let served = of(Some("org"), &tenants);
        let want = keygate::model::Credits {
            granted: 50,
            refill: Some(keygate::model::Refill::Day),
            top_up: Some((86_400, 7)),
            serial: 2,
        };
        assert_eq!(
            served.entry_record(&tenants).unwrap().1.tenant_credits,
            Some(want)
        );
        assert_eq!(
            served.feed_entry()["tenant_credits"],
            json!({"granted": 50, "refill": {"interval": "day"}, "top_up": {"period": 86400, "amount": 7}, "serial": 2})
        );
        assert_eq!(of(Some("org"), &gate).tenant_credits, None);
        assert_eq!(of(None, &tenants).tenant_credits, None);
        assert_eq!(served.disabled().feed_entry().get("tenant_credits"), None);
        assert_eq!(k.disabled().feed_entry().get("credits"), None);
    }

    #[test]
    fn usage_sums_by_hour_and_total() {
        let row = |hour: i64, decision: &str, n: i64, day: bool| UsageRow {
            hour,
            decision: decision.into(),
            n,
            day,
        };
        let rows = [
            row(3600, "allowed", 5, false),
            row(3600, "rate_limited", 2, false),
            row(7200, "allowed", 1, false),
            row(7200, CREDITS_ROW, 4, false),
            row(0, "allowed", 10, true),
        ];
        assert_eq!(
            serde_json::to_value(usage_answer("k", &rows)).unwrap(),
            json!({"id": "k", "total": {"requests": 18, "allowed": 16, "rejected": 2, "credits": 4},
                   "hours": [
                     {"start": "1970-01-01T01:00:00Z", "requests": 7, "allowed": 5, "rejected": {"rate_limited": 2}},
                     {"start": "1970-01-01T02:00:00Z", "requests": 1, "allowed": 1, "rejected": {}, "credits": 4}],
                   "days": [{"start": "1970-01-01T00:00:00Z", "requests": 10, "allowed": 10, "rejected": {}}]})
        );
    }

    #[test]
    fn rejections_are_the_filters_decisions() {
        assert_eq!(rejection_name("revoked"), Some("revoked"));
        assert_eq!(rejection_name("allowed"), None);
        assert_eq!(rejection_name("nope"), None);
    }
}
