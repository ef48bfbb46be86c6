//! Every host call keygate makes but one, through the raw proxy-wasm ABI. The SDK's `hostcalls` panic
//! (trapping the VM) on any status they do not expect, and declare the host's status as a Rust
//! enum (undefined behaviour for a value outside it); here every status is a plain `u32` and
//! every failure a value the caller handles, counts or logs. Host-allocated answers are taken
//! over as `Vec`s (the SDK's exported allocator made them). The exception is the key fetch's
//! `dispatch_http_call` (see `sync.rs`): only the SDK can register its token for the answer.

use crate::host_wire::{encode_pairs, property_path};
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::ptr::{null, null_mut};

/// A host status other than Ok.
pub type Status = u32;
pub const OK: Status = 0;
pub const NOT_FOUND: Status = 1;
pub const CAS_MISMATCH: Status = 8;

mod sys {
    use proxy_wasm::types::{BufferType, MapType, MetricType};

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_done() -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: BufferType,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map: MapType,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: MapType,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: MapType,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: MapType, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_define_metric(
            kind: MetricType,
            name: *const u8,
            name_size: usize,
            id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    }
}

/// Bench-only (feature `hostcall-count`): counts this thread's host calls, so `make bench` can
/// report how many each kind of request makes (the cost ledger).
#[cfg(feature = "hostcall-count")]
pub mod count {
    use std::cell::Cell;
    thread_local! {
        static CALLS: Cell<u64> = const { Cell::new(0) };
    }
    pub fn one() {
        CALLS.with(|c| c.set(c.get() + 1));
    }
    /// The calls since the last `take`.
    pub fn take() -> u64 {
        CALLS.with(|c| c.replace(0))
    }
}

/// Counts one host call in the bench build; nothing otherwise.
macro_rules! counted {
    () => {
        #[cfg(feature = "hostcall-count")]
        count::one();
    };
}

fn ok(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Takes ownership of an answer the host allocated with this module's allocator.
fn owned(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, Status> {
    ok(status)?;
    if data.is_null() {
        return Ok(None);
    }
    // SAFETY: on success the host wrote `size` bytes into memory it obtained from
    // `proxy_on_memory_allocate`, i.e. from this module's global allocator, for us to own.
    Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) }))
}

pub fn log(level: u32, message: &str) {
    counted!();
    // SAFETY: a valid pointer and length for the duration of the call.
    let _ = unsafe { sys::proxy_log(level, message.as_ptr(), message.len()) };
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> Result<u64, Status> {
    counted!();
    let mut t = 0u64;
    // SAFETY: a valid pointer to a local.
    ok(unsafe { sys::proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    counted!();
    // SAFETY: no pointers.
    ok(unsafe { sys::proxy_set_tick_period_milliseconds(ms) })
}

/// Tells Envoy a root context that answered `false` to `on_done` has finished.
pub fn done() -> Result<(), Status> {
    counted!();
    // SAFETY: no pointers.
    ok(unsafe { sys::proxy_done() })
}

/// Lets a request this filter paused go on (the SDK's `resume_http_request` would trap the VM
/// on any status but Ok).
pub fn resume_request() -> Result<(), Status> {
    counted!();
    // SAFETY: no pointers; 0 is the request stream.
    ok(unsafe { sys::proxy_continue_stream(0) })
}

/// Up to `max` bytes of a buffer from `start`; `Ok(None)` if the host has none.
pub fn buffer(buffer: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    counted!();
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals.
    let status = unsafe { sys::proxy_get_buffer_bytes(buffer, start, max, &mut data, &mut size) };
    owned(status, data, size)
}

/// Every header of a map in one call, serialised (read them with
/// [`crate::host_wire::decode_pairs`]); no map is an empty one.
pub fn header_pairs(map: MapType) -> Result<Vec<u8>, Status> {
    counted!();
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals.
    let status = unsafe { sys::proxy_get_header_map_pairs(map, &mut data, &mut size) };
    Ok(owned(status, data, size)?.unwrap_or_default())
}

/// One header's value; `None` if absent (or the host has no such map, e.g. a failed call).
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    counted!();
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals; the name outlives the call.
    let status = unsafe {
        sys::proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    owned(status, data, size).ok().flatten()
}

pub fn set_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    counted!();
    // SAFETY: valid pointers and lengths for the duration of the call.
    ok(unsafe {
        sys::proxy_replace_header_map_value(
            map,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    counted!();
    // SAFETY: a valid pointer and length for the duration of the call.
    ok(unsafe { sys::proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    counted!();
    let path = property_path(path);
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid pointers to locals; the path outlives the call.
    let status =
        unsafe { sys::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    owned(status, data, size).ok().flatten()
}

pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    counted!();
    let path = property_path(path);
    // SAFETY: valid pointers and lengths for the duration of the call.
    ok(unsafe { sys::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS token; `Ok(None)` if the key is not there.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    counted!();
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: valid pointers to locals; the key outlives the call.
    let status = unsafe {
        sys::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    };
    if status == NOT_FOUND {
        return Ok(None);
    }
    Ok(owned(status, data, size)?.map(|v| (v, cas)))
}

/// Sets a shared-data value if its CAS token is still `cas` (0: unconditionally);
/// `Err(CAS_MISMATCH)` if another writer came first.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    counted!();
    // SAFETY: valid pointers and lengths for the duration of the call.
    ok(unsafe {
        sys::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Answers the request locally (the caller then pauses it).
pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    counted!();
    let headers = encode_pairs(headers);
    // SAFETY: valid pointers and lengths for the duration of the call.
    ok(unsafe {
        sys::proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    counted!();
    let mut id = 0u32;
    // SAFETY: a valid pointer and length; a pointer to a local.
    ok(unsafe { sys::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).ok()?;
    Some(id)
}

pub fn increment_metric(id: u32, by: i64) {
    counted!();
    // SAFETY: no pointers.
    let _ = unsafe { sys::proxy_increment_metric(id, by) };
}

pub fn record_metric(id: u32, value: u64) {
    counted!();
    // SAFETY: no pointers.
    let _ = unsafe { sys::proxy_record_metric(id, value) };
}

/// The `log` crate's messages go to Envoy's log; a failed log call is dropped, never a panic.
struct EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // proxy-wasm levels: trace 0, debug 1, info 2, warn 3, error 4.
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

static LOGGER: EnvoyLogger = EnvoyLogger;

/// Installs the logger (info and above) and a panic hook that logs the panic (critical) before
/// the VM traps.
pub fn init_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        std::panic::set_hook(Box::new(|info| log(5, &info.to_string())));
    }
}
