//! The root context: parses the configuration once per `on_configure` and hands it to requests.

use super::abi;
use super::fleet::FleetState;
use super::host::{unix_now, SharedData};
use super::http::KeygateHttp;
use super::report::Reporter;
use super::stats::Stats;
use super::sync::{refresh_view, Syncer, View, TICK_MS};
use crate::config::parse_config;
use crate::credits;
use crate::model::Gate;
use crate::ratelimit::{ensure_counter, ensure_creation_lock};
use crate::usage::UsageLedger;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
pub struct KeygateRoot {
    gate: Option<Rc<Gate>>,
    stats: Rc<RefCell<Stats>>,
    /// The published synced key set as this VM sees it (shared with its HTTP contexts).
    view: Rc<RefCell<View>>,
    syncer: Option<Syncer>,
    reporter: Option<Reporter>,
    /// Fleet-wide limits: the over-limit cache of this VM (kept across reconfigurations).
    fleet: Rc<RefCell<FleetState>>,
}

impl Context for KeygateRoot {
    /// Envoy is removing this root context (a replaced configuration, shutdown): usage counts
    /// not yet reported are sent first.
    fn on_done(&mut self) -> bool {
        self.stats.borrow_mut().flush(unix_now());
        match self.reporter.as_mut() {
            Some(r) => r.close(&self.stats),
            None => true,
        }
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(r) = self.reporter.as_mut() {
            if r.on_response(token, &self.stats) {
                return;
            }
        }
        if let (Some(s), Some(g)) = (self.syncer.as_mut(), self.gate.as_ref()) {
            s.on_response(token, body_size, g, &self.view, &self.stats);
        }
    }
}

impl RootContext for KeygateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            Ok(None) => {
                error!("configuration rejected: $: no plugin configuration given");
                return false;
            }
            Err(_) => {
                error!("configuration rejected: $: the plugin configuration could not be read");
                return false;
            }
        };
        let gate = match parse_config(&bytes) {
            Ok(g) => g,
            Err(errors) => {
                for e in &errors {
                    error!("configuration rejected: {e}");
                }
                return false;
            }
        };
        let limited = !gate.default_limits.is_empty()
            || gate
                .prefixes
                .iter()
                .any(|p| p.rate_limits.as_ref().is_some_and(|l| !l.is_empty()))
            || gate
                .keys
                .records()
                .any(|k| k.rate_limits.as_ref().is_some_and(|l| !l.is_empty()));
        // Created here, on the main thread before any worker runs (and kept across reloads):
        // the lock that lets workers create missing counter records without racing.
        if ensure_creation_lock(&mut SharedData).is_err() {
            error!("configuration rejected: $: shared data is not available");
            return false;
        }
        if limited {
            // Counter records are created here, before any request of this configuration can
            // count: the host accepts any CAS on a missing entry.
            for rec in gate.keys.records() {
                if ensure_counter(&mut SharedData, &rec.id).is_err() {
                    warn!("could not create the rate-limit record of key {}", rec.id);
                }
            }
        }
        // Balances likewise (SPEC §14): the configuration's keys with credits, its tenants.
        let owners = gate
            .keys
            .records()
            .filter(|k| k.credits.is_some())
            .map(|k| credits::Owner::Key(&k.id))
            .chain(gate.tenants.iter().map(|(t, _)| credits::Owner::Tenant(t)));
        for owner in owners {
            if credits::ensure_balance(&mut SharedData, owner).is_err() {
                warn!("could not create a credit balance record");
            }
        }
        self.syncer = match &gate.key_sync {
            Some(cfg) => {
                match Syncer::new(cfg.clone(), &bytes, self.syncer.as_ref().map(Syncer::id)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        error!("configuration rejected: $.key_sync: {e}");
                        return false;
                    }
                }
            }
            None => None,
        };
        if self.syncer.is_some() {
            refresh_view(&self.view);
        }
        // Usage counts survive a reconfiguration of this VM; without usage_report none are kept.
        match &gate.usage_report {
            Some(cfg) => {
                let mut stats = self.stats.borrow_mut();
                if stats.usage.is_none() {
                    let Some(vm) = super::host::allocate_vm_id() else {
                        error!(
                            "configuration rejected: $.usage_report: shared data is not available"
                        );
                        return false;
                    };
                    let started = abi::now_ns().unwrap_or(0);
                    stats.usage = Some(UsageLedger::new(format!("{started:x}-{vm}")));
                }
                Reporter::prepare_handoff();
                self.reporter = Some(Reporter::new(cfg.clone()));
            }
            None => {
                self.stats.borrow_mut().usage = None;
                self.reporter = None;
            }
        }
        // The tick flushes the usage stats and, with key_sync, refreshes the key-set view.
        let _ = abi::set_tick_period_ms(TICK_MS);
        info!(
            "keygate {} (revision {}): configuration loaded: {} keys, {} prefixes, {} roles",
            crate::version::VERSION,
            crate::version::REVISION,
            gate.keys.len(),
            gate.prefixes.len(),
            gate.roles.len()
        );
        self.gate = Some(Rc::new(gate));
        true
    }

    fn on_tick(&mut self) {
        self.stats.borrow_mut().flush(unix_now());
        if let Some(s) = self.syncer.as_mut() {
            refresh_view(&self.view);
            s.tick(&self.stats);
        }
        if let Some(r) = self.reporter.as_mut() {
            r.tick(&self.stats);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates no stream before a successful on_configure; fail closed all the same.
        Some(Box::new(KeygateHttp::new(
            self.gate.clone(),
            self.stats.clone(),
            self.view.clone(),
            self.fleet.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
