//! Prometheus metrics of `keygate serve` (`GET /metrics` on its listener):
//! `keygate_serve_requests_total{route,status}` and `keygate_serve_request_duration_seconds{route}`
//! (route: the route's pattern, e.g. `/v1/api-keys/{id}`, or `unmatched`: bounded by the
//! routes, never by paths), `keygate_serve_database_errors_total` (calls answered 503 because
//! the database failed), `keygate_serve_usage_reports_total{outcome}` (counted, duplicate,
//! refused) and `keygate_serve_key_sync_answers_total{form}` (full_json, full_compact, delta,
//! not_modified), `keygate_serve_request_log_records_total{outcome}` (stored, not_judged: a
//! record without keygate's decision, skipped; stale: a request started over a day ago,
//! skipped; refused: in an export refused as invalid;
//! dropped: accepted by no write, the queue full or the database failing),
//! `keygate_serve_leak_reports_total{origin,outcome}`, `keygate_serve_leaked_keys_total{origin,action}`,
//! `keygate_serve_leak_key_fetches_total{origin,outcome}` and
//! `keygate_serve_webhook_deliveries_total{outcome}` (SPEC §15). One set per process.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

/// What became of a usage report.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Report {
    counted,
    duplicate,
    refused,
}

/// The form of a `/keys` answer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Answer {
    full_json,
    full_compact,
    delta,
    not_modified,
}

/// What became of a request-log record.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Logged {
    stored,
    not_judged,
    stale,
    refused,
    dropped,
}

/// What became of a leak report (SPEC §15).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LeakReport {
    /// Signed, read, every token looked up (answered 200 / 204).
    accepted,
    /// No signature headers (404).
    unsigned,
    /// A signature that does not verify, or an unknown key (400).
    bad_signature,
    /// A body that is not a report (400).
    bad_body,
    /// Over 1 MiB (413).
    too_large,
    /// The keys could not be fetched, or the database failed (503).
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakOutcome {
    origin: String,
    outcome: LeakReport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakAction {
    origin: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyFetch {
    origin: String,
    outcome: String,
}

/// How a webhook delivery attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Delivered {
    delivered,
    retried,
    given_up,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryOutcome {
    outcome: Delivered,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogOutcome {
    outcome: Logged,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: Report,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Form {
    form: Answer,
}

type Durations = Family<Route, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    durations: Durations,
    database_errors: Counter,
    reports: Family<Outcome, Counter>,
    answers: Family<Form, Counter>,
    logged: Family<LogOutcome, Counter>,
    leak_reports: Family<LeakOutcome, Counter>,
    leaked_keys: Family<LeakAction, Counter>,
    key_fetches: Family<KeyFetch, Counter>,
    webhooks: Family<DeliveryOutcome, Counter>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keygate_serve");
        let requests = Family::<Request, Counter>::default();
        // 1 ms … ~16 s
        let durations: Durations =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15)));
        let database_errors = Counter::default();
        let reports = Family::<Outcome, Counter>::default();
        let answers = Family::<Form, Counter>::default();
        let logged = Family::<LogOutcome, Counter>::default();
        let leak_reports = Family::<LeakOutcome, Counter>::default();
        let leaked_keys = Family::<LeakAction, Counter>::default();
        let key_fetches = Family::<KeyFetch, Counter>::default();
        let webhooks = Family::<DeliveryOutcome, Counter>::default();
        registry.register(
            "leak_reports",
            "Leak reports (GitHub, GitLab) by origin and outcome",
            leak_reports.clone(),
        );
        registry.register(
            "leaked_keys",
            "Keys reported leaked by origin and the action taken (revoked, notified, none, repeated)",
            leaked_keys.clone(),
        );
        registry.register(
            "leak_key_fetches",
            "Fetches of a partner's signing keys by origin and outcome (ok, failed)",
            key_fetches.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            webhooks.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer an HTTP request, by route",
            durations.clone(),
        );
        registry.register(
            "database_errors",
            "Requests answered 503 because the database failed",
            database_errors.clone(),
        );
        registry.register(
            "usage_reports",
            "Usage reports from Envoy, by outcome",
            reports.clone(),
        );
        registry.register(
            "key_sync_answers",
            "Answers to key_sync (/keys), by form",
            answers.clone(),
        );
        registry.register(
            "request_log_records",
            "Request-log records from Envoy, by outcome",
            logged.clone(),
        );
        Metrics {
            registry,
            leak_reports,
            leaked_keys,
            key_fetches,
            webhooks,
            requests,
            durations,
            database_errors,
            reports,
            answers,
            logged,
        }
    }

    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let route = route.to_string();
        self.durations
            .get_or_create(&Route {
                route: route.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&Request { route, status })
            .inc();
    }

    pub fn database_error(&self) {
        self.database_errors.inc();
    }

    pub fn report(&self, outcome: Report) {
        self.reports.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn answer(&self, form: Answer) {
        self.answers.get_or_create(&Form { form }).inc();
    }

    pub fn logged(&self, outcome: Logged, n: u64) {
        self.logged.get_or_create(&LogOutcome { outcome }).inc_by(n);
    }

    /// The Prometheus text exposition.
    pub fn leak_report(&self, origin: &str, outcome: LeakReport) {
        self.leak_reports
            .get_or_create(&LeakOutcome {
                origin: origin.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn leaked_key(&self, origin: &str, action: &str) {
        self.leaked_keys
            .get_or_create(&LeakAction {
                origin: origin.to_string(),
                action: action.to_string(),
            })
            .inc();
    }

    pub fn key_fetch(&self, origin: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" }.to_string();
        self.key_fetches
            .get_or_create(&KeyFetch {
                origin: origin.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn webhook(&self, outcome: Delivered) {
        self.webhooks
            .get_or_create(&DeliveryOutcome { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
