//! Usage stats (SPEC §3) as Envoy metrics, defined lazily and cached per VM.
//!
//! Names carry their tags as `.<tag>.<value>` segments so that Envoy's tag extraction (see the
//! shipped `stats_config`) turns them into Prometheus labels:
//! `keygate.requests.key_id.<id>`, `keygate.allowed.key_id.<id>`,
//! `keygate.rejected.reason.<reason>.key_id.<id>`, `keygate.last_used.key_id.<id>` (gauge, Unix seconds, written once per tick),
//! and for requests without a known key `keygate.rejected.reason.<reason>`.

use super::abi;
use crate::decide::Decision;
use crate::keys::FastMap;
use crate::usage::UsageLedger;
use proxy_wasm::types::MetricType;

const REASONS: usize = Decision::ALL.len();

#[derive(Default)]
struct KeyMetrics {
    requests: Option<u32>,
    allowed: Option<u32>,
    last_used: Option<u32>,
    /// Used since the last flush of the last-used gauges.
    used: bool,
    rejected: [Option<u32>; REASONS],
}

#[derive(Default)]
pub struct Stats {
    per_key: FastMap<String, KeyMetrics>,
    keyless: [Option<u32>; REASONS],
    events: FastMap<&'static str, u32>,
    gauges: FastMap<&'static str, u32>,
    /// Keys used since the last flush.
    used: Vec<String>,
    /// Counts for usage reports (with `usage_report`): in memory, no host call per request.
    pub usage: Option<UsageLedger>,
}

fn define(slot: &mut Option<u32>, kind: MetricType, name: impl FnOnce() -> String) -> Option<u32> {
    if slot.is_none() {
        *slot = abi::define_metric(kind, &name());
    }
    *slot
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        abi::increment_metric(id, 1);
    }
}

fn reason_index(d: Decision) -> usize {
    Decision::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

impl Stats {
    /// Counts one judged request for a known key; `route` (the Envoy route's name) is asked
    /// for only when usage is reported.
    pub fn key_request(
        &mut self,
        key_id: &str,
        decision: Decision,
        route: impl FnOnce() -> Vec<u8>,
    ) {
        if let Some(u) = self.usage.as_mut() {
            u.record(key_id, decision, &String::from_utf8_lossy(&route()));
        }
        if !self.per_key.contains_key(key_id) {
            self.per_key
                .insert(key_id.to_string(), KeyMetrics::default());
        }
        let Some(m) = self.per_key.get_mut(key_id) else {
            return;
        };
        bump(define(&mut m.requests, MetricType::Counter, || {
            format!("keygate.requests.key_id.{key_id}")
        }));
        if decision == Decision::Allowed {
            bump(define(&mut m.allowed, MetricType::Counter, || {
                format!("keygate.allowed.key_id.{key_id}")
            }));
        } else if let Some(slot) = m.rejected.get_mut(reason_index(decision)) {
            let reason = decision.as_str();
            bump(define(slot, MetricType::Counter, || {
                format!("keygate.rejected.reason.{reason}.key_id.{key_id}")
            }));
        }
        // The last-used gauge is written on the next tick, not per request: at most one
        // host call per used key per tick instead of a clock read and a write per request.
        if !m.used {
            m.used = true;
            self.used.push(key_id.to_string());
        }
    }

    /// Writes the last-used time of every key used since the previous flush (root tick).
    pub fn flush_last_used(&mut self, now: u64) {
        for key_id in self.used.drain(..) {
            let Some(m) = self.per_key.get_mut(&key_id) else {
                continue;
            };
            m.used = false;
            let gauge = define(&mut m.last_used, MetricType::Gauge, || {
                format!("keygate.last_used.key_id.{key_id}")
            });
            if let Some(g) = gauge {
                abi::record_metric(g, now);
            }
        }
    }

    /// Counts a rejection with no known key (missing, invalid, …).
    pub fn keyless_rejection(&mut self, decision: Decision) {
        if let Some(slot) = self.keyless.get_mut(reason_index(decision)) {
            let reason = decision.as_str();
            bump(define(slot, MetricType::Counter, || {
                format!("keygate.rejected.reason.{reason}")
            }));
        }
    }

    /// Sets an operational gauge (`keygate.<name>`).
    pub fn gauge(&mut self, name: &'static str, value: u64) {
        if let Some(id) = cached(&mut self.gauges, name, MetricType::Gauge) {
            abi::record_metric(id, value);
        }
    }

    /// Counts an operational event (`keygate.<name>`), e.g. rate-limit store faults.
    pub fn event(&mut self, name: &'static str) {
        bump(cached(&mut self.events, name, MetricType::Counter));
    }

    /// Adds `n` to an operational counter (`keygate.<name>`).
    pub fn add(&mut self, name: &'static str, n: u64) {
        if let Some(id) = cached(&mut self.events, name, MetricType::Counter) {
            abi::increment_metric(id, n as i64);
        }
    }
}

/// The id of metric `keygate.<name>`, defined on first use.
fn cached(
    ids: &mut FastMap<&'static str, u32>,
    name: &'static str,
    kind: MetricType,
) -> Option<u32> {
    if let Some(id) = ids.get(name) {
        return Some(*id);
    }
    let id = abi::define_metric(kind, &format!("keygate.{name}"))?;
    ids.insert(name, id);
    Some(id)
}
