//! The proxy-wasm glue: moves data between Envoy and the pure core. Nothing here decides.

mod host;
mod http;
mod root;
mod stats;
mod sync;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::KeygateRoot::default()) });
}}
