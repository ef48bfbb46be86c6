//! The core's [`Host`] over Envoy's host calls ([`super::abi`]). Every host error fails closed.

use super::abi::{self, CAS_MISMATCH};
use crate::decide::Host;
use crate::ip::{parse_source_address, SourceAddress};
use crate::ratelimit::{CasStore, StoreError};
use proxy_wasm::types::{BufferType, MapType};

/// Host calls for one request; the clock is read at most once.
#[derive(Default)]
pub struct EnvoyHost {
    /// Unix milliseconds, once read.
    now_ms: Option<u64>,
}

impl EnvoyHost {
    /// Unix milliseconds of this request (the same clock reading as [`Host::now`]).
    pub fn now_ms(&mut self) -> u64 {
        *self.now_ms.get_or_insert_with(|| {
            let now = abi::now_ns().map_or(u64::MAX, |ns| ns / 1_000_000);
            #[cfg(feature = "fault-injection")]
            let now = now.saturating_add(super::faults::clock_offset_ms());
            now
        })
    }
}

/// Unix seconds from Envoy's clock; `u64::MAX` if the host cannot tell (expires every key).
pub fn unix_now() -> u64 {
    abi::now_ns().map_or(u64::MAX, |ns| ns / 1_000_000_000)
}

impl Host for EnvoyHost {
    fn now(&mut self) -> u64 {
        self.now_ms() / 1000
    }

    fn source_address(&mut self) -> Option<SourceAddress> {
        parse_source_address(&abi::property(&["source", "address"])?)
    }
}

/// Envoy shared data (one map per `vm_id`, shared by every worker thread of the process).
pub struct SharedData;

impl CasStore for SharedData {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        abi::shared_data(key).map_err(|_| StoreError::Host)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, StoreError> {
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(true),
            Err(CAS_MISMATCH) => Ok(false),
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

/// The `:status` of the answer to a `dispatch_http_call`; `None` if there was no answer
/// (timeout, reset, or anything else the host reports as an error).
pub fn call_response_status() -> Option<Vec<u8>> {
    abi::header(MapType::HttpCallResponseHeaders, ":status")
}

/// Up to `max` bytes of the answer's body from `start`; `None` if the host has none.
pub fn call_response_body(start: usize, max: usize) -> Option<Vec<u8>> {
    abi::buffer(BufferType::HttpCallResponseBody, start, max)
        .ok()
        .flatten()
}

/// A number no other VM of this Envoy process has (shared-data counter).
pub fn allocate_vm_id() -> Option<u64> {
    let mut sd = SharedData;
    crate::ratelimit::ensure_entry(&mut sd, crate::keyset::VM_SEQ_KEY, &0u64.to_le_bytes()).ok()?;
    for _ in 0..64 {
        let (raw, cas) = sd.get(crate::keyset::VM_SEQ_KEY).ok().flatten()?;
        let n = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?) + 1;
        if matches!(
            sd.set(crate::keyset::VM_SEQ_KEY, &n.to_le_bytes(), cas),
            Ok(true)
        ) {
            return Some(n);
        }
    }
    None
}
