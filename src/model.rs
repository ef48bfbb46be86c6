//! The validated, ready-to-serve form of a plugin configuration: built once per `on_configure`.

use crate::ip::Cidr;
use crate::keys::KeyTable;
use crate::path::{any_match, Pattern};

/// A place a key may be presented, and the paths where it is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    pub from: Source,
    /// `None` = every path; otherwise only these (SPEC §9 per-route key sources): elsewhere
    /// the header or parameter is neither read as a key nor removed.
    pub paths: Option<Vec<Pattern>>,
}

impl KeySource {
    /// Whether this source is consulted on the (canonical) path.
    pub fn applies_to(&self, canonical: &str) -> bool {
        self.paths.as_ref().is_none_or(|p| any_match(p, canonical))
    }

    /// The header name, for header sources.
    pub fn header(&self) -> Option<&str> {
        match &self.from {
            Source::Header { name, .. } => Some(name),
            Source::Query { .. } => None,
        }
    }
}

/// Where a key may be presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A request header (lower-case name), optionally with a required scheme (`Bearer`).
    Header {
        name: String,
        scheme: Option<String>,
    },
    /// A query-string parameter (opt-in only).
    Query { name: String },
}

/// The length of a fixed rate-limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

impl Per {
    pub const ALL: [Per; 4] = [Per::Second, Per::Minute, Per::Hour, Per::Day];

    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        }
    }

    /// Position of this window's counter in a key's shared counter record.
    pub fn slot(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Per> {
        Per::ALL.into_iter().find(|p| p.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub per: Per,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// `None` = every method (`["*"]`).
    pub methods: Option<Vec<String>>,
    /// `None` = every path.
    pub paths: Option<Vec<Pattern>>,
    pub forbidden_message: Option<String>,
}

impl Role {
    pub fn allows_method(&self, method: &str) -> bool {
        match &self.methods {
            None => true,
            Some(m) => m.iter().any(|x| x == method),
        }
    }

    /// Whether a method named in an override header or parameter is allowed. Frameworks
    /// upper-case these before use, so they are compared without case.
    pub fn allows_override(&self, method: &str) -> bool {
        match &self.methods {
            None => true,
            Some(m) => m.iter().any(|x| x.eq_ignore_ascii_case(method)),
        }
    }
}

pub type RoleId = usize;

/// How the keys of a prefix are checksummed (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The last 6 characters are the base62 CRC-32 of the rest ([`crate::checksum`]).
    Crc32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub prefix: String,
    pub environment: Option<String>,
    pub role: Option<RoleId>,
    pub rate_limits: Option<Vec<Limit>>,
    pub checksum: Option<Checksum>,
    /// What the key service does when a key of this prefix is reported leaked (SPEC §15);
    /// `None`: the default for its environment ([`LeakPolicy::default_for`]). The filter reads
    /// it (so a configuration holding it is understood) and never acts on it.
    pub leak_policy: Option<LeakPolicy>,
}

/// What a leak report does to a live key of a prefix (SPEC §15, `prefixes[].leak_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakPolicy {
    /// Revoked at once, no grace.
    Revoke,
    /// Recorded, audited and announced; the key keeps working.
    Notify,
}

impl LeakPolicy {
    /// The default: `revoke` for a production environment (`LIVE`, `production`, `prod`, in
    /// any case), `notify` otherwise.
    pub fn default_for(environment: Option<&str>) -> LeakPolicy {
        match environment {
            Some(e)
                if ["live", "production", "prod"]
                    .iter()
                    .any(|p| e.eq_ignore_ascii_case(p)) =>
            {
                LeakPolicy::Revoke
            }
            _ => LeakPolicy::Notify,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LeakPolicy::Revoke => "revoke",
            LeakPolicy::Notify => "notify",
        }
    }
}

/// A balance of credits (SPEC §14): `granted` per period, or in all without a refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    pub granted: u64,
    pub refill: Option<Refill>,
    /// The key service's top-ups of one period (`add`, `subtract`, `set`): `(period start,
    /// amount)`, added to `granted` while that period lasts, never after.
    pub top_up: Option<(u64, i64)>,
    /// Raised by each `set`: what was spent before it no longer counts.
    pub serial: u32,
}

/// When a balance is replaced by a new grant: each day, or each month on `day` (clamped to
/// the month's last day), at 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    Day,
    Month { day: u8 },
}

/// What a request costs (`credit_costs`, first match; default 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRule {
    /// Upper-case methods, or `*`; `None`: every method.
    pub methods: Option<Vec<String>>,
    /// `None`: every path.
    pub paths: Option<Vec<Pattern>>,
    pub cost: u64,
}

/// When credits are spent (`credits_charge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Charge {
    /// On admission.
    #[default]
    Request,
    /// On admission, given back when the upstream answers 5xx or never answers.
    Success,
}

/// One API key, as stored: never its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRecord {
    pub id: String,
    pub name: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<RoleId>,
    pub environment: Option<String>,
    pub revoked: bool,
    pub expires_at: Option<i64>,
    pub rate_limits: Option<Vec<Limit>>,
    pub allowed_ips: Option<Vec<Cidr>>,
    pub allowed_referers: Option<Vec<Pattern>>,
    pub allowed_paths: Option<Vec<Pattern>>,
    /// Its own balance (SPEC §14).
    pub credits: Option<Credits>,
    /// Its tenant's balance as the key service keeps it (its top-ups and sets), written into
    /// every key of the tenant: preferred to the configuration's `tenants` for this key.
    pub tenant_credits: Option<Credits>,
}

/// A key-service endpoint the filter calls on its own (`key_sync`, `usage_report`).
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub interval_seconds: u64,
    pub timeout_ms: u64,
    /// Sent as `Authorization: Bearer <token>` (never logged).
    pub token: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("cluster", &self.cluster)
            .field("path", &self.path)
            .field("authority", &self.authority)
            .field("interval_seconds", &self.interval_seconds)
            .field("timeout_ms", &self.timeout_ms)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub type KeySync = Endpoint;

/// What a request gets when the rate-limit service cannot answer (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// This Envoy's own exact counters take over (limits hold per Envoy).
    Local,
    /// 503 `UNAVAILABLE`.
    Deny,
    /// Admitted, uncounted.
    Allow,
}

/// `rate_limit_service`: limits counted fleet-wide by a rate-limit service (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub cluster: String,
    pub authority: Option<String>,
    pub domain: String,
    pub timeout_ms: u64,
    pub on_failure: OnFailure,
    /// The serialised `envoy.config.core.v3.GrpcService` handed to `proxy_grpc_call`
    /// (cluster and authority), built once at configuration. ASCII: the SDK takes a `&str`.
    pub grpc_service: String,
}

/// Names of the headers the filter sets on the upstream request (`None` = off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHeaders {
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<String>,
}

/// Everything one plugin configuration says, validated.
#[derive(Debug)]
pub struct Gate {
    pub sources: Vec<KeySource>,
    /// Longest prefix first, so the first match is the longest.
    pub prefixes: Vec<Prefix>,
    pub roles: Vec<Role>,
    pub keys: KeyTable,
    pub default_limits: Vec<Limit>,
    pub public_paths: Vec<Pattern>,
    pub verify_path: Option<String>,
    pub hide_credentials: bool,
    pub environment_header: Option<String>,
    pub upstream_headers: UpstreamHeaders,
    pub key_sync: Option<KeySync>,
    /// Where usage reports go (SPEC §8).
    pub usage_report: Option<Endpoint>,
    /// Fleet-wide limits through a rate-limit service (SPEC §10); `None` = this Envoy counts.
    pub rate_limit_service: Option<RateLimitService>,
    /// A Bearer source is configured: 401s carry `WWW-Authenticate`.
    pub bearer: bool,
    /// `allowed_ips` may use an address Envoy derived from `X-Forwarded-For` (behind trusted
    /// proxies, with `xff_num_trusted_hops`); otherwise only a connection's own address counts.
    pub trust_forwarded_address: bool,
    /// Only keys of these environments are accepted here (SPEC §9); `None` = any.
    pub environments_accepted: Option<Vec<String>>,
    /// Bit `n` (63: 63 or more) set if a header name of `n` bytes could be a spelling
    /// [`crate::forward`] removes: the other names of a request skip the comparisons.
    pub spelling_lengths: u64,
    /// Tenants' balances (SPEC §14), sorted by tenant.
    pub tenants: Vec<(String, Credits)>,
    pub credit_costs: Vec<CostRule>,
    pub credits_charge: Charge,
}

impl Gate {
    /// The longest configured prefix of `key`. With no prefixes configured every key is in the
    /// single unnamed class (`Some(None)`); a key outside all configured prefixes is `None`.
    pub fn classify(&self, key: &[u8]) -> Option<Option<&Prefix>> {
        if self.prefixes.is_empty() {
            return Some(None);
        }
        self.prefixes
            .iter()
            .find(|p| key.starts_with(p.prefix.as_bytes()))
            .map(Some)
    }

    pub fn role(&self, id: Option<RoleId>) -> Option<&Role> {
        id.and_then(|i| self.roles.get(i))
    }

    /// A tenant's balance, if the configuration gives it one.
    pub fn tenant_credits(&self, tenant: &str) -> Option<&Credits> {
        self.tenants
            .binary_search_by(|(t, _)| t.as_str().cmp(tenant))
            .ok()
            .and_then(|i| self.tenants.get(i))
            .map(|(_, c)| c)
    }

    /// Whether `name` is a query parameter keys are read from on `canonical` (on any path
    /// when the path is unknown).
    pub fn is_query_source(&self, name: &str, canonical: Option<&str>) -> bool {
        self.sources.iter().any(|s| {
            matches!(&s.from, Source::Query { name: n } if crate::credentials::param_name_is(name, n))
                && canonical.is_none_or(|c| s.applies_to(c))
        })
    }

    /// Every header the filter owns on the upstream request: removed from every client request.
    pub fn owned_request_headers(&self) -> impl Iterator<Item = &str> {
        [
            self.environment_header.as_deref(),
            self.upstream_headers.key_id.as_deref(),
            self.upstream_headers.tenant.as_deref(),
            self.upstream_headers.role.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}
