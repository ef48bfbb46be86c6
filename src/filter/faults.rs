//! Test-only fault injection (cargo feature `fault-injection`, never in release builds):
//! `make build` also builds `target/faults/wasm32-wasip1/release/keygate.wasm` with it, for the
//! fault tests. A request header `x-keygate-fault` asks for one:
//! - `trap`: the VM handling the request traps, as any bug would;
//! - `kill-fetcher`: the VM holding the key-fetch lease traps at its next tick.

use super::abi;

const HEADER: &str = "x-keygate-fault";
const KILL_FETCHER: &str = "keygate.fault.kill_fetcher";

/// Carries out a fault a request asks for.
pub fn on_request(headers: &[crate::host_wire::Header]) {
    match headers.iter().find(|(h, _)| *h == HEADER).map(|(_, v)| *v) {
        Some(b"trap") => trap(),
        Some(b"kill-fetcher") => {
            let _ = abi::set_shared_data(KILL_FETCHER, b"1", 0);
        }
        _ => {}
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
