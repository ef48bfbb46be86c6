//! Prometheus metrics of `keygate ratelimit` (`--metrics-listen`, `GET /metrics`):
//! `keygate_ratelimit_calls_total{code}` (ok, over_limit, invalid_argument, unavailable,
//! deadline_exceeded),
//! `keygate_ratelimit_redis_errors_total`, `keygate_ratelimit_call_duration_seconds`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Code {
    ok,
    over_limit,
    invalid_argument,
    unavailable,
    deadline_exceeded,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: Code,
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CodeLabel, Counter>,
    redis_errors: Counter,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keygate_ratelimit");
        let calls = Family::<CodeLabel, Counter>::default();
        let redis_errors = Counter::default();
        // 100 µs … ~1.6 s
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register("calls", "ShouldRateLimit calls by answer", calls.clone());
        registry.register(
            "redis_errors",
            "Calls answered UNAVAILABLE because Redis failed",
            redis_errors.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time to answer a ShouldRateLimit call",
            duration.clone(),
        );
        Metrics {
            registry,
            calls,
            redis_errors,
            duration,
        }
    }
}

impl Metrics {
    pub fn call(&self, code: Code, seconds: f64) {
        if code == Code::unavailable {
            self.redis_errors.inc();
        }
        self.calls.get_or_create(&CodeLabel { code }).inc();
        self.duration.observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
