//! The core's [`Host`] over Envoy's host calls. Every host error fails closed.

use crate::decide::Host;
use crate::ip::{parse_source_address, SourceAddress};
use crate::ratelimit::{CasStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
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

    fn source_address(&mut self) -> Option<SourceAddress> {
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

/// The key-service answer is read through the raw ABI: the SDK's wrappers panic (and so trap
/// the whole VM) on any status they do not expect, which Envoy returns for a failed call.
mod raw {
    use proxy_wasm::types::{BufferType, MapType};

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: BufferType,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's exported allocator.
fn host_bytes(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if status != 0 || data.is_null() {
        return None;
    }
    // SAFETY: on success the host wrote `size` bytes into memory it obtained from
    // `proxy_on_memory_allocate`, i.e. from this module's global allocator, for us to own.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The `:status` of the answer to a `dispatch_http_call`; `None` if there was no answer
/// (timeout, reset, or anything else the host reports as an error).
pub fn call_response_status() -> Option<Vec<u8>> {
    let key = ":status";
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: valid pointers to locals; the key outlives the call.
    let status = unsafe {
        raw::proxy_get_header_map_value(
            MapType::HttpCallResponseHeaders,
            key.as_ptr(),
            key.len(),
            &mut data,
            &mut size,
        )
    };
    host_bytes(status, data, size)
}

/// Up to `max` bytes of the answer's body from `start`; `None` if the host has none.
pub fn call_response_body(start: usize, max: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: valid pointers to locals.
    let status = unsafe {
        raw::proxy_get_buffer_bytes(
            BufferType::HttpCallResponseBody,
            start,
            max,
            &mut data,
            &mut size,
        )
    };
    host_bytes(status, data, size)
}
