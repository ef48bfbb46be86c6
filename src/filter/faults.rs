//! Test-only fault injection (cargo feature `fault-injection`, never in release builds):
//! `make build` also builds `target/faults/wasm32-wasip1/release/keygate.wasm` with it, for the
//! fault tests. A request header `x-keygate-fault` asks for one:
//! - `trap`: the VM handling the request traps, as any bug would;
//! - `kill-fetcher`: the VM holding the key-fetch lease traps at its next tick;
//! - `clock+<seconds>`: every VM's clock runs that far ahead from this request on (a test clock,
//!   for crossing a refill instant; `clock+0` puts it back).

use super::abi;

const HEADER: &str = "x-keygate-fault";
const KILL_FETCHER: &str = "keygate.fault.kill_fetcher";
const CLOCK: &str = "keygate.fault.clock";

/// Carries out a fault a request asks for.
pub fn on_request(headers: &[crate::host_wire::Header]) {
    match headers.iter().find(|(h, _)| *h == HEADER).map(|(_, v)| *v) {
        Some(b"trap") => trap(),
        Some(b"kill-fetcher") => {
            let _ = abi::set_shared_data(KILL_FETCHER, b"1", 0);
        }
        Some(v) if v.starts_with(b"clock+") => {
            let _ = abi::set_shared_data(CLOCK, v.get(6..).unwrap_or_default(), 0);
        }
        _ => {}
    }
}

/// How far the test clock runs ahead (milliseconds; 0 unless a request set it).
pub fn clock_offset_ms() -> u64 {
    match abi::shared_data(CLOCK) {
        Ok(Some((v, _))) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(0, |s| s * 1000),
        _ => 0,
    }
}

/// At a tick of the VM whose fetcher is `me` and holds the lease owned by `owner`.
pub fn on_fetcher_tick(me: u64, owner: u64) {
    let asked = matches!(abi::shared_data(KILL_FETCHER), Ok(Some((v, _))) if v == b"1");
    if asked && me == owner {
        let _ = abi::set_shared_data(KILL_FETCHER, b"0", 0);
        abi::log(4, "fault injection: the fetcher VM traps");
        trap();
    }
}

fn trap() -> ! {
    core::arch::wasm32::unreachable()
}
