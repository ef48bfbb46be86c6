//! Fleet-wide limits, the Envoy side (SPEC §10): the gRPC call to the rate-limit service and
//! the per-VM state around it. What the call asks and what its answer means is [`crate::fleet`].

use super::abi;
use super::stats::Stats;
use crate::fleet::{BalanceAnswer, FleetCache, Windows};
use crate::model::RateLimitService;
use crate::ratelimit::RateOutcome;
use crate::rls_wire::{self, decode_response};
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
use std::time::Duration;

/// The largest answer read (keygate's are ~60 bytes per descriptor).
const MAX_ANSWER: usize = 64 * 1024;
/// Failures are logged at most once per this many seconds per VM, with the count since.
const LOG_EVERY_S: u64 = 10;

/// Per VM: the over-limit cache and the failure log's throttle.
#[derive(Default)]
pub struct FleetState {
    pub cache: FleetCache,
    last_log: u64,
    unlogged: u64,
}

impl FleetState {
    /// Counts a failed call in stats and logs it, not once per request.
    pub fn failed(&mut self, stats: &mut Stats, now: u64, why: &str) {
        stats.event("ratelimit_service_failures");
        if now >= self.last_log.saturating_add(LOG_EVERY_S) {
            warn!(
                "rate-limit service call failed: {why}; applying on_failure ({} more since the last line)",
                self.unlogged
            );
            self.last_log = now;
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
    }
}

/// Sends one `ShouldRateLimit` call; the answer arrives in `on_grpc_call_response` of the
/// calling HTTP context. `Err` with the reason if Envoy refused to send it.
pub fn dispatch(
    rls: &RateLimitService,
    key_id: &str,
    tenant: Option<&str>,
    w: &Windows,
) -> Result<u32, String> {
    let message = w.request(&rls.domain, key_id, tenant);
    // The SDK's call, not the raw ABI: only it registers the token with the SDK's dispatcher,
    // which routes the answer back to this context. Given a GrpcService (never a bare name),
    // Envoy answers Ok or InternalFailure (a cluster it cannot reach fails the call).
    hostcalls::dispatch_grpc_call(
        &rls.grpc_service,
        rls_wire::SERVICE,
        rls_wire::METHOD,
        vec![],
        Some(&message),
        Duration::from_millis(rls.timeout_ms),
    )
    .map_err(|s| format!("Envoy refused the call (status {})", s as u32))
}

/// The answer to a call: its outcome, or why it is a failure.
pub fn answer(
    w: &Windows,
    grpc_status: u32,
    size: usize,
    now_ms: u64,
) -> Result<(Option<RateOutcome>, Option<BalanceAnswer>), String> {
    if grpc_status != 0 {
        return Err(format!("gRPC status {grpc_status}"));
    }
    if size > MAX_ANSWER {
        return Err(format!("an answer of {size} bytes"));
    }
    let body = abi::buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .map_err(|s| format!("the answer could not be read (status {s})"))?
        .unwrap_or_default();
    let resp = decode_response(&body).map_err(|e| e.to_string())?;
    crate::fleet::read_answer(w, &resp, now_ms).map_err(|e| format!("unusable answer: {e}"))
}
