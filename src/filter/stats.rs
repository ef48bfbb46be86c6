//! Usage stats (SPEC §3) as Envoy metrics, defined lazily and cached per VM.
//!
//! Per-key counters, keyless rejections and last-used gauges are counted in the VM and flushed
//! on the root's tick (every 0.5 s; SPEC §3 allows up to one second): no host call per request,
//! one per changed metric per tick. Operational events are counted at once (they are rare).
//!
//! Names carry their tags as `.<tag>.<value>` segments so that Envoy's tag extraction (see the
//! shipped `stats_config`) turns them into Prometheus labels:
//! `keygate.requests.key_id.<id>`, `keygate.allowed.key_id.<id>`,
//! `keygate.rejected.reason.<reason>.key_id.<id>`, `keygate.last_used.key_id.<id>` (gauge, Unix seconds, written once per tick),
//! and for requests without a known key `keygate.rejected.reason.<reason>`.

use super::abi;
use crate::decide::Decision;
use crate::keys::FastMap;
use crate::usage::{UsageLedger, OTHER_ROUTE};
use proxy_wasm::types::MetricType;

const REASONS: usize = Decision::ALL.len();

#[derive(Default)]
struct KeyMetrics {
    requests: Option<u32>,
    allowed: Option<u32>,
    last_used: Option<u32>,
    /// Used since the last flush (its pending counts and last-used gauge are due).
    used: bool,
    rejected: [Option<u32>; REASONS],
    /// Counted since the last flush: requests, allowed, rejected by reason.
    pending_requests: u64,
    pending_allowed: u64,
    pending_rejected: [u64; REASONS],
}

#[derive(Default)]
pub struct Stats {
    per_key: FastMap<String, KeyMetrics>,
    keyless: [Option<u32>; REASONS],
    /// Rejections without a known key since the last flush, by reason.
    keyless_pending: [u64; REASONS],
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
    add(id, 1);
}

fn add(id: Option<u32>, n: u64) {
    if let (Some(id), true) = (id, n > 0) {
        abi::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Adds the rejections counted since the last flush to their counters, by reason (`name`
/// gives a reason's metric name), and clears them.
fn flush_rejections(
    slots: &mut [Option<u32>; REASONS],
    pending: &mut [u64; REASONS],
    name: impl Fn(&str) -> String,
) {
    for ((slot, pending), d) in slots.iter_mut().zip(pending.iter_mut()).zip(Decision::ALL) {
        let n = std::mem::take(pending);
        if n > 0 {
            add(define(slot, MetricType::Counter, || name(d.as_str())), n);
        }
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
        credits: u64,
        route: impl FnOnce() -> Vec<u8>,
    ) {
        if let Some(u) = self.usage.as_mut() {
            // A name that is not UTF-8 is no name a key service takes: "(other)".
            let route = route();
            u.record(
                key_id,
                decision,
                credits,
                std::str::from_utf8(&route).unwrap_or(OTHER_ROUTE),
            );
        }
        // One lookup for a key seen before (every request but the key's first in this VM).
        let m = match self.per_key.get_mut(key_id) {
            Some(m) => m,
            None => self.per_key.entry(key_id.to_string()).or_default(),
        };
        m.pending_requests += 1;
        if decision == Decision::Allowed {
            m.pending_allowed += 1;
        } else if let Some(n) = m.pending_rejected.get_mut(reason_index(decision)) {
            *n += 1;
        }
        if !m.used {
            m.used = true;
            self.used.push(key_id.to_string());
        }
    }

    /// The root's tick (and its end): adds what was counted since the previous flush to the
    /// Envoy metrics and writes the last-used time of every key used since.
    pub fn flush(&mut self, now: u64) {
        for key_id in self.used.drain(..) {
            let Some(m) = self.per_key.get_mut(&key_id) else {
                continue;
            };
            m.used = false;
            let n = std::mem::take(&mut m.pending_requests);
            add(
                define(&mut m.requests, MetricType::Counter, || {
                    format!("keygate.requests.key_id.{key_id}")
                }),
                n,
            );
            let n = std::mem::take(&mut m.pending_allowed);
            if n > 0 {
                add(
                    define(&mut m.allowed, MetricType::Counter, || {
                        format!("keygate.allowed.key_id.{key_id}")
                    }),
                    n,
                );
            }
            flush_rejections(&mut m.rejected, &mut m.pending_rejected, |reason| {
                format!("keygate.rejected.reason.{reason}.key_id.{key_id}")
            });
            let gauge = define(&mut m.last_used, MetricType::Gauge, || {
                format!("keygate.last_used.key_id.{key_id}")
            });
            if let Some(g) = gauge {
                abi::record_metric(g, now);
            }
        }
        flush_rejections(&mut self.keyless, &mut self.keyless_pending, |reason| {
            format!("keygate.rejected.reason.{reason}")
        });
    }

    /// Counts a rejection with no known key (missing, invalid, …).
    pub fn keyless_rejection(&mut self, decision: Decision) {
        if let Some(n) = self.keyless_pending.get_mut(reason_index(decision)) {
            *n += 1;
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
        add(cached(&mut self.events, name, MetricType::Counter), n);
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
