//! The decision for one request (SPEC §2): pure, no proxy-wasm calls.
//!
//! Order: public path → key present → prefix known → key known → revoked → expired → IP →
//! referer → role method/path and allowed_paths → rate limits. The first failure answers.

use crate::checksum;
use crate::credentials::{find_key, query_param, Presented, MAX_KEY_LEN};
use crate::credits::{self, Owner, Spend};
use crate::fleet::Windows;
use crate::header_names::{METHOD_OVERRIDES, METHOD_OVERRIDE_PARAM};
use crate::host_wire::Header;
use crate::ip::SourceAddress;
use crate::keys::{self, Digest};
use crate::model::{Credits, Gate, KeyRecord, Limit, Role};
use crate::path::{any_match, canonical_path_cow, canonical_url, PathError};
use crate::ratelimit::{self, CasStore, RateHeaders, RateOutcome, StoreError};
use crate::rls_wire::Balance;
use std::borrow::Cow;

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
    /// Its balance of credits does not cover the request (SPEC §14).
    UsageExceeded,
}

impl Decision {
    pub const ALL: [Decision; 10] = [
        Decision::Allowed,
        Decision::Missing,
        Decision::Invalid,
        Decision::Revoked,
        Decision::Expired,
        Decision::Forbidden,
        Decision::RateLimited,
        Decision::Unavailable,
        Decision::BadRequest,
        Decision::UsageExceeded,
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
            Decision::UsageExceeded => "usage_exceeded",
        }
    }
}

/// The request as the filter sees it.
pub struct Request<'r> {
    pub method: &'r str,
    /// The raw `:path`, query included.
    pub path: &'r str,
    /// The path as judged, and as forwarded: canonical, without the query ([`crate::path`]).
    pub canonical: Cow<'r, str>,
    /// Every request header (lower-case names), as one host call returns them.
    pub headers: &'r [Header<'r>],
}

impl<'r> Request<'r> {
    /// A request whose path can be judged; a path that cannot be made canonical safely is
    /// refused (400), never judged raw.
    pub fn new(
        method: &'r str,
        path: &'r str,
        headers: &'r [Header<'r>],
    ) -> Result<Self, PathError> {
        Ok(Request {
            method,
            path,
            canonical: canonical_path_cow(path)?,
            headers,
        })
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(h, _)| *h == name)
            .map(|(_, v)| *v)
    }
}

/// What the decision needs from its surroundings, fetched only when a check needs it.
pub trait Host: CasStore {
    /// Unix seconds.
    fn now(&mut self) -> u64;
    /// Envoy's downstream remote address (after its XFF handling); `None` if unknown.
    fn source_address(&mut self) -> Option<SourceAddress>;
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
    /// The key's environment is not in `environments_accepted`.
    Environment,
    Ip,
    Referer,
    Method,
    Path,
}

impl Denial {
    pub fn default_message(self) -> &'static str {
        match self {
            Denial::Environment => "API keys without an environment are not accepted here",
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
    /// With `rate_limit_service`: the key's limits, counted by the service, not here. An
    /// `Allowed` verdict with these is provisional until the service answers.
    pub fleet: Option<Windows>,
    /// A 503 because the rate-limit service failed (`on_failure: deny`), not the key service.
    pub rate_service_down: bool,
    /// Credits after this request (SPEC §14): `X-Credits-Remaining`, `X-Credits-Reset`.
    pub credits: Option<CreditHeaders>,
    /// What this request spent, to give back if it is charged only on success.
    pub charged: Option<Charged>,
}

/// The credit headers of an admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditHeaders {
    pub remaining: u64,
    /// Unix seconds of the next refill (none without refill).
    pub reset: Option<u64>,
}

/// A spend: from the key's own balance or its tenant's, how much, in which period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    pub tenant: bool,
    pub cost: u64,
    pub period: credits::Stamp,
    /// Spent by the rate-limit service (nothing to give back here).
    pub fleet: bool,
}

impl<'g> Verdict<'g> {
    pub fn new(decision: Decision) -> Self {
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
            fleet: None,
            rate_service_down: false,
            credits: None,
            charged: None,
        }
    }

    /// Takes a rate-limit outcome: a block becomes the 429, an admission its headers.
    pub fn limited(&mut self, outcome: RateOutcome) {
        match outcome {
            RateOutcome::Admitted(h) => self.rate = Some(h),
            RateOutcome::Blocked {
                headers,
                retry_after,
            } => {
                self.decision = Decision::RateLimited;
                self.rate = Some(headers);
                self.retry_after = Some(retry_after);
            }
        }
    }

    /// The key's environment, else its prefix's.
    pub fn environment(&self) -> Option<&str> {
        self.key
            .as_ref()
            .and_then(|k| k.environment.as_deref())
            .or(self.prefix_environment)
    }

    /// The 403 message: the role's own for role and path denials, the environment's name for
    /// environment denials, else a default.
    pub fn forbidden_message(&self) -> Cow<'_, str> {
        let denial = self.denial.unwrap_or(Denial::Path);
        match (
            denial,
            self.role.and_then(|r| r.forbidden_message.as_deref()),
            self.environment(),
        ) {
            (Denial::Method | Denial::Path, Some(m), _) => m.into(),
            (Denial::Environment, _, Some(env)) => {
                format!("{env} keys are not accepted here").into()
            }
            _ => denial.default_message().into(),
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
    let path = &req.canonical;
    if any_match(&gate.public_paths, path) {
        return None;
    }
    let (key, sources) = match find_key(&gate.sources, req.headers, req.path, path) {
        Presented::Missing => return Some(Verdict::new(Decision::Missing)),
        Presented::Conflict { .. } => return Some(Verdict::new(Decision::Invalid)),
        Presented::Key { key, sources } => (key, sources),
    };
    let Some(prefix) = gate.classify(key) else {
        return Some(Verdict::new(Decision::Invalid));
    };
    let mut v = Verdict::new(Decision::Invalid);
    v.prefix_environment = prefix.and_then(|p| p.environment.as_deref());
    v.sources = sources;
    if key.len() > MAX_KEY_LEN {
        // No configured key is anywhere near this long: invalid without hashing.
        return Some(v);
    }
    if prefix.is_some_and(|p| p.checksum.is_some()) && !checksum::valid(key) {
        // A typo or a guess: invalid without hashing or lookup.
        return Some(v);
    }

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
    judge_key(gate, &record, prefix_limits, path, req, host, &mut v);
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
    let balance = credits_of(gate, rec);
    let now = if rec.expires_at.is_some() || !limits.is_empty() || balance.is_some() {
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
    let env = rec.environment.as_deref().or(v.prefix_environment);
    let accepted = gate
        .environments_accepted
        .as_ref()
        .is_none_or(|list| env.is_some_and(|e| list.iter().any(|a| a == e)));
    let denial = if accepted {
        check_restrictions(gate, rec, v.role, path, req, host)
    } else {
        Some(Denial::Environment)
    };
    if gate.rate_limit_service.is_some() {
        v.fleet = Windows::of(limits);
    }
    if let Some(d) = denial {
        v.decision = Decision::Forbidden;
        v.denial = Some(d);
        if v.fleet.is_none() {
            v.rate = ratelimit::peek(host, &rec.id, limits, now).ok().flatten();
        }
        return;
    }
    if v.fleet.is_none() && !count_locally(host, &rec.id, limits, now, v) {
        return;
    }
    if !spend_credits(gate, balance, rec, req, path, host, limits, now, v) {
        return;
    }
    v.decision = Decision::Allowed;
    v.verify = gate.verify_path.as_deref() == Some(path) && req.method == "GET";
}

/// Counts the request with this Envoy's own counters; `false` if that rejects it (used up, or
/// a counter fault: a counter that cannot be updated never admits).
pub fn count_locally(
    store: &mut impl CasStore,
    key_id: &str,
    limits: &[Limit],
    now: u64,
    v: &mut Verdict,
) -> bool {
    match ratelimit::admit(store, key_id, limits, now, &mut v.counter_created) {
        Ok(None) => true,
        Ok(Some(RateOutcome::Admitted(h))) => {
            v.rate = Some(h);
            true
        }
        Ok(Some(outcome @ RateOutcome::Blocked { .. })) => {
            v.limited(outcome);
            false
        }
        Err(e) => {
            v.decision = Decision::RateLimited;
            v.retry_after = Some(1);
            v.fault = Some(e);
            false
        }
    }
}

/// The balance a key draws from: its own, else its tenant's.
pub fn credits_of<'a>(gate: &'a Gate, rec: &'a KeyRecord) -> Option<(Owner<'a>, &'a Credits)> {
    match &rec.credits {
        Some(c) => Some((Owner::Key(&rec.id), c)),
        None => {
            // The key service's view of the tenant's balance (with its top-ups) first.
            let t = rec.tenant.as_deref()?;
            rec.tenant_credits
                .as_ref()
                .or_else(|| gate.tenant_credits(t))
                .map(|c| (Owner::Tenant(t), c))
        }
    }
}

/// Spends the request's cost from the key's balance, checked last (SPEC §14); `false` if that
/// refuses it. A refusal gives back the windows `count_locally` counted: a request refused for
/// credits consumes no window.
#[allow(clippy::too_many_arguments)]
fn spend_credits(
    gate: &Gate,
    balance: Option<(Owner, &Credits)>,
    rec: &KeyRecord,
    req: &Request,
    path: &str,
    host: &mut impl Host,
    limits: &[Limit],
    now: u64,
    v: &mut Verdict,
) -> bool {
    let Some((owner, balance)) = balance else {
        return true;
    };
    // The dearest of the methods the request names: an override the upstream honours costs
    // what that method costs (as roles judge every method named).
    let cost = override_methods(req)
        .filter_map(|m| std::str::from_utf8(m).ok())
        .map(|m| credits::cost(&gate.credit_costs, m, path))
        .fold(
            credits::cost(&gate.credit_costs, req.method, path),
            u64::max,
        );
    let tenant = matches!(owner, Owner::Tenant(_));
    if gate.rate_limit_service.is_some() {
        // Spent by the service, in the call that counts the windows (all or nothing).
        let (start, reset) = credits::period(balance, now);
        let b = Balance {
            period: start,
            serial: balance.serial,
            until: reset.unwrap_or(0),
            grant: credits::granted_in(balance, start),
            cost,
        };
        v.fleet = Some(Windows::with_balance(v.fleet, tenant, b));
        return true;
    }
    spend_cost(host, (owner, balance), cost, &rec.id, limits, now, v)
}

/// Spends `cost` from a balance with this Envoy's own record (without a rate-limit service, or
/// when it failed and `on_failure` is `local`); `false` if that refuses it, and the windows
/// counted for it given back.
pub fn spend_cost(
    host: &mut impl CasStore,
    (owner, balance): (Owner, &Credits),
    cost: u64,
    key_id: &str,
    limits: &[Limit],
    now: u64,
    v: &mut Verdict,
) -> bool {
    let tenant = matches!(owner, Owner::Tenant(_));
    match credits::spend(host, owner, balance, cost, now, &mut v.counter_created) {
        Ok(Spend::Spent {
            remaining,
            reset,
            period,
        }) => {
            v.credits = Some(CreditHeaders { remaining, reset });
            v.charged = Some(Charged {
                tenant,
                cost,
                period,
                fleet: false,
            });
            return true;
        }
        Ok(Spend::Exceeded { retry_after, .. }) => {
            v.decision = Decision::UsageExceeded;
            v.retry_after = retry_after;
        }
        Err(e) => {
            // A balance that cannot be read or written never admits (as a rate-limit fault).
            v.decision = Decision::RateLimited;
            v.retry_after = Some(1);
            v.fault = Some(e);
        }
    }
    // The windows this request was counted in: given back, and not shown.
    if v.rate.take().is_some() {
        if let Err(e) = ratelimit::release(host, key_id, limits, now) {
            v.fault = v.fault.or(Some(e));
        }
    }
    false
}

/// Every method the request names besides its own (override headers, `_method`), each as
/// the client wrote it.
fn override_methods<'r>(req: &Request<'r>) -> impl Iterator<Item = &'r [u8]> {
    let headers = req.headers.iter().filter_map(|(h, v)| {
        METHOD_OVERRIDES
            .iter()
            .any(|o| h.eq_ignore_ascii_case(o))
            .then_some(*v)
    });
    headers
        .chain(query_param(req.path, METHOD_OVERRIDE_PARAM))
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|m| !m.is_empty())
}

/// The role allows the request's method and every method it asks the upstream to run instead.
fn allows_methods(role: &Role, req: &Request) -> bool {
    role.allows_method(req.method)
        && (role.methods.is_none()
            || override_methods(req)
                .all(|m| std::str::from_utf8(m).is_ok_and(|m| role.allows_override(m))))
}

fn check_restrictions(
    gate: &Gate,
    rec: &KeyRecord,
    role: Option<&Role>,
    path: &str,
    req: &Request,
    host: &mut impl Host,
) -> Option<Denial> {
    if let Some(cidrs) = &rec.allowed_ips {
        // An address Envoy took from a request header (X-Forwarded-For; it reports those
        // without a port) counts only where the operator says its proxies are trusted.
        let ok = host.source_address().is_some_and(|a| {
            (a.port != 0 || gate.trust_forwarded_address) && cidrs.iter().any(|c| c.contains(a.ip))
        });
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
        if !allows_methods(role, req) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::gate_from_value;
    use crate::json::json;
    use crate::ratelimit::mem::MemStore;
    use crate::reply;

    struct MockHost {
        now: u64,
        ip: Option<SourceAddress>,
        store: MemStore,
        now_calls: u32,
        ip_calls: u32,
        fail_store: bool,
    }

    impl MockHost {
        fn new() -> Self {
            // As configuration leaves shared data: the counter creation lock exists.
            let mut store = MemStore::default();
            crate::ratelimit::ensure_creation_lock(&mut store).unwrap();
            store.sets = 0;
            MockHost {
                now: 1_800_000_000,
                ip: at("127.0.0.1", 40000),
                store,
                now_calls: 0,
                ip_calls: 0,
                fail_store: false,
            }
        }
    }

    impl CasStore for MockHost {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            if self.fail_store {
                return Err(StoreError::Host);
            }
            self.store.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, StoreError> {
            self.store.set(key, value, cas)
        }
    }

    impl Host for MockHost {
        fn now(&mut self) -> u64 {
            self.now_calls += 1;
            self.now
        }
        fn source_address(&mut self) -> Option<SourceAddress> {
            self.ip_calls += 1;
            self.ip
        }
    }

    fn sha(k: &str) -> String {
        keys::digest_hex(k.as_bytes())
    }

    fn at(ip: &str, port: u16) -> Option<SourceAddress> {
        Some(SourceAddress {
            ip: ip.parse().unwrap(),
            port,
        })
    }

    fn gate() -> Gate {
        gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [
                {"prefix": "live_", "environment": "LIVE", "role": "reader"},
                {"prefix": "test_", "environment": "TEST"}
            ],
            "roles": {
                "reader": {"methods": ["GET"], "forbidden_message": "Readers only read."},
                "admin": {"methods": ["*"]}
            },
            "keys": [
                {"id": "plain", "sha256": sha("live_plain"), "tenant": "org"},
                {"id": "admin", "sha256": sha("live_admin"), "role": "admin", "environment": "STAGING"},
                {"id": "revoked_and_expired", "sha256": sha("live_re"), "revoked": true, "expires_at": 1},
                {"id": "expired", "sha256": sha("live_exp"), "expires_at": 1_800_000_000},
                {"id": "ip", "sha256": sha("live_ip"), "allowed_ips": ["10.0.0.0/8"], "allowed_paths": ["/x"]},
                {"id": "limited", "sha256": sha("test_lim"), "rate_limits": [{"requests": 2, "per": "minute"}]},
                {"id": "unlimited", "sha256": sha("test_unl"), "rate_limits": []}
            ],
            "rate_limits": [{"requests": 100, "per": "hour"}],
            "public_paths": ["/healthz", "/public/*"],
            "verify_path": "/v1/verify"
        }))
        .unwrap()
    }

    #[test]
    fn credits_are_checked_last_and_a_refusal_takes_no_window_and_no_header() {
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "tenants": {"org": {"credits": {"granted": 3, "refill": {"interval": "day"}}}},
            "keys": [
                {"id": "t1", "sha256": sha("k_t1"), "tenant": "org",
                 "rate_limits": [{"requests": 5, "per": "minute"}]},
                {"id": "own", "sha256": sha("k_own"), "tenant": "org", "credits": {"granted": 0}},
                {"id": "none", "sha256": sha("k_none")}
            ],
            "roles": {},
            "credit_costs": [{"methods": ["POST"], "cost": 2}]
        }))
        .unwrap();
        let mut host = MockHost::new();
        let now = host.now;
        let v = run(&g, &mut host, "POST", "/a", Some("k_t1")).unwrap();
        assert_eq!(v.decision, Decision::Allowed);
        let reset = now - now % 86_400 + 86_400;
        assert_eq!(
            v.credits,
            Some(CreditHeaders {
                remaining: 1,
                reset: Some(reset)
            })
        );
        assert_eq!(
            v.charged,
            Some(Charged {
                tenant: true,
                cost: 2,
                period: (reset - 86_400, 0),
                fleet: false
            })
        );
        assert_eq!(v.rate.map(|r| r.remaining), Some(4));
        // Cost 2 with 1 left: refused, the window given back, no rate headers.
        let v = run(&g, &mut host, "POST", "/a", Some("k_t1")).unwrap();
        assert_eq!(v.decision, Decision::UsageExceeded);
        assert_eq!(v.retry_after, Some(reset - now));
        assert_eq!((v.rate, v.credits, v.charged), (None, None, None));
        let v = run(&g, &mut host, "GET", "/a", Some("k_t1")).unwrap();
        assert_eq!(v.decision, Decision::Allowed);
        assert_eq!(
            v.rate.map(|r| r.remaining),
            Some(3),
            "the refused POST counted in no window"
        );
        assert_eq!(v.credits.map(|c| c.remaining), Some(0));
        // Its own balance (0) before its tenant's; no credits at all: not metered.
        assert_eq!(
            run(&g, &mut host, "GET", "/a", Some("k_own"))
                .unwrap()
                .decision,
            Decision::UsageExceeded
        );
        let v = run(&g, &mut host, "GET", "/a", Some("k_none")).unwrap();
        assert_eq!((v.decision, v.credits), (Decision::Allowed, None));
        // A failing balance never admits.
        host.fail_store = true;
        let v = run(&g, &mut host, "GET", "/a", Some("k_own")).unwrap();
        assert_eq!(
            (v.decision, v.retry_after),
            (Decision::RateLimited, Some(1))
        );
        assert!(v.fault.is_some());
        let r = crate::reply::reject(
            &g,
            &Verdict {
                decision: Decision::UsageExceeded,
                retry_after: Some(7),
                ..Verdict::new(Decision::UsageExceeded)
            },
        );
        assert_eq!(r.status, 429);
        assert_eq!(
            r.body,
            r#"{"error":"Usage limit exceeded","code":"USAGE_EXCEEDED"}"#
        );
        assert!(r.headers.contains(&("retry-after".into(), "7".into())));
    }

    fn headers(key: Option<&str>) -> Vec<Header<'_>> {
        key.map(|k| vec![("x-api-key", k.as_bytes())])
            .unwrap_or_default()
    }

    fn run<'g>(
        g: &'g Gate,
        host: &mut MockHost,
        method: &str,
        path: &str,
        key: Option<&str>,
    ) -> Option<Verdict<'g>> {
        run_with(g, host, method, path, headers(key))
    }

    fn run_with<'g>(
        g: &'g Gate,
        host: &mut MockHost,
        method: &str,
        path: &str,
        h: Vec<Header>,
    ) -> Option<Verdict<'g>> {
        let req = Request::new(method, path, &h).expect("a path that can be judged");
        decide(g, &req, host, |_| Lookup::NotFound)
    }

    fn decision(g: &Gate, method: &str, path: &str, key: Option<&str>) -> Decision {
        run(g, &mut MockHost::new(), method, path, key)
            .map(|v| v.decision)
            .unwrap_or(Decision::Allowed)
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let g = gate();
        assert!(
            run(&g, &mut MockHost::new(), "GET", "/healthz", None).is_none(),
            "public"
        );
        assert!(
            run(
                &g,
                &mut MockHost::new(),
                "POST",
                "/public/a/b",
                Some("garbage")
            )
            .is_none(),
            "public wins over everything"
        );
        assert_eq!(decision(&g, "GET", "/a", None), Decision::Missing);
        assert_eq!(decision(&g, "GET", "/a", Some("nope_x")), Decision::Invalid);
        assert_eq!(
            decision(&g, "GET", "/a", Some("live_unknown")),
            Decision::Invalid
        );
        assert_eq!(
            decision(&g, "GET", "/a", Some("live_re")),
            Decision::Revoked,
            "revoked before expired"
        );
        assert_eq!(
            decision(&g, "GET", "/a", Some("live_exp")),
            Decision::Expired,
            "expires_at is exclusive"
        );
        assert_eq!(
            decision(&g, "POST", "/x", Some("live_ip")),
            Decision::Forbidden
        );
        assert_eq!(
            decision(&g, "POST", "/a", Some("live_plain")),
            Decision::Forbidden
        );
        assert_eq!(
            decision(&g, "GET", "/a", Some("live_plain")),
            Decision::Allowed
        );
        assert!(
            Request::new("GET", "/a/..;/b", &[]).is_err(),
            "refused paths"
        );
    }

    #[test]
    fn judges_the_canonical_path() {
        let g = gate();
        // `/public/*` is public; climbing out of it is not.
        assert!(run(&g, &mut MockHost::new(), "GET", "/public/%2e%2e/x", None).is_some());
        assert!(run(&g, &mut MockHost::new(), "GET", "/x/../public/a", None).is_none());
        let mut host = MockHost::new();
        host.ip = at("10.1.2.3", 1234);
        assert_eq!(
            run(&g, &mut host, "GET", "/y/%2E%2E/x", Some("live_ip"))
                .unwrap()
                .decision,
            Decision::Allowed
        );
        assert_eq!(
            run(&g, &mut host, "GET", "/x/../y", Some("live_ip"))
                .unwrap()
                .denial,
            Some(Denial::Path)
        );
    }

    #[test]
    fn method_overrides_need_the_role_to_allow_them() {
        let g = gate();
        let with = |name: &str, value: &str| {
            let mut h = headers(Some("live_plain"));
            h.push((name, value.as_bytes()));
            run_with(&g, &mut MockHost::new(), "GET", "/a", h).unwrap()
        };
        for name in METHOD_OVERRIDES {
            let v = with(name, "DELETE");
            assert_eq!(
                (v.decision, v.denial, v.forbidden_message().as_ref()),
                (
                    Decision::Forbidden,
                    Some(Denial::Method),
                    "Readers only read."
                ),
                "{name}"
            );
            assert_eq!(with(name, "get").decision, Decision::Allowed, "{name}");
            assert_eq!(
                with(name, "GET, PUT").decision,
                Decision::Forbidden,
                "{name}"
            );
            assert_eq!(with(name, " ").decision, Decision::Allowed, "{name}");
        }
        assert_eq!(
            with("x-http-method-override2", "DELETE").decision,
            Decision::Allowed,
            "another header"
        );
        for q in ["_method", "%5Fmethod", ".method", "[method", "_method[]"] {
            let path = format!("/a?{q}=DELETE");
            let v = run(&g, &mut MockHost::new(), "GET", &path, Some("live_plain"));
            assert_eq!(v.unwrap().decision, Decision::Forbidden, "{q} parameter");
        }
        // A role with every method allows every override.
        let mut h = headers(Some("live_admin"));
        h.push(("x-http-method-override", b"PURGE"));
        let v = run_with(&g, &mut MockHost::new(), "GET", "/a", h).unwrap();
        assert_eq!(v.decision, Decision::Allowed);
    }

    #[test]
    fn environment_locked_gateways_refuse_other_environments_before_restrictions() {
        let cfg = serde_json::json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [
                {"prefix": "live_", "environment": "LIVE"},
                {"prefix": "sbx_", "environment": "SANDBOX"},
                {"prefix": "bare_"}
            ],
            "keys": [
                {"id": "live", "sha256": sha("live_k"), "allowed_ips": ["10.0.0.0/8"]},
                {"id": "sbx", "sha256": sha("sbx_k")},
                {"id": "sbx_live", "sha256": sha("sbx_live"), "environment": "LIVE"},
                {"id": "bare", "sha256": sha("bare_k")}
            ],
            "rate_limits": [{"requests": 10, "per": "minute"}],
            "environments_accepted": ["SANDBOX"]
        });
        let g = gate_from_value(&cfg.clone().into()).unwrap();
        let v = run(&g, &mut MockHost::new(), "GET", "/a", Some("live_k")).unwrap();
        assert_eq!(
            (v.decision, v.denial, v.environment()),
            (Decision::Forbidden, Some(Denial::Environment), Some("LIVE"))
        );
        let r = reply::reject(&g, &v);
        assert_eq!(
            (r.status, r.body.as_str()),
            (
                403,
                r#"{"error":"LIVE keys are not accepted here","code":"FORBIDDEN"}"#
            )
        );
        assert!(
            v.rate.is_some(),
            "403s about a valid key carry the rate headers"
        );
        let v = run(&g, &mut MockHost::new(), "GET", "/a", Some("sbx_live")).unwrap();
        assert_eq!(
            v.forbidden_message(),
            "LIVE keys are not accepted here",
            "the key's own"
        );
        let v = run(&g, &mut MockHost::new(), "GET", "/a", Some("bare_k")).unwrap();
        assert_eq!(
            v.forbidden_message(),
            "API keys without an environment are not accepted here"
        );
        assert_eq!(decision(&g, "GET", "/a", Some("sbx_k")), Decision::Allowed);
        for bad in [serde_json::json!(["PROD"]), serde_json::json!([])] {
            let mut c = cfg.clone();
            c["environments_accepted"] = bad;
            assert!(gate_from_value(&c.into()).is_err());
        }
    }

    #[test]
    fn checksummed_prefixes_refuse_bad_checksums_without_a_lookup() {
        let good = checksum::append("ck_live_abcdef");
        let g = gate_from_value(&json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [{"prefix": "ck_live_", "environment": "LIVE", "checksum": "crc32"}],
            "keys": [{"id": "ck", "key": good}]
        }))
        .unwrap();
        assert_eq!(decision(&g, "GET", "/a", Some(&good)), Decision::Allowed);
        let mut lookups = 0;
        let typo = good.replace("abc", "abd");
        let h = headers(Some(&typo));
        let req = Request::new("GET", "/a", &h).unwrap();
        let v = decide(&g, &req, &mut MockHost::new(), |_| {
            lookups += 1;
            Lookup::NotFound
        })
        .unwrap();
        assert_eq!(
            (v.decision, v.environment()),
            (Decision::Invalid, Some("LIVE"))
        );
        assert_eq!(lookups, 0);
        let bad = gate_from_value(&json!({
            "prefixes": [{"prefix": "ck_live_", "checksum": "crc32"}],
            "keys": [{"id": "ck", "key": "ck_live_abcdef000000"}]
        }));
        assert!(format!("{:?}", bad.unwrap_err()).contains("crc32 checksum"));
        assert!(
            gate_from_value(&json!({"prefixes": [{"prefix": "x_", "checksum": "md5"}]})).is_err()
        );
    }

    #[test]
    fn over_long_keys_are_invalid_with_their_prefix_environment() {
        let g = gate();
        let long = format!("live_{}", "k".repeat(8192));
        let v = run(&g, &mut MockHost::new(), "GET", "/a", Some(&long)).unwrap();
        assert_eq!(
            (v.decision, v.environment()),
            (Decision::Invalid, Some("LIVE"))
        );
    }

    #[test]
    fn restrictions_and_their_messages() {
        let g = gate();
        let mut host = MockHost::new();
        let v = run(&g, &mut host, "GET", "/x", Some("live_ip")).unwrap();
        assert_eq!(
            (v.decision, v.denial),
            (Decision::Forbidden, Some(Denial::Ip))
        );
        assert_eq!(
            v.forbidden_message(),
            "API key is not allowed from this IP address"
        );
        host.ip = at("10.1.2.3", 0);
        assert_eq!(
            run(&g, &mut host, "GET", "/x", Some("live_ip"))
                .unwrap()
                .denial,
            Some(Denial::Ip),
            "an address Envoy took from X-Forwarded-For is not trusted by default"
        );
        host.ip = at("10.1.2.3", 5555);
        assert_eq!(
            run(&g, &mut host, "GET", "/x", Some("live_ip"))
                .unwrap()
                .decision,
            Decision::Allowed
        );
        let v = run(&g, &mut host, "GET", "/y", Some("live_ip")).unwrap();
        assert_eq!(v.denial, Some(Denial::Path));
        assert_eq!(
            v.forbidden_message(),
            "Readers only read.",
            "the role's message for path denials"
        );
        let v = run(&g, &mut host, "DELETE", "/x", Some("live_ip")).unwrap();
        assert_eq!(
            (v.denial, v.forbidden_message().as_ref()),
            (Some(Denial::Method), "Readers only read.")
        );
        host.ip = None;
        assert_eq!(
            run(&g, &mut host, "GET", "/x", Some("live_ip"))
                .unwrap()
                .denial,
            Some(Denial::Ip),
            "unknown client IP fails closed"
        );
    }

    #[test]
    fn identity_comes_from_the_key_then_its_prefix() {
        let g = gate();
        let v = run(&g, &mut MockHost::new(), "DELETE", "/a", Some("live_admin")).unwrap();
        assert_eq!(v.decision, Decision::Allowed);
        assert_eq!(v.environment(), Some("STAGING"));
        assert_eq!(v.role.map(|r| r.name.as_str()), Some("admin"));
        let v = run(&g, &mut MockHost::new(), "GET", "/a", Some("live_unknown")).unwrap();
        assert_eq!(
            (v.decision, v.environment()),
            (Decision::Invalid, Some("LIVE"))
        );
        let v = run(&g, &mut MockHost::new(), "GET", "/a", Some("nope")).unwrap();
        assert_eq!(v.environment(), None);
    }

    #[test]
    fn only_needed_host_calls_are_made() {
        let g = gate();
        let mut host = MockHost::new();
        // No limit, no expiry, no IP rule: no clock, no address.
        let v = run(&g, &mut host, "GET", "/a", Some("test_unl")).unwrap();
        assert_eq!(v.decision, Decision::Allowed);
        assert_eq!((host.now_calls, host.ip_calls, host.store.sets), (0, 0, 0));
        assert_eq!(v.rate, None);
    }

    #[test]
    fn limits_inherit_key_then_prefix_then_default() {
        let g = gate();
        let mut host = MockHost::new();
        let v = run(&g, &mut host, "GET", "/a", Some("live_plain")).unwrap();
        assert_eq!(
            v.rate.map(|r| (r.limit, r.remaining)),
            Some((100, 99)),
            "global default"
        );
        for remaining in [1, 0] {
            let v = run(&g, &mut host, "GET", "/a", Some("test_lim")).unwrap();
            assert_eq!(v.rate.map(|r| r.remaining), Some(remaining));
        }
        let v = run(&g, &mut host, "GET", "/a", Some("test_lim")).unwrap();
        assert_eq!(v.decision, Decision::RateLimited);
        let now = host.now;
        let reset = now - now % 60 + 60;
        assert_eq!(v.retry_after, Some(reset - now));
        let r = reply::reject(&g, &v);
        assert_eq!(r.status, 429);
        assert_eq!(
            r.body,
            format!(
                r#"{{"error":"Rate limit exceeded. Try again in {} seconds.","code":"RATE_LIMITED"}}"#,
                reset - now
            )
        );
        assert!(r
            .headers
            .contains(&("retry-after".into(), (reset - now).to_string())));
        assert!(r
            .headers
            .contains(&("x-ratelimit-remaining".into(), "0".into())));
        assert!(r
            .headers
            .contains(&("x-ratelimit-reset".into(), reset.to_string())));
        assert!(r.headers.contains(&("x-environment".into(), "TEST".into())));
    }

    #[test]
    fn with_a_rate_limit_service_the_limits_are_its_to_count() {
        let mut g = gate();
        g.rate_limit_service = crate::config::gate_from_value(&json!({
            "rate_limit_service": {"cluster": "ratelimit"}
        }))
        .unwrap()
        .rate_limit_service;
        let mut host = MockHost::new();
        // Allowed so far, with the key's windows to ask about; nothing counted here.
        let v = run(&g, &mut host, "GET", "/a", Some("test_lim")).unwrap();
        assert_eq!(v.decision, Decision::Allowed);
        assert_eq!(
            v.fleet.map(|w| w.to_vec()),
            Some(vec![Limit {
                requests: 2,
                per: crate::model::Per::Minute
            }])
        );
        assert_eq!((v.rate, host.store.sets), (None, 0));
        // A 403 carries the windows (its headers come from the fleet cache), not a local peek.
        let v = run(&g, &mut host, "POST", "/a", Some("live_plain")).unwrap();
        assert_eq!(v.decision, Decision::Forbidden);
        assert!(v.fleet.is_some() && v.rate.is_none());
        // A key without limits asks nothing.
        let v = run(&g, &mut host, "GET", "/a", Some("test_unl")).unwrap();
        assert_eq!((v.decision, v.fleet), (Decision::Allowed, None));
        // The deny failure's answer.
        let mut v = Verdict::new(Decision::Unavailable);
        v.rate_service_down = true;
        assert_eq!(
            reply::reject(&g, &v).body,
            r#"{"error":"Rate limit service unavailable","code":"UNAVAILABLE"}"#
        );
    }

    #[test]
    fn store_faults_fail_closed() {
        let g = gate();
        let mut host = MockHost::new();
        host.fail_store = true;
        let v = run(&g, &mut host, "GET", "/a", Some("live_plain")).unwrap();
        assert_eq!(v.decision, Decision::RateLimited);
        assert_eq!(v.fault, Some(StoreError::Host));
        assert_eq!(v.retry_after, Some(1));
    }

    #[test]
    fn verify_path_answers_only_get_with_a_good_key() {
        let g = gate();
        let v = run(
            &g,
            &mut MockHost::new(),
            "GET",
            "/v1/verify",
            Some("live_plain"),
        )
        .unwrap();
        assert!(v.verify);
        let r = reply::verify(&g, &v);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            r#"{"key":{"id":"plain","name":null,"environment":"LIVE","role":"reader"},"organization":{"id":"org"}}"#
        );
        assert!(
            !run(
                &g,
                &mut MockHost::new(),
                "GET",
                "/v1/verify/x",
                Some("live_plain")
            )
            .unwrap()
            .verify
        );
        let v = run(
            &g,
            &mut MockHost::new(),
            "GET",
            "/v1/verify",
            Some("live_unknown"),
        )
        .unwrap();
        assert_eq!(v.decision, Decision::Invalid);
    }

    #[test]
    fn synced_lookup_is_consulted_after_the_inline_table() {
        let g = gate();
        let h = headers(Some("test_synced"));
        let req = Request::new("GET", "/a", &h).unwrap();
        let mut host = MockHost::new();
        let v = decide(&g, &req, &mut host, |d| {
            assert_eq!(*d, keys::digest(b"test_synced"));
            Lookup::Found(Cow::Owned(KeyRecord {
                id: "synced".into(),
                environment: Some("SYNC".into()),
                ..Default::default()
            }))
        })
        .unwrap();
        assert_eq!(
            (v.decision, v.environment()),
            (Decision::Allowed, Some("SYNC"))
        );
        let v = decide(&g, &req, &mut host, |_| Lookup::Unavailable).unwrap();
        assert_eq!(v.decision, Decision::Unavailable);
        let r = reply::reject(&g, &v);
        assert_eq!(
            (r.status, r.body.as_str()),
            (
                503,
                r#"{"error":"API key service unavailable","code":"UNAVAILABLE"}"#
            )
        );
    }

    #[test]
    fn rejection_bodies_are_exact() {
        let g = gate();
        let cases = [
            (
                None,
                401,
                r#"{"error":"Missing API key","code":"UNAUTHORIZED"}"#,
            ),
            (
                Some("x"),
                401,
                r#"{"error":"Invalid API key","code":"UNAUTHORIZED"}"#,
            ),
            (
                Some("live_re"),
                401,
                r#"{"error":"API key has been revoked","code":"UNAUTHORIZED"}"#,
            ),
            (
                Some("live_exp"),
                401,
                r#"{"error":"API key has expired","code":"UNAUTHORIZED"}"#,
            ),
        ];
        for (key, status, body) in cases {
            let v = run(&g, &mut MockHost::new(), "GET", "/a", key).unwrap();
            let r = reply::reject(&g, &v);
            assert_eq!((r.status, r.body.as_str()), (status, body));
            assert!(r
                .headers
                .contains(&("content-type".into(), "application/json".into())));
            assert!(
                !r.headers.iter().any(|(k, _)| k == "www-authenticate"),
                "no Bearer source here"
            );
        }
    }
}
