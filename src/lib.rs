//! keygate: an API-key gate for Envoy, as a proxy-wasm HTTP filter.
//!
//! The flow, one module per step:
//! [`config`] (JSON → validated [`model::Gate`]) → [`credentials`] (find the presented key) →
//! [`keys`] (SHA-256 digest, lookup) → [`decide`] (the ordered checks, using [`path`], [`ip`],
//! [`ratelimit`], [`credits`]) → [`forward`] (the judged path and the headers removed before the request
//! goes on) or [`reply`] (status, headers, JSON body). Only [`filter`] talks to Envoy.
//! With `rate_limit_service`, [`fleet`] turns the limits into a call ([`rls_wire`]) and its
//! answer into the same outcome a local limit gives.
//!
//! This crate is what goes into `keygate.wasm`: its dependencies are the filter's (proxy-wasm,
//! sha2, hex, log). The native programs around it are crates of their own under `crates/` (the
//! key service, the rate-limit service, the `keygate` CLI); they read keys, entries and
//! configurations with this crate's code.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod checksum;
pub mod config;
pub mod credentials;
pub mod credits;
pub mod decide;
pub mod fleet;
pub mod forward;
pub mod header_names;
pub mod host_wire;
pub mod ip;
pub mod json;
pub mod json_reader;
pub mod keys;
pub mod keyset;
pub mod model;
pub mod path;
pub mod ratelimit;
pub mod reply;
pub mod rls_wire;
pub mod timestamp;
pub mod usage;
pub mod version;

#[cfg(target_arch = "wasm32")]
mod filter;
