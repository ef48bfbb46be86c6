//! The core's [`Host`] over Envoy's host calls. Every host error fails closed.

use crate::decide::Host;
use crate::ip::parse_source_address;
use crate::ratelimit::{CasStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::net::IpAddr;
use std::time::UNIX_EPOCH;

/// Host calls for one request; the clock is read at most once.
#[derive(Default)]
pub struct EnvoyHost {
    now: Option<u64>,
}

/// Unix seconds from Envoy's clock; `u64::MAX` if the host cannot tell (expires every key).
pub fn unix_now() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(u64::MAX, |d| d.as_secs())
}

impl Host for EnvoyHost {
    fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(unix_now)
    }

    fn source_ip(&mut self) -> Option<IpAddr> {
        let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
        parse_source_address(&raw)
    }
}

/// Envoy shared data (one map per `vm_id`, shared by every worker thread of the process).
pub struct SharedData;

impl CasStore for SharedData {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            Ok((None, _)) => Ok(None),
            Ok((Some(_), None)) | Err(_) => Err(StoreError::Host),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, StoreError> {
        match hostcalls::set_shared_data(key, Some(value), (cas != 0).then_some(cas)) {
            Ok(()) => Ok(true),
            Err(Status::CasMismatch) => Ok(false),
            Err(_) => Err(StoreError::Host),
        }
    }
}

impl CasStore for EnvoyHost {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        SharedData.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, StoreError> {
        SharedData.set(key, value, cas)
    }
}
