//! The proxy-wasm glue: moves data between Envoy and the pure core. Nothing here decides.

mod abi;
#[cfg(feature = "fault-injection")]
mod faults;
mod fleet;
mod host;
mod http;
mod report;
mod root;
mod stats;
mod sync;

use proxy_wasm::traits::RootContext;

proxy_wasm::main! {{
    abi::init_logging();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::KeygateRoot::default()) });
}}
