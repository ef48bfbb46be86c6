//! Usage reports (SPEC §8), the Envoy side: each VM sends its usage ledger's reports to the
//! key service from its tick, one call at a time; a report not acknowledged with a 2xx is sent
//! again, with the same id, at the next interval. Requests never wait for any of this.

use super::abi;
use super::host::{call_response_status, unix_now, SharedData};
use super::stats::Stats;
use crate::model::Endpoint;
use crate::ratelimit::{ensure_entry, CasStore};
use crate::usage::{handoff, MAX_REPORT_KEYS};
use log::warn;
use proxy_wasm::hostcalls;
use std::cell::RefCell;
use std::time::Duration;

pub struct Reporter {
    cfg: Endpoint,
    /// The call in flight: its token and when it was made.
    in_flight: Option<(u32, u64)>,
    last_sent: u64,
    /// The previous report failed: the next goes out sooner than a full interval.
    retry_at: Option<u64>,
    dropped_seen: u64,
    /// Envoy is tearing this VM's root context down: send what is left, once, then say done.
    closing: bool,
}

impl Reporter {
    /// The ledger itself lives in [`Stats`], where requests are counted.
    pub fn new(cfg: Endpoint) -> Self {
        Reporter {
            cfg,
            in_flight: None,
            last_sent: 0,
            retry_at: None,
            dropped_seen: 0,
            closing: false,
        }
    }

    /// Creates the hand-over slots (configuration time, on the main thread: the host accepts
    /// any CAS on a missing entry, so they must exist before two VMs could race to fill one).
    pub fn prepare_handoff() {
        for n in 0..handoff::SLOTS {
            let _ = ensure_entry(&mut SharedData, &handoff::slot_key(n), handoff::FREE);
        }
    }

    /// `on_done`: sends the counts not yet reported (one attempt per report, no retries); what
    /// cannot be sent is handed over to a VM that lives on. `true`: the context may go now;
    /// `false`: [`abi::done`] follows the answer.
    pub fn close(&mut self, stats: &RefCell<Stats>) -> bool {
        self.closing = true;
        if self.in_flight.is_some() {
            return false; // its answer sends the rest
        }
        if self.send_now(stats) {
            return false;
        }
        self.hand_over(stats);
        true
    }

    /// Puts every unacknowledged report into a free shared-data slot, for another VM's tick
    /// to send (with the same ids: the key service counts each once).
    fn hand_over(&mut self, stats: &RefCell<Stats>) {
        let mut st = stats.borrow_mut();
        let Some(ledger) = st.usage.as_mut() else {
            return;
        };
        ledger.stamp(unix_now());
        let reports = ledger.drain();
        if reports.is_empty() {
            return;
        }
        let value = handoff::encode(&reports);
        for n in 0..handoff::SLOTS {
            let key = handoff::slot_key(n);
            if let Ok(Some((current, cas))) = SharedData.get(&key) {
                if current == handoff::FREE && matches!(SharedData.set(&key, &value, cas), Ok(true))
                {
                    st.add("usage_reports_handed_over", reports.len() as u64);
                    return;
                }
            }
        }
        st.add("usage_reports_lost", reports.len() as u64);
        warn!(
            "usage report: {} reports could not be sent or handed over (every hand-over slot is full)",
            reports.len()
        );
    }

    /// Takes over the reports removed VMs handed over (each slot by one VM: compare-and-swap).
    fn adopt(&mut self, stats: &RefCell<Stats>) {
        let mut st = stats.borrow_mut();
        let Some(ledger) = st.usage.as_mut() else {
            return;
        };
        let mut adopted = 0usize;
        for n in 0..handoff::SLOTS {
            let key = handoff::slot_key(n);
            let Ok(Some((value, cas))) = SharedData.get(&key) else {
                continue;
            };
            let Some(reports) = handoff::decode(&value) else {
                continue; // not a value this code wrote: left alone
            };
            if reports.is_empty() {
                continue;
            }
            if matches!(SharedData.set(&key, handoff::FREE, cas), Ok(true)) {
                adopted += reports.len();
                ledger.inherit(reports);
            }
        }
        if adopted > 0 {
            st.add("usage_reports_adopted", adopted as u64);
        }
    }

    /// Every tick: stamp last-used times; send a report when one is due and none is in flight.
    pub fn tick(&mut self, stats: &RefCell<Stats>) {
        if !self.closing {
            self.adopt(stats);
        }
        let now = unix_now();
        let mut st = stats.borrow_mut();
        let Some(ledger) = st.usage.as_mut() else {
            return;
        };
        ledger.stamp(now);
        let (dropped, waiting) = (ledger.dropped(), ledger.waiting());
        if dropped > self.dropped_seen {
            st.add("usage_report_dropped", dropped - self.dropped_seen);
            self.dropped_seen = dropped;
        }
        st.gauge("usage_report_waiting_keys", waiting as u64);
        // Envoy answers every call (with nothing on timeout); one it never answered is given
        // up after its timeout plus a margin, and its report is sent again.
        let give_up = self.cfg.timeout_ms.div_ceil(1000) + 5;
        match self.in_flight {
            Some((_, started)) if now < started.saturating_add(give_up) => return,
            Some(_) => self.in_flight = None,
            None => {}
        }
        let due = match self.retry_at {
            Some(t) => now >= t,
            None => now >= self.last_sent.saturating_add(self.cfg.interval_seconds),
        };
        drop(st);
        if due {
            self.send_now(stats);
        }
    }

    /// Sends the pending report (or a new one); `true` if a call is now in flight.
    fn send_now(&mut self, stats: &RefCell<Stats>) -> bool {
        let now = unix_now();
        let mut st = stats.borrow_mut();
        if let Some(l) = st.usage.as_mut() {
            l.stamp(now);
        }
        let Some(body) = st
            .usage
            .as_mut()
            .and_then(|l| l.next_report())
            .map(|r| r.body.clone())
        else {
            return false;
        };
        let mut headers = vec![
            (":method", "POST"),
            (":path", self.cfg.path.as_str()),
            (":authority", self.cfg.authority.as_str()),
            ("content-type", "application/json"),
        ];
        let auth = self.cfg.token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(a) = auth.as_deref() {
            headers.push(("authorization", a));
        }
        self.last_sent = now;
        self.retry_at = None;
        st.event("usage_reports_sent");
        // The SDK's call (see sync.rs: only it routes the answer back to this context).
        match hostcalls::dispatch_http_call(
            &self.cfg.cluster,
            headers,
            Some(&body),
            vec![],
            Duration::from_millis(self.cfg.timeout_ms),
        ) {
            Ok(token) => {
                self.in_flight = Some((token, now));
                true
            }
            Err(e) => {
                st.event("usage_report_failures");
                self.retry_at = Some(now + self.retry_delay());
                warn!(
                    "usage report: cannot call cluster {}: status {}; will retry",
                    self.cfg.cluster, e as u32
                );
                false
            }
        }
    }

    /// A failed report goes out again after a short delay (at most the interval).
    fn retry_delay(&self) -> u64 {
        self.cfg.interval_seconds.clamp(1, 2)
    }

    /// Whether `token` is this reporter's call; if so, handles its answer.
    pub fn on_response(&mut self, token: u32, stats: &RefCell<Stats>) -> bool {
        if self.in_flight.map(|(t, _)| t) != Some(token) {
            return false;
        }
        self.in_flight = None;
        let status = call_response_status();
        let ok = status
            .as_deref()
            .is_some_and(|s| s.len() == 3 && s.first() == Some(&b'2'));
        if ok {
            let mut st = stats.borrow_mut();
            if let Some(l) = st.usage.as_mut() {
                l.acknowledged();
                // A backlog larger than one report (after an outage): the next one now.
                if l.waiting() >= MAX_REPORT_KEYS {
                    self.retry_at = Some(unix_now());
                }
            }
        } else {
            stats.borrow_mut().event("usage_report_failures");
            self.retry_at = Some(unix_now() + self.retry_delay());
            warn!(
                "usage report: key service answered {}; the report will be sent again",
                status
                    .map(|s| String::from_utf8(s).unwrap_or_else(|_| "(not UTF-8)".into()))
                    .unwrap_or_else(|| "nothing (timeout or connection failure)".into())
            );
        }
        if self.closing {
            // Shutting down: the next report if this one went through; what is left (this
            // one, if it failed) is handed over; then done.
            if !ok || !self.send_now(stats) {
                self.hand_over(stats);
                let _ = abi::done();
            }
        }
        true
    }
}
