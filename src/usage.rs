//! Usage reports (SPEC §8), the pure part: per-key counts batched in memory on the request path
//! (no host call, no clock read), stamped with a last-used time on each tick, and turned into
//! reports with an id. A report is resent, with the same id, until the key service
//! acknowledges it, so the service can count it exactly once; counts made meanwhile go into the
//! next report. Memory is bounded by the number of distinct keys, not by time: during a long
//! outage counts keep adding up in place. Past [`MAX_KEYS`] distinct keys waiting, requests of
//! further keys are not counted, and [`UsageLedger::dropped`] says how many.

use crate::decide::Decision;
use crate::keys::FastMap;
use std::fmt::Write;

/// Distinct keys a VM holds counts for while waiting to report.
pub const MAX_KEYS: usize = 100_000;
/// Keys per report (larger batches go in several reports, one at a time).
pub const MAX_REPORT_KEYS: usize = 5_000;

const N: usize = Decision::ALL.len();

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    by_decision: [u64; N],
    last_used: u64,
    /// Used since the last stamp.
    fresh: bool,
}

/// A report on its way: resent as is until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: String,
    pub body: Vec<u8>,
    pub keys: usize,
    pub requests: u64,
}

#[derive(Debug)]
pub struct UsageLedger {
    counts: FastMap<String, Counts>,
    /// Keys used since the last stamp.
    fresh: Vec<String>,
    pending: Option<Report>,
    /// Reports another VM could not deliver before Envoy removed it ([`handoff`]): sent, with
    /// their own ids, before this VM's own.
    inherited: Vec<Report>,
    /// Unique to this VM (its start time and process-wide VM number).
    origin: String,
    seq: u64,
    dropped: u64,
}

fn count(c: &mut Counts, decision: Decision, key_id: &str, fresh: &mut Vec<String>) {
    if let Some(n) = c.by_decision.get_mut(index(decision)) {
        *n += 1;
    }
    if !c.fresh {
        c.fresh = true;
        fresh.push(key_id.to_string());
    }
}

fn index(d: Decision) -> usize {
    Decision::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

impl UsageLedger {
    /// `origin` must be unique to this VM across restarts (e.g. its start time in nanoseconds
    /// and its process-wide VM number).
    pub fn new(origin: String) -> Self {
        UsageLedger {
            counts: FastMap::default(),
            fresh: Vec::new(),
            pending: None,
            inherited: Vec::new(),
            origin,
            seq: 0,
            dropped: 0,
        }
    }

    /// Counts one judged request of a known key: one hash lookup for a key already waiting.
    pub fn record(&mut self, key_id: &str, decision: Decision) {
        if let Some(c) = self.counts.get_mut(key_id) {
            count(c, decision, key_id, &mut self.fresh);
            return;
        }
        if self.counts.len() >= MAX_KEYS {
            self.dropped += 1;
            return;
        }
        let mut c = Counts::default();
        count(&mut c, decision, key_id, &mut self.fresh);
        self.counts.insert(key_id.to_string(), c);
    }

    /// Sets the last-used time of every key used since the previous stamp (each tick).
    pub fn stamp(&mut self, now: u64) {
        for id in self.fresh.drain(..) {
            if let Some(c) = self.counts.get_mut(&id) {
                c.fresh = false;
                c.last_used = now;
            }
        }
    }

    /// Requests not counted because [`MAX_KEYS`] keys were waiting.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Keys with counts waiting for a report.
    pub fn waiting(&self) -> usize {
        self.counts.len()
    }

    /// The report to send now: the unacknowledged one again, else a new one from the counts
    /// (`None`: nothing to report). Call [`UsageLedger::stamp`] first.
    pub fn next_report(&mut self) -> Option<&Report> {
        if self.pending.is_none() {
            self.pending = self.inherited.pop();
        }
        if self.pending.is_none() && !self.counts.is_empty() {
            self.pending = Some(self.take_report());
        }
        self.pending.as_ref()
    }

    /// Everything not yet acknowledged, as reports (the pending one unchanged, the counts as
    /// new ones): what a VM Envoy is removing hands over ([`handoff`]). Call
    /// [`UsageLedger::stamp`] first.
    pub fn drain(&mut self) -> Vec<Report> {
        let mut out: Vec<Report> = self.pending.take().into_iter().collect();
        out.append(&mut self.inherited);
        while !self.counts.is_empty() {
            out.push(self.take_report());
        }
        out
    }

    /// Takes over reports a removed VM handed over; they go out before this VM's own.
    pub fn inherit(&mut self, reports: Vec<Report>) {
        self.inherited.extend(reports);
    }

    /// Reports waiting to be sent (the pending one included).
    pub fn reports_waiting(&self) -> usize {
        self.inherited.len() + usize::from(self.pending.is_some())
    }

    /// The key service acknowledged the pending report.
    pub fn acknowledged(&mut self) {
        self.pending = None;
    }

    fn take_report(&mut self) -> Report {
        self.seq += 1;
        let id = format!("{}-{}", self.origin, self.seq);
        let taken: Vec<String> = self.counts.keys().take(MAX_REPORT_KEYS).cloned().collect();
        // A stable order for a given set of ids (by FNV hash: the .wasm's one sort instance).
        let mut order: Vec<(u64, u32)> = (0u32..)
            .zip(&taken)
            .map(|(i, id)| (crate::keys::fnv(id.as_bytes()), i))
            .collect();
        order.sort_unstable();
        let ids = order.iter().filter_map(|(_, i)| taken.get(*i as usize));
        let mut body = String::with_capacity(64 + taken.len() * 96);
        let _ = write!(body, "{{\"report_id\":\"{id}\",\"keys\":[");
        let mut requests = 0u64;
        for (i, key_id) in ids.enumerate() {
            let Some(c) = self.counts.remove(key_id) else {
                continue;
            };
            if c.fresh {
                // Used after the last stamp: its time comes with the next one.
                self.fresh.retain(|f| f != key_id);
            }
            let total: u64 = c.by_decision.iter().sum();
            requests += total;
            if i > 0 {
                body.push(',');
            }
            // Key ids are `[A-Za-z0-9_.:-]` (validated when read): nothing to escape.
            let allowed = c
                .by_decision
                .get(index(Decision::Allowed))
                .copied()
                .unwrap_or(0);
            let _ = write!(
                body,
                "{{\"id\":\"{key_id}\",\"requests\":{total},\"allowed\":{allowed},\"rejected\":{{"
            );
            let mut first = true;
            for (d, n) in Decision::ALL.iter().zip(c.by_decision) {
                if *d == Decision::Allowed || n == 0 {
                    continue;
                }
                if !first {
                    body.push(',');
                }
                first = false;
                let _ = write!(body, "\"{}\":{n}", d.as_str());
            }
            body.push('}');
            if c.last_used > 0 {
                let _ = write!(body, ",\"last_used\":{}", c.last_used);
            }
            body.push('}');
        }
        body.push_str("]}");
        Report {
            id,
            body: body.into_bytes(),
            keys: taken.len(),
            requests,
        }
    }
}

/// Reports handed from a VM Envoy removes to one that lives on, through a few fixed shared-data
/// slots (the keys never grow with time): the wire format of one slot, pure.
pub mod handoff {
    use super::Report;

    /// Shared-data slots for handed-over reports (`keygate.usage.handoff.<n>`).
    pub const SLOTS: usize = 16;

    pub fn slot_key(n: usize) -> String {
        format!("keygate.usage.handoff.{n}")
    }

    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// A free slot's value (one byte: an empty value may read as no value at all).
    pub const FREE: &[u8] = &[0];

    /// Reports as one slot's value.
    pub fn encode(reports: &[Report]) -> Vec<u8> {
        let mut out = vec![1u8];
        for r in reports {
            put(&mut out, r.id.as_bytes());
            put(&mut out, &r.body);
            out.extend_from_slice(&(r.keys as u64).to_le_bytes());
            out.extend_from_slice(&r.requests.to_le_bytes());
        }
        out
    }

    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }

    fn u32_at(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }

    fn u64_at(b: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
    }

    /// A slot's reports (none for a free slot); `None` if the value is not one this code wrote
    /// (left alone).
    pub fn decode(b: &[u8]) -> Option<Vec<Report>> {
        let (&kind, mut b) = b.split_first()?;
        match kind {
            0 if b.is_empty() => return Some(Vec::new()),
            1 => {}
            _ => return None,
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let n = u32_at(&mut b)?;
            let id = String::from_utf8(take(&mut b, n)?.to_vec()).ok()?;
            let n = u32_at(&mut b)?;
            let body = take(&mut b, n)?.to_vec();
            let keys = usize::try_from(u64_at(&mut b)?).ok()?;
            let requests = u64_at(&mut b)?;
            out.push(Report {
                id,
                body,
                keys,
                requests,
            });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn a_removed_vm_hands_every_unacknowledged_report_over_unchanged() {
        let mut old = UsageLedger::new("old".into());
        old.record("k", Decision::Allowed);
        old.stamp(10);
        let in_flight = old.next_report().unwrap().clone(); // sent, never acknowledged
        old.record("k", Decision::Allowed);
        old.record("j", Decision::Forbidden);
        old.stamp(11);
        let reports = old.drain();
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[0], in_flight,
            "the pending report keeps its id and body"
        );
        assert_eq!(reports.iter().map(|r| r.requests).sum::<u64>(), 3);
        // Through a shared-data slot to a VM that lives on.
        let slot = handoff::encode(&reports);
        assert_eq!(handoff::decode(&slot), Some(reports.clone()));
        assert_eq!(handoff::decode(&slot[..slot.len() - 1]), None);
        assert_eq!(handoff::decode(handoff::FREE), Some(vec![]));
        assert_eq!(handoff::decode(&[]), None);
        assert_eq!(handoff::decode(&[7]), None);
        let mut new = UsageLedger::new("new".into());
        new.record("k", Decision::Allowed);
        new.inherit(handoff::decode(&slot).unwrap());
        let mut sent = Vec::new();
        while let Some(r) = new.next_report() {
            sent.push(r.clone());
            new.acknowledged();
        }
        assert_eq!(sent.len(), 3);
        assert!(sent.contains(&reports[0]) && sent.contains(&reports[1]));
        assert_eq!(sent.iter().map(|r| r.requests).sum::<u64>(), 4);
    }

    fn body(r: &Report) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn counts_become_one_report_with_last_used() {
        let mut l = UsageLedger::new("vm".into());
        for _ in 0..3 {
            l.record("k1", Decision::Allowed);
        }
        l.record("k1", Decision::RateLimited);
        l.record("k2", Decision::Revoked);
        l.stamp(1_700_000_000);
        let r = l.next_report().unwrap().clone();
        assert_eq!(r.id, "vm-1");
        assert_eq!((r.keys, r.requests), (2, 5));
        assert_eq!(
            body(&r),
            // In the order of the ids' FNV hashes: the same for the same ids.
            json!({"report_id": "vm-1", "keys": [
                {"id": "k2", "requests": 1, "allowed": 0, "rejected": {"revoked": 1}, "last_used": 1_700_000_000},
                {"id": "k1", "requests": 4, "allowed": 3, "rejected": {"rate_limited": 1}, "last_used": 1_700_000_000}]})
        );
    }

    #[test]
    fn an_unacknowledged_report_is_resent_unchanged_and_new_counts_wait() {
        let mut l = UsageLedger::new("vm".into());
        l.record("k", Decision::Allowed);
        l.stamp(10);
        let first = l.next_report().unwrap().clone();
        // The service is down: more requests, the same report again.
        l.record("k", Decision::Allowed);
        l.record("k", Decision::Allowed);
        l.stamp(20);
        assert_eq!(l.next_report().unwrap(), &first);
        assert_eq!(l.next_report().unwrap(), &first);
        l.acknowledged();
        let second = l.next_report().unwrap().clone();
        assert_eq!(second.id, "vm-2");
        assert_eq!(
            body(&second)["keys"][0],
            json!({"id": "k", "requests": 2, "allowed": 2, "rejected": {}, "last_used": 20})
        );
        l.acknowledged();
        assert!(l.next_report().is_none());
    }

    #[test]
    fn memory_is_bounded_by_keys_and_drops_are_counted() {
        let mut l = UsageLedger::new("vm".into());
        for i in 0..MAX_KEYS {
            l.record(&format!("k{i}"), Decision::Allowed);
        }
        l.record("k0", Decision::Allowed); // a waiting key still counts
        l.record("one-too-many", Decision::Allowed);
        assert_eq!((l.waiting(), l.dropped()), (MAX_KEYS, 1));
        // Large batches go out in several reports; every request is in exactly one.
        l.stamp(5);
        let mut total = 0;
        let mut reports = 0;
        while let Some(r) = l.next_report() {
            assert!(r.keys <= MAX_REPORT_KEYS);
            total += r.requests;
            reports += 1;
            l.acknowledged();
        }
        assert_eq!(total, MAX_KEYS as u64 + 1);
        assert_eq!(reports, MAX_KEYS.div_ceil(MAX_REPORT_KEYS));
    }

    #[test]
    fn a_key_used_after_the_stamp_gets_its_time_with_the_next_report() {
        let mut l = UsageLedger::new("vm".into());
        l.record("k", Decision::Allowed);
        let r = l.next_report().unwrap().clone();
        assert!(body(&r)["keys"][0].get("last_used").is_none());
        l.acknowledged();
        l.record("k", Decision::Allowed);
        l.stamp(7);
        assert_eq!(
            body(l.next_report().unwrap())["keys"][0]["last_used"],
            json!(7)
        );
    }
}
