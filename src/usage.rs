//! Usage reports (SPEC §8), the pure part: per-key counts batched in memory on the request path
//! (no host call, no clock read), stamped with a last-used time on each tick, and turned into
//! reports with an id. A report is resent, with the same id, until the key service
//! acknowledges it, so the service can count it exactly once; counts made meanwhile go into the
//! next report. Memory is bounded by the number of distinct keys, not by time: during a long
//! outage counts keep adding up in place. Past [`MAX_KEYS`] distinct keys waiting, requests of
//! further keys are not counted, and [`UsageLedger::dropped`] says how many.
//!
//! Each key's counts are split by the Envoy route the request matched (SPEC §8 `routes`): route
//! names come from the Envoy configuration, never from a request, and are bounded here too
//! ([`MAX_ROUTES`] names per VM, [`MAX_KEY_ROUTES`] per key; past either, [`OTHER_ROUTE`]).

use crate::decide::Decision;
use crate::json::quote;
use crate::keys::FastMap;
use std::fmt::Write;

/// Distinct keys a VM holds counts for while waiting to report.
pub const MAX_KEYS: usize = 100_000;
/// Keys per report (larger batches go in several reports, one at a time).
pub const MAX_REPORT_KEYS: usize = 5_000;
/// A report stops taking keys past this size (many routes per key make entries long).
pub const MAX_REPORT_BYTES: usize = 2 * 1024 * 1024;

/// Distinct route names a VM counts under (the Envoy configuration's, so a handful).
pub const MAX_ROUTES: usize = 1024;
/// Routes one key's entry names in a report.
pub const MAX_KEY_ROUTES: usize = 64;
/// The route of a request whose route has no name (or no route).
pub const UNNAMED_ROUTE: &str = "-";
/// Where requests go once a VM or a key has as many routes as it keeps (and those of a route
/// whose name a key service would refuse).
pub const OTHER_ROUTE: &str = "(other)";
/// The longest route name reported (bytes); a key service refuses longer ones.
pub const MAX_ROUTE_NAME: usize = 256;

const N: usize = Decision::ALL.len();
/// A set of counts: one per decision, then the credits the admitted ones were charged.
const SLOTS: usize = N + 1;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    by_decision: [u64; SLOTS],
    /// The same counts split by route: (route number, counts), in order of first use.
    routes: Vec<(u16, [u64; SLOTS])>,
    last_used: u64,
    /// Used since the last stamp.
    fresh: bool,
}

/// Route names by number; 0 is [`UNNAMED_ROUTE`], 1 is [`OTHER_ROUTE`].
#[derive(Debug)]
struct Routes {
    names: Vec<String>,
    numbers: FastMap<String, u16>,
}

impl Routes {
    fn new() -> Self {
        let mut r = Routes {
            names: Vec::new(),
            numbers: FastMap::default(),
        };
        r.number(UNNAMED_ROUTE);
        r.number(OTHER_ROUTE);
        r
    }

    fn number(&mut self, name: &str) -> u16 {
        let name = if name.is_empty() { UNNAMED_ROUTE } else { name };
        if let Some(n) = self.numbers.get(name) {
            return *n;
        }
        // A name the key service would refuse would make every report refused: "(other)".
        if self.names.len() >= MAX_ROUTES || name.len() > MAX_ROUTE_NAME || name.contains('\0') {
            return 1;
        }
        let n = self.names.len() as u16;
        self.names.push(name.to_string());
        self.numbers.insert(name.to_string(), n);
        n
    }

    fn name(&self, n: u16) -> &str {
        self.names
            .get(n as usize)
            .map_or(OTHER_ROUTE, String::as_str)
    }
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
    routes: Routes,
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

fn count(
    c: &mut Counts,
    decision: Decision,
    credits: u64,
    route: u16,
    key_id: &str,
    fresh: &mut Vec<String>,
) {
    let i = index(decision);
    let add = |counts: &mut [u64; SLOTS]| {
        if let Some(n) = counts.get_mut(i) {
            *n += 1;
        }
        if let Some(n) = counts.get_mut(N) {
            *n = n.saturating_add(credits);
        }
    };
    add(&mut c.by_decision);
    let at = match c.routes.iter().position(|(r, _)| *r == route) {
        Some(at) => at,
        None => {
            // Past the key's share of routes, into "(other)" (a slot is kept for it).
            let has_other = c.routes.iter().any(|(r, _)| *r == 1);
            let room = MAX_KEY_ROUTES - usize::from(!has_other);
            let route = if c.routes.len() >= room { 1 } else { route };
            match c.routes.iter().position(|(r, _)| *r == route) {
                Some(at) => at,
                None => {
                    c.routes.push((route, [0; SLOTS]));
                    c.routes.len() - 1
                }
            }
        }
    };
    if let Some((_, r)) = c.routes.get_mut(at) {
        add(r);
    }
    if !c.fresh {
        c.fresh = true;
        fresh.push(key_id.to_string());
    }
}

/// `"requests":n,"allowed":n,"rejected":{…}` of one set of counts, and `"credits":n` when
/// the admitted requests were charged any.
fn write_counts(body: &mut String, counts: &[u64; SLOTS]) {
    let total = requests_of(counts);
    let allowed = counts.get(index(Decision::Allowed)).copied().unwrap_or(0);
    let _ = write!(
        body,
        "\"requests\":{total},\"allowed\":{allowed},\"rejected\":{{"
    );
    let mut first = true;
    for (d, n) in Decision::ALL.iter().zip(counts) {
        if *d == Decision::Allowed || *n == 0 {
            continue;
        }
        if !first {
            body.push(',');
        }
        first = false;
        let _ = write!(body, "\"{}\":{n}", d.as_str());
    }
    body.push('}');
    match counts.get(N) {
        Some(credits) if *credits > 0 => {
            let _ = write!(body, ",\"credits\":{credits}");
        }
        _ => {}
    }
}

fn requests_of(counts: &[u64; SLOTS]) -> u64 {
    counts.iter().take(N).sum()
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
            routes: Routes::new(),
            fresh: Vec::new(),
            pending: None,
            inherited: Vec::new(),
            origin,
            seq: 0,
            dropped: 0,
        }
    }

    /// Counts one judged request of a known key on the Envoy route named `route` (`""`: a
    /// route without a name): two hash lookups for a key and route already waiting.
    pub fn record(&mut self, key_id: &str, decision: Decision, credits: u64, route: &str) {
        let route = self.routes.number(route);
        if let Some(c) = self.counts.get_mut(key_id) {
            count(c, decision, credits, route, key_id, &mut self.fresh);
            return;
        }
        if self.counts.len() >= MAX_KEYS {
            self.dropped += 1;
            return;
        }
        let mut c = Counts::default();
        count(&mut c, decision, credits, route, key_id, &mut self.fresh);
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
        // A stable order for a given set of ids (by FNV hash: `sort_numbered`).
        let mut order: Vec<(u64, u32)> = (0u32..)
            .zip(&taken)
            .map(|(i, id)| (crate::keys::fnv(id.as_bytes()), i))
            .collect();
        crate::keys::sort_numbered(&mut order);
        let ids = order.iter().filter_map(|(_, i)| taken.get(*i as usize));
        let mut body = String::with_capacity(64 + taken.len() * 96);
        let _ = write!(body, "{{\"report_id\":\"{id}\",\"keys\":[");
        let (mut requests, mut written) = (0u64, 0usize);
        for key_id in ids {
            let Some(c) = self.counts.remove(key_id) else {
                continue;
            };
            if c.fresh {
                // Used after the last stamp: its time comes with the next one.
                self.fresh.retain(|f| f != key_id);
            }
            requests += requests_of(&c.by_decision);
            if written > 0 {
                body.push(',');
            }
            written += 1;
            // Key ids are `[A-Za-z0-9_.:-]` (validated when read): nothing to escape.
            let _ = write!(body, "{{\"id\":\"{key_id}\",");
            write_counts(&mut body, &c.by_decision);
            if c.last_used > 0 {
                let _ = write!(body, ",\"last_used\":{}", c.last_used);
            }
            body.push_str(",\"routes\":[");
            for (i, (route, counts)) in c.routes.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let _ = write!(body, "{{\"route\":{},", quote(self.routes.name(*route)));
                write_counts(&mut body, counts);
                body.push('}');
            }
            body.push_str("]}");
            if body.len() >= MAX_REPORT_BYTES {
                break; // the other keys wait for the next report
            }
        }
        body.push_str("]}");
        Report {
            id,
            body: body.into_bytes(),
            keys: written,
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
        old.record("k", Decision::Allowed, 0, "r");
        old.stamp(10);
        let in_flight = old.next_report().unwrap().clone(); // sent, never acknowledged
        old.record("k", Decision::Allowed, 0, "r");
        old.record("j", Decision::Forbidden, 0, "r");
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
        new.record("k", Decision::Allowed, 0, "r");
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
            l.record("k1", Decision::Allowed, 0, "r");
        }
        l.record("k1", Decision::RateLimited, 0, "r");
        l.record("k2", Decision::Revoked, 0, "r");
        l.stamp(1_700_000_000);
        let r = l.next_report().unwrap().clone();
        assert_eq!(r.id, "vm-1");
        assert_eq!((r.keys, r.requests), (2, 5));
        assert_eq!(
            body(&r),
            // In the order of the ids' FNV hashes: the same for the same ids.
            json!({"report_id": "vm-1", "keys": [
                {"id": "k2", "requests": 1, "allowed": 0, "rejected": {"revoked": 1}, "last_used": 1_700_000_000,
                 "routes": [{"route": "r", "requests": 1, "allowed": 0, "rejected": {"revoked": 1}}]},
                {"id": "k1", "requests": 4, "allowed": 3, "rejected": {"rate_limited": 1}, "last_used": 1_700_000_000,
                 "routes": [{"route": "r", "requests": 4, "allowed": 3, "rejected": {"rate_limited": 1}}]}]})
        );
    }

    #[test]
    fn counts_are_split_by_route_and_add_up() {
        let mut l = UsageLedger::new("vm".into());
        l.record("k", Decision::Allowed, 5, "orders");
        l.record("k", Decision::Allowed, 1, "");
        l.record("k", Decision::Forbidden, 0, "orders");
        l.record("k", Decision::Allowed, 0, "a \"quoted\" name");
        let r = l.next_report().unwrap().clone();
        // Credits charged: per key and route, only where some were.
        assert_eq!(
            body(&r)["keys"][0],
            json!({"id": "k", "requests": 4, "allowed": 3, "rejected": {"forbidden": 1}, "credits": 6,
                   "routes": [
                       {"route": "orders", "requests": 2, "allowed": 1, "rejected": {"forbidden": 1}, "credits": 5},
                       {"route": "-", "requests": 1, "allowed": 1, "rejected": {}, "credits": 1},
                       {"route": "a \"quoted\" name", "requests": 1, "allowed": 1, "rejected": {}}]})
        );
    }

    #[test]
    fn routes_are_bounded_per_key_and_per_vm() {
        let mut l = UsageLedger::new("vm".into());
        // Names a key service would refuse count as "(other)".
        l.record("k", Decision::Allowed, 0, &"x".repeat(MAX_ROUTE_NAME + 1));
        l.record("k", Decision::Allowed, 0, "nul\0");
        for i in 0..MAX_KEY_ROUTES + 10 {
            l.record("k", Decision::Allowed, 0, &format!("route{i}"));
        }
        assert!(!l
            .routes
            .numbers
            .keys()
            .any(|n| n.len() > MAX_ROUTE_NAME || n.contains('\0')));
        // More names than a VM keeps: the rest count as "(other)" for every key.
        for i in 0..MAX_ROUTES + 10 {
            l.record("j", Decision::Allowed, 0, &format!("name{i}"));
        }
        assert_eq!(l.routes.names.len(), MAX_ROUTES);
        let r = l.next_report().unwrap().clone();
        for entry in body(&r)["keys"].as_array().unwrap() {
            let routes = entry["routes"].as_array().unwrap();
            assert_eq!(routes.len(), MAX_KEY_ROUTES);
            let sum: u64 = routes.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
            assert_eq!(sum, entry["requests"].as_u64().unwrap(), "routes add up");
            assert!(routes.iter().any(|r| r["route"] == json!(OTHER_ROUTE)));
        }
    }

    #[test]
    fn an_unacknowledged_report_is_resent_unchanged_and_new_counts_wait() {
        let mut l = UsageLedger::new("vm".into());
        l.record("k", Decision::Allowed, 0, "r");
        l.stamp(10);
        let first = l.next_report().unwrap().clone();
        // The service is down: more requests, the same report again.
        l.record("k", Decision::Allowed, 0, "r");
        l.record("k", Decision::Allowed, 0, "r");
        l.stamp(20);
        assert_eq!(l.next_report().unwrap(), &first);
        assert_eq!(l.next_report().unwrap(), &first);
        l.acknowledged();
        let second = l.next_report().unwrap().clone();
        assert_eq!(second.id, "vm-2");
        assert_eq!(
            body(&second)["keys"][0],
            json!({"id": "k", "requests": 2, "allowed": 2, "rejected": {}, "last_used": 20,
                   "routes": [{"route": "r", "requests": 2, "allowed": 2, "rejected": {}}]})
        );
        l.acknowledged();
        assert!(l.next_report().is_none());
    }

    #[test]
    fn memory_is_bounded_by_keys_and_drops_are_counted() {
        let mut l = UsageLedger::new("vm".into());
        for i in 0..MAX_KEYS {
            l.record(&format!("k{i}"), Decision::Allowed, 0, "r");
        }
        l.record("k0", Decision::Allowed, 0, "r"); // a waiting key still counts
        l.record("one-too-many", Decision::Allowed, 0, "r");
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
        l.record("k", Decision::Allowed, 0, "r");
        let r = l.next_report().unwrap().clone();
        assert!(body(&r)["keys"][0].get("last_used").is_none());
        l.acknowledged();
        l.record("k", Decision::Allowed, 0, "r");
        l.stamp(7);
        assert_eq!(
            body(l.next_report().unwrap())["keys"][0]["last_used"],
            json!(7)
        );
    }
}
