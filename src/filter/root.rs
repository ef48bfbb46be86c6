//! The root context: parses the configuration once per `on_configure` and hands it to requests.

use super::host::SharedData;
use super::http::KeygateHttp;
use super::stats::Stats;
use crate::config::parse_config;
use crate::model::Gate;
use crate::ratelimit::{ensure_counter, ensure_creation_lock};
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
pub struct KeygateRoot {
    gate: Option<Rc<Gate>>,
    stats: Rc<RefCell<Stats>>,
}

impl Context for KeygateRoot {}

impl RootContext for KeygateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
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
        if gate.key_sync.is_some() {
            error!("configuration rejected: $.key_sync: not supported by this build");
            return false;
        }
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
        info!(
            "configuration loaded: {} keys, {} prefixes, {} roles",
            gate.keys.len(),
            gate.prefixes.len(),
            gate.roles.len()
        );
        self.gate = Some(Rc::new(gate));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates no stream before a successful on_configure; fail closed all the same.
        Some(Box::new(KeygateHttp::new(
            self.gate.clone(),
            self.stats.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
