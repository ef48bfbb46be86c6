//! The decision for one request (SPEC §2): pure, no proxy-wasm calls.
//!
//! Order: public path → key present → prefix known → key known → revoked → expired → IP →
//! referer → role method/path and allowed_paths → rate limits. The first failure answers.

use crate::credentials::{find_key, Presented};
use crate::keys::{self, Digest};
use crate::model::{Gate, KeyRecord, Limit, Role};
use crate::path::{any_match, canonical_path, canonical_url};
use crate::ratelimit::{self, CasStore, RateHeaders, RateOutcome, StoreError};
use std::borrow::Cow;
use std::net::IpAddr;

/// What the filter decided; its name is the `decision` in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Missing,
    Invalid,
    Revoked,
    Expired,
    Forbidden,
    RateLimited,
    Unavailable,
    BadRequest,
}

impl Decision {
    pub const ALL: [Decision; 9] = [
        Decision::Allowed,
        Decision::Missing,
        Decision::Invalid,
        Decision::Revoked,
        Decision::Expired,
        Decision::Forbidden,
        Decision::RateLimited,
        Decision::Unavailable,
        Decision::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Missing => "missing",
            Decision::Invalid => "invalid",
            Decision::Revoked => "revoked",
            Decision::Expired => "expired",
            Decision::Forbidden => "forbidden",
            Decision::RateLimited => "rate_limited",
            Decision::Unavailable => "unavailable",
            Decision::BadRequest => "bad_request",
        }
    }
}

/// The request as the filter sees it.
pub struct Request<'r> {
    pub method: &'r str,
    /// The raw `:path`, query included.
    pub path: &'r str,
    /// Every request header (lower-case names), as one host call returns them.
    pub headers: &'r [(String, Vec<u8>)],
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(h, _)| h == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// What the decision needs from its surroundings, fetched only when a check needs it.
pub trait Host: CasStore {
    /// Unix seconds.
    fn now(&mut self) -> u64;
    /// The client address (after Envoy's XFF handling); `None` if unknown.
    fn source_ip(&mut self) -> Option<IpAddr>;
}

/// Where a key's record comes from besides the inline table (the synced key set).
// Returned once per request and matched at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Lookup<'g> {
    Found(Cow<'g, KeyRecord>),
    NotFound,
    /// The synced key set is not loaded yet.
    Unavailable,
}

/// Why a 403 was given: selects the default message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Ip,
    Referer,
    Method,
    Path,
}

impl Denial {
    pub fn default_message(self) -> &'static str {
        match self {
            Denial::Ip => "API key is not allowed from this IP address",
            Denial::Referer => "API key is not allowed from this referer",
            Denial::Method => "API key is not allowed to use this method",
            Denial::Path => "API key is not allowed to access this path",
        }
    }
}

/// The full outcome for a judged request.
#[derive(Debug)]
pub struct Verdict<'g> {
    pub decision: Decision,
    pub key: Option<Cow<'g, KeyRecord>>,
    /// The environment of the key's prefix (the key's own overrides it: see `environment`).
    pub prefix_environment: Option<&'g str>,
    pub role: Option<&'g Role>,
    /// Set for 403s.
    pub denial: Option<Denial>,
    pub rate: Option<RateHeaders>,
    /// Set for 429s.
    pub retry_after: Option<u64>,
    /// A GET on `verify_path` with a good key: answered by the filter.
    pub verify: bool,
    /// Bit i set if key source i held the key (for `hide_credentials`).
    pub sources: u32,
    /// Fault detail for stats/logs (rate-limit store failures).
    pub fault: Option<StoreError>,
    /// A rate-limit record had to be created on the request path.
    pub counter_created: bool,
}

impl<'g> Verdict<'g> {
    fn new(decision: Decision) -> Self {
        Verdict {
            decision,
            key: None,
            prefix_environment: None,
            role: None,
            denial: None,
            rate: None,
            retry_after: None,
            verify: false,
            sources: 0,
            fault: None,
            counter_created: false,
        }
    }

    /// The key's environment, else its prefix's.
    pub fn environment(&self) -> Option<&str> {
        self.key
            .as_ref()
            .and_then(|k| k.environment.as_deref())
            .or(self.prefix_environment)
    }

    /// The 403 message: the role's own for role and path denials, else a default.
    pub fn forbidden_message(&self) -> &str {
        let denial = self.denial.unwrap_or(Denial::Path);
        match (
            denial,
            self.role.and_then(|r| r.forbidden_message.as_deref()),
        ) {
            (Denial::Method | Denial::Path, Some(m)) => m,
            _ => denial.default_message(),
        }
    }
}

/// The limits that apply to a key: its own, else its prefix's, else the default.
pub fn effective_limits<'a>(
    gate: &'a Gate,
    key: &'a KeyRecord,
    prefix_limits: Option<&'a [Limit]>,
) -> &'a [Limit] {
    key.rate_limits
        .as_deref()
        .or(prefix_limits)
        .unwrap_or(&gate.default_limits)
}

/// Judges one request. `None` means a public path: pass it through untouched.
pub fn decide<'g>(
    gate: &'g Gate,
    req: &Request,
    host: &mut impl Host,
    synced: impl FnOnce(&Digest) -> Lookup<'g>,
) -> Option<Verdict<'g>> {
    let Ok(path) = canonical_path(req.path) else {
        return Some(Verdict::new(Decision::BadRequest));
    };
    if any_match(&gate.public_paths, &path) {
        return None;
    }
    let (key, sources) = match find_key(&gate.sources, req.headers, req.path) {
        Presented::Missing => return Some(Verdict::new(Decision::Missing)),
        Presented::Conflict => return Some(Verdict::new(Decision::Invalid)),
        Presented::Key { key, sources } => (key, sources),
    };
    let Some(prefix) = gate.classify(key) else {
        return Some(Verdict::new(Decision::Invalid));
    };
    let mut v = Verdict::new(Decision::Invalid);
    v.prefix_environment = prefix.and_then(|p| p.environment.as_deref());
    v.sources = sources;

    let digest = keys::digest(key);
    let record: Cow<'g, KeyRecord> = match gate.keys.get(&digest) {
        Some(r) => Cow::Borrowed(r),
        None => match synced(&digest) {
            Lookup::Found(r) => r,
            Lookup::NotFound => return Some(v),
            Lookup::Unavailable => {
                v.decision = Decision::Unavailable;
                return Some(v);
            }
        },
    };
    v.role = gate.role(record.role.or(prefix.and_then(|p| p.role)));
    let prefix_limits = prefix.and_then(|p| p.rate_limits.as_deref());
    judge_key(gate, &record, prefix_limits, &path, req, host, &mut v);
    v.key = Some(record);
    Some(v)
}

/// The checks after the key is known: sets the decision and its details on `v`.
fn judge_key(
    gate: &Gate,
    rec: &KeyRecord,
    prefix_limits: Option<&[Limit]>,
    path: &str,
    req: &Request,
    host: &mut impl Host,
    v: &mut Verdict,
) {
    if rec.revoked {
        v.decision = Decision::Revoked;
        return;
    }
    let limits = effective_limits(gate, rec, prefix_limits);
    let now = if rec.expires_at.is_some() || !limits.is_empty() {
        host.now()
    } else {
        0
    };
    if let Some(exp) = rec.expires_at {
        if i64::try_from(now).unwrap_or(i64::MAX) >= exp {
            v.decision = Decision::Expired;
            return;
        }
    }
    if let Some(d) = check_restrictions(rec, v.role, path, req, host) {
        v.decision = Decision::Forbidden;
        v.denial = Some(d);
        v.rate = ratelimit::peek(host, &rec.id, limits, now).ok().flatten();
        return;
    }
    match ratelimit::admit(host, &rec.id, limits, now, &mut v.counter_created) {
        Ok(None) => {}
        Ok(Some(RateOutcome::Admitted(h))) => v.rate = Some(h),
        Ok(Some(RateOutcome::Blocked {
            headers,
            retry_after,
        })) => {
            v.decision = Decision::RateLimited;
            v.rate = Some(headers);
            v.retry_after = Some(retry_after);
            return;
        }
        Err(e) => {
            // Fail closed: a counter we cannot update never admits.
            v.decision = Decision::RateLimited;
            v.retry_after = Some(1);
            v.fault = Some(e);
            return;
        }
    }
    v.decision = Decision::Allowed;
    v.verify = gate.verify_path.as_deref() == Some(path) && req.method == "GET";
}

fn check_restrictions(
    rec: &KeyRecord,
    role: Option<&Role>,
    path: &str,
    req: &Request,
    host: &mut impl Host,
) -> Option<Denial> {
    if let Some(cidrs) = &rec.allowed_ips {
        let ok = host
            .source_ip()
            .is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip)));
        if !ok {
            return Some(Denial::Ip);
        }
    }
    if let Some(patterns) = &rec.allowed_referers {
        let ok = req
            .header("referer")
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(canonical_url)
            .is_some_and(|u| any_match(patterns, &u));
        if !ok {
            return Some(Denial::Referer);
        }
    }
    if let Some(role) = role {
        if !role.allows_method(req.method) {
            return Some(Denial::Method);
        }
        if role.paths.as_ref().is_some_and(|p| !any_match(p, path)) {
            return Some(Denial::Path);
        }
    }
    if rec
        .allowed_paths
        .as_ref()
        .is_some_and(|p| !any_match(p, path))
    {
        return Some(Denial::Path);
    }
    None
}
