//! One HTTP stream: read the request once, let the core decide, carry out the verdict.

use super::abi;
use super::fleet::{self, FleetState};
use super::host::{EnvoyHost, SharedData};
use super::stats::Stats;
use super::sync::{self, View};
use crate::credentials::find_key;
use crate::credits;
use crate::decide::{
    count_locally, credits_of, decide, spend_cost, Charged, CreditHeaders, Decision, Host, Request,
    Verdict,
};
use crate::fleet::{BalanceAnswer, Windows};
use crate::forward::{self, Edits, Fate};
use crate::host_wire::decode_pairs;
use crate::model::{Charge as Charging, Gate, KeyRecord, OnFailure, RoleId};
use crate::reply::{self, Reply};
use log::{debug, error};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

pub struct KeygateHttp {
    gate: Option<Rc<Gate>>,
    stats: Rc<RefCell<Stats>>,
    view: Rc<RefCell<View>>,
    fleet: Rc<RefCell<FleetState>>,
    /// Headers to add to the upstream's response (environment, rate limits).
    response_headers: Vec<(String, String)>,
    /// The filter answered locally: leave the response alone.
    replied: bool,
    /// A request held until the rate-limit service answers (SPEC §10).
    waiting: Option<Waiting>,
    /// Credits spent by a request charged only on success (SPEC §14): given back when the
    /// response is a 5xx (the upstream's, or Envoy's for it: a reset or a timeout upstream).
    charge: Option<Charge>,
}

/// A spend to give back: the balance's owner (a key id, or a tenant), its cost and period.
struct Charge {
    owner: String,
    tenant: bool,
    cost: u64,
    period: credits::Stamp,
}

/// Gives back what an admitted request spent when keygate itself cannot forward it.
fn give_back(v: &Verdict) {
    if let Some(c) = Charge::of(v) {
        c.refund();
    }
}

impl Charge {
    /// What an admitted verdict spent (nothing for a cost of 0), and from whose balance.
    fn of(v: &Verdict) -> Option<Charge> {
        let (c, k) = (
            v.charged.filter(|c| c.cost > 0 && !c.fleet)?,
            v.key.as_deref()?,
        );
        let owner = if c.tenant {
            k.tenant.clone()?
        } else {
            k.id.clone()
        };
        Some(Charge {
            owner,
            tenant: c.tenant,
            cost: c.cost,
            period: c.period,
        })
    }

    fn refund(self) {
        let owner = if self.tenant {
            credits::Owner::Tenant(&self.owner)
        } else {
            credits::Owner::Key(&self.owner)
        };
        if let Err(e) = credits::refund(&mut SharedData, owner, self.cost, self.period) {
            error!("credits could not be given back: {e}");
        }
    }
}

/// What an allowed request waiting for the rate-limit service needs to be concluded: the
/// verdict's parts, owned (the verdict borrows the request's headers, gone by then).
struct Waiting {
    token: u32,
    windows: Windows,
    key: KeyRecord,
    role: Option<RoleId>,
    prefix_environment: Option<String>,
    sources: u32,
    verify: bool,
    /// The `:path` to leave for the access log if the answer is no (see `request_headers`).
    local_path: Option<String>,
    /// When the request was judged (Unix ms): the answer's durations count from it (the call
    /// takes milliseconds; resets are rounded to whole seconds), saving a clock read.
    started_ms: u64,
}

impl Waiting {
    fn verdict<'a>(&'a self, gate: &'a Gate) -> Verdict<'a> {
        let mut v = Verdict::new(Decision::Allowed);
        v.key = Some(Cow::Borrowed(&self.key));
        v.role = gate.role(self.role);
        v.prefix_environment = self.prefix_environment.as_deref();
        v.sources = self.sources;
        v.verify = self.verify;
        v.fleet = Some(self.windows);
        v
    }
}

impl KeygateHttp {
    pub fn new(
        gate: Option<Rc<Gate>>,
        stats: Rc<RefCell<Stats>>,
        view: Rc<RefCell<View>>,
        fleet: Rc<RefCell<FleetState>>,
    ) -> Self {
        KeygateHttp {
            gate,
            stats,
            view,
            fleet,
            response_headers: Vec::new(),
            replied: false,
            waiting: None,
            charge: None,
        }
    }

    fn send(&mut self, r: &Reply) -> Action {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if abi::send_local_response(r.status, &headers, r.body.as_bytes()).is_err() {
            error!("could not send the local reply");
        }
        self.replied = true;
        Action::Pause
    }

    fn fail_closed(&mut self, why: &str) -> Action {
        error!("{why}; rejecting the request");
        self.send(&reply::internal_error())
    }
}

fn set_state(name: &str, value: Option<&str>) {
    if let Some(v) = value {
        let _ = abi::set_property(&[name], v.as_bytes());
    }
}

/// Carries out the forwarding plan: one host call per change, none when nothing changes.
/// `Err` if the host refused a change: the request must then not go on.
fn apply(edits: &Edits) -> Result<(), abi::Status> {
    if let Some(p) = &edits.path {
        abi::set_header(MapType::HttpRequestHeaders, ":path", p)?;
    }
    for name in &edits.remove {
        abi::remove_header(MapType::HttpRequestHeaders, name)?;
    }
    Ok(())
}

fn set_request_header(name: Option<&str>, value: Option<&str>) -> Result<(), abi::Status> {
    match (name, value) {
        (Some(n), Some(v)) => abi::set_header(MapType::HttpRequestHeaders, n, v),
        _ => Ok(()),
    }
}

/// Bench-only host-call ledger (feature `hostcall-count`): the calls each callback makes are
/// added to the counter `keygate.bench_hostcalls` (the reporting call itself is not counted).
mod ledger {
    #[cfg(feature = "hostcall-count")]
    pub fn start() {
        super::abi::count::take();
    }
    #[cfg(feature = "hostcall-count")]
    pub fn report() {
        use std::cell::Cell;
        thread_local! {
            static ID: Cell<Option<u32>> = const { Cell::new(None) };
        }
        let n = super::abi::count::take();
        let id = ID.with(|c| {
            if c.get().is_none() {
                c.set(super::abi::define_metric(
                    proxy_wasm::types::MetricType::Counter,
                    "keygate.bench_hostcalls",
                ));
            }
            c.get()
        });
        if let Some(id) = id {
            super::abi::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    #[cfg(not(feature = "hostcall-count"))]
    pub fn start() {}
    #[cfg(not(feature = "hostcall-count"))]
    pub fn report() {}
}

impl Context for KeygateHttp {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if self.waiting.as_ref().is_none_or(|w| w.token != token) {
            return;
        }
        let (Some(gate), Some(waiting)) = (self.gate.clone(), self.waiting.take()) else {
            return;
        };
        let now_ms = waiting.started_ms;
        let answer = fleet::answer(&waiting.windows, status_code, response_size, now_ms);
        let mut v = waiting.verdict(&gate);
        match answer {
            Ok((rate, balance)) => {
                if let Some(outcome) = rate {
                    self.fleet.borrow_mut().cache.learn(
                        &waiting.key.id,
                        &waiting.windows,
                        &outcome,
                        now_ms / 1000,
                    );
                    v.limited(outcome);
                }
                if let (Some((tenant, b)), Some(answer), Decision::Allowed) =
                    (waiting.windows.balance, balance, v.decision)
                {
                    let reset = Some(b.until).filter(|&u| u > 0);
                    match answer {
                        BalanceAnswer::Spent { remaining } => {
                            v.credits = Some(CreditHeaders { remaining, reset });
                            v.charged = Some(Charged {
                                tenant,
                                cost: b.cost,
                                period: (b.period, b.serial),
                                fleet: true,
                            });
                        }
                        BalanceAnswer::Exceeded => {
                            v.decision = Decision::UsageExceeded;
                            v.retry_after = reset.map(|r| r.saturating_sub(now_ms / 1000).max(1));
                        }
                    }
                }
            }
            Err(why) => self.fleet_failed(&gate, &mut v, now_ms / 1000, &why),
        }
        if self.conclude_waited(&gate, v, waiting.local_path.as_deref()) == Action::Continue
            && abi::resume_request().is_err()
        {
            // The stream is gone (or Envoy refused): nothing is forwarded unjudged.
            error!("the request could not be resumed after the rate-limit service answered");
        }
    }
}

impl HttpContext for KeygateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        ledger::start();
        let action = self.request_headers();
        ledger::report();
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        ledger::start();
        if !self.replied {
            for (k, v) in &self.response_headers {
                let _ = abi::set_header(MapType::HttpResponseHeaders, k, v);
            }
        }
        // Charged only on success: a 5xx (the upstream's, or Envoy's for it) gives it back.
        if let Some(charge) = self.charge.take() {
            let status = abi::header(MapType::HttpResponseHeaders, ":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
            if status.is_none_or(|s| s >= 500) {
                charge.refund();
            }
        }
        ledger::report();
        Action::Continue
    }

    // While the rate-limit service is asked, the request's body and trailers wait too:
    // Continue here would send the held headers upstream before the answer.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.waiting.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.waiting.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl KeygateHttp {
    /// A request's headers: judge, then forward or answer.
    fn request_headers(&mut self) -> Action {
        let Some(gate) = self.gate.clone() else {
            return self.fail_closed("no configuration");
        };
        // One host call for every header: the key sources, :method, :path and referer.
        let Ok(raw) = abi::header_pairs(MapType::HttpRequestHeaders) else {
            return self.fail_closed("request headers unavailable");
        };
        let Some(headers) = decode_pairs(&raw) else {
            return self.fail_closed("request headers unavailable");
        };
        #[cfg(feature = "fault-injection")]
        super::faults::on_request(&headers);
        let text = |name: &str| {
            headers
                .iter()
                .find(|(h, _)| *h == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let (Some(method), Some(path)) = (text(":method"), text(":path")) else {
            return self.fail_closed("request without :method or :path");
        };
        let req = match Request::new(method, path, &headers) {
            Ok(req) => req,
            Err(why) => {
                debug!("request path refused: it {why}");
                let v = Verdict::new(Decision::BadRequest);
                self.record(&v);
                // Only the access log sees this :path (query keys leave it); the answer is ours.
                let _ = apply(&forward::plan(&gate, path, None, &headers, Fate::Local));
                return self.send(&reply::reject(&gate, &v));
            }
        };
        let mut host = EnvoyHost::default();
        let view = self.view.clone();
        let mut verdict = decide(&gate, &req, &mut host, |d| sync::lookup(&gate, &view, d));
        if let Some(v) = verdict.as_mut() {
            self.fleet_known(v, &mut host);
        }
        let fate = match &verdict {
            // A public path: keys presented anyway are hidden too.
            None if gate.hide_credentials => Fate::Upstream {
                sources: find_key(&gate.sources, &headers, path, &req.canonical).sources(),
            },
            None => Fate::Upstream { sources: 0 },
            Some(v) if v.decision == Decision::Allowed && !v.verify => {
                Fate::Upstream { sources: v.sources }
            }
            Some(_) => Fate::Local,
        };
        let edits = forward::plan(&gate, path, Some(&req.canonical), &headers, fate);
        // A request that waits for the rate-limit service goes on only if it answers yes; the
        // `:path` a local answer leaves for the access log (query keys removed) is kept for a no.
        let waits = verdict
            .as_ref()
            .is_some_and(|v| v.decision == Decision::Allowed && v.fleet.is_some());
        let local_path = if waits {
            forward::plan(&gate, path, Some(&req.canonical), &headers, Fate::Local)
                .path
                .filter(|p| Some(p) != edits.path.as_ref())
        } else {
            None
        };
        if apply(&edits).is_err() && fate != Fate::Local {
            // Never forward a request whose path or headers could not be made what was judged
            // (nor charge it: it never went on).
            if let Some(v) = &verdict {
                give_back(v);
            }
            return self.fail_closed("the request could not be rewritten as judged");
        }
        let Some(v) = verdict else {
            return Action::Continue;
        };
        if waits {
            let started_ms = host.now_ms();
            return self.ask_fleet(&gate, v, local_path, started_ms);
        }
        self.conclude(&gate, v)
    }

    /// Fleet-wide limits, what this worker knows already: a key its over-limit cache holds
    /// blocked is a 429 without a call; a 403 shows the numbers last seen.
    fn fleet_known(&self, v: &mut Verdict, host: &mut EnvoyHost) {
        let (Some(w), Some(id)) = (v.fleet, v.key.as_deref().map(|k| k.id.as_str())) else {
            return;
        };
        let now = host.now();
        let state = self.fleet.borrow();
        match v.decision {
            Decision::Forbidden => v.rate = state.cache.peek(id, &w, now),
            Decision::Allowed => {
                if let Some(outcome) = state.cache.blocked(id, &w, now) {
                    self.stats
                        .borrow_mut()
                        .event("ratelimit_service_cached_over_limit");
                    v.limited(outcome);
                }
            }
            _ => {}
        }
    }

    /// Concludes a request that waited for the rate-limit service: a refusal leaves the access
    /// log the `:path` of a local answer first.
    fn conclude_waited(&mut self, gate: &Gate, v: Verdict, local_path: Option<&str>) -> Action {
        if let (false, Some(p)) = (v.decision == Decision::Allowed, local_path) {
            if abi::set_header(MapType::HttpRequestHeaders, ":path", p).is_err() {
                error!("the :path of a refused request could not be rewritten for the log");
            }
        }
        self.conclude(gate, v)
    }

    /// Records the final verdict and carries it out: a local answer, or the request goes on
    /// with its identity headers (`Continue`).
    fn conclude(&mut self, gate: &Gate, v: Verdict) -> Action {
        self.record(&v);
        if v.decision != Decision::Allowed {
            return self.send(&reply::reject(gate, &v));
        }
        if v.verify {
            return self.send(&reply::verify(gate, &v));
        }
        if self.forward(gate, &v).is_err() {
            give_back(&v);
            return self.fail_closed("the identity headers could not be set");
        }
        if gate.credits_charge == Charging::Success {
            self.charge = Charge::of(&v);
        }
        Action::Continue
    }

    /// An allowed request with fleet-wide limits: one call to the rate-limit service while the
    /// request waits.
    fn ask_fleet(
        &mut self,
        gate: &Gate,
        mut v: Verdict,
        local_path: Option<String>,
        started_ms: u64,
    ) -> Action {
        let (Some(rls), Some(key), Some(w)) =
            (gate.rate_limit_service.as_ref(), v.key.as_deref(), v.fleet)
        else {
            return self.fail_closed("fleet limits without a service or key");
        };
        match fleet::dispatch(rls, &key.id, key.tenant.as_deref(), &w) {
            Ok(token) => {
                self.stats.borrow_mut().event("ratelimit_service_calls");
                self.waiting = Some(Waiting {
                    token,
                    windows: w,
                    key: key.clone(),
                    role: v
                        .role
                        .and_then(|r| gate.roles.iter().position(|x| std::ptr::eq(x, r))),
                    prefix_environment: v.prefix_environment.map(str::to_string),
                    sources: v.sources,
                    verify: v.verify,
                    local_path,
                    started_ms,
                });
                Action::Pause
            }
            Err(why) => {
                self.fleet_failed(gate, &mut v, started_ms / 1000, &why);
                self.conclude_waited(gate, v, local_path.as_deref())
            }
        }
    }

    /// The call failed: `on_failure` decides (SPEC §10). Never a 5xx with `local` or `allow`
    /// (but a local counter that cannot be updated refuses, as without the service).
    fn fleet_failed(&mut self, gate: &Gate, v: &mut Verdict, now: u64, why: &str) {
        self.fleet
            .borrow_mut()
            .failed(&mut self.stats.borrow_mut(), now, why);
        let Some(w) = v.fleet else {
            return;
        };
        match gate.rate_limit_service.as_ref().map(|r| r.on_failure) {
            Some(OnFailure::Allow) => {}
            Some(OnFailure::Local) => {
                let Some(key) = v.key.clone() else {
                    return;
                };
                let limits = w.to_vec();
                if !count_locally(&mut SharedData, &key.id, &limits, now, v) {
                    return;
                }
                // And the balance with this Envoy's own record, as without the service.
                if let (Some((_, b)), Some(balance)) = (w.balance, credits_of(gate, &key)) {
                    spend_cost(&mut SharedData, balance, b.cost, &key.id, &limits, now, v);
                }
            }
            Some(OnFailure::Deny) | None => {
                v.decision = Decision::Unavailable;
                v.rate_service_down = true;
            }
        }
    }

    /// The audit trail (filter state, stats, debug log): never the key itself.
    fn record(&mut self, v: &Verdict) {
        let key = v.key.as_deref();
        set_state("keygate.key_id", key.map(|k| k.id.as_str()));
        set_state("keygate.tenant", key.and_then(|k| k.tenant.as_deref()));
        set_state("keygate.environment", v.environment());
        set_state("keygate.decision", Some(v.decision.as_str()));
        let mut stats = self.stats.borrow_mut();
        match key {
            // Credits as charged on admission (a later refund is not reported).
            Some(k) => stats.key_request(
                &k.id,
                v.decision,
                v.charged
                    .filter(|_| v.decision == Decision::Allowed)
                    .map_or(0, |c| c.cost),
                || abi::property(&["xds", "route_name"]).unwrap_or_default(),
            ),
            None => stats.keyless_rejection(v.decision),
        }
        if let Some(fault) = v.fault {
            error!("rate-limit counter fault, request rejected: {fault}");
            stats.event("ratelimit_faults");
        }
        if v.counter_created {
            stats.event("ratelimit_counter_created_on_request");
        }
        debug!(
            "decision={} key_id={}",
            v.decision.as_str(),
            key.map_or("-", |k| k.id.as_str())
        );
    }

    /// An allowed request: identity headers in (client values were removed by the plan).
    fn forward(&mut self, gate: &Gate, v: &Verdict) -> Result<(), abi::Status> {
        let key = v.key.as_deref();
        let up = &gate.upstream_headers;
        set_request_header(gate.environment_header.as_deref(), v.environment())?;
        set_request_header(up.key_id.as_deref(), key.map(|k| k.id.as_str()))?;
        set_request_header(up.tenant.as_deref(), key.and_then(|k| k.tenant.as_deref()))?;
        set_request_header(up.role.as_deref(), v.role.map(|r| r.name.as_str()))?;
        self.response_headers = reply::identity_headers(gate, v);
        Ok(())
    }
}
